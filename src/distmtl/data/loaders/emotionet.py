"""EmotioNet, the manually FACS-coded subset (2020 release, 24,600 images).

Layout (``root`` holds the label table and the downloaded images)::

    EmotioNet_FACS_aws_2020_24600.csv   header: URL, URL orig, 'AU 1', 'AU 2', ... (AU names may be
                                        quoted and spaced); one row per image, URLs in single
                                        quotes; values 0 / 1, 999 = not coded
    images/<last part(s) of the URL>    the images, downloaded from the URLs (see ``url_parts``)

The release also comes as an .xlsx workbook: save it as CSV (e.g. ``pandas.read_excel(path)
.to_csv(...)``), or pass ``file`` for a CSV of the same layout under another name.

Labels: AU columns are recognised by name (``AU 12``, ``'AU 12'``, ``AU12``) and mapped through
``AU_MAP``; 999 and empty cells become NaN (not coded). Of the 23 AUs of the 2020 table, AU18, AU28,
AU43 and AU51-AU56 are outside the 17-AU vocabulary and are dropped (listed in the notes); the
canonical AUs the table lacks (AU07 AU14 AU23) are all-NaN columns. A value other than 0, 1 or 999
is a malformed line. Rows with no coded AU at all are dropped and counted.

Splits: no labelled test set is public. "train" is every row unless ``val_fraction`` > 0, which
sends that fraction of the images (chosen by a hash of the URL, so stable across runs and files)
to "val"; "all" is every row.
"""

from __future__ import annotations

import csv
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders._common import (
    TOTAL,
    Malformed,
    absolute_root,
    check_split,
    missing_files,
    report,
)
from distmtl.data.loaders.base import CheckReport, LoadedSource, require_file
from distmtl.errors import DistmtlError
from distmtl.tasks import AUS_17

NAME = "emotionet"
DESCRIPTION = "EmotioNet manual FACS subset: 24,600 web images, 23 AUs (14 canonical), 999 = not coded"
TASKS = {"au": {"kind": "multilabel", "labels": list(AUS_17)}}
SPLITS = ("train", "val")

DEFAULT_FILE = "EmotioNet_FACS_aws_2020_24600.csv"
NOT_CODED = 999

# EmotioNet AU number (from the column name) -> canonical label.
AU_MAP = {
    1: "AU01",
    2: "AU02",
    4: "AU04",
    5: "AU05",
    6: "AU06",
    9: "AU09",
    10: "AU10",
    12: "AU12",
    15: "AU15",
    17: "AU17",
    20: "AU20",
    24: "AU24",
    25: "AU25",
    26: "AU26",
}

PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {("all", TOTAL): 24600}  # DEFAULT_FILE

_AU_COLUMN = re.compile(r"^AU(\d+)$", re.IGNORECASE)


def _unquote(text: str) -> str:
    return text.strip().strip("'\"").strip()


def _label_file(root: Path, file: str | None) -> Path:
    path = Path(file) if file is not None else Path(DEFAULT_FILE)
    return require_file(path if path.is_absolute() else root / path, NAME)


def _read(path: Path, malformed: Malformed) -> tuple[list[str], np.ndarray, list[str]]:
    """URLs, AU values [N, 17] (1.0 / 0.0 / NaN, canonical order) and the dropped AU names."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DistmtlError(f"{NAME}: {path}: empty file; expected a header row (URL, AU 1, ...)")
        columns: dict[int, int] = {}  # header position -> canonical index
        dropped = []
        for i, cell in enumerate(header):
            match = _AU_COLUMN.match(_unquote(cell).replace(" ", ""))
            if match is None:
                continue
            number = int(match.group(1))
            if number in AU_MAP:
                columns[i] = AUS_17.index(AU_MAP[number])
            else:
                dropped.append(f"AU{number}")
        if not columns:
            raise DistmtlError(f"{NAME}: {path}, line 1: no AU column in the header "
                               f"{','.join(header)[:80]!r}")
        urls: list[str] = []
        rows: list[np.ndarray] = []
        for row in reader:
            lineno = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                malformed(path, lineno, ",".join(row), f"expected {len(header)} fields")
                continue
            values = np.full(len(AUS_17), np.nan)
            try:
                for i, k in columns.items():
                    text = _unquote(row[i])
                    code = float(text) if text else NOT_CODED
                    if code not in (0, 1, NOT_CODED):
                        raise ValueError(text)
                    values[k] = np.nan if code == NOT_CODED else code
            except ValueError:
                malformed(path, lineno, ",".join(row), "AU values must be 0, 1 or 999")
                continue
            url = _unquote(row[0])
            if not url:
                malformed(path, lineno, ",".join(row), "empty URL in the first column")
                continue
            urls.append(url)
            rows.append(values)
    return urls, np.array(rows).reshape(len(rows), len(AUS_17)), dropped


def _in_val(url: str, val_fraction: float) -> bool:
    return zlib.crc32(url.encode("utf-8")) / 2**32 < val_fraction


def _image(root: Path, images_dir: str, url: str, url_parts: int) -> str:
    parts = [p for p in url.split("?")[0].split("/") if p]
    return str(root / images_dir / Path(*parts[-url_parts:]))


def _frame(root: Path, path: Path, images_dir: str, url_parts: int, val_fraction: float,
           malformed: Malformed) -> tuple[pd.DataFrame, list[str], int]:
    urls, values, dropped = _read(path, malformed)
    coded = ~np.isnan(values).all(axis=1)
    frame = pd.DataFrame(values[coded], columns=list(AUS_17))
    kept = [u for u, keep in zip(urls, coded) if keep]
    frame.insert(0, "image", [_image(root, images_dir, u, url_parts) for u in kept])
    frame["split"] = ["val" if _in_val(u, val_fraction) else "train" for u in kept]
    return frame, dropped, int((~coded).sum())


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    file: str | None = None,
    images_dir: str = "images",
    url_parts: int = 1,
    val_fraction: float = 0.0,
    skip_malformed: bool = False,
) -> LoadedSource:
    """EmotioNet rows of ``split`` ("train", "val" or "all").

    ``file``: the label CSV (default ``EmotioNet_FACS_aws_2020_24600.csv`` under ``root``).
    ``images_dir`` / ``url_parts``: the image of a row is ``root/images_dir`` joined with the last
    ``url_parts`` components of its URL (1: the file name). ``val_fraction``: share of the images
    held out as "val" (by URL hash).
    """
    check_split(NAME, split, SPLITS)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DistmtlError(f"{NAME}: val_fraction must be in [0, 1), not {val_fraction!r}")
    if split == "val" and not val_fraction:
        raise DistmtlError(f"{NAME}: EmotioNet has no published validation split; "
                           f"set val_fraction (e.g. 0.1) to hold one out")
    if int(url_parts) < 1:
        raise DistmtlError(f"{NAME}: url_parts must be >= 1, not {url_parts!r}")
    root = absolute_root(root)
    path = _label_file(root, file)
    malformed = Malformed(NAME, skip_malformed)
    frame, dropped, uncoded = _frame(root, path, images_dir, int(url_parts), float(val_fraction),
                                     malformed)
    notes = []
    if dropped:
        notes.append(f"{NAME}: AUs outside the 17-AU vocabulary dropped: {' '.join(dropped)}")
    if uncoded:
        notes.append(f"{NAME}: dropped {uncoded} row(s) with no coded AU (all 999)")
    if split != "all":
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return LoadedSource(NAME, frame, skipped=malformed.count, notes=notes + malformed.notes())


def check(root: str | os.PathLike, *, file: str | None = None) -> CheckReport:
    """The label table parses and the images exist; counts per AU."""
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    try:
        path = _label_file(root, file)
        frame, _, uncoded = _frame(root, path, "images", 1, 0.0, malformed)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [malformed.first] if malformed.first else []
    problems += missing_files(frame["image"])
    published = PUBLISHED_COUNTS[("all", TOTAL)] if file is None else None
    counts = {("all", TOTAL): (len(frame) + uncoded + malformed.count, published)}
    for name in AU_MAP.values():
        counts[("all", f"{name} = 1")] = (int((frame[name] == 1.0).sum()), None)
    return report(NAME, root, problems, counts)
