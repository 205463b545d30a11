"""Aff-Wild2 as released for the ABAW challenges: expressions, 12 AUs, valence / arousal.

Two annotation layouts are read (``source``):

- ``"per_video"`` (default): one .txt per video and task; line 1 is a header, line i + 1 labels
  frame i, whose image is ``cropped_aligned/<video>/<i:05d>.jpg``. Two-person videos are split
  into ``<id>_left`` / ``<id>_right``. Folders (ABAW2 name, later names)::

      EXPR_Set | EXPR_Classification_Challenge | EXPR_Recognition_Challenge /Train_Set|Validation_Set
      AU_Set   | AU_Detection_Challenge                                     /Train_Set|Validation_Set
      VA_Set   | VA_Estimation_Challenge                                    /Train_Set|Validation_Set

  looked up in ``root``, in ``annotations_dir`` when given, and in the folders directly under
  ``root`` whose name contains "annot" or "abaw". (``Training_Set`` is accepted for Train_Set.)
  Expression files: header ``Neutral,...,Other``, one integer 0-7 per line, -1 = not annotated.
  AU files: header ``AU1,AU2,AU4,...,AU26``, 12 comma-separated 0/1, -1 = not annotated.
  VA files: header ``valence,arousal``, floats in [-1, 1], -5 = not annotated.
- ``"mtl"``: the s-Aff-Wild2 multi-task file (``MTL_Challenge/training_set_annotations*.txt`` /
  ``validation_set_annotations*.txt``, or ``mtl_file``): header ``image,valence,arousal,expression,
  aus``, rows ``<video>/<frame>.jpg,v,a,e,au1,...,au12`` with the same missing codes.

Labels: expression indices map through ``EXPR_MAP`` (ABAW order: 0 Neutral ... 6 Surprise, 7
Other); AU columns map by header name through ``AU_MAP`` (all 12 in the 17-AU vocabulary; AU05 AU09
AU14 AU17 AU20 are all-NaN columns); -1 / -5 become NaN. "Other" is not one of the 7 canonical
classes: by default (``other="drop"``) its expression label is dropped and counted, the frame's AU
and VA labels kept; ``other="keep"`` keeps it as the class "Other". Frames left with no label at
all are dropped and counted. ``subject`` is the video name (one person per video).

Splits: "train" and "val"; the challenge test labels are not public, so "test" reads the
validation set (as papers do) and says so in the notes. The per-task sets were partitioned
separately: a video may be in one task's training set and another's validation set (split "all"
reports how many).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders._common import TOTAL, Malformed, absolute_root, report
from distmtl.data.loaders.base import CheckReport, LoadedSource, require_file
from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS, VALENCE_AROUSAL

NAME = "affwild2"
DESCRIPTION = "Aff-Wild2 (ABAW): in-the-wild videos, 7 expressions + Other, 12 AUs, valence/arousal"
TASKS = {
    "expression": {"kind": "multiclass", "labels": list(BASIC_EXPRESSIONS)},
    "au": {"kind": "multilabel", "labels": list(AUS_17)},
    "va": {"kind": "regression", "labels": list(VALENCE_AROUSAL), "range": [-1.0, 1.0]},
}
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "val", "all": "all"}

EXPR_MAP = {0: "Neutral", 1: "Anger", 2: "Disgust", 3: "Fear", 4: "Happiness", 5: "Sadness",
            6: "Surprise", 7: "Other"}
EXPR_HEADER = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "other")
# ABAW AU name (file header; also the column order of the s-Aff-Wild2 file) -> canonical label.
AU_MAP = {"AU1": "AU01", "AU2": "AU02", "AU4": "AU04", "AU6": "AU06", "AU7": "AU07",
          "AU10": "AU10", "AU12": "AU12", "AU15": "AU15", "AU23": "AU23", "AU24": "AU24",
          "AU25": "AU25", "AU26": "AU26"}
MISSING = {"expression": -1, "au": -1, "va": -5}

TASK_DIRS = {
    "expression": ("EXPR_Set", "EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
    "au": ("AU_Set", "AU_Detection_Challenge"),
    "va": ("VA_Set", "VA_Estimation_Challenge"),
}
SPLIT_DIRS = {"train": ("Train_Set", "Training_Set"), "val": ("Validation_Set",)}
MTL_FILES = {"train": ("training_set_annotations*.txt", "train_set*.txt"),
             "val": ("validation_set_annotations*.txt", "validation_set*.txt")}
WIDTH = {"expression": 1, "au": len(AU_MAP), "va": 2}

# s-Aff-Wild2 (ABAW4 paper); the per-video sets changed between challenge editions.
PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {("mtl-train", TOTAL): 142333,
                                                       ("mtl-val", TOTAL): 26876}


def _bases(root: Path, annotations_dir: str | None) -> list[Path]:
    bases = [root] + ([root / annotations_dir] if annotations_dir else [])
    if root.is_dir():
        bases += sorted(p for p in root.iterdir() if p.is_dir()
                        and ("annot" in p.name.lower() or "abaw" in p.name.lower()))
    return bases


def _task_dir(bases: list[Path], task: str, split: str) -> Path | None:
    for base in bases:
        for name in TASK_DIRS[task]:
            for split_dir in SPLIT_DIRS[split]:
                if (base / name / split_dir).is_dir():
                    return base / name / split_dir
    return None


def _mtl_file(bases: list[Path], split: str) -> Path | None:
    for base in bases:
        for folder in (base / "MTL_Challenge", base):
            for pattern in MTL_FILES[split]:
                found = sorted(folder.glob(pattern)) if folder.is_dir() else []
                if found:
                    return found[0]
    return None


def _parse_values(task: str, fields: list[str]) -> list[float]:
    """One label line of ``task`` as floats with NaN for the missing code; ValueError if bad."""
    if task == "va":
        values = [float(f) for f in fields]
        if len(values) != 2 or any(v != MISSING["va"] and not -1.0 <= v <= 1.0 for v in values):
            raise ValueError
    else:
        values = [int(f) for f in fields]
        allowed = range(-1, 8) if task == "expression" else (-1, 0, 1)
        if len(values) != WIDTH[task] or any(v not in allowed for v in values):
            raise ValueError
    return [np.nan if v == MISSING[task] else float(v) for v in values]


def _read_video(path: Path, task: str, malformed: Malformed) -> np.ndarray:
    """Labels [frames, width] of one per-video file, canonical column order; NaN = missing."""
    with open(path, encoding="utf-8-sig") as handle:
        lines = handle.read().rstrip().splitlines()
    header = [c.strip() for c in lines[0].split(",")] if lines else []
    order = None
    if task == "au":
        names = [h.upper().replace(" ", "") for h in header]
        if sorted(names) == sorted(AU_MAP):
            order = [AUS_17.index(AU_MAP[n]) for n in names]
    elif [h.lower() for h in header] == (list(EXPR_HEADER) if task == "expression"
                                         else list(VALENCE_AROUSAL)):
        order = list(range(WIDTH[task]))
    if order is None:
        malformed(path, 1, lines[0] if lines else "", f"not a header of an ABAW {task} file")
        return np.empty((0, WIDTH[task]))
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        try:
            rows.append(_parse_values(task, line.split(",")))
        except ValueError:
            malformed(path, lineno, line, f"bad {task} label (missing code {MISSING[task]})")
            rows.append([np.nan] * WIDTH[task])
    values = np.array(rows, dtype=float).reshape(len(rows), WIDTH[task])
    if task == "au":  # scatter into the 17-wide canonical order
        wide = np.full((len(rows), len(AUS_17)), np.nan)
        wide[:, order] = values
        return wide
    return values


def _assemble(root: Path, images_dir: str, videos: dict[str, dict[str, np.ndarray]],
              tasks: list[str], split: str) -> pd.DataFrame:
    parts = []
    for video in sorted(videos):
        labels = videos[video]
        n = max(len(v) for v in labels.values())
        prefix = os.path.join(root, images_dir, video, "")
        columns: dict[str, object] = {"image": [f"{prefix}{i:05d}.jpg" for i in range(1, n + 1)]}
        for task in tasks:
            width = len(AUS_17) if task == "au" else WIDTH[task]
            values = np.full((n, width), np.nan)
            if task in labels:
                values[: len(labels[task])] = labels[task]
            if task == "expression":
                columns["expression"] = values[:, 0]
            else:
                names = AUS_17 if task == "au" else VALENCE_AROUSAL
                columns.update({name: values[:, j] for j, name in enumerate(names)})
        columns["subject"] = video
        columns["split"] = split
        parts.append(pd.DataFrame(columns))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["image"])


def _per_video(root, bases, split, tasks, explicit, images_dir, malformed) -> pd.DataFrame:
    videos: dict[str, dict[str, np.ndarray]] = {}
    read = []
    for task in tasks:
        folder = _task_dir(bases, task, split)
        if folder is None:
            if explicit:
                require_file(root / TASK_DIRS[task][0] / SPLIT_DIRS[split][0], NAME)
            continue
        read.append(task)
        for path in sorted(folder.glob("*.txt")):
            videos.setdefault(path.stem, {})[task] = _read_video(path, task, malformed)
    if not read:
        require_file(root / TASK_DIRS[tasks[0]][0] / SPLIT_DIRS[split][0], NAME)
    return _assemble(root, images_dir, videos, read, split)


def _mtl(root, bases, split, tasks, images_dir, mtl_file, malformed) -> pd.DataFrame:
    path = root / mtl_file if mtl_file else _mtl_file(bases, split)
    path = require_file(path or root / "MTL_Challenge" / MTL_FILES[split][0].replace("*", ""), NAME)
    with open(path, encoding="utf-8-sig") as handle:
        lines = handle.read().splitlines()
    if not lines or not lines[0].replace(" ", "").lower().startswith("image,valence,arousal,expr"):
        raise DistmtlError(f"{NAME}: {path}, line 1: expected the header "
                           f"'image,valence,arousal,expression,aus', got {lines[:1]!r}")
    images, rows = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if not line.strip():
            continue
        try:
            if len(fields) != 4 + len(AU_MAP):
                raise ValueError
            va = _parse_values("va", fields[1:3])
            expr = _parse_values("expression", fields[3:4])
            aus = _parse_values("au", fields[4:])
        except ValueError:
            malformed(path, lineno, line, "expected '<video>/<frame>.jpg,v,a,expr,12 AUs'")
            continue
        images.append(fields[0].strip())
        wide = [np.nan] * len(AUS_17)
        for name, value in zip(AU_MAP.values(), aus):
            wide[AUS_17.index(name)] = value
        rows.append(expr + wide + va)
    values = np.array(rows, dtype=float).reshape(len(rows), 1 + len(AUS_17) + 2)
    prefix = os.path.join(root, images_dir, "")
    frame = pd.DataFrame({"image": [prefix + rel for rel in images]})
    if "expression" in tasks:
        frame["expression"] = values[:, 0]
    for j, name in enumerate((*AUS_17, *VALENCE_AROUSAL), start=1):
        if ("au" if name in AUS_17 else "va") in tasks:
            frame[name] = values[:, j]
    frame["subject"] = [Path(rel).parent.as_posix() for rel in images]
    frame["split"] = split
    return frame


def _select_tasks(tasks) -> tuple[list[str], bool]:
    if tasks is None:
        return list(TASK_DIRS), False
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    for task in tasks:
        if task not in TASK_DIRS:
            raise DistmtlError(f"{NAME}: unknown task '{task}'{close_matches(task, TASK_DIRS)}; "
                               f"available: {', '.join(TASK_DIRS)}")
    return tasks, True


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    source: str = "per_video",
    tasks=None,
    other: str = "drop",
    images_dir: str = "cropped_aligned",
    annotations_dir: str | None = None,
    mtl_file: str | None = None,
    require_images: bool = False,
    skip_malformed: bool = False,
) -> LoadedSource:
    """Aff-Wild2 frames of ``split`` ("train", "val"; "test" reads "val"; "all").

    ``tasks``: subset of "expression", "au", "va" (default: every task annotated for the split).
    ``other``: "drop" (default) or "keep" the expression class Other. ``require_images``: drop
    (and count) frames whose image is missing from ``images_dir`` (ABAW's cropped_aligned lacks
    frames where no face was found). ``annotations_dir``: a folder (under ``root``) to search
    for the annotation folders too. ``mtl_file``: the s-Aff-Wild2 file of the split, when the
    default names are not found.
    """
    if split not in SPLIT_ALIASES:
        raise DistmtlError(f"{NAME}: unknown split '{split}'{close_matches(split, SPLIT_ALIASES)}; "
                           f"available: train, val, all")
    if source not in ("per_video", "mtl"):
        raise DistmtlError(f"{NAME}: source must be 'per_video' or 'mtl', not '{source}'")
    if other not in ("drop", "keep"):
        raise DistmtlError(f"{NAME}: other must be 'drop' or 'keep', not '{other}'")
    tasks, explicit = _select_tasks(tasks)
    if mtl_file and SPLIT_ALIASES[split] == "all":
        raise DistmtlError(f"{NAME}: mtl_file names one split's file; load 'train' and 'val' "
                           f"separately, or leave mtl_file out")
    root = absolute_root(root)
    bases = _bases(root, annotations_dir)
    malformed = Malformed(NAME, skip_malformed)
    notes = []
    if split == "test":
        notes.append(f"{NAME}: the ABAW test labels are not public; split 'test' reads the "
                     f"validation set")
    frames = []
    for part in (("train", "val") if SPLIT_ALIASES[split] == "all" else (SPLIT_ALIASES[split],)):
        if source == "mtl":
            frames.append(_mtl(root, bases, part, tasks, images_dir, mtl_file, malformed))
        else:
            frames.append(_per_video(root, bases, part, tasks, explicit, images_dir, malformed))
    frame = pd.concat(frames, ignore_index=True)
    if len(frames) > 1 and len(frame):
        shared = int((frame.groupby("subject")["split"].nunique() > 1).sum())
        if shared:
            notes.append(f"{NAME}: {shared} video(s) are in the training set of one task and the "
                         f"validation set of another")
    if "expression" in frame.columns:
        codes = frame["expression"].to_numpy()
        n_other = int((codes == 7).sum())
        if other == "drop" and n_other:
            codes = np.where(codes == 7, np.nan, codes)
            notes.append(f"{NAME}: dropped the expression label 'Other' of {n_other} frame(s) "
                         f"(other='keep' keeps it)")
        frame["expression"] = [None if np.isnan(c) else EXPR_MAP[int(c)] for c in codes]
    labels = frame.drop(columns=["image", "subject", "split"], errors="ignore")
    unlabelled = labels.isna().all(axis=1).to_numpy()
    if unlabelled.any():
        notes.append(f"{NAME}: dropped {int(unlabelled.sum())} frame(s) with no label left")
        frame = frame[~unlabelled]
    if require_images:
        present = np.array([os.path.exists(p) for p in frame["image"]], dtype=bool)
        if (~present).any():
            notes.append(f"{NAME}: dropped {int((~present).sum())} frame(s) whose image is missing")
            frame = frame[present]
    frame = frame.reset_index(drop=True)
    return LoadedSource(NAME, frame, skipped=malformed.count, notes=notes + malformed.notes())


def check(root: str | os.PathLike, *, annotations_dir: str | None = None) -> CheckReport:
    """Parses every annotation set found; counts videos, frames and expressions per split."""
    root = absolute_root(root)
    bases = _bases(root, annotations_dir)
    malformed = Malformed(NAME, skip=True)
    problems: list[str] = []
    counts: dict[tuple[str, str], tuple[int, int | None]] = {}
    found_any = False
    for split in ("train", "val"):
        for task in TASK_DIRS:
            if _task_dir(bases, task, split) is None:
                continue
            found_any = True
            frame = _per_video(root, bases, split, [task], True, "cropped_aligned", malformed)
            labelled = frame.drop(columns=["image", "subject", "split"]).notna().any(axis=1)
            counts[(split, f"{task} videos")] = (frame["subject"].nunique(), None)
            counts[(split, f"{task} frames")] = (int(labelled.sum()), None)
            if task == "expression":
                found = frame["expression"].value_counts()
                for code, cls in EXPR_MAP.items():
                    counts[(split, cls)] = (int(found.get(float(code), 0)), None)
            # one image per video: cropped_aligned legitimately lacks some frames
            firsts = frame["image"][labelled].groupby(frame["subject"][labelled]).first()
            if len(firsts) and not firsts.map(os.path.exists).any():
                problems.append(f"{NAME}: no image found for the {split} {task} frames; first "
                                f"looked for: {firsts.iloc[0]}")
        if _mtl_file(bases, split) is not None:
            found_any = True
            frame = _mtl(root, bases, split, list(TASK_DIRS), "cropped_aligned", None, malformed)
            counts[(f"mtl-{split}", TOTAL)] = (len(frame), PUBLISHED_COUNTS[(f"mtl-{split}", TOTAL)])
    if not found_any:
        expected = root / TASK_DIRS["expression"][0] / SPLIT_DIRS["train"][0]
        problems.append(f"{NAME}: expected file not found: {expected} (nor any other ABAW "
                        f"annotation folder or s-Aff-Wild2 file)")
    if malformed.first:
        problems.insert(0, malformed.first)
    return report(NAME, root, problems, counts)
