"""Relatedness between a multi-class task A and a multi-label task B.

``R[k, j] = p(b_j = 1 | a = k)``: rows are A's classes, columns B's labels, values in [0, 1]. A class
prior ``pi`` over A's classes (uniform unless given or estimated) travels with the matrix; the
co-annotation and distribution-matching losses read both.

Built-in tables (``distmtl/relatedness/tables/*.csv``, rows and columns in the canonical orders of
``distmtl.tasks``):

- ``du2014``: Du, Tao & Martinez 2014, Table 1. Prototypical AUs weigh 1, observational AUs the
  fraction of subjects who showed them; Neutral is all zeros; AU11 is outside the 17-AU
  vocabulary and is dropped.
- ``du2014_compound``: the 13 compound expressions of the same paper, same columns and rules.
- ``emfacs``: EMFACS-style prototype sets, weight 1, no observational AUs. AU16 (in Disgust's
  set) is outside the vocabulary and is dropped. Contempt (12+14, one side) is left out because
  it is not in the canonical 7-class space; add a row in a copy of the file when a task has it.

Adding a built-in table takes one CSV file in ``distmtl/labels`` and one line in
``BUILTIN_TABLES``.

CSV format: the header row holds a corner cell (any text, ``class`` by convention) followed by
the label names; each following row holds a class name followed by one value per label. A last
column named ``_prior`` (see ``PRIOR_COLUMN``), when present, holds the class prior;
:meth:`Relatedness.to_csv` writes it only when the prior is not uniform.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from importlib import resources
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distmtl.errors import DistmtlError, close_matches
from distmtl.relatedness.estimate import (
    RelatednessComparison,
    alignment_indices,
    coactivation,
    compare_tables,
    count_cooccurrence,
    names_and_task,
    plot_tables,
    smoothed_estimate,
    write_atomically,
)

if TYPE_CHECKING:
    import pandas as pd

BUILTIN_TABLES: dict[str, str] = {
    "du2014": "du2014.csv",
    "du2014_compound": "du2014_compound.csv",
    "emfacs": "emfacs.csv",
}
PRIOR_COLUMN = "_prior"

__all__ = [
    "BUILTIN_TABLES",
    "PRIOR_COLUMN",
    "Relatedness",
    "RelatednessComparison",
    "list_builtin",
]


def list_builtin() -> list[str]:
    """Names accepted by :meth:`Relatedness.builtin`, sorted."""
    return sorted(BUILTIN_TABLES)


class Relatedness:
    """A validated relatedness matrix ``R[k, j] = p(label j | class k)`` with its class prior."""

    def __init__(
        self,
        matrix,
        classes: Sequence[str],
        labels: Sequence[str],
        prior=None,
        name: str | None = None,
        source: str | None = None,
    ):
        self.name = name
        self.source = None if source is None else str(source)
        where = self._describe()
        self.classes = _check_names(classes, "class", where)
        self.labels = _check_names(labels, "label", where)
        self.matrix = _check_matrix(matrix, self.classes, self.labels, where)
        self.prior = _check_prior(prior, self.classes, where)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_csv(cls, path, prior=None) -> Relatedness:
        """Read a table; ``prior``, when given, takes precedence over a ``_prior`` column."""
        path = Path(path)
        if not path.is_file():
            raise DistmtlError(f"relatedness file '{path}' not found")
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(line, row) for line, row in _numbered_rows(csv.reader(handle)) if row]
        if not rows:
            raise DistmtlError(f"{path}: empty file; expected a header row of label names")
        header_line, header = rows[0]
        labels = [cell.strip() for cell in header[1:]]
        file_prior = bool(labels) and labels[-1] == PRIOR_COLUMN
        if file_prior:
            labels = labels[:-1]
        if not labels:
            raise DistmtlError(f"{path}: line {header_line}: the header names no labels")
        _check_header(labels, path, header_line)

        classes: list[str] = []
        first_line: dict[str, int] = {}
        values = np.empty((len(rows) - 1, len(labels)))
        prior_values = np.empty(len(rows) - 1)
        for i, (line, row) in enumerate(rows[1:]):
            name = row[0].strip()
            at = f"{path}: line {line}"
            if not name:
                raise DistmtlError(f"{at}: empty class name in the first column")
            if name in first_line:
                raise DistmtlError(
                    f"{at}: duplicate class '{name}' (first on line {first_line[name]})"
                )
            first_line[name] = line
            classes.append(name)
            cells = row[1:]
            expected = len(labels) + bool(file_prior)
            if len(cells) != expected:
                raise DistmtlError(
                    f"{at}, class '{name}': {len(cells)} values, expected {expected}"
                    f" (one per label{' and the prior' if file_prior else ''})"
                )
            for j, label in enumerate(labels):
                values[i, j] = _parse_cell(cells[j], f"{at}, class '{name}', label '{label}'")
            if file_prior:
                prior_values[i] = _parse_number(cells[-1], f"{at}, class '{name}', prior")
        if not classes:
            raise DistmtlError(f"{path}: no class rows after the header")
        if prior is None and file_prior:
            prior = prior_values
        return cls(values, classes, labels, prior=prior, name=path.stem, source=str(path))

    def to_csv(self, path) -> None:
        """Write the table so that :meth:`from_csv` reads back exactly the same values."""
        path = Path(path)
        with_prior = not np.array_equal(
            self.prior, np.full(len(self.classes), 1.0 / len(self.classes))
        )

        def write(handle):
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["class", *self.labels, *([PRIOR_COLUMN] if with_prior else [])])
            for k, name in enumerate(self.classes):
                cells = [_format_value(v) for v in self.matrix[k]]
                if with_prior:
                    cells.append(_format_value(self.prior[k]))
                writer.writerow([name, *cells])

        write_atomically(path, write, text=True)

    @classmethod
    def builtin(cls, name: str) -> Relatedness:
        """One of the tables shipped in ``distmtl/labels`` (see :func:`list_builtin`)."""
        if name not in BUILTIN_TABLES:
            raise DistmtlError(
                f"unknown built-in relatedness table '{name}'{close_matches(name, BUILTIN_TABLES)}"
                f"; available: {', '.join(list_builtin())}"
            )
        resource = resources.files("distmtl.relatedness") / "tables" / BUILTIN_TABLES[name]
        with resources.as_file(resource) as path:
            table = cls.from_csv(path)
        table.name = name
        return table

    @classmethod
    def load(cls, spec) -> Relatedness:
        """A built-in name, a CSV path, or an existing :class:`Relatedness` (returned as is)."""
        if isinstance(spec, Relatedness):
            return spec
        text = str(spec)
        if text in BUILTIN_TABLES:
            return cls.builtin(text)
        if Path(text).is_file():
            return cls.from_csv(text)
        if text.lower().endswith(".csv") or os.sep in text or "/" in text:
            raise DistmtlError(f"relatedness file '{text}' not found")
        raise DistmtlError(
            f"unknown relatedness table '{text}'{close_matches(text, BUILTIN_TABLES)}"
            f"; expected a built-in name ({', '.join(list_builtin())}) or a CSV path"
        )

    @classmethod
    def estimate(
        cls, class_index, label_values, label_mask, classes, labels, alpha: float = 1.0
    ) -> Relatedness:
        """Estimate ``R`` from data annotated for both tasks.

        ``R[k, j] = (n(a=k, b_j=1) + alpha) / (n(a=k, b_j annotated) + 2 alpha)``, counting only
        samples with a class (``class_index >= 0``) and only their annotated labels; masked values
        are never read. The prior is the Laplace-smoothed class frequency,
        ``(n_k + alpha) / (n + K alpha)``, over the same samples: those with a class and at least
        one annotated label, so that prior and matrix describe one population.
        """
        classes = tuple(str(c) for c in classes)
        labels = tuple(str(x) for x in labels)
        counts = count_cooccurrence(class_index, label_values, label_mask, classes, labels, alpha)
        matrix, prior = smoothed_estimate(*counts, classes, labels, alpha)
        return cls(matrix, classes, labels, prior=prior, name="estimated")

    @classmethod
    def from_predictions(cls, class_probs, label_probs, classes, labels, name: str = "learned"):
        """A model's co-activation as a table, with how often each class was predicted.

        ``R[k, j]`` is the mean predicted probability of label j over the samples whose predicted
        class is k; the prior is the predicted-class frequency. Returns ``(table, counts)``.
        """
        means, counts = coactivation(class_probs, label_probs)
        return cls(means, classes, labels, prior=counts / counts.sum(), name=name), counts

    @classmethod
    def from_class_attributes(cls, matrix, classes, labels, scale: float = 1.0) -> Relatedness:
        """A class-attribute matrix divided by ``scale`` (CUB-200's continuous file: 100)."""
        if not (isinstance(scale, Real) and math.isfinite(scale) and scale > 0):
            raise DistmtlError(f"class attributes: scale must be a positive number, got {scale!r}")
        values = _as_float_matrix(matrix, classes, labels, "class attributes")
        return cls(values / float(scale), classes, labels, name="class_attributes")

    # ------------------------------------------------------------------ views

    def aligned(self, classes, labels, *, task_a: str = "A", task_b: str = "B") -> Relatedness:
        """The table with rows in ``classes`` order and columns in ``labels`` order.

        Every table class must be a class of task A and vice versa, and likewise for labels, so
        that a renamed or missing class is an error rather than a silently empty row. ``classes``
        and ``labels`` may also be :class:`distmtl.tasks.Task` objects.
        """
        classes, task_a = names_and_task(classes, task_a)
        labels, task_b = names_and_task(labels, task_b)
        rows = alignment_indices(self.classes, classes, "class", task_a, self._describe())
        cols = alignment_indices(self.labels, labels, "label", task_b, self._describe())
        return Relatedness(
            self.matrix[np.ix_(rows, cols)],
            classes,
            labels,
            prior=self.prior[rows],
            name=self.name,
            source=self.source,
        )

    def clipped(self, eps: float = 0.05) -> np.ndarray:
        """``clip(R, eps, 1 - eps)``: so that one contradicting label cannot zero a class."""
        if not 0 <= eps < 0.5:
            raise DistmtlError(f"{self._describe()}: clip eps must be in [0, 0.5), got {eps}")
        return np.clip(self.matrix, eps, 1.0 - eps)

    def compare(self, other: Relatedness, top: int = 10) -> RelatednessComparison:
        """Per-cell ``self - other``, with ``other`` reordered to this table's classes and labels."""
        theirs = other.aligned(
            self.classes, self.labels, task_a=self._short_name(), task_b=self._short_name()
        )
        return compare_tables(
            self.matrix,
            theirs.matrix,
            self.classes,
            self.labels,
            name=self._short_name(),
            other_name=other._short_name(),
            top=top,
        )

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(
            self.matrix.copy(), index=list(self.classes), columns=list(self.labels)
        )
        frame.index.name = "class"
        frame.columns.name = "label"
        return frame

    def plot(self, path, other: Relatedness | None = None, title=None, other_title=None) -> None:
        """Write a PNG heat map; with ``other``, the two tables side by side in this table's order."""
        panels = [(self.matrix, title or self._short_name())]
        if other is not None:
            theirs = other.aligned(
                self.classes, self.labels, task_a=self._short_name(), task_b=self._short_name()
            )
            panels.append((theirs.matrix, other_title or other._short_name()))
        write_atomically(
            Path(path), lambda handle: plot_tables(handle, panels, self.classes, self.labels)
        )

    # ------------------------------------------------------------------ misc

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def __repr__(self) -> str:
        return (
            f"Relatedness(name={self.name!r}, classes={len(self.classes)},"
            f" labels={len(self.labels)}, source={self.source!r})"
        )

    def _short_name(self) -> str:
        return self.name or (Path(self.source).stem if self.source else "relatedness")

    def _describe(self) -> str:
        text = f"relatedness '{self.name}'" if self.name else "relatedness table"
        return f"{text} ({self.source})" if self.source else text


# ---------------------------------------------------------------------- validation helpers


def _check_names(names, kind: str, where: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise DistmtlError(f"{where}: {kind} names must be a sequence of strings, not one string")
    names = tuple(names)
    if not names:
        raise DistmtlError(f"{where}: no {kind} names given")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise DistmtlError(f"{where}: {kind} {i} name {name!r} is not a string")
        if not name or name != name.strip():
            raise DistmtlError(f"{where}: {kind} {i} name {name!r} is empty or padded with spaces")
        if name in seen:
            raise DistmtlError(
                f"{where}: duplicate {kind} '{name}' (positions {seen[name]} and {i})"
            )
        seen[name] = i
    return names


def _check_header(labels: list[str], path: Path, line: int) -> None:
    seen: dict[str, int] = {}
    for j, label in enumerate(labels):
        column = j + 2  # 1-based, after the class-name column
        if not label:
            raise DistmtlError(f"{path}: line {line}, column {column}: empty label name")
        if label in seen:
            raise DistmtlError(
                f"{path}: line {line}: duplicate label '{label}' (columns {seen[label]} and {column})"
            )
        seen[label] = column


def _as_float_matrix(matrix, classes, labels, where: str) -> np.ndarray:
    """``matrix`` as float64, naming the first cell that is not a number."""
    try:
        return np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    cells = np.asarray(matrix, dtype=object)
    if cells.ndim == 2:
        for (k, j), value in np.ndenumerate(cells):
            try:
                float(value)
            except (TypeError, ValueError):
                row = classes[k] if k < len(classes) else f"row {k}"
                col = labels[j] if j < len(labels) else f"column {j}"
                raise DistmtlError(
                    f"{where}: class '{row}', label '{col}': {value!r} is not a number"
                ) from None
    raise DistmtlError(f"{where}: matrix is not a 2-D array of numbers")


def _check_matrix(matrix, classes, labels, where: str) -> np.ndarray:
    values = _as_float_matrix(matrix, classes, labels, where).copy()
    if values.shape != (len(classes), len(labels)):
        raise DistmtlError(
            f"{where}: matrix has shape {tuple(values.shape)}, expected ({len(classes)}, {len(labels)})"
            f" for {len(classes)} classes and {len(labels)} labels"
        )
    bad = np.argwhere(~((values >= 0) & (values <= 1)))  # also catches NaN
    if len(bad):
        k, j = bad[0]
        _check_value(values[k, j], f"{where}: class '{classes[k]}' (row {k}), label '{labels[j]}'")
    return values


def _check_value(value: float, where: str) -> float:
    if math.isnan(value):
        raise DistmtlError(f"{where}: value is NaN; every cell needs a value in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise DistmtlError(f"{where}: value {float(value)!r} is outside [0, 1]")
    return value


def _check_prior(prior, classes, where: str) -> np.ndarray:
    if prior is None:
        return np.full(len(classes), 1.0 / len(classes))
    try:
        values = np.asarray(prior, dtype=np.float64).copy()
    except (TypeError, ValueError):
        raise DistmtlError(f"{where}: prior is not a sequence of numbers") from None
    if values.shape != (len(classes),):
        raise DistmtlError(
            f"{where}: prior has shape {tuple(values.shape)}, expected one value per class"
            f" ({len(classes)})"
        )
    for k, value in enumerate(values):
        if not math.isfinite(value) or value < 0:
            raise DistmtlError(
                f"{where}: prior of class '{classes[k]}' is {float(value)!r}; it must be a finite number >= 0"
            )
    total = values.sum()
    if total <= 0:
        raise DistmtlError(
            f"{where}: prior sums to {float(total)!r}; at least one class needs weight > 0"
        )
    # A prior that already sums to 1 up to rounding is kept bit for bit (so CSV round trips are
    # exact); any other positive total is a set of weights and is renormalised.
    return values if math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-9) else values / total


def _parse_number(text: str, where: str) -> float:
    text = text.strip()
    if not text:
        raise DistmtlError(f"{where}: empty cell")
    try:
        return float(text)
    except ValueError:
        raise DistmtlError(f"{where}: '{text}' is not a number") from None


def _parse_cell(text: str, where: str) -> float:
    return _check_value(_parse_number(text, where), where)


def _numbered_rows(reader):
    """``(line number, row)`` pairs; the number is the line where the record starts."""
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _format_value(value: float) -> str:
    """Shortest text that reads back as the same float (``1`` rather than ``1.0``)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)
