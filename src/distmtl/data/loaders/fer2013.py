"""FER2013 (Kaggle "Challenges in Representation Learning").

Layout: ``root/fer2013.csv`` with header ``emotion,pixels,Usage``; ``pixels`` holds 2,304
space-separated grey values (48x48, row-major); ``Usage`` is Training / PublicTest / PrivateTest.
Columns are located by header name, so the ``icml_face_data.csv`` column order (with its leading
spaces) reads the same way when renamed to ``fer2013.csv``.

Images are returned as a ``[N, 48, 48]`` uint8 array; the frame's ``image`` column indexes it.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders._common import (
    TOTAL,
    Malformed,
    absolute_root,
    check_split,
    class_counts,
    report,
)
from distmtl.data.loaders.base import CheckReport, LoadedSource, require_file
from distmtl.errors import DistmtlError
from distmtl.tasks import BASIC_EXPRESSIONS

NAME = "fer2013"
DESCRIPTION = "FER2013: 35,887 48x48 grey faces, 7 basic expressions, Kaggle Usage splits"
TASKS = {"expression": {"kind": "multiclass", "labels": list(BASIC_EXPRESSIONS)}}
SPLITS = ("train", "val", "test")
CSV_FILE = "fer2013.csv"
SIDE = 48

NATIVE_TO_CANONICAL = {
    0: "Anger",
    1: "Disgust",
    2: "Fear",
    3: "Happiness",
    4: "Sadness",
    5: "Surprise",
    6: "Neutral",
}
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("train", TOTAL): 28709,
    ("train", "Anger"): 3995,
    ("train", "Disgust"): 436,
    ("train", "Fear"): 4097,
    ("train", "Happiness"): 7215,
    ("train", "Sadness"): 4830,
    ("train", "Surprise"): 3171,
    ("train", "Neutral"): 4965,
    ("val", TOTAL): 3589,
    ("val", "Anger"): 467,
    ("val", "Disgust"): 56,
    ("val", "Fear"): 496,
    ("val", "Happiness"): 895,
    ("val", "Sadness"): 653,
    ("val", "Surprise"): 415,
    ("val", "Neutral"): 607,
    ("test", TOTAL): 3589,
    ("test", "Anger"): 491,
    ("test", "Disgust"): 55,
    ("test", "Fear"): 528,
    ("test", "Happiness"): 879,
    ("test", "Sadness"): 594,
    ("test", "Surprise"): 416,
    ("test", "Neutral"): 626,
}


@dataclass
class PixelRows:
    """The well-formed rows of a fer2013.csv-style file."""

    row: np.ndarray  # 0-based data-row index in the file (header excluded), for row alignment
    split: list[str]
    emotion: list[int | None]  # native code; None when the file has no emotion column
    pixels: np.ndarray  # [n, 48, 48] uint8
    total_rows: int  # data rows in the file, malformed ones included


def _parse_pixels(text: str) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # older numpy: partial parse warns
        try:
            values = np.fromstring(text, dtype=np.int32, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    if values.size != SIDE * SIDE or values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(SIDE, SIDE)


def read_pixels_csv(path: Path, malformed: Malformed) -> PixelRows:
    """Parse a fer2013.csv-style file (also used by the FER+ loader, which is row-aligned)."""
    rows, splits, emotions, images = [], [], [], []
    total = 0
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if "pixels" not in header or "Usage" not in header:
            raise DistmtlError(f"{NAME}: {path}, line 1: expected a header with columns "
                               f"emotion,pixels,Usage, found {','.join(header)!r}")
        i_pix, i_use = header.index("pixels"), header.index("Usage")
        i_emo = header.index("emotion") if "emotion" in header else None
        for index, fields in enumerate(reader):
            lineno = index + 2
            total += 1
            if len(fields) != len(header):
                malformed(path, lineno, ",".join(fields)[:40],
                          f"expected {len(header)} comma-separated fields")
                continue
            usage = fields[i_use].strip()
            if usage not in USAGE_TO_SPLIT:
                malformed(path, lineno, usage, "Usage is not Training/PublicTest/PrivateTest")
                continue
            emotion = None
            if i_emo is not None:
                code = fields[i_emo].strip()
                emotion = int(code) if code.isdigit() else None
                if emotion not in NATIVE_TO_CANONICAL:
                    malformed(path, lineno, code, "emotion is not one of 0..6")
                    continue
            image = _parse_pixels(fields[i_pix])
            if image is None:
                malformed(path, lineno, fields[i_pix][:40],
                          f"pixels are not {SIDE * SIDE} integers in 0..255")
                continue
            rows.append(index)
            splits.append(USAGE_TO_SPLIT[usage])
            emotions.append(emotion)
            images.append(image)
    pixels = np.stack(images) if images else np.zeros((0, SIDE, SIDE), dtype=np.uint8)
    return PixelRows(np.asarray(rows, dtype=np.int64), splits, emotions, pixels, total)


def _read(root: Path, malformed: Malformed) -> tuple[pd.DataFrame, np.ndarray]:
    parsed = read_pixels_csv(require_file(root / CSV_FILE, NAME), malformed)
    frame = pd.DataFrame({
        "image": np.arange(len(parsed.split)),
        "expression": [NATIVE_TO_CANONICAL[e] for e in parsed.emotion],
        "split": parsed.split,
    })
    return frame, parsed.pixels


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    skip_malformed: bool = False,
) -> LoadedSource:
    """FER2013; split "val" is PublicTest and "test" is PrivateTest."""
    check_split(NAME, split, SPLITS)
    malformed = Malformed(NAME, skip_malformed)
    frame, pixels = _read(absolute_root(root), malformed)
    if split != "all":
        keep = (frame["split"] == split).to_numpy()
        pixels = pixels[keep]
        frame = frame[keep].reset_index(drop=True)
        frame["image"] = np.arange(len(frame))
    return LoadedSource(NAME, frame, images=pixels, skipped=malformed.count,
                        notes=malformed.notes())


def check(root: str | os.PathLike) -> CheckReport:
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    try:
        frame, _ = _read(root, malformed)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [malformed.first] if malformed.first else []
    counts = class_counts(frame, "expression", list(NATIVE_TO_CANONICAL.values()), SPLITS,
                          PUBLISHED_COUNTS)
    return report(NAME, root, problems, counts)
