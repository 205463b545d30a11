"""Helpers shared by the named loaders (malformed-line handling, split checks, count tables).

Kept private: the loader contract itself lives in ``base.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from distmtl.data.loaders.base import CheckReport
from distmtl.errors import DistmtlError, close_matches

TOTAL = "(all)"  # the class key under which CheckReport counts hold a split's total


def absolute_root(root: str | os.PathLike) -> Path:
    """The dataset root as an absolute, normalised path (symlinks kept)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(root))))


def check_split(dataset: str, split: str, splits: Sequence[str]) -> None:
    """Accept one of the dataset's splits or "all"; anything else is a user error."""
    allowed = (*splits, "all")
    if split not in allowed:
        raise DistmtlError(
            f"{dataset}: unknown split '{split}'{close_matches(split, allowed)}; "
            f"available: {', '.join(allowed)}"
        )


def first_existing(candidates: Iterable[Path]) -> Path | None:
    for path in candidates:
        if path.exists():
            return path
    return None


class Malformed:
    """Policy for malformed label lines: raise at once, or skip them and count them."""

    def __init__(self, dataset: str, skip: bool):
        self.dataset = dataset
        self.skip = skip
        self.count = 0
        self.first: str | None = None

    def __call__(self, path: os.PathLike | str, line: int | None, value: object, why: str) -> None:
        where = f"{path}, line {line}" if line is not None else f"{path}"
        message = f"{self.dataset}: {where}: {why}: {str(value)[:80]!r}"
        if not self.skip:
            raise DistmtlError(message)
        self.count += 1
        if self.first is None:
            self.first = message

    def notes(self) -> list[str]:
        if not self.count:
            return []
        return [f"skipped {self.count} malformed label line(s) (skip_malformed=True); first: "
                + str(self.first)]


def dropped_note(dataset: str, dropped: Mapping[str, int], total: int,
                 unit: str = "rows") -> list[str]:
    """One note line for rows dropped by design (missing codes, excluded classes)."""
    kept = {reason: n for reason, n in dropped.items() if n}
    if not kept:
        return []
    detail = ", ".join(f"{reason} {n}" for reason, n in kept.items())
    return [f"{dataset}: dropped {sum(kept.values())} of {total} {unit} ({detail})"]


def missing_files(paths: Iterable[str]) -> list[str]:
    """A problem line naming the first missing file and how many are missing, or nothing."""
    first, count = None, 0
    for path in paths:
        if not os.path.exists(path):
            count += 1
            if first is None:
                first = path
    return [f"{count} image file(s) missing; first: {first}"] if count else []


def class_counts(
    frame: pd.DataFrame,
    column: str,
    classes: Sequence[str],
    splits: Sequence[str],
    published: Mapping[tuple[str, str], int | None],
) -> dict[tuple[str, str], tuple[int, int | None]]:
    """(split, class) -> (found, published), with each split's total under ``TOTAL``."""
    counts: dict[tuple[str, str], tuple[int, int | None]] = {}
    for split in splits:
        part = frame[frame["split"] == split] if "split" in frame.columns else frame
        counts[(split, TOTAL)] = (len(part), published.get((split, TOTAL)))
        found = part[column].value_counts() if column in part.columns else pd.Series(dtype=int)
        for cls in classes:
            counts[(split, cls)] = (int(found.get(cls, 0)), published.get((split, cls)))
    return counts


def report(
    name: str,
    root: Path,
    problems: list[str],
    counts: dict[tuple[str, str], tuple[int, int | None]] | None = None,
) -> CheckReport:
    return CheckReport(name=name, root=str(root), ok=not problems, problems=list(problems),
                       counts=dict(counts or {}))
