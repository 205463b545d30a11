"""RAF-DB: the basic-emotion subset and the compound subset.

Layout (``root`` is the RAF-DB folder holding ``basic/`` and ``compound/``, or one of those
folders itself)::

    basic/EmoLabel/list_patition_label.txt     "train_00001.jpg 5" (space-separated; sic "patition")
    basic/Image/original/train_00001.jpg
    basic/Image/aligned/train_00001_aligned.jpg (100x100)
    compound/EmoLabel/list_patition_label.txt  "train_0001.jpg 3"
    compound/Image/original/train_0001.jpg
    compound/Image/aligned/train_0001_aligned.jpg

``subset="basic"`` (default): native labels 1..7 (Surprise, Fear, Disgust, Happiness, Sadness,
Anger, Neutral) in the ``expression`` column. ``subset="compound"``: native labels 1..11 (Happily
surprised, Happily disgusted, Sadly fearful, Sadly angry, Sadly surprised, Sadly disgusted,
Fearfully angry, Fearfully surprised, Angrily surprised, Angrily disgusted, Disgustedly surprised;
Du et al.'s names, as in the ``du2014_compound`` table) in the ``compound`` column. In both, the
split is the file-name prefix (train_ / test_).
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
from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import BASIC_EXPRESSIONS, RAFDB_COMPOUND_11

NAME = "rafdb"
DESCRIPTION = ("RAF-DB: 15,339 in-the-wild faces, 7 basic expressions (subset: compound: 3,954, "
               "11 compound expressions), train/test")
TASKS = {"expression": {"kind": "multiclass", "labels": list(BASIC_EXPRESSIONS)},
         "compound": {"kind": "multiclass", "labels": list(RAFDB_COMPOUND_11)}}
SPLITS = ("train", "test")
SUBSETS = ("basic", "compound")

NATIVE_TO_CANONICAL = {
    1: "Surprise",
    2: "Fear",
    3: "Disgust",
    4: "Happiness",
    5: "Sadness",
    6: "Anger",
    7: "Neutral",
}
COMPOUND_NATIVE_TO_CANONICAL = dict(enumerate(RAFDB_COMPOUND_11, start=1))
# subset -> (native codes, task column)
SUBSET_LABELS = {"basic": (NATIVE_TO_CANONICAL, "expression"),
                 "compound": (COMPOUND_NATIVE_TO_CANONICAL, "compound")}
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
COMPOUND_PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("train", TOTAL): 3162,
    ("test", TOTAL): 792,
}


def _subset_dir(root: Path, subset: str = "basic") -> Path:
    """``root/<subset>``, unless the user pointed at that folder itself (a folder with the label
    file and no ``<subset>`` folder, not named after the other subset)."""
    other = "compound" if subset == "basic" else "basic"
    if not (root / subset).is_dir() and (root / LABEL_FILE).is_file() and root.name != other:
        return root
    return root / subset


def _image_path(basic: Path, name: str, aligned: bool) -> str:
    if aligned:
        stem, ext = os.path.splitext(name)
        return str(basic / "Image" / "aligned" / f"{stem}_aligned{ext}")
    return str(basic / "Image" / "original" / name)


def _read(root: Path, aligned: bool, malformed: Malformed, subset: str = "basic") -> pd.DataFrame:
    basic = _subset_dir(root, subset)
    codes, column = SUBSET_LABELS[subset]
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
                expression = codes[int(code)]
            except (ValueError, KeyError):
                malformed(path, lineno, code, f"label is not one of 1..{len(codes)}")
                continue
            rows.append((_image_path(basic, name, aligned), expression, split))
    return pd.DataFrame(rows, columns=["image", column, "split"])


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    aligned: bool = True,
    skip_malformed: bool = False,
    subset: str = "basic",
) -> LoadedSource:
    """RAF-DB basic (``expression``) or compound (``compound``, ``subset="compound"``);
    ``aligned`` picks the 100x100 aligned crops over the original images."""
    check_split(NAME, split, SPLITS)
    if subset not in SUBSETS:
        raise DistmtlError(f"{NAME}: options.subset: unknown subset '{subset}'"
                           f"{close_matches(str(subset), SUBSETS)}; expected basic or compound")
    malformed = Malformed(NAME, skip_malformed)
    frame = _read(absolute_root(root), aligned, malformed, subset)
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
    if (root / "compound" / LABEL_FILE).is_file():  # the compound subset, when it is there too
        compound = _read(root, aligned=True, malformed=malformed, subset="compound")
        problems += [p for p in [malformed.first] if p and p not in problems]
        problems += missing_files(compound["image"])
        found = class_counts(compound, "compound", list(RAFDB_COMPOUND_11), SPLITS,
                             COMPOUND_PUBLISHED_COUNTS)
        counts.update({(f"compound {split}", cls): value for (split, cls), value in found.items()})
    return report(NAME, root, problems, counts)
