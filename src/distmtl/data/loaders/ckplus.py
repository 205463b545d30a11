"""CK+ (Extended Cohn-Kanade), posed expression sequences.

Layout::

    cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
    Emotion/S005/001/S005_001_00000011_emotion.txt     one float, e.g. "   3.0000000e+00"

Only 327 of the 593 sequences carry an emotion file; it is named after the sequence's peak (last)
frame. Native labels 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness,
7 surprise. Contempt sequences are dropped (counted) unless ``include_contempt=True``.

There is no official split: subjects are dealt round-robin, in sorted order, into ``folds``
subject-disjoint folds; split "test" is fold ``fold`` and "train" the others ("all": both, with
the ``fold`` column). ``peak_frames`` takes the last k frames of each sequence up to the peak;
``include_neutral`` adds each labelled sequence's first frame as Neutral.
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
    dropped_note,
    missing_files,
    report,
)
from distmtl.data.loaders.base import CheckReport, LoadedSource, require_file
from distmtl.errors import DistmtlError
from distmtl.tasks import BASIC_EXPRESSIONS

NAME = "ckplus"
DESCRIPTION = "CK+: 327 labelled posed sequences (peak frames), 7 basic (+Contempt), subject folds"
TASKS = {
    "expression": {"kind": "multiclass", "labels": list(BASIC_EXPRESSIONS),
                   "optional_labels": ["Contempt"]},
}
SPLITS = ("train", "test")
IMAGE_DIR = "cohn-kanade-images"
EMOTION_DIR = "Emotion"

NATIVE_TO_CANONICAL = {
    0: "Neutral",
    1: "Anger",
    2: "Contempt",
    3: "Disgust",
    4: "Fear",
    5: "Happiness",
    6: "Sadness",
    7: "Surprise",
}

# Labelled sequences (peak frames); "all" because CK+ has no official split.
PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("all", TOTAL): 327,
    ("all", "Anger"): 45,
    ("all", "Contempt"): 18,
    ("all", "Disgust"): 59,
    ("all", "Fear"): 25,
    ("all", "Happiness"): 69,
    ("all", "Sadness"): 28,
    ("all", "Surprise"): 83,
    ("all", "(image sequences)"): 593,
}


def _read_emotion(path: Path, malformed: Malformed) -> str | None:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != 1:
        malformed(path, 1, " | ".join(lines), "expected exactly one number")
        return None
    try:
        value = float(lines[0])
    except ValueError:
        value = -1.0
    if value != int(value) or int(value) not in NATIVE_TO_CANONICAL:
        malformed(path, 1, lines[0], "emotion is not one of 0..7")
        return None
    return NATIVE_TO_CANONICAL[int(value)]


def _sequences(root: Path, malformed: Malformed) -> list[tuple[str, str, str, str]]:
    """(subject, sequence, peak frame stem, canonical label) for every labelled sequence."""
    emotion_dir = require_file(root / EMOTION_DIR, NAME)
    require_file(root / IMAGE_DIR, NAME)
    out = []
    for path in sorted(emotion_dir.glob("S*/*/*_emotion.txt")):
        label = _read_emotion(path, malformed)
        if label is not None:
            subject, sequence = path.parent.parent.name, path.parent.name
            out.append((subject, sequence, path.name[: -len("_emotion.txt")], label))
    return out


def _frames(folder: Path, peak: str) -> list[str]:
    """The sequence's frame files up to its peak, sorted; the peak is listed even when missing
    (so that check() names it)."""
    frames = {p.name for p in folder.glob("*.png")} if folder.is_dir() else set()
    return sorted(name for name in frames | {f"{peak}.png"} if name <= f"{peak}.png")


def _assign_folds(subjects, folds: int) -> dict[str, int]:
    ordered = sorted(set(subjects))
    if not 2 <= folds <= max(len(ordered), 2):
        raise DistmtlError(f"{NAME}: folds={folds} must be between 2 and the number of "
                           f"subjects ({len(ordered)})")
    return {subject: i % folds for i, subject in enumerate(ordered)}


def _read(root: Path, *, include_contempt: bool, peak_frames: int, include_neutral: bool,
          folds: int, fold: int, malformed: Malformed) -> tuple[pd.DataFrame, list[str]]:
    """All chosen frames, with subject, fold and split; and a note on dropped sequences."""
    if peak_frames < 1:
        raise DistmtlError(f"{NAME}: peak_frames={peak_frames} must be at least 1")
    if not 0 <= fold < folds:
        raise DistmtlError(f"{NAME}: fold={fold} must be in 0..{folds - 1}")
    sequences = _sequences(root, malformed)
    fold_of = _assign_folds([s[0] for s in sequences], folds)
    contempt = 0
    rows = []
    for subject, sequence, peak, label in sequences:
        if label == "Contempt" and not include_contempt:
            contempt += 1
            continue
        folder = root / IMAGE_DIR / subject / sequence
        frames = _frames(folder, peak)
        chosen = [(name, label) for name in frames[-peak_frames:]]
        if include_neutral and frames[0] not in {name for name, _ in chosen}:
            chosen.insert(0, (frames[0], "Neutral"))
        split = "test" if fold_of[subject] == fold else "train"
        rows += [(str(folder / name), lab, subject, fold_of[subject], split)
                 for name, lab in chosen]
    frame = pd.DataFrame(rows, columns=["image", "expression", "subject", "fold", "split"])
    return frame, dropped_note(NAME, {"Contempt": contempt}, len(sequences), "labelled sequences")


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    include_contempt: bool = False,
    peak_frames: int = 1,
    include_neutral: bool = False,
    folds: int = 10,
    fold: int = 0,
    skip_malformed: bool = False,
) -> LoadedSource:
    """CK+ peak frames; "train"/"test" are the subject folds other than / equal to ``fold``."""
    check_split(NAME, split, SPLITS)
    malformed = Malformed(NAME, skip_malformed)
    frame, notes = _read(absolute_root(root), include_contempt=include_contempt,
                         peak_frames=peak_frames, include_neutral=include_neutral,
                         folds=folds, fold=fold, malformed=malformed)
    if split != "all":
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return LoadedSource(NAME, frame, skipped=malformed.count, notes=notes + malformed.notes())


def check(root: str | os.PathLike) -> CheckReport:
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    try:
        frame, _ = _read(root, include_contempt=True, peak_frames=1, include_neutral=False,
                         folds=2, fold=0, malformed=malformed)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [malformed.first] if malformed.first else []
    problems += missing_files(frame["image"])
    counts = class_counts(frame.drop(columns="split"), "expression",
                          [c for c in NATIVE_TO_CANONICAL.values() if c != "Neutral"], ("all",),
                          PUBLISHED_COUNTS)
    found = sum(1 for p in (root / IMAGE_DIR).glob("S*/*") if p.is_dir())
    counts[("all", "(image sequences)")] = (found, PUBLISHED_COUNTS[("all", "(image sequences)")])
    return report(NAME, root, problems, counts)
