"""The contract every named dataset loader follows.

A loader module (one file per dataset in this package, plus one line in ``REGISTRY``) defines:

- ``DESCRIPTION: str`` one line;
- ``TASKS: dict[str, dict]`` the canonical tasks it can provide, as task specs
  (e.g. ``{"expression": {"kind": "multiclass", "labels": [...]}}``);
- ``load(root, split="train", **options) -> LoadedSource``;
- ``check(root) -> CheckReport`` (verifies the expected files, counts per split/class);
- optionally ``relatedness(root, **options) -> distmtl.relatedness.Relatedness``.

``LoadedSource.frame`` is a pandas DataFrame in the *canonical schema*, the same one the generic
CSV reader produces:

- ``image``: absolute path of the image file, or, when ``images`` is given (datasets stored as
  arrays: FER2013 pixels, AffectNet npy, Fashion-MNIST IDX), the integer row index into ``images``;
- a multiclass task: one column named after the task holding canonical class names, NaN/None when
  not annotated; a soft distribution may instead be given as columns ``"<task>:<class>"`` (floats);
- a multilabel task: one float column per label (``AU01`` ...) holding 1.0 / 0.0 / NaN (not
  annotated). A label the dataset does not code either has no column or is all NaN;
- a regression task: one float column per dimension (``valence``, ``arousal``), NaN when missing;
- an identity task: a column named after the task holding the identity as a string;
- optional ``subject``, ``split``, ``fold`` columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.errors import DistmtlError


@dataclass
class LoadedSource:
    name: str
    frame: pd.DataFrame
    images: np.ndarray | None = None  # [N, H, W] or [N, H, W, C] uint8 when not file-backed
    skipped: int = 0  # rows dropped because the user asked to skip malformed ones (counted, logged)
    notes: list[str] = field(default_factory=list)
    shards: str | None = None  # a packed source's folder: ``image`` holds record indices into it


@dataclass
class CheckReport:
    name: str
    root: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    # (split, class) -> (found, published or None)
    counts: dict[tuple[str, str], tuple[int, int | None]] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"{self.name} at {self.root}: {'OK' if self.ok else 'PROBLEMS'}"]
        if self.counts:
            lines.append(f"  {'split':<12} {'class':<24} {'found':>8} {'published':>10}")
            for (split, cls), (found, published) in self.counts.items():
                pub = "-" if published is None else str(published)
                lines.append(f"  {split:<12} {cls:<24} {found:>8} {pub:>10}")
        lines.extend(f"  problem: {p}" for p in self.problems)
        return "\n".join(lines)


def require_file(path: Path, dataset: str) -> Path:
    """Fail with a message naming the file a loader looked for."""
    if not Path(path).exists():
        raise DistmtlError(f"{dataset}: expected file not found: {path} (is --root the dataset folder?)")
    return Path(path)
