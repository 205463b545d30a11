"""DISFA: 27 subjects filmed while watching video clips, 12 AU intensities per frame.

Layout (``root`` is the folder holding ``ActionUnit_Labels``)::

    ActionUnit_Labels/SN001/SN001_au1.txt     lines "frame,intensity" (1-based frame, 0-5)
    ActionUnit_Labels/SN001/SN001_au2.txt     ... one file per AU: 1 2 4 5 6 9 12 15 17 20 25 26
    Videos_LeftCamera/LeftVideoSN001_comp.avi (and Videos_RightCamera/...)

Labels: occurrence is ``intensity >= threshold`` (default 2, the usual protocol). All 12 DISFA AUs
belong to the canonical 17-AU vocabulary, so none is dropped; the canonical AUs DISFA does not code
(AU07 AU10 AU14 AU23 AU24), and those left out with ``aus``, are all-NaN columns. DISFA has no
missing-value code: a line that is not ``frame,intensity`` with an intensity in 0-5 is malformed.

Images: DISFA ships videos only, so ``image`` is ``root / image_template`` with ``{subject}``,
``{frame}`` (1-based, as in the label files) and ``{index}`` (0-based) filled in. The default,
``img/{subject}/{index}.png``, is the frame layout of ME-GraphAU's preprocessing lists.

Folds: the three standard subject-disjoint parts (``PARTS``). ``fold=k`` tests part k and trains on
the other two. ME-GraphAU numbers its folds the other way round (its fold 1 tests part 3): use
``fold=3`` to reproduce its fold 1. The ``fold`` column holds each subject's part (1-3).
"""

from __future__ import annotations

import os
import re
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
from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import AUS_17

NAME = "disfa"
DESCRIPTION = "DISFA: 27 subjects x ~4,845 video frames, 12 AU intensities (occurrence >= 2), 3 folds"
TASKS = {"au": {"kind": "multilabel", "labels": list(AUS_17)}}
SPLITS = ("train", "test")

# DISFA AU number (as in the file names SN001_au<N>.txt) -> canonical label.
AU_MAP = {
    1: "AU01",
    2: "AU02",
    4: "AU04",
    5: "AU05",
    6: "AU06",
    9: "AU09",
    12: "AU12",
    15: "AU15",
    17: "AU17",
    20: "AU20",
    25: "AU25",
    26: "AU26",
}
EVAL_AUS = ("AU01", "AU02", "AU04", "AU06", "AU09", "AU12", "AU25", "AU26")  # aus="eval8"

PARTS = {
    1: ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    2: ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    3: ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
}
PART_OF = {subject: part for part, subjects in PARTS.items() for subject in subjects}

LABEL_DIR = "ActionUnit_Labels"
IMAGE_TEMPLATE = "img/{subject}/{index}.png"
_SUBJECT = re.compile(r"^SN\d{3}$")

# 4,845 frames per video, 4,844 for SN010 (in part 1).
PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("part1", TOTAL): 8 * 4845 + 4844,
    ("part2", TOTAL): 9 * 4845,
    ("part3", TOTAL): 9 * 4845,
    ("all", TOTAL): 26 * 4845 + 4844,
    ("all", "subjects"): 27,
}


def _label_file(labels_dir: Path, subject: str, au: int) -> Path:
    return labels_dir / subject / f"{subject}_au{au}.txt"


def _subject_dirs(root: Path) -> tuple[Path, list[str]]:
    """The label folder and the subject folders in it; fails naming the first file looked for."""
    labels_dir = root / LABEL_DIR
    subjects = (
        sorted(p.name for p in labels_dir.iterdir() if p.is_dir() and _SUBJECT.match(p.name))
        if labels_dir.is_dir() else []
    )
    if not subjects:
        require_file(_label_file(labels_dir, "SN001", 1), NAME)
        raise DistmtlError(f"{NAME}: no subject folder (SN001 ...) under {labels_dir}")
    return labels_dir, subjects


def _select_aus(aus) -> list[int]:
    """DISFA AU numbers for ``aus`` (None: all 12; "eval8": the 8 usually evaluated)."""
    if aus is None:
        return list(AU_MAP)
    if isinstance(aus, str):
        if aus != "eval8":
            raise DistmtlError(f"{NAME}: aus must be a list of AU names, None or 'eval8', not '{aus}'")
        aus = EVAL_AUS
    by_name = {name: number for number, name in AU_MAP.items()}
    chosen = []
    for au in aus:
        text = str(au).upper()
        digits = text.removeprefix("AU")
        name = f"AU{int(digits):02d}" if digits.isdigit() else text
        if name not in by_name:
            raise DistmtlError(f"{NAME}: aus: '{au}' is not a DISFA AU{close_matches(name, by_name)}; "
                               f"DISFA codes {', '.join(by_name)}")
        chosen.append(by_name[name])
    return chosen


def _read_intensities(path: Path, malformed: Malformed) -> dict[int, int]:
    values: dict[int, int] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            fields = text.split(",")
            try:
                frame, intensity = (int(field) for field in fields)
            except ValueError:
                malformed(path, lineno, text, "expected 'frame,intensity' (two integers)")
                continue
            if frame < 1 or not 0 <= intensity <= 5:
                malformed(path, lineno, text, "frame must be >= 1 and intensity 0-5")
                continue
            values[frame] = intensity
    return values


def _read_subject(labels_dir: Path, subject: str, aus: list[int],
                  malformed: Malformed) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers [F] and intensities [F, len(aus)] (NaN where an AU file lacks the frame)."""
    per_au = [_read_intensities(require_file(_label_file(labels_dir, subject, au), NAME), malformed)
              for au in aus]
    frames = np.array(sorted(set().union(*per_au)), dtype=np.int64)
    row = {frame: i for i, frame in enumerate(frames)}
    intensity = np.full((len(frames), len(aus)), np.nan)
    for j, values in enumerate(per_au):
        for frame, value in values.items():
            intensity[row[frame], j] = value
    return frames, intensity


def _threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= 5:
        raise DistmtlError(f"{NAME}: threshold must be a number in (0, 5], not {threshold!r}")
    return value


def _frame(root: Path, labels_dir: Path, subjects: list[str], aus: list[int], threshold: float,
           fold: int, image_template: str, malformed: Malformed) -> pd.DataFrame:
    parts = []
    for subject in subjects:
        frames, intensity = _read_subject(labels_dir, subject, aus, malformed)
        occurrence = np.where(np.isnan(intensity), np.nan, (intensity >= threshold).astype(float))
        part = PART_OF.get(subject)
        columns: dict[str, object] = {
            "image": [os.path.join(root, image_template.format(subject=subject, frame=f,
                                                               index=f - 1))
                      for f in frames.tolist()],
        }
        for name in AUS_17:
            columns[name] = np.full(len(frames), np.nan)
        for j, au in enumerate(aus):
            columns[AU_MAP[au]] = occurrence[:, j]
        columns["subject"] = subject
        columns["split"] = None if part is None else ("test" if part == fold else "train")
        columns["fold"] = part
        parts.append(pd.DataFrame(columns))
    return pd.concat(parts, ignore_index=True)


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    fold: int = 1,
    threshold: float = 2,
    aus=None,
    image_template: str = IMAGE_TEMPLATE,
    skip_malformed: bool = False,
) -> LoadedSource:
    """DISFA frames of ``split`` ("train", "test" or "all") under subject fold ``fold`` (1-3).

    ``threshold``: occurrence is intensity >= threshold. ``aus``: AU names to keep (default all
    12; "eval8" for AU 1 2 4 6 9 12 25 26); the others are NaN.
    """
    check_split(NAME, split, SPLITS)
    if fold not in PARTS:
        raise DistmtlError(f"{NAME}: fold must be 1, 2 or 3, not {fold!r}")
    threshold = _threshold(threshold)
    chosen = _select_aus(aus)
    root = absolute_root(root)
    labels_dir, subjects = _subject_dirs(root)
    notes = []
    unassigned = [s for s in subjects if s not in PART_OF]
    if split != "all":
        subjects = [s for s in subjects if s in PART_OF and (PART_OF[s] == fold) == (split == "test")]
        if not subjects:
            raise DistmtlError(f"{NAME}: no subject of the {split} split of fold {fold} under "
                               f"{labels_dir} (test part {fold}: {', '.join(PARTS[fold])})")
    if unassigned:
        notes.append(f"{NAME}: subject(s) outside the three standard parts, kept only in split "
                     f"'all' with no fold: {', '.join(unassigned)}")
    malformed = Malformed(NAME, skip_malformed)
    frame = _frame(root, labels_dir, subjects, chosen, threshold, fold, image_template, malformed)
    return LoadedSource(NAME, frame, skipped=malformed.count, notes=notes + malformed.notes())


def check(root: str | os.PathLike) -> CheckReport:
    """Every subject folder holds the 12 AU files, they parse, and the frame images exist."""
    root = absolute_root(root)
    try:
        labels_dir, subjects = _subject_dirs(root)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = []
    complete = []
    for subject in subjects:
        missing = [p for au in AU_MAP if not (p := _label_file(labels_dir, subject, au)).is_file()]
        if missing:
            problems.append(f"{NAME}: expected file not found: {missing[0]}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        else:
            complete.append(subject)
    malformed = Malformed(NAME, skip=True)
    if complete:
        frame = _frame(root, labels_dir, complete, list(AU_MAP), 2.0, 1, IMAGE_TEMPLATE, malformed)
    else:
        frame = pd.DataFrame(columns=["image", "fold", *AUS_17])
    if malformed.first:
        problems.append(malformed.first)
    problems += missing_files(frame["image"])
    counts: dict[tuple[str, str], tuple[int, int | None]] = {}
    for part in PARTS:
        counts[(f"part{part}", TOTAL)] = (int((frame["fold"] == part).sum()),
                                          PUBLISHED_COUNTS[(f"part{part}", TOTAL)])
    counts[("all", TOTAL)] = (len(frame), PUBLISHED_COUNTS[("all", TOTAL)])
    counts[("all", "subjects")] = (len(subjects), PUBLISHED_COUNTS[("all", "subjects")])
    for name in AU_MAP.values():
        counts[("all", f"{name} >= 2")] = (int((frame[name] == 1.0).sum()), None)
    return report(NAME, root, problems, counts)
