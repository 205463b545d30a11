"""Sharded sources: images as encoded bytes in LitData chunks, labels in one table beside them.

``distmtl data pack`` writes one folder per source:

- LitData chunks (``chunk-*.bin`` + ``index.json``, written by ``litdata``'s ``BinaryWriter``):
  record ``i`` is ``{"index": i, "image": <the image file's bytes>}``, the file exactly as it was
  on disk (an array-backed source's images are stored as lossless PNG);
- ``labels.parquet``: the source's canonical frame (the table a CSV or loader reads into) minus
  the image paths, row ``i`` for record ``i`` (column ``_record``), so every label, mask, subject and identity comes
  back exactly and is encoded for whatever tasks the experiment configures;
- ``source.json``: what was packed (name, rows, where from, format version).

A source ``{name: affectnet, shards: DIR}`` reads the table into memory (the sampler, the mix
report and ``pos_weight: auto`` need every label) and the images record by record, in the
DataLoader workers, through LitData's ``StreamingDataset`` random access. No image is checked up
front: the folder's index says what is there. Mixing, DDP slicing and resuming stay with
:class:`distmtl.data.sampler.MultiSourceBatchSampler`, exactly as for CSV sources.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders.base import LoadedSource
from distmtl.errors import DistmtlError

FORMAT = 1
META = "source.json"
LABELS = "labels.parquet"
RECORD = "_record"
CHUNK_BYTES = "64MB"


def image_bytes(loaded: LoadedSource, row: int) -> bytes:
    """The encoded image of ``row``: the file's bytes, or an array-backed image as PNG."""
    ref = loaded.frame["image"].iat[row]
    if loaded.images is not None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.asarray(loaded.images[int(ref)])).save(buffer, format="PNG")
        return buffer.getvalue()
    try:
        return Path(ref).read_bytes()
    except OSError as exc:
        raise DistmtlError(f"source '{loaded.name}' row {row}: cannot read image {ref} "
                           f"({exc.strerror or exc})") from None


def write_shards(loaded: LoadedSource, out_dir: str | Path, *, origin: str = "",
                 chunk_bytes: str = CHUNK_BYTES, progress: bool = False) -> Path:
    """Pack one read source into ``out_dir`` (created; must be empty or absent)."""
    from litdata.streaming.writer import BinaryWriter

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DistmtlError(f"{out}: the shard folder exists and is not empty (choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    n = len(loaded.frame)
    writer = BinaryWriter(str(out), chunk_bytes=chunk_bytes)
    start = time.monotonic()
    for row in range(n):
        writer.add_item(row, {"index": row, "image": np.frombuffer(image_bytes(loaded, row), dtype=np.uint8)})
        if progress and (row + 1) % 5000 == 0:
            elapsed = time.monotonic() - start
            left = elapsed / (row + 1) * (n - row - 1)
            print(f"  {loaded.name}: {row + 1:,}/{n:,} images, {elapsed:.0f} s elapsed, "
                  f"about {left:.0f} s left", flush=True)
    writer.done()
    writer.merge()
    labels = loaded.frame.drop(columns=["image"]).reset_index(drop=True)
    labels.insert(0, RECORD, np.arange(n, dtype=np.int64))  # the record each row's image is in
    labels.to_parquet(out / LABELS, index=False)
    meta = {"format": FORMAT, "name": loaded.name, "rows": n, "origin": origin,
            "array_images": loaded.images is not None}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_shards(shard_dir: str | Path, name: str | None = None, where: str = "shards") -> LoadedSource:
    """A packed source as a LoadedSource whose ``image`` column holds record indices."""
    root = Path(shard_dir)
    meta_path = root / META
    if not meta_path.is_file():
        raise DistmtlError(f"{where}: {root} is not a packed source (no {META}; "
                           f"write one with 'distmtl data pack')")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DistmtlError(f"{meta_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if meta.get("format") != FORMAT:
        raise DistmtlError(f"{meta_path}: shard format {meta.get('format')!r}, this version reads {FORMAT}")
    for needed in (LABELS, "index.json"):
        if not (root / needed).is_file():
            raise DistmtlError(f"{where}: {root} lacks {needed} (packing did not finish; pack it again)")
    frame = pd.read_parquet(root / LABELS)
    try:
        records = sum(int(c["chunk_size"]) for c in json.loads((root / "index.json").read_text())["chunks"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DistmtlError(f"{root / 'index.json'}: not a LitData index (pack the source again)") from None
    if not len(frame) == records == int(meta["rows"]):
        raise DistmtlError(f"{root}: {len(frame)} label rows, {records} image records, {META} says "
                           f"{meta['rows']} (pack the source again)")
    if RECORD not in frame.columns or not np.array_equal(frame[RECORD].to_numpy(), np.arange(len(frame))):
        raise DistmtlError(f"{root / LABELS}: no '{RECORD}' column counting 0, 1, 2, ... (pack the source again)")
    frame = frame.drop(columns=[RECORD])
    frame.insert(0, "image", np.arange(len(frame), dtype=np.int64))
    return LoadedSource(name=name or meta.get("name") or root.name, frame=frame, shards=str(root.resolve()))


class ShardReader:
    """Random access to a packed source's image bytes; opened on first use in each process, so a
    DataLoader worker never inherits its parent's open files."""

    def __init__(self, shard_dir: str):
        self.shard_dir = shard_dir
        self._dataset = None
        self._pid = None

    def __getstate__(self):
        return {"shard_dir": self.shard_dir, "_dataset": None, "_pid": None}

    def _open(self):
        import inspect

        from litdata import StreamingDataset

        kwargs = {}
        if "batch_decode" in inspect.signature(StreamingDataset.__init__).parameters:
            kwargs["batch_decode"] = 0  # one record per read: batch windows cost ~10x on random access
        self._dataset = StreamingDataset(self.shard_dir, **kwargs)
        self._pid = os.getpid()

    def __len__(self) -> int:
        if self._dataset is None or self._pid != os.getpid():
            self._open()
        return len(self._dataset)

    def __getitem__(self, i: int) -> bytes:
        if self._dataset is None or self._pid != os.getpid():
            self._open()
        record = self._dataset[int(i)]
        if int(record["index"]) != int(i):
            raise DistmtlError(f"{self.shard_dir}: record {i} holds index {record['index']} (corrupt shards)")
        return np.asarray(record["image"]).tobytes()
