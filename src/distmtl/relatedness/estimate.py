"""Array-level work behind :class:`distmtl.relatedness.Relatedness`.

Estimation from co-annotated data, row/column alignment, cell-by-cell comparison, heat-map
plotting and atomic file writes. Kept apart from the table class so that ``table.py`` holds
the table, its file format and its validation; everything here works on plain arrays and name
tuples.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import NamedTuple

import numpy as np

from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import Task

ESTIMATE = "relatedness estimate"


def _to_numpy(array) -> np.ndarray:
    """numpy view of an array-like, including torch tensors on any device."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def count_cooccurrence(
    class_index, label_values, label_mask, classes: Sequence[str], labels: Sequence[str], alpha
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts for the smoothed co-occurrence estimate.

    Returns ``positives[k, j] = n(a=k, b_j=1)``, ``annotated[k, j] = n(a=k, b_j annotated)`` and
    ``class_counts[k]``, the number of samples of class k with at least one annotated label.
    Samples with ``class_index == -1`` and masked labels are skipped; a masked value is never read,
    so it may hold any placeholder (0, NaN, ...).
    """
    if not (isinstance(alpha, Real) and math.isfinite(alpha) and alpha >= 0):
        raise DistmtlError(f"{ESTIMATE}: alpha must be a finite number >= 0, got {alpha!r}")
    num_classes, num_labels = len(classes), len(labels)
    index = _to_numpy(class_index)
    values = _to_numpy(label_values).astype(np.float64, copy=False)
    mask = _to_numpy(label_mask)
    if index.ndim != 1:
        raise DistmtlError(f"{ESTIMATE}: class_index has shape {index.shape}, expected [N]")
    n = index.shape[0]
    for what, array in (("label_values", values), ("label_mask", mask)):
        if array.shape != (n, num_labels):
            raise DistmtlError(
                f"{ESTIMATE}: {what} has shape {tuple(array.shape)}, expected ({n}, {num_labels})"
                f" for {n} samples and {num_labels} labels"
            )
    if index.dtype.kind not in "iu":
        if index.dtype.kind != "f" or not np.all(np.isfinite(index) & (index == np.round(index))):
            raise DistmtlError(
                f"{ESTIMATE}: class_index must hold integers, got dtype {index.dtype}"
            )
        index = index.astype(np.int64)
    out_of_range = np.flatnonzero((index < -1) | (index >= num_classes))
    if len(out_of_range):
        i = out_of_range[0]
        raise DistmtlError(
            f"{ESTIMATE}: class_index of sample {i} is {index[i]}; expected -1 (no class) or"
            f" 0..{num_classes - 1}"
        )
    if mask.dtype != np.bool_:
        if not np.all((mask == 0) | (mask == 1)):
            raise DistmtlError(f"{ESTIMATE}: label_mask must be boolean (or 0/1)")
        mask = mask.astype(bool)

    used = index >= 0
    mask = mask & used[:, None]
    bad = np.argwhere(mask & ~((values == 0) | (values == 1)))
    if len(bad):
        i, j = bad[0]
        raise DistmtlError(
            f"{ESTIMATE}: label_values of sample {i}, label '{labels[j]}' is {float(values[i, j])!r};"
            " annotated labels must be 0 or 1"
        )
    # per-class sums without an [N, K] one-hot matrix (K can be thousands of identities)
    rows = np.flatnonzero(used)
    positives = np.zeros((num_classes, num_labels))
    annotated = np.zeros((num_classes, num_labels))
    np.add.at(positives, index[rows], np.where(mask, values, 0.0)[rows])
    np.add.at(annotated, index[rows], mask[rows].astype(np.float64))
    labelled = rows[mask[rows].any(axis=1)]
    class_counts = np.bincount(index[labelled], minlength=num_classes).astype(np.float64)
    if class_counts.sum() == 0:
        raise DistmtlError(f"{ESTIMATE}: no sample has both a class and an annotated label")
    return positives, annotated, class_counts


def smoothed_estimate(positives, annotated, class_counts, classes, labels, alpha):
    """``(R, prior)`` from :func:`count_cooccurrence`'s counts with additive smoothing ``alpha``."""
    if alpha == 0:
        empty = np.argwhere(annotated == 0)
        if len(empty):
            k, j = empty[0]
            raise DistmtlError(
                f"{ESTIMATE}: no sample of class '{classes[k]}' annotates label '{labels[j]}';"
                " use alpha > 0 to smooth empty cells"
            )
    matrix = (positives + alpha) / (annotated + 2 * alpha)
    prior = (class_counts + alpha) / (class_counts.sum() + len(classes) * alpha)
    return matrix, prior


def coactivation(class_probs, label_probs) -> tuple[np.ndarray, np.ndarray]:
    """Mean label probability per predicted class ``[K, J]`` and how often each class is predicted.

    ``class_probs`` ``[N, K]`` (probabilities or logits: only the argmax is used) and
    ``label_probs`` ``[N, J]`` probabilities in [0, 1]. A class never predicted has a zero row.
    """
    scores, probs = _to_numpy(class_probs), _to_numpy(label_probs).astype(np.float64)
    if scores.ndim != 2 or probs.ndim != 2 or len(scores) != len(probs):
        raise DistmtlError(f"co-activation: class scores {scores.shape} and label probabilities "
                           f"{probs.shape} must be [N, K] and [N, J]")
    predicted = scores.argmax(axis=1)
    counts = np.bincount(predicted, minlength=scores.shape[1]).astype(np.float64)
    sums = np.zeros((scores.shape[1], probs.shape[1]))
    np.add.at(sums, predicted, probs)
    return np.clip(sums / np.maximum(counts, 1)[:, None], 0.0, 1.0), counts


class CellDifference(NamedTuple):
    class_name: str
    label: str
    value: float
    other_value: float
    difference: float  # value - other_value


@dataclass
class RelatednessComparison:
    """Cell-by-cell comparison of two tables on the same classes and labels."""

    name: str
    other_name: str
    classes: tuple[str, ...]
    labels: tuple[str, ...]
    values: np.ndarray
    other_values: np.ndarray
    top: list[CellDifference] = field(default_factory=list)

    @property
    def difference(self) -> np.ndarray:
        """``values - other_values``, shape ``[K, J]``."""
        return self.values - self.other_values

    @property
    def max_abs(self) -> float:
        return float(np.abs(self.difference).max())

    @property
    def mean_abs(self) -> float:
        return float(np.abs(self.difference).mean())

    def largest(self, n: int = 10) -> list[CellDifference]:
        """The ``n`` cells with the largest absolute difference, largest first (ties: table order)."""
        flat = np.abs(self.difference).ravel()
        order = np.argsort(-flat, kind="stable")[:n]
        num_labels = len(self.labels)
        cells = []
        for position in order:
            k, j = divmod(int(position), num_labels)
            cells.append(
                CellDifference(
                    self.classes[k],
                    self.labels[j],
                    float(self.values[k, j]),
                    float(self.other_values[k, j]),
                    float(self.values[k, j] - self.other_values[k, j]),
                )
            )
        return cells

    def __str__(self) -> str:
        lines = [
            (
                f"relatedness '{self.name}' vs '{self.other_name}'"
                f" ({len(self.classes)} classes x {len(self.labels)} labels):"
                f" max |diff| {self.max_abs:.3f}, mean |diff| {self.mean_abs:.3f}"
            )
        ]
        if self.top:
            width_class = max(len("class"), *(len(c.class_name) for c in self.top))
            width_label = max(len("label"), *(len(c.label) for c in self.top))
            lines.append(f"largest differences ({self.name} - {self.other_name}):")
            lines.append(
                f"  {'class':<{width_class}}  {'label':<{width_label}}"
                f"  {self.name[:8]:>8}  {self.other_name[:8]:>8}  {'diff':>7}"
            )
            for cell in self.top:
                lines.append(
                    f"  {cell.class_name:<{width_class}}  {cell.label:<{width_label}}"
                    f"  {cell.value:8.3f}  {cell.other_value:8.3f}  {cell.difference:+7.3f}"
                )
        return "\n".join(lines)


def compare_tables(values, other_values, classes, labels, *, name, other_name, top=10):
    comparison = RelatednessComparison(
        name=name,
        other_name=other_name,
        classes=tuple(classes),
        labels=tuple(labels),
        values=np.array(values, dtype=np.float64),
        other_values=np.array(other_values, dtype=np.float64),
    )
    comparison.top = comparison.largest(top)
    return comparison


# Above these sizes (e.g. CUB's 200 x 312) cell numbers and tick names would be unreadable.
MAX_ANNOTATED_CELLS = 600
MAX_TICK_NAMES = 80


def plot_tables(handle, panels, classes, labels) -> None:
    """Write ``panels`` (``(matrix, title)`` pairs, same shape) as one PNG heat map to ``handle``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes, num_labels = len(classes), len(labels)
    cell = 0.42 if num_classes * num_labels <= MAX_ANNOTATED_CELLS else 0.08
    longest_class = max(len(c) for c in classes) if num_classes <= MAX_TICK_NAMES else 0
    width = len(panels) * (num_labels * cell + 0.09 * longest_class + 1.2) + 1.2
    height = num_classes * cell + 2.0
    figure = Figure(figsize=(max(width, 4.0), max(height, 3.0)), layout="constrained")
    FigureCanvasAgg(figure)  # Agg rendering without touching pyplot's global state
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (matrix, title) in zip(axes, panels):
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues", aspect="auto")
        ax.set_title(title)
        if num_labels <= MAX_TICK_NAMES:
            ax.set_xticks(range(num_labels), labels, rotation=90)
        if num_classes <= MAX_TICK_NAMES:
            ax.set_yticks(range(num_classes), classes)
        if num_classes * num_labels <= MAX_ANNOTATED_CELLS:
            for (k, j), value in np.ndenumerate(matrix):
                if value > 0:
                    ax.text(
                        j,
                        k,
                        f"{value:.2f}".lstrip("0") if value < 1 else "1",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value > 0.55 else "black",
                    )
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="p(label | class)")
    figure.savefig(handle, format="png", dpi=100)


def write_atomically(path: Path, write, text: bool = False) -> None:
    """Write through a temporary file in the target folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mode = "w" if text else "wb"
        kwargs = {"newline": "", "encoding": "utf-8"} if text else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            write(handle)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def names_and_task(names, task_name: str) -> tuple[tuple[str, ...], str]:
    """Names from a sequence or a :class:`Task`; a Task's own name replaces the default A/B."""
    if isinstance(names, Task):
        return names.labels, (names.name if task_name in ("A", "B") else task_name)
    return tuple(str(x) for x in names), task_name


def alignment_indices(
    table: tuple[str, ...], task: tuple[str, ...], kind: str, task_name: str, where: str
):
    """Indices into ``table`` in ``task`` order; both must hold the same names."""
    task_set = set(task)
    for name in table:
        if name not in task_set:
            raise DistmtlError(
                f"{where}: {kind} '{name}' is not a {kind} of task '{task_name}'"
                f"{close_matches(name, task)}"
            )
    positions = {name: i for i, name in enumerate(table)}
    for name in task:
        if name not in positions:
            raise DistmtlError(
                f"task '{task_name}': {kind} '{name}' has no "
                f"{'row' if kind == 'class' else 'column'} in {where}{close_matches(name, table)}"
            )
    if len(task) != len(task_set):
        duplicate = next(name for name in task if list(task).count(name) > 1)
        raise DistmtlError(f"task '{task_name}': duplicate {kind} '{duplicate}'")
    return [positions[name] for name in task]
