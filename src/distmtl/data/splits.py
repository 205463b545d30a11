"""A validation split carved from a training source, disjoint by subject (or another column).

``data.val: {from: disfa, fraction: 0.1, by: subject, seed: 0}`` holds out about ``fraction`` of
the source's subjects (scikit-learn's ``GroupShuffleSplit``: the fraction counts groups, not
rows) for validation and trains on the others; no subject is in both (checked).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from distmtl.data.loaders.base import LoadedSource
from distmtl.errors import DistmtlError

CARVE_KEYS = ("from", "fraction", "by", "seed", "name")


def is_carved(spec: Any) -> bool:
    return isinstance(spec, dict) and "from" in spec


def check_carve_spec(spec: dict, where: str) -> None:
    """One-line errors for a bad ``{from, fraction, by, seed, name}`` mapping (before any data loads)."""
    unknown = sorted(set(spec) - set(CARVE_KEYS))
    if unknown:
        raise DistmtlError(f"{where}.{unknown[0]}: unknown key; a split carved from a training source takes "
                           f"{', '.join(CARVE_KEYS)}")
    if not isinstance(spec["from"], str) or not spec["from"]:
        raise DistmtlError(f"{where}.from: expected the name of a training source, got {spec['from']!r}")
    fraction = spec.get("fraction", 0.1)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DistmtlError(f"{where}.fraction: expected a number between 0 and 1, got {fraction!r}")
    if not isinstance(spec.get("by", "subject"), str):
        raise DistmtlError(f"{where}.by: expected a column name, got {spec['by']!r}")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DistmtlError(f"{where}.seed: expected an integer, got {seed!r}")


def carve(loaded: LoadedSource, spec: dict, where: str) -> tuple[LoadedSource, LoadedSource]:
    """``(training part, validation part)`` of ``loaded``, disjoint by ``spec['by']``."""
    from sklearn.model_selection import GroupShuffleSplit

    by, fraction, seed = spec.get("by", "subject"), float(spec.get("fraction", 0.1)), int(spec.get("seed", 0))
    frame = loaded.frame
    if by not in frame.columns:
        raise DistmtlError(f"{where}.by: training source '{loaded.name}' has no column '{by}' "
                           f"(columns: {', '.join(map(str, frame.columns))})")
    groups = frame[by]
    if groups.isna().any():
        raise DistmtlError(f"{where}.by: {int(groups.isna().sum())} row(s) of '{loaded.name}' have no '{by}' "
                           "(a row without a group could land on either side)")
    groups = groups.astype(str)
    if groups.nunique() < 2:
        raise DistmtlError(f"{where}: '{loaded.name}' has {groups.nunique()} distinct '{by}'; "
                           "a split by it needs at least 2")
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train_rows, val_rows = next(splitter.split(frame, groups=groups))
    shared = set(groups.iloc[train_rows]) & set(groups.iloc[val_rows])
    if shared:
        raise DistmtlError(f"{where}: '{by}' {sorted(shared)[0]!r} is in both the training and the validation part")
    name = spec.get("name") or f"{loaded.name}_val"
    note = (f"{where}: {len(val_rows)} rows ({groups.iloc[val_rows].nunique()} of {groups.nunique()} '{by}') "
            f"of '{loaded.name}' held out for validation")
    train = replace(loaded, frame=frame.iloc[train_rows].reset_index(drop=True), notes=[*loaded.notes, note])
    val = replace(loaded, name=name, frame=frame.iloc[val_rows].reset_index(drop=True), notes=[note])
    return train, val
