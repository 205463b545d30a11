"""FER+ (Microsoft's re-annotation of FER2013 by 10 taggers per image).

Layout (``root`` holds ``fer2013new.csv``)::

    fer2013new.csv   Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,
                     contempt,unknown,NF   (vote counts; row i is row i of fer2013.csv;
                     an empty Image name marks an image FER+ removed)

Images come from ``fer2013.csv`` next to it (pixels, row-aligned; or ``fer2013_csv=PATH``), or from
the PNG folders FER+'s ``generate_training_data.py`` writes (``FER2013Train/``, ``FER2013Valid/``,
``FER2013Test/``, at ``root``, ``root/data`` or ``image_dir=PATH``).

Label modes:

- ``"majority"`` (FER+ reference reader): votes of 1 are discarded as outliers; a class needs more
  than half of the remaining votes; rows without such a class (ties included) or whose majority
  is unknown / NF are dropped and counted.
- ``"plurality"``: the class with most votes; ties and unknown / NF winners are dropped.
- ``"soft"``: columns ``expression:<class>`` with the vote proportions over the emotion classes;
  rows whose unknown or NF votes outnumber every emotion are dropped.

Contempt is dropped (counted) unless ``include_contempt=True``; in soft mode its votes are
removed before normalising.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders import fer2013
from distmtl.data.loaders._common import (
    Malformed,
    absolute_root,
    check_split,
    class_counts,
    dropped_note,
    first_existing,
    missing_files,
    report,
)
from distmtl.data.loaders.base import CheckReport, LoadedSource, require_file
from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import BASIC_EXPRESSIONS

NAME = "ferplus"
DESCRIPTION = "FER+: FER2013 images re-labelled by 10 taggers (majority or vote distribution)"
TASKS = {
    "expression": {"kind": "multiclass", "labels": list(BASIC_EXPRESSIONS),
                   "optional_labels": ["Contempt"]},
}
SPLITS = ("train", "val", "test")
LABEL_FILE = "fer2013new.csv"
LABEL_MODES = ("majority", "plurality", "soft")

VOTE_TO_CANONICAL = {
    "neutral": "Neutral",
    "happiness": "Happiness",
    "surprise": "Surprise",
    "sadness": "Sadness",
    "anger": "Anger",
    "disgust": "Disgust",
    "fear": "Fear",
    "contempt": "Contempt",
}
NON_EMOTION_VOTES = ("unknown", "NF")
VOTE_COLUMNS = (*VOTE_TO_CANONICAL, *NON_EMOTION_VOTES)
SPLIT_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
DROP_REASONS = ("no image", "no majority", "tie", "unknown", "NF", "contempt", "no votes")

# FER+ keeps FER2013's rows and Usage; its per-class counts depend on the label mode.
PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("train", "(rows)"): 28709,
    ("val", "(rows)"): 3589,
    ("test", "(rows)"): 3589,
}


def _classes(include_contempt: bool) -> list[str]:
    return list(BASIC_EXPRESSIONS) + (["Contempt"] if include_contempt else [])


def majority(votes: dict[str, int], include_contempt: bool) -> tuple[str | None, str | None]:
    """FER+ majority: (class, None) or (None, drop reason)."""
    kept = {col: (n if n > 1 else 0) for col, n in votes.items()}
    total = sum(kept.values())
    top_col = max(VOTE_COLUMNS, key=lambda col: kept[col])
    if total == 0 or 2 * kept[top_col] <= total:
        return None, "no majority"
    return _resolve(top_col, include_contempt)


def plurality(votes: dict[str, int], include_contempt: bool) -> tuple[str | None, str | None]:
    """Most votes wins: (class, None) or (None, drop reason)."""
    top = max(votes.values())
    winners = [col for col in VOTE_COLUMNS if votes[col] == top]
    if top == 0:
        return None, "no votes"
    if len(winners) > 1:
        return None, "tie"
    return _resolve(winners[0], include_contempt)


def _resolve(column: str, include_contempt: bool) -> tuple[str | None, str | None]:
    if column in NON_EMOTION_VOTES:
        return None, column
    if column == "contempt" and not include_contempt:
        return None, "contempt"
    return VOTE_TO_CANONICAL[column], None


def soft(votes: dict[str, int],
         include_contempt: bool) -> tuple[dict[str, float] | None, str | None]:
    """Vote proportions over the kept emotion classes: ({class: p}, None) or (None, reason)."""
    emotion = {VOTE_TO_CANONICAL[col]: votes[col] for col in VOTE_TO_CANONICAL
               if include_contempt or col != "contempt"}
    best_other = max(NON_EMOTION_VOTES, key=lambda col: votes[col])
    total = sum(emotion.values())
    if votes[best_other] > max(votes[col] for col in VOTE_TO_CANONICAL):
        return None, best_other
    if total == 0:
        return None, "contempt" if votes["contempt"] else "no votes"
    return {cls: n / total for cls, n in emotion.items()}, None


def _read_votes(path: Path, malformed: Malformed) -> tuple[list, int]:
    """[(data-row index, split, image name, votes)] for the well-formed rows, and the row count."""
    out = []
    index = -1
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("Usage", "Image name", *VOTE_COLUMNS) if c not in header]
        if missing:
            raise DistmtlError(f"{NAME}: {path}, line 1: header lacks column '{missing[0]}'"
                               f"{close_matches(missing[0], header)}")
        where = {c: header.index(c) for c in ("Usage", "Image name", *VOTE_COLUMNS)}
        for index, fields in enumerate(reader):
            lineno = index + 2
            if len(fields) != len(header):
                malformed(path, lineno, ",".join(fields), f"expected {len(header)} fields")
                continue
            usage = fields[where["Usage"]].strip()
            if usage not in fer2013.USAGE_TO_SPLIT:
                malformed(path, lineno, usage, "Usage is not Training/PublicTest/PrivateTest")
                continue
            raw = {c: fields[where[c]].strip() for c in VOTE_COLUMNS}
            bad = next((v for v in raw.values() if not v.isdigit()), None)
            if bad is not None:
                malformed(path, lineno, bad, "vote count is not a non-negative integer")
                continue
            votes = {c: int(v) for c, v in raw.items()}
            out.append((index, fer2013.USAGE_TO_SPLIT[usage], fields[where["Image name"]].strip(),
                        votes))
    return out, index + 1


def _image_folder(root: Path, fer2013_csv, image_dir) -> tuple[Path | None, Path | None]:
    """(pixel csv, png folder): exactly one is set."""
    if image_dir is not None:
        return None, absolute_root(image_dir)
    if fer2013_csv is not None:
        return require_file(absolute_root(fer2013_csv), NAME), None
    if (root / fer2013.CSV_FILE).exists():
        return root / fer2013.CSV_FILE, None
    folder = first_existing(d for d in (root, root / "data")
                            if (d / SPLIT_FOLDERS["train"]).is_dir())
    if folder is not None:
        return None, folder
    return require_file(root / fer2013.CSV_FILE, NAME), None


def _read(root: Path, label_mode: str, include_contempt: bool, malformed: Malformed,
          fer2013_csv=None, image_dir=None):
    """(frame over all splits, images or None, split -> reason -> dropped rows, rows per split)."""
    if label_mode not in LABEL_MODES:
        raise DistmtlError(f"{NAME}: unknown label_mode '{label_mode}'"
                           f"{close_matches(label_mode, LABEL_MODES)}; "
                           f"expected one of {', '.join(LABEL_MODES)}")
    votes, n_rows = _read_votes(require_file(root / LABEL_FILE, NAME), malformed)
    pixel_csv, folder = _image_folder(root, fer2013_csv, image_dir)
    pixels = position = None
    if pixel_csv is not None:
        parsed = fer2013.read_pixels_csv(pixel_csv, malformed)
        if parsed.total_rows != n_rows:
            raise DistmtlError(f"{NAME}: {pixel_csv} has {parsed.total_rows} rows but "
                               f"{root / LABEL_FILE} has {n_rows}; they must be row-aligned")
        position = {int(r): i for i, r in enumerate(parsed.row)}
        pixels = parsed.pixels
    dropped = {split: dict.fromkeys(DROP_REASONS, 0) for split in SPLITS}
    records = []
    for row, split, name, row_votes in votes:
        if not name:
            dropped[split]["no image"] += 1
            continue
        if pixel_csv is not None:
            if row not in position:  # its pixel row was malformed and skipped
                continue
            if parsed.split[position[row]] != split:
                malformed(root / LABEL_FILE, row + 2, split, f"Usage differs from {pixel_csv}")
                continue
            image = position[row]
        else:
            image = str(folder / SPLIT_FOLDERS[split] / name)
        if label_mode == "soft":
            label, reason = soft(row_votes, include_contempt)
        else:
            rule = majority if label_mode == "majority" else plurality
            label, reason = rule(row_votes, include_contempt)
        if reason is not None:
            dropped[split][reason] += 1
            continue
        record = {"image": image}
        if label_mode == "soft":
            record.update({f"expression:{cls}": p for cls, p in label.items()})
        else:
            record["expression"] = label
        record["split"] = split
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        frame = pd.DataFrame(columns=["image", "expression", "split"])
    rows_per_split = {split: sum(1 for v in votes if v[1] == split) for split in SPLITS}
    return frame, pixels, dropped, rows_per_split


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    label_mode: str = "majority",
    include_contempt: bool = False,
    fer2013_csv: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    skip_malformed: bool = False,
) -> LoadedSource:
    """FER+; split "val" is PublicTest (FER2013Valid) and "test" is PrivateTest (FER2013Test)."""
    check_split(NAME, split, SPLITS)
    malformed = Malformed(NAME, skip_malformed)
    frame, pixels, dropped, rows = _read(absolute_root(root), label_mode, include_contempt,
                                          malformed, fer2013_csv, image_dir)
    if split != "all":
        frame = frame[frame["split"] == split].reset_index(drop=True)
    if pixels is not None:
        used = frame["image"].to_numpy(dtype=np.int64)
        pixels = pixels[used]
        frame["image"] = np.arange(len(frame))
    chosen = SPLITS if split == "all" else (split,)
    dropped_here = {r: sum(dropped[s][r] for s in chosen) for r in DROP_REASONS}
    notes = dropped_note(NAME, dropped_here, sum(rows[s] for s in chosen)) + malformed.notes()
    return LoadedSource(NAME, frame, images=pixels, skipped=malformed.count, notes=notes)


def check(root: str | os.PathLike) -> CheckReport:
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    try:
        frame, pixels, dropped, rows = _read(root, "majority", True, malformed)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [malformed.first] if malformed.first else []
    if pixels is None:
        problems += missing_files(frame["image"])
    counts = class_counts(frame, "expression", _classes(True), SPLITS, {})
    for split in SPLITS:
        counts[(split, "(rows)")] = (rows[split], PUBLISHED_COUNTS[(split, "(rows)")])
        for reason, n in dropped[split].items():
            if n:
                counts[(split, f"[dropped] {reason}")] = (n, None)
    counts = dict(sorted(counts.items(), key=lambda item: SPLITS.index(item[0][0])))
    return report(NAME, root, problems, counts)
