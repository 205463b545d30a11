"""BP4D-Spontaneous (FERA 2015 AU occurrence protocol): 41 subjects x 8 tasks.

Layout (``root`` is the folder holding ``AUCoding``)::

    AUCoding/AU_OCC/F001_T1.csv     header: frame-index column ("0"), then one column per AU
                                    number; one row per coded frame; 0 / 1, 9 = unknown
    img/F001/T1/2440.jpg            extracted frames (see ``image_template``)

Labels: the 12 AUs of the FERA 2015 protocol (1 2 4 6 7 10 12 14 15 17 23 24) are read through
``AU_MAP``; 9 (unknown) becomes NaN, i.e. masked. The CSVs also hold columns for AUs coded too
sparsely for the protocol; they are not read. So the canonical AUs outside the protocol set (AU05
AU09 AU20 AU25 AU26) are all-NaN columns, and AUs outside the 17-AU vocabulary (AU11, AU13, AU16,
...) are dropped. Any value other than 0, 1, 9 in a column that is read is a malformed line.

Images: ``image`` is ``root / image_template`` with ``{subject}``, ``{task}`` and ``{frame}`` (the
frame index of the CSV) filled in; the default ``img/{subject}/{task}/{frame}.jpg`` follows
ME-GraphAU's preprocessing lists.

Folds: the three subject-disjoint parts of ME-GraphAU (``PARTS``). ``fold=k`` tests part k and
trains on the other two (ME-GraphAU's fold 1 tests part 3: use ``fold=3`` to reproduce it). The
``fold`` column holds each subject's part (1-3).
"""

from __future__ import annotations

import csv
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

NAME = "bp4d"
DESCRIPTION = "BP4D (FERA 2015): 41 subjects x 8 tasks, 12 AU occurrences (9 = unknown), 3 folds"
TASKS = {"au": {"kind": "multilabel", "labels": list(AUS_17)}}
SPLITS = ("train", "test")

# BP4D AU number (the CSV column header) -> canonical label; the FERA 2015 protocol set.
AU_MAP = {
    1: "AU01",
    2: "AU02",
    4: "AU04",
    6: "AU06",
    7: "AU07",
    10: "AU10",
    12: "AU12",
    14: "AU14",
    15: "AU15",
    17: "AU17",
    23: "AU23",
    24: "AU24",
}
VALUE_MAP = {0: 0.0, 1: 1.0, 9: np.nan}  # 9 = unknown

PARTS = {
    1: ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016",
        "M014", "F023", "M008"),
    2: ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020",
        "F011", "M013", "M005"),
    3: ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017",
        "M015", "F014"),
}
PART_OF = {subject: part for part, subjects in PARTS.items() for subject in subjects}

LABEL_DIR = Path("AUCoding") / "AU_OCC"
IMAGE_TEMPLATE = "img/{subject}/{task}/{frame}.jpg"
_SEQUENCE = re.compile(r"^([FM]\d{3})_(T\d+)\.csv$")

PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("all", "subjects"): 41,
    ("all", "sequences"): 328,
    ("all", TOTAL): None,  # frames: about 140,000 in papers, no exact published figure
}


def _sequences(root: Path) -> tuple[Path, list[tuple[str, str, Path]]]:
    """(subject, task, csv path) of every sequence file; fails naming the first file looked for."""
    labels_dir = root / LABEL_DIR
    found = []
    if labels_dir.is_dir():
        for path in sorted(labels_dir.iterdir()):
            match = _SEQUENCE.match(path.name)
            if match:
                found.append((match.group(1), match.group(2), path))
    if not found:
        require_file(labels_dir / "F001_T1.csv", NAME)
        raise DistmtlError(f"{NAME}: no <subject>_<task>.csv file (F001_T1.csv ...) in {labels_dir}")
    return labels_dir, found


def _select_aus(aus) -> list[int]:
    if aus is None:
        return list(AU_MAP)
    by_name = {name: number for number, name in AU_MAP.items()}
    chosen = []
    for au in aus:
        text = str(au).upper()
        digits = text.removeprefix("AU")
        name = f"AU{int(digits):02d}" if digits.isdigit() else text
        if name not in by_name:
            raise DistmtlError(f"{NAME}: aus: '{au}' is not a FERA 2015 BP4D AU"
                               f"{close_matches(name, by_name)}; BP4D codes {', '.join(by_name)}")
        chosen.append(by_name[name])
    return chosen


def _header_columns(path: Path, header: list[str], aus: list[int]) -> list[int]:
    """Position of each wanted AU in the header (``1`` or ``AU1``), failing on a missing one."""
    positions: dict[int, int] = {}
    for i, cell in enumerate(header[1:], start=1):
        text = cell.strip().strip('"').upper()
        text = text.removeprefix("AU")
        if text.isdigit():
            positions.setdefault(int(text), i)
    absent = [au for au in aus if au not in positions]
    if absent:
        raise DistmtlError(f"{NAME}: {path}, line 1: no column for AU {absent[0]} in the header "
                           f"{','.join(header)[:80]!r}")
    return [positions[au] for au in aus]


def _read_sequence(path: Path, aus: list[int], malformed: Malformed) -> tuple[list[int], np.ndarray]:
    """Frame indices and occurrence rows [F, len(aus)] (1.0 / 0.0 / NaN) of one CSV."""
    frames: list[int] = []
    rows: list[list[float]] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DistmtlError(f"{NAME}: {path}: empty file; expected a header row of AU numbers")
        columns = _header_columns(path, header, aus)
        for row in reader:
            lineno = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                malformed(path, lineno, ",".join(row), f"expected {len(header)} fields")
                continue
            try:
                frame = int(row[0])
                values = [VALUE_MAP[int(row[c])] for c in columns]
            except (ValueError, KeyError):
                malformed(path, lineno, ",".join(row), "expected a frame index then 0, 1 or 9")
                continue
            frames.append(frame)
            rows.append(values)
    return frames, np.array(rows, dtype=float).reshape(len(rows), len(aus))


def _frame(root: Path, sequences, aus: list[int], fold: int, image_template: str,
           malformed: Malformed) -> pd.DataFrame:
    parts = []
    for subject, task, path in sequences:
        frames, occurrence = _read_sequence(path, aus, malformed)
        part = PART_OF.get(subject)
        columns: dict[str, object] = {
            "image": [os.path.join(root, image_template.format(subject=subject, task=task,
                                                               frame=f))
                      for f in frames],
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
    aus=None,
    image_template: str = IMAGE_TEMPLATE,
    skip_malformed: bool = False,
) -> LoadedSource:
    """BP4D frames of ``split`` ("train", "test" or "all") under subject fold ``fold`` (1-3).

    ``aus``: FERA 2015 AU names to keep (default all 12); the others are NaN.
    """
    check_split(NAME, split, SPLITS)
    if fold not in PARTS:
        raise DistmtlError(f"{NAME}: fold must be 1, 2 or 3, not {fold!r}")
    chosen = _select_aus(aus)
    root = absolute_root(root)
    labels_dir, sequences = _sequences(root)
    notes = []
    unassigned = sorted({s for s, _, _ in sequences if s not in PART_OF})
    if split != "all":
        sequences = [q for q in sequences
                     if q[0] in PART_OF and (PART_OF[q[0]] == fold) == (split == "test")]
        if not sequences:
            raise DistmtlError(f"{NAME}: no sequence of the {split} split of fold {fold} in "
                               f"{labels_dir} (test part {fold}: {', '.join(PARTS[fold])})")
    if unassigned:
        notes.append(f"{NAME}: subject(s) outside the three standard parts, kept only in split "
                     f"'all' with no fold: {', '.join(unassigned)}")
    malformed = Malformed(NAME, skip_malformed)
    frame = _frame(root, sequences, chosen, fold, image_template, malformed)
    return LoadedSource(NAME, frame, skipped=malformed.count, notes=notes + malformed.notes())


def check(root: str | os.PathLike) -> CheckReport:
    """The AU_OCC files parse, and the frame images exist; counts per part and per AU."""
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    try:
        _, sequences = _sequences(root)
        frame = _frame(root, sequences, list(AU_MAP), 1, IMAGE_TEMPLATE, malformed)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [malformed.first] if malformed.first else []
    problems += missing_files(frame["image"])
    counts: dict[tuple[str, str], tuple[int, int | None]] = {}
    for part in PARTS:
        counts[(f"part{part}", TOTAL)] = (int((frame["fold"] == part).sum()), None)
    counts[("all", TOTAL)] = (len(frame), PUBLISHED_COUNTS[("all", TOTAL)])
    counts[("all", "subjects")] = (len({s for s, _, _ in sequences}),
                                   PUBLISHED_COUNTS[("all", "subjects")])
    counts[("all", "sequences")] = (len(sequences), PUBLISHED_COUNTS[("all", "sequences")])
    for name in AU_MAP.values():
        counts[("all", f"{name} = 1")] = (int((frame[name] == 1.0).sum()), None)
    return report(NAME, root, problems, counts)
