"""Fashion-MNIST (Zalando, MIT licence): 28x28 grey images of 10 clothing categories.

Files (IDX format, gzipped or not)::

    train-images-idx3-ubyte.gz   train-labels-idx1-ubyte.gz   60,000 images
    t10k-images-idx3-ubyte.gz    t10k-labels-idx1-ubyte.gz    10,000 images

Debian's package ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``,
the default ``root`` (``apt-get install dataset-fashion-mnist``). Images are returned as an array
(``LoadedSource.images`` [N, 28, 28] uint8) and the ``image`` column holds row indices into it.

Tasks: ``category`` (multiclass, the official order: index 9 is "Ankle boot") and ``attributes``
(multilabel): a shopping-item attribute set defined for the 10 categories as a class-attribute
table, ``distmtl/relatedness/tables/fashion_attributes.csv`` (same layout as a relatedness CSV; values are
p(attribute | category), 0.9 / 0.1 and the like where items of a category vary). Fashion-MNIST has
no attribute annotation: per-image attribute labels are drawn from the table as a simulated
annotator, Bernoulli(p) then each label flipped with probability ``noise`` (default 5%). The draw
is seeded and deterministic per (seed, split, image index), whatever ``max_per_split`` or
``subset`` is.
:func:`relatedness` returns the table itself as the category -> attribute relatedness.

Disjoint annotation (the case study of ``configs/fashion_mnist.yaml``): ``subset: [start, stop]``
takes the images ``start <= index < stop`` of the split, and ``keep`` blanks the labels of the
other task (``keep: category`` has no attribute columns, ``keep: attributes`` leaves the category
unannotated), so that e.g. ``subset: [0, 1500], keep: category`` and ``subset: [1500, 11500],
keep: attributes`` are two training sources with disjoint images and disjoint annotations, and
``subset: [0, 11500]`` is their oracle (the same images with both labels).
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders._common import TOTAL, absolute_root, check_split, report
from distmtl.data.loaders.base import CheckReport, LoadedSource
from distmtl.errors import DistmtlError

NAME = "fashion_mnist"
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "install it with 'apt-get install dataset-fashion-mnist' or pass --root"

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
LABEL_MAP = dict(enumerate(CLASSES))  # native label 0..9 -> class name
SPLITS = ("train", "test")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLIT_STREAM = {"train": 0, "test": 1}  # keeps the attribute draws of the two splits apart
KEEP = ("both", "category", "attributes")  # which task's labels a source keeps

PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    **{("train", c): 6000 for c in CLASSES}, ("train", TOTAL): 60000,
    **{("test", c): 1000 for c in CLASSES}, ("test", TOTAL): 10000,
}


def _table_path(table: str | os.PathLike | None):
    if table is not None:
        return Path(table)
    return resources.files("distmtl.relatedness") / "tables" / "fashion_attributes.csv"


def read_class_table(path, classes, dataset: str) -> tuple[np.ndarray, list[str]]:
    """A class-attribute CSV (header ``class,<attribute>...``, one row of probabilities per class)
    as an array [len(classes), A] in ``classes`` order, and the attribute names."""
    if not path.is_file():
        raise DistmtlError(f"{dataset}: attribute table not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row]
    names = [cell.strip() for cell in rows[0][1:]] if rows else []
    values = {}
    for lineno, row in enumerate(rows[1:], start=2):
        try:
            numbers = [float(v) for v in row[1:]]
        except ValueError:
            numbers = []
        if len(numbers) != len(names) or not all(0.0 <= v <= 1.0 for v in numbers):
            raise DistmtlError(f"{dataset}: {path}, line {lineno}: expected {len(names)} "
                               f"probabilities in [0, 1]: {','.join(row)[:60]!r}")
        values[row[0].strip()] = numbers
    if not names or sorted(values) != sorted(classes):
        raise DistmtlError(f"{dataset}: {path}: expected a header of attribute names and one row "
                           f"per class ({', '.join(classes)})")
    return np.array([values[c] for c in classes]), names


def attribute_table(table: str | os.PathLike | None = None) -> tuple[np.ndarray, list[str]]:
    """The class-attribute table [10, A] (rows in CLASSES order) and the attribute names."""
    return read_class_table(_table_path(table), CLASSES, NAME)


ATTRIBUTES = tuple(attribute_table()[1])
TASKS = {
    "category": {"kind": "multiclass", "labels": list(CLASSES)},
    "attributes": {"kind": "multilabel", "labels": list(ATTRIBUTES)},
}
DESCRIPTION = (f"Fashion-MNIST: 70,000 28x28 clothing images, 10 categories, "
               f"{len(ATTRIBUTES)} simulated attributes")


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DistmtlError(f"{NAME}: expected file not found: {root / stem}.gz (or {stem}); "
                       f"{INSTALL_HINT}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as an array of its dimensions."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DistmtlError(f"{NAME}: {path}: cannot read: {exc}") from None
    if len(data) < 4 or data[0] or data[1] or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DistmtlError(f"{NAME}: {path}: not an IDX file of unsigned bytes "
                           f"(magic {data[:4].hex() or 'missing'})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DistmtlError(f"{NAME}: {path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    body = memoryview(data)[4 + 4 * ndim:]
    if len(body) != math.prod(dims):
        raise DistmtlError(f"{NAME}: {path}: {len(body)} data bytes, the header says "
                           f"{'x'.join(map(str, dims))} = {math.prod(dims)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_split(root: str | os.PathLike | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] of one split, checked against each other."""
    root = DEFAULT_ROOT if root is None else absolute_root(root)
    image_path, label_path = (_idx_file(root, stem) for stem in FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DistmtlError(f"{NAME}: {image_path} / {label_path}: expected 3-d images and 1-d "
                           f"labels, got shapes {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DistmtlError(f"{NAME}: {image_path} holds {len(images)} images but {label_path} "
                           f"{len(labels)} labels")
    bad = np.flatnonzero(labels >= len(CLASSES))
    if len(bad):
        raise DistmtlError(f"{NAME}: {label_path}: item {bad[0]}: label {labels[bad[0]]} is not "
                           f"in 0..{len(CLASSES) - 1}")
    return images, labels


def noisy_attributes(labels: np.ndarray, table: np.ndarray, *, seed: int, split: str | int,
                     noise: float) -> np.ndarray:
    """Per-image 0/1 attributes: Bernoulli(table[label]) then flipped with probability noise.

    Row i depends only on (seed, split, i, labels[i]): one stream per (seed, split), drawn for
    every image in order.
    """
    stream = SPLIT_STREAM[split] if isinstance(split, str) else int(split)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), stream]))
    draws = rng.random((2, len(labels), table.shape[1]))
    present = draws[0] < table[labels]
    flipped = draws[1] < noise
    return (present ^ flipped).astype(np.float32)


def load(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    attributes: bool = True,
    seed: int = 0,
    noise: float = 0.05,
    max_per_split: int | None = None,
    table: str | os.PathLike | None = None,
    subset=None,
    keep: str = "both",
) -> LoadedSource:
    """Fashion-MNIST ``split`` ("train", "test" or "all"; the first ``max_per_split`` of each).

    ``attributes``: add the simulated attribute labels (``seed``, ``noise``: flip probability;
    ``table``: a CSV of the same layout instead of the built-in one). ``subset``: ``[start,
    stop]``, the images ``start <= index < stop`` of the split ("train" or "test"; ``stop`` may
    be null for the end), taken before ``max_per_split``. ``keep``: "both" (default),
    "category" (no attribute labels) or "attributes" (category left unannotated).
    """
    check_split(NAME, split, SPLITS)
    if keep not in KEEP:
        raise DistmtlError(f"{NAME}: keep must be one of {', '.join(KEEP)}, not {keep!r}")
    if keep == "attributes" and not attributes:
        raise DistmtlError(f"{NAME}: keep: attributes needs attributes: true")
    attributes = attributes and keep != "category"
    window = _subset(subset, split)
    if not 0.0 <= float(noise) <= 0.5:
        raise DistmtlError(f"{NAME}: noise must be a flip probability in [0, 0.5], not {noise!r}")
    if max_per_split is not None and int(max_per_split) < 1:
        raise DistmtlError(f"{NAME}: max_per_split must be a positive count, not {max_per_split!r}")
    matrix, names = attribute_table(table) if attributes else (None, [])
    frames, arrays, offset = [], [], 0
    for part in (SPLITS if split == "all" else (split,)):
        images, labels = read_split(root, part)
        values = (noisy_attributes(labels, matrix, seed=seed, split=part, noise=float(noise))
                  if attributes else None)
        start, stop = window if window is not None else (0, len(labels))
        if stop is None:
            stop = len(labels)
        if stop > len(labels):
            raise DistmtlError(f"{NAME}: subset [{start}, {stop}) reaches past the {len(labels)} "
                               f"images of split '{part}'")
        images, labels = images[start:stop], labels[start:stop]
        values = values[start:stop] if values is not None else None
        count = len(labels) if max_per_split is None else min(len(labels), int(max_per_split))
        categories = [LABEL_MAP[int(k)] for k in labels[:count]]
        if keep == "attributes":
            categories = [None] * count
        frame = pd.DataFrame({"image": np.arange(offset, offset + count),
                              "category": pd.Series(categories, dtype=object)})
        if attributes:
            frame = pd.concat([frame, pd.DataFrame(values[:count], columns=names)], axis=1)
        frame["split"] = part
        frames.append(frame)
        arrays.append(images[:count])
        offset += count
    frame = pd.concat(frames, ignore_index=True)
    notes = []
    if attributes:
        notes.append(f"{NAME}: attribute labels simulated from the class-attribute table "
                     f"(seed {seed}, flip probability {float(noise):g})")
    return LoadedSource(NAME, frame, images=np.concatenate(arrays), notes=notes)


def _subset(subset, split: str, dataset: str = NAME) -> tuple[int, int | None] | None:
    """``[start, stop]`` checked: non-negative integers, start < stop (stop may be None)."""
    if subset is None:
        return None
    if split == "all":
        raise DistmtlError(f"{dataset}: subset needs split 'train' or 'test', not 'all'")
    if not isinstance(subset, (list, tuple)) or len(subset) != 2:
        raise DistmtlError(f"{dataset}: subset must be [start, stop], not {subset!r}")
    start, stop = subset
    ok_start = isinstance(start, int) and not isinstance(start, bool) and start >= 0
    ok_stop = stop is None or (isinstance(stop, int) and not isinstance(stop, bool) and stop > 0)
    if not (ok_start and ok_stop) or (stop is not None and stop <= start):
        raise DistmtlError(f"{dataset}: subset must be [start, stop] with 0 <= start < stop "
                           f"(image indices of the split, stop excluded), not {subset!r}")
    return int(start), (None if stop is None else int(stop))


def relatedness(root: str | os.PathLike | None = None, *, table: str | os.PathLike | None = None):
    """The category -> attribute relatedness: the class-attribute table (``root`` is unused)."""
    from distmtl.relatedness.table import Relatedness

    matrix, names = attribute_table(table)
    return Relatedness(matrix, CLASSES, names, name="fashion_attributes",
                       source=str(_table_path(table)))


def check(root: str | os.PathLike | None = None) -> CheckReport:
    """The four IDX files parse and agree; counts per split and class."""
    shown = DEFAULT_ROOT if root is None else absolute_root(root)
    problems: list[str] = []
    counts: dict[tuple[str, str], tuple[int, int | None]] = {}
    for split in SPLITS:
        try:
            _, labels = read_split(root, split)
        except DistmtlError as exc:
            problems.append(str(exc))
            continue
        found = np.bincount(labels, minlength=len(CLASSES))
        counts[(split, TOTAL)] = (len(labels), PUBLISHED_COUNTS[(split, TOTAL)])
        for k, cls in LABEL_MAP.items():
            counts[(split, cls)] = (int(found[k]), PUBLISHED_COUNTS[(split, cls)])
    return report(NAME, shown, problems, counts)
