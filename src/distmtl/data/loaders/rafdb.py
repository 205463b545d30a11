"""RAF-DB, basic-emotion subset.

Layout (``root`` is the RAF-DB folder holding ``basic/``, or ``basic/`` itself)::

    basic/EmoLabel/list_patition_label.txt     "train_00001.jpg 5" (space-separated; sic "patition")
    basic/Image/original/train_00001.jpg
    basic/Image/aligned/train_00001_aligned.jpg (100x100)

Native labels 1..7 (Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral); the split is the
file-name prefix (train_ / test_).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from distmtl.data.loaders._common import (
    TOTAL,
    Malformed,
    absolute_root,
    check_split,
    class_counts,
    missing_files,
    report,
)
from distmtl.data.loaders.base import CheckReport, LoadedSource, require_file
from distmtl.errors import DistmtlError
from distmtl.tasks import BASIC_EXPRESSIONS

NAME = "rafdb"
DESCRIPTION = "RAF-DB basic: 15,339 in-the-wild faces, 7 basic expressions, train/test"
TASKS = {"expression": {"kind": "multiclass", "labels": list(BASIC_EXPRESSIONS)}}
SPLITS = ("train", "test")

NATIVE_TO_CANONICAL = {
    1: "Surprise",
    2: "Fear",
    3: "Disgust",
    4: "Happiness",
    5: "Sadness",
    6: "Anger",
    7: "Neutral",
}
PREFIX_TO_SPLIT = {"train_": "train", "test_": "test"}
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"

PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("train", TOTAL): 12271,
    ("train", "Surprise"): 1290,
    ("train", "Fear"): 281,
    ("train", "Disgust"): 717,
    ("train", "Happiness"): 4772,
    ("train", "Sadness"): 1982,
    ("train", "Anger"): 705,
    ("train", "Neutral"): 2524,
    ("test", TOTAL): 3068,
    ("test", "Surprise"): 329,
    ("test", "Fear"): 74,
    ("test", "Disgust"): 160,
    ("test", "Happiness"): 1185,
    ("test", "Sadness"): 478,
    ("test", "Anger"): 162,
    ("test", "Neutral"): 680,
}


def _basic_dir(root: Path) -> Path:
    """``root/basic``, unless the user pointed at the ``basic`` folder itself."""
    if not (root / "basic").is_dir() and (root / LABEL_FILE).is_file():
        return root
    return root / "basic"


def _image_path(basic: Path, name: str, aligned: bool) -> str:
    if aligned:
        stem, ext = os.path.splitext(name)
        return str(basic / "Image" / "aligned" / f"{stem}_aligned{ext}")
    return str(basic / "Image" / "original" / name)


def _read(root: Path, aligned: bool, malformed: Malformed) -> pd.DataFrame:
    basic = _basic_dir(root)
    path = require_file(basic / LABEL_FILE, NAME)
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            fields = text.split()
            if len(fields) != 2:
                malformed(path, lineno, text, "expected '<image> <label>'")
                continue
            name, code = fields
            split = next((s for p, s in PREFIX_TO_SPLIT.items() if name.startswith(p)), None)
            if split is None:
                malformed(path, lineno, name, "image name does not start with train_ or test_")
                continue
            try:
                expression = NATIVE_TO_CANONICAL[int(code)]
            except (ValueError, KeyError):
                malformed(path, lineno, code, "label is not one of 1..7")
                continue
            rows.append((_image_path(basic, name, aligned), expression, split))
    return pd.DataFrame(rows, columns=["image", "expression", "split"])


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    aligned: bool = True,
    skip_malformed: bool = False,
) -> LoadedSource:
    """RAF-DB basic; ``aligned`` picks the 100x100 aligned crops over the original images."""
    check_split(NAME, split, SPLITS)
    malformed = Malformed(NAME, skip_malformed)
    frame = _read(absolute_root(root), aligned, malformed)
    if split != "all":
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return LoadedSource(NAME, frame, skipped=malformed.count, notes=malformed.notes())


def check(root: str | os.PathLike) -> CheckReport:
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    try:
        frame = _read(root, aligned=True, malformed=malformed)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [malformed.first] if malformed.first else []
    problems += missing_files(frame["image"])
    counts = class_counts(frame, "expression", list(NATIVE_TO_CANONICAL.values()), SPLITS,
                          PUBLISHED_COUNTS)
    return report(NAME, root, problems, counts)
