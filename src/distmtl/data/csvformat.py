"""The generic CSV format and the one encoder every source (CSV or named loader) goes through.

One row per image. ``image`` holds a path relative to the CSV file. A multiclass task has one column
named after the task holding the class NAME; a multilabel task one column per label holding 1 or 0;
a regression task one float column per dimension; an identity task one column holding the
identity. An empty cell (or -1 for a binary label) means "not annotated". Optional columns:
``subject``, ``split``. Every row is validated before anything trains: bad rows produce one error
that names the file, line, column and value of the first few and the count, or, when the user asks
for it, are skipped and counted.

Image files are checked up front as ``check_images`` says: ``exists`` (the default, also ``true``:
the file exists and is not empty; one ``stat`` per row, run on a thread pool), ``decode`` (every image is decoded
once, which also finds truncated and non-image files; costs a full read of the dataset) or ``none``
(also ``false``). A file that passes the check but cannot be decoded later fails at load time with a
one-line error naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders.base import LoadedSource
from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import Task

log = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 3
BINARY_MISSING = {"", "-1", "-1.0", "nan"}
IMAGE_CHECKS = ("exists", "decode", "none")


def image_check_mode(value, where: str = "check_images") -> str:
    """Normalise a ``check_images`` setting: true/exists, decode, false/none."""
    if value is None or value is True:
        return "exists"
    if value is False:
        return "none"
    text = str(value).strip().lower()
    if text in IMAGE_CHECKS:
        return text
    raise DistmtlError(f"{where}: expected one of {', '.join(IMAGE_CHECKS)} (or true/false), got {value!r}"
                       f"{close_matches(text, IMAGE_CHECKS)}")


@dataclass
class EncodedSource:
    """A source's labels as arrays in the batch layout of :mod:`distmtl.tasks`.

    ``groups[t]`` (identity tasks only): int64 ``[N]``, one id per distinct identity of this
    source, -1 where the identity is missing. Unlike ``targets[t]`` it covers identities outside
    the training classes too, so held-out people can be paired for verification.
    """

    name: str
    images: np.ndarray  # paths (str) or integer indices into ``pixels``
    targets: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    pixels: np.ndarray | None = None
    subjects: np.ndarray | None = None
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    shards: str | None = None  # a packed source's folder (distmtl.data.shards): images are record indices

    def __len__(self) -> int:
        return len(self.images)

    @property
    def annotated_tasks(self) -> list[str]:
        return [t for t, m in self.masks.items() if m.any()]

    def label_counts(self) -> dict[str, int]:
        """Annotated samples per task (a multilabel sample counts when any label is annotated)."""
        return {t: int(m.reshape(len(m), -1).any(axis=1).sum()) for t, m in self.masks.items()}


def cache_images(source: EncodedSource, size: int, channels: int, progress: bool = False,
                 interpolation: str = "bilinear") -> EncodedSource:
    """Decode every image once, resized to ``size``, into one uint8 array held in memory.

    For datasets that fit in RAM (SynthFACS, Fashion-MNIST, small studies) this removes PNG decoding
    from every epoch; large datasets keep decoding lazily in the DataLoader workers.
    """
    if source.pixels is not None:
        return source
    from PIL import Image
    from tqdm import tqdm

    from distmtl.data.transforms import load_image

    shape = (len(source), size, size) if channels == 1 else (len(source), size, size, 3)
    pixels = np.empty(shape, dtype=np.uint8)
    reader = None
    if source.shards:
        from distmtl.data.shards import ShardReader

        reader = ShardReader(source.shards)
    for i, path in enumerate(tqdm(source.images, desc=f"caching {source.name}", unit="img",
                                  disable=not progress, leave=False)):
        img = load_image(reader[int(path)] if reader is not None else path, channels)
        if img.size != (size, size):
            img = img.resize((size, size), getattr(Image.Resampling, interpolation.upper()))
        pixels[i] = np.asarray(img)
    return dataclasses.replace(source, images=np.arange(len(source)), pixels=pixels,
                               notes=list(source.notes), shards=None)


def task_columns(task: Task) -> list[str]:
    """The CSV columns that carry a task's labels."""
    if task.kind in ("multiclass", "identity"):
        return [task.name]
    return list(task.labels)


def soft_columns(task: Task) -> list[str]:
    """Columns ``<task>:<class>`` that give a multiclass task a soft class distribution."""
    return [f"{task.name}:{c}" for c in task.labels] if task.kind == "multiclass" else []


def read_csv_source(
    path: str | Path,
    tasks: Mapping[str, Task],
    *,
    name: str | None = None,
    rename: Mapping[str, str] | None = None,
    skip_bad_rows: bool = False,
    check_images: bool | str = True,
) -> LoadedSource:
    """Read and validate a CSV in the generic format; returns the canonical frame.

    ``rename`` maps CSV column names to the names the tasks use (e.g. ``{"emotion": "expression"}``).
    ``check_images``: ``exists`` (or true), ``decode`` or ``none`` (or false); see the module doc.
    """
    check = image_check_mode(check_images)
    path = Path(path)
    if not path.is_file():
        raise DistmtlError(f"{path}: CSV file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DistmtlError(f"{path}: the CSV file is empty (expected a header with an 'image' column)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DistmtlError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    frame.columns = [c.strip() for c in frame.columns]
    _check_header(path, tasks, rename)
    if rename:
        frame = frame.rename(columns=dict(rename))
    if "image" not in frame.columns:
        raise DistmtlError(
            f"{path}: no 'image' column (columns: {', '.join(frame.columns[:8])}"
            f"{close_matches('image', frame.columns)})"
        )
    if len(frame) == 0:
        raise DistmtlError(f"{path}: the CSV has a header but no rows")

    annotated = [t.name for t in tasks.values()
                 if any(c in frame.columns for c in task_columns(t) + soft_columns(t))]
    if not annotated:
        raise DistmtlError(
            f"{path}: annotates none of the configured tasks ({', '.join(tasks)}); "
            f"its columns are {', '.join(frame.columns[:10])}"
        )

    bad = np.zeros(len(frame), dtype=bool)
    problems: list[str] = []

    def flag(rows: np.ndarray, column: str, values, why: str) -> None:
        for row, value in zip(rows, values):
            if not bad[row]:
                problems.append(f"line {row + 2} column '{column}' value '{value}' ({why})")
            bad[row] = True

    out = pd.DataFrame(index=frame.index)
    base = path.parent
    image_rel = frame["image"].str.strip()
    empty = np.flatnonzero((image_rel == "").to_numpy())
    flag(empty, "image", ["" for _ in empty], "empty image path")
    # the CSV's folder is resolved once and rows joined lexically: a Path.resolve() per row made
    # up 83% of loading a 1,000,000-row index (benchmarks/scaling.py)
    root = str(base.resolve())
    out["image"] = [os.path.normpath(os.path.join(root, p)) if p else "" for p in image_rel]
    if check != "none":
        rel_values = image_rel.to_numpy()
        for row, why in _image_problems(out["image"].to_numpy(), bad, decode=check == "decode"):
            flag(np.array([row]), "image", [rel_values[row]], why)

    for task in tasks.values():
        if task.kind in ("multiclass", "identity") and task.name in frame.columns:
            values = frame[task.name].str.strip()
            if task.kind == "multiclass":
                ok = values.isin(task.labels) | (values == "")
                rows = np.flatnonzero(~ok.to_numpy())
                for row in rows:
                    value = values.iat[row]
                    flag(np.array([row]), task.name, [value],
                         f"unknown class of task '{task.name}'{close_matches(value, task.labels)}")
            out[task.name] = values.where(values != "", None)
        elif task.kind == "multiclass":
            soft = soft_columns(task)
            if any(c in frame.columns for c in soft):
                for col in soft:
                    col_values = frame[col] if col in frame.columns else pd.Series([""] * len(frame))
                    out[col] = _floats(col_values, col, flag)
        elif task.kind == "multilabel":
            for label in task.labels:
                if label in frame.columns:
                    out[label] = _binary(frame[label], label, flag)
        elif task.kind == "regression":
            for dim in task.labels:
                if dim in frame.columns:
                    out[dim] = _floats(frame[dim], dim, flag)
    for col in ("subject", "split", "fold"):
        if col in frame.columns:
            out[col] = frame[col]

    n_bad = int(bad.sum())
    if n_bad and not skip_bad_rows:
        listed = "; ".join(problems[:MAX_LISTED_ERRORS])
        more = f" and {n_bad - MAX_LISTED_ERRORS} more" if n_bad > MAX_LISTED_ERRORS else ""
        raise DistmtlError(
            f"{path}: {n_bad} bad row{'s' if n_bad > 1 else ''}: {listed}{more}"
            " (fix them, or set skip_bad_rows: true to skip and count them)"
        )
    notes = []
    if n_bad:
        out = out.loc[~bad].reset_index(drop=True)
        notes.append(f"{path}: skipped {n_bad} bad rows (first: {problems[0]})")
        log.warning(notes[-1])
    if len(out) == 0:
        raise DistmtlError(f"{path}: no valid rows left after skipping {n_bad} bad rows")
    return LoadedSource(name=name or path.stem, frame=out, skipped=n_bad, notes=notes)


OPTIONAL_COLUMNS = ("image", "subject", "split", "fold")


def _check_header(path: Path, tasks: Mapping[str, Task], rename: Mapping[str, str] | None) -> None:
    """A column given twice, or in another case than a task's label, is an error (either would
    drop labels without a word); columns that no configured task reads get a warning naming them."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        header = [c.strip() for c in next(csv.reader(handle), [])]
    seen: dict[str, int] = {}
    for i, column in enumerate(header, 1):
        if column in seen:
            raise DistmtlError(f"{path}: line 1: column '{column}' is given twice (columns {seen[column]} "
                               f"and {i}); only one would be read")
        seen[column] = i
    known = set(OPTIONAL_COLUMNS)
    for task in tasks.values():
        known.update(task_columns(task) + soft_columns(task))
    by_lower = {k.lower(): k for k in known}
    ignored = []
    for column in header:
        name = (rename or {}).get(column, column)
        if name in known:
            continue
        if name.lower() in by_lower:
            raise DistmtlError(f"{path}: line 1: column '{column}' is not '{by_lower[name.lower()]}' "
                               f"(column names are case-sensitive; rename the column)")
        ignored.append(column)
    if ignored:
        log.warning("%s: ignored %d column%s that no configured task reads: %s", path, len(ignored),
                    "s" if len(ignored) > 1 else "", ", ".join(f"'{c}'" for c in ignored))


STAT_CHUNK = 2048
STAT_THREADS = 16


def _image_problems(images: np.ndarray, bad: np.ndarray, decode: bool) -> list[tuple[int, str]]:
    """``(row, reason)`` for every image that is missing, empty or (with ``decode``) undecodable.

    The stats run on a thread pool, in chunks: on network storage one ``stat`` is a round trip,
    so a million rows checked one after another take minutes; ``os.stat`` releases the GIL.
    """
    from concurrent.futures import ThreadPoolExecutor

    rows = np.flatnonzero(~bad)
    chunks = [rows[i: i + STAT_CHUNK] for i in range(0, len(rows), STAT_CHUNK)]
    problems: list[tuple[int, str]] = []
    todo: list[int] = []
    threads = min(STAT_THREADS, max(1, len(chunks)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for found, readable in pool.map(lambda chunk: _stat_chunk(images, chunk), chunks):
            problems.extend(found)
            todo.extend(readable)
    if decode and todo:
        from distmtl.data.transforms import image_problem

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for row, why in zip(todo, pool.map(image_problem, images[todo])):
                if why is not None:
                    problems.append((row, why))
    problems.sort()
    return problems


def _stat_chunk(images: np.ndarray, rows: np.ndarray) -> tuple[list[tuple[int, str]], list[int]]:
    problems, readable = [], []
    for row in rows.tolist():
        try:
            info = os.stat(images[row])
        except OSError:
            problems.append((row, "image file not found"))
            continue
        if not stat.S_ISREG(info.st_mode):
            problems.append((row, "not a file"))
        elif info.st_size == 0:
            problems.append((row, "empty image file (0 bytes)"))
        else:
            readable.append(row)
    return problems, readable


def _binary(values: pd.Series, column: str, flag) -> pd.Series:
    text = values.str.strip().str.lower()
    result = pd.Series(np.nan, index=values.index)
    result[text.isin(["1", "1.0"])] = 1.0
    result[text.isin(["0", "0.0"])] = 0.0
    invalid = ~(text.isin(["1", "1.0", "0", "0.0"]) | text.isin(BINARY_MISSING))
    rows = np.flatnonzero(invalid.to_numpy())
    flag(rows, column, values.to_numpy()[rows], "expected 1, 0, -1 or empty")
    return result


def _floats(values: pd.Series, column: str, flag) -> pd.Series:
    text = values.str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    invalid = numbers.isna() & (text != "") & (text.str.lower() != "nan")
    invalid |= np.isinf(numbers.fillna(0))
    rows = np.flatnonzero(invalid.to_numpy())
    flag(rows, column, values.to_numpy()[rows], "not a finite number")
    return numbers.astype(float)


def encode(loaded: LoadedSource, tasks: Mapping[str, Task]) -> EncodedSource:
    """Turn a canonical frame into target and mask arrays for every configured task."""
    frame = loaded.frame
    n = len(frame)
    targets: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    groups: dict[str, np.ndarray] = {}
    for task in tasks.values():
        if task.kind == "multiclass":
            target = np.zeros((n, task.num_outputs), dtype=np.float32)
            mask = np.zeros(n, dtype=bool)
            soft_cols = soft_columns(task)
            if task.name in frame.columns:
                lookup = {c: i for i, c in enumerate(task.labels)}
                names = frame[task.name].to_numpy()
                present = pd.notna(names)
                unknown = {v for v in names[present] if v not in lookup}
                if unknown:
                    bad = sorted(map(str, unknown))[0]
                    raise DistmtlError(f"source '{loaded.name}': column '{task.name}' has class '{bad}' "
                                       f"that task '{task.name}' lacks{close_matches(bad, task.labels)}")
                idx = np.array([lookup[v] for v in names[present]], dtype=np.int64)
                target[np.flatnonzero(present), idx] = 1.0
                mask |= present
            elif any(c in frame.columns for c in soft_cols):
                soft = np.stack([frame[c].to_numpy(dtype=float) if c in frame.columns
                                 else np.full(n, np.nan) for c in soft_cols], axis=1)
                total = np.nansum(soft, axis=1)
                ok = np.isfinite(soft).any(axis=1) & (total > 0)
                target[ok] = (np.nan_to_num(soft[ok]) / total[ok, None]).astype(np.float32)
                mask |= ok
        elif task.kind == "identity":
            target = np.zeros(n, dtype=np.int64)
            mask = np.zeros(n, dtype=bool)
            groups[task.name] = identity_groups(frame[task.name] if task.name in frame.columns else None, n)
            if task.name in frame.columns:
                lookup = {c: i for i, c in enumerate(task.labels)}
                unseen = 0
                for row, value in enumerate(identity_values(frame[task.name])):
                    if value in lookup:
                        target[row] = lookup[value]
                        mask[row] = True
                    elif value is not None:
                        unseen += 1
                if unseen:  # held-out identities: kept for verification, outside the classifier
                    loaded.notes.append(f"source '{loaded.name}': {unseen} rows have identities outside "
                                        f"task '{task.name}' (no classification target; used for verification)")
        else:  # multilabel / regression: one float column per label or dimension
            target = np.zeros((n, task.num_outputs), dtype=np.float32)
            mask = np.zeros((n, task.num_outputs), dtype=bool)
            for j, label in enumerate(task.labels):
                if label in frame.columns:
                    col = frame[label].to_numpy(dtype=float)
                    ok = np.isfinite(col)
                    target[ok, j] = col[ok]
                    mask[:, j] = ok
        targets[task.name] = target
        masks[task.name] = mask
    subjects = frame["subject"].to_numpy().astype(str) if "subject" in frame.columns else None
    return EncodedSource(
        name=loaded.name,
        images=frame["image"].to_numpy(),
        targets=targets,
        masks=masks,
        pixels=loaded.images,
        subjects=subjects,
        skipped=loaded.skipped,
        notes=list(loaded.notes),
        groups=groups,
        shards=loaded.shards,
    )


def identity_values(column: pd.Series) -> np.ndarray:
    """The identities of a column as strings, None where missing (NaN, None or empty)."""
    values = column.to_numpy(dtype=object)
    return np.array([None if pd.isna(v) or str(v).strip() == "" else str(v).strip() for v in values],
                    dtype=object)


def identity_groups(column: pd.Series | None, n: int) -> np.ndarray:
    """Group id per row (index into the sorted distinct identities of the column), -1 where missing."""
    out = np.full(n, -1, dtype=np.int64)
    if column is None:
        return out
    values = identity_values(column)
    present = np.array([v is not None for v in values], dtype=bool)
    if present.any():
        _, inverse = np.unique(values[present].astype(str), return_inverse=True)
        out[present] = inverse
    return out
