"""AffectNet (manually annotated part), in either of its two common layouts.

(a) Original release: ``training.csv`` and ``validation.csv`` (at ``root`` or under
``root/Manually_Annotated_file_lists/``) with columns ``subDirectory_filePath,face_x,face_y,
face_width,face_height,facial_landmarks,expression,valence,arousal`` (landmarks are
``;``-separated inside their field; a file without the header line is read in that column order);
images under ``root/Manually_Annotated_Images/`` (or ``root/Manually_Annotated/...``).

(b) Re-packaging: ``train_set/`` and ``val_set/``, each with ``images/<id>.jpg`` and
``annotations/<id>_exp.npy`` (+ ``_val.npy``, ``_aro.npy``, ``_lnd.npy``; scalars, often stored as
strings). A missing ``_val`` / ``_aro`` file leaves valence / arousal unannotated.

Native expressions 0..7 (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt); 8 None,
9 Uncertain and 10 Non-face are dropped and counted, as is Contempt unless
``include_contempt=True``. Valence / arousal of -2 mean "not annotated". The official validation
set is the test set of the literature and is served as split "test".
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders._common import (
    TOTAL,
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
from distmtl.tasks import BASIC_EXPRESSIONS, VALENCE_AROUSAL

NAME = "affectnet"
DESCRIPTION = "AffectNet: ~290k manually annotated web faces, 7 basic (+Contempt), valence/arousal"
TASKS = {
    "expression": {"kind": "multiclass", "labels": list(BASIC_EXPRESSIONS),
                   "optional_labels": ["Contempt"]},
    "va": {"kind": "regression", "labels": list(VALENCE_AROUSAL), "range": [-1.0, 1.0]},
}
SPLITS = ("train", "test")
LAYOUTS = ("auto", "csv", "npy")

NATIVE_TO_CANONICAL = {
    0: "Neutral",
    1: "Happiness",
    2: "Sadness",
    3: "Surprise",
    4: "Fear",
    5: "Disgust",
    6: "Anger",
    7: "Contempt",
}
MISSING_CODES = {8: "None", 9: "Uncertain", 10: "Non-face"}
KNOWN_CODES = frozenset(NATIVE_TO_CANONICAL) | frozenset(MISSING_CODES)
VA_MISSING = -2.0

CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
               "facial_landmarks", "expression", "valence", "arousal")
CSV_FILES = {"train": "training.csv", "test": "validation.csv"}
LISTS_DIR = "Manually_Annotated_file_lists"
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
NPY_DIRS = {"train": "train_set", "test": "val_set"}

PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("train", TOTAL): 287651,  # the 8 expression classes
    ("train", "Neutral"): 74874,
    ("train", "Happiness"): 134415,
    ("train", "Sadness"): 25459,
    ("train", "Surprise"): 14090,
    ("train", "Fear"): 6378,
    ("train", "Disgust"): 3803,
    ("train", "Anger"): 24882,
    ("train", "Contempt"): 3750,
    ("test", TOTAL): 3999,  # about 500 per class
}


def _layout(root: Path, layout: str) -> str:
    if layout not in LAYOUTS:
        raise DistmtlError(f"{NAME}: unknown layout '{layout}'{close_matches(layout, LAYOUTS)}; "
                           f"expected one of {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    if first_existing(d / f for d in (root, root / LISTS_DIR) for f in CSV_FILES.values()):
        return "csv"
    if any((root / d).is_dir() for d in NPY_DIRS.values()):
        return "npy"
    raise DistmtlError(
        f"{NAME}: expected file not found: {root / CSV_FILES['train']} (original release) or "
        f"{root / NPY_DIRS['train'] / 'annotations'} (npy re-packaging) "
        f"(is --root the dataset folder?)"
    )


def _va(value: str, path, lineno, malformed: Malformed, what: str) -> float | None:
    """A valence/arousal value, NaN for the missing code, None if malformed (reported)."""
    try:
        number = float(value)
    except ValueError:
        number = math.inf
    if number == VA_MISSING:
        return math.nan
    if not -1.0 <= number <= 1.0:
        malformed(path, lineno, value, f"{what} is neither in [-1, 1] nor the missing code -2")
        return None
    return number


def _code(value: str, path, lineno, malformed: Malformed) -> int | None:
    text = str(value).strip()
    try:
        code = int(float(text))
    except (ValueError, OverflowError):
        code = None
    if code is None or code != float(text) or code not in KNOWN_CODES:
        malformed(path, lineno, text, "expression is not one of 0..10")
        return None
    return code


def _read_csv(root: Path, split: str, malformed: Malformed) -> list[tuple]:
    name = CSV_FILES[split]
    path = first_existing((root / name, root / LISTS_DIR / name)) or require_file(root / name, NAME)
    images = first_existing(root / d for d in IMAGE_DIRS) or root / IMAGE_DIRS[0]
    where = {c: i for i, c in enumerate(CSV_COLUMNS)}
    width = len(CSV_COLUMNS)
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        for index, fields in enumerate(csv.reader(handle)):
            lineno = index + 1
            if index == 0 and fields and fields[0].strip() == CSV_COLUMNS[0]:
                header = [f.strip() for f in fields]
                absent = [c for c in ("expression", "valence", "arousal") if c not in header]
                if absent:
                    raise DistmtlError(f"{NAME}: {path}, line 1: header lacks column '{absent[0]}'")
                where = {c: header.index(c) for c in header}
                width = len(header)
                continue
            if not fields:
                continue
            if len(fields) != width:
                malformed(path, lineno, ",".join(fields), f"expected {width} fields")
                continue
            code = _code(fields[where["expression"]], path, lineno, malformed)
            if code is None:
                continue
            valence = _va(fields[where["valence"]], path, lineno, malformed, "valence")
            arousal = _va(fields[where["arousal"]], path, lineno, malformed, "arousal")
            if valence is None or arousal is None:
                continue
            image = os.path.join(images, fields[where["subDirectory_filePath"]].strip())
            rows.append((image, code, valence, arousal, split))
    return rows


def _npy_scalar(path: Path, malformed: Malformed) -> str | None:
    """The single value stored in a .npy file, as text; None if unreadable (reported)."""
    try:
        value = np.load(path, allow_pickle=False).reshape(-1)
    except (ValueError, OSError) as exc:
        malformed(path, None, exc, "not a readable .npy file")
        return None
    if value.size != 1:
        malformed(path, None, value.size, "expected a single value, found this many")
        return None
    item = value[0].item()
    return item.decode() if isinstance(item, bytes) else str(item)


def _read_npy(root: Path, split: str, malformed: Malformed) -> list[tuple]:
    base = root / NPY_DIRS[split]
    annotations = require_file(base / "annotations", NAME)
    rows = []
    for exp in sorted(annotations.glob("*_exp.npy")):
        sample = exp.name[: -len("_exp.npy")]
        text = _npy_scalar(exp, malformed)
        code = None if text is None else _code(text, exp, None, malformed)
        if code is None:
            continue
        va = []
        for suffix, what in (("_val.npy", "valence"), ("_aro.npy", "arousal")):
            path = annotations / f"{sample}{suffix}"
            if not path.exists():
                va.append(math.nan)
                continue
            text = _npy_scalar(path, malformed)
            va.append(None if text is None else _va(text, path, None, malformed, what))
        if None in va:
            continue
        rows.append((os.path.join(base, "images", f"{sample}.jpg"), code, va[0], va[1], split))
    return rows


def _points(text: str) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in str(text).replace(",", ";").split(";") if v.strip()])
    except ValueError:
        return None
    return values.reshape(68, 2) if values.size == 136 and np.isfinite(values).all() else None


def face_regions(root: str | os.PathLike, split: str = "train", layout: str = "auto"
                 ) -> dict[str, tuple[tuple[float, float, float, float] | None, np.ndarray | None]]:
    """Per image path (as :func:`load` gives it): the face box ``(x, y, w, h)`` of the CSV release
    (None in the npy re-packaging) and the 68 landmarks (``68x2``, None when absent or unreadable)."""
    root = absolute_root(root)
    splits = SPLITS if split == "all" else (split,)
    out: dict = {}
    if _layout(root, layout) == "npy":
        for s in splits:
            base = root / NPY_DIRS[s]
            for exp in sorted((base / "annotations").glob("*_exp.npy")):
                sample = exp.name[: -len("_exp.npy")]
                lnd = base / "annotations" / f"{sample}_lnd.npy"
                text = _npy_scalar(lnd, Malformed(NAME, True)) if lnd.exists() else None
                out[os.path.join(base, "images", f"{sample}.jpg")] = (None, None if text is None else _points(text))
        return out
    images = first_existing(root / d for d in IMAGE_DIRS) or root / IMAGE_DIRS[0]
    for s in splits:
        name = CSV_FILES[s]
        path = first_existing((root / name, root / LISTS_DIR / name)) or require_file(root / name, NAME)
        where = {c: i for i, c in enumerate(CSV_COLUMNS)}
        with open(path, encoding="utf-8", newline="") as handle:
            for index, fields in enumerate(csv.reader(handle)):
                if index == 0 and fields and fields[0].strip() == CSV_COLUMNS[0]:
                    where = {c.strip(): i for i, c in enumerate(fields)}
                    continue
                if len(fields) < len(where):
                    continue
                try:
                    box = tuple(float(fields[where[c]]) for c in ("face_x", "face_y", "face_width", "face_height"))
                except (KeyError, ValueError):
                    box = None
                marks = _points(fields[where["facial_landmarks"]]) if "facial_landmarks" in where else None
                out[os.path.join(images, fields[where["subDirectory_filePath"]].strip())] = (box, marks)
    return out


def _read(root: Path, splits, layout: str, malformed: Malformed) -> pd.DataFrame:
    """All rows of the given splits, with the native code in column ``code``."""
    reader = _read_csv if _layout(root, layout) == "csv" else _read_npy
    rows = [row for split in splits for row in reader(root, split, malformed)]
    frame = pd.DataFrame(rows, columns=["image", "code", "valence", "arousal", "split"])
    return frame.astype({"code": int, "valence": float, "arousal": float})


def _canonical(frame: pd.DataFrame, include_contempt: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    dropped = {name: int((frame["code"] == code).sum()) for code, name in MISSING_CODES.items()}
    keep = frame["code"].isin(NATIVE_TO_CANONICAL)
    if not include_contempt:
        dropped["Contempt"] = int((frame["code"] == 7).sum())
        keep &= frame["code"] != 7
    out = frame[keep].reset_index(drop=True)
    out.insert(1, "expression", out.pop("code").map(NATIVE_TO_CANONICAL))
    return out, dropped


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    include_contempt: bool = False,
    layout: str = "auto",
    skip_malformed: bool = False,
) -> LoadedSource:
    """AffectNet; split "test" is the official validation set."""
    check_split(NAME, split, SPLITS)
    malformed = Malformed(NAME, skip_malformed)
    splits = SPLITS if split == "all" else (split,)
    raw = _read(absolute_root(root), splits, layout, malformed)
    frame, dropped = _canonical(raw, include_contempt)
    notes = dropped_note(NAME, dropped, len(raw)) + malformed.notes()
    return LoadedSource(NAME, frame, skipped=malformed.count, notes=notes)


def check(root: str | os.PathLike) -> CheckReport:
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    try:
        raw = _read(root, SPLITS, "auto", malformed)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [malformed.first] if malformed.first else []
    problems += missing_files(raw["image"])
    frame, _ = _canonical(raw, include_contempt=True)
    counts = {}
    for split in SPLITS:
        counts.update(class_counts(frame[frame["split"] == split], "expression",
                                   list(NATIVE_TO_CANONICAL.values()), (split,), PUBLISHED_COUNTS))
        for code, name in MISSING_CODES.items():
            found = int(((raw["split"] == split) & (raw["code"] == code)).sum())
            counts[(split, f"[dropped] {name}")] = (found, None)
    return report(NAME, root, problems, counts)
