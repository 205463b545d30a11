"""Typed task specifications and the batch layout they imply.

Batch layout (what every data source yields and every loss consumes), per task ``t``:

- multiclass: ``targets[t]`` float ``[B, K]`` class-probability rows (one-hot for hard labels),
  ``masks[t]`` bool ``[B]``.
- multilabel: ``targets[t]`` float ``[B, J]`` in {0, 1}, ``masks[t]`` bool ``[B, J]`` (per label).
- regression: ``targets[t]`` float ``[B, D]``, ``masks[t]`` bool ``[B, D]``.
- identity: ``targets[t]`` long ``[B]`` identity index, ``masks[t]`` bool ``[B]``.

A missing label is masked; its target value is a placeholder (0) that no loss reads.

An identity task's labels may come from the data: ``labels: from_data`` (or no labels) in a
config means the sorted distinct identities of the training sources
(:func:`distmtl.training.experiment.build_experiment` resolves them before anything is encoded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distmtl.errors import DistmtlError, close_matches

TASK_KINDS = ("multiclass", "multilabel", "regression", "identity")

BASIC_EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
AUS_17 = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU24", "AU25", "AU26",
)
VALENCE_AROUSAL = ("valence", "arousal")
# Du, Tao & Martinez 2014's 13 compound expressions (the du2014_compound table's rows) and the 11
# of them RAF-DB's compound subset labels, in RAF-DB's native order 1..11 (no Fearfully disgusted,
# no Awed).
COMPOUND_13 = (
    "Happily surprised", "Happily disgusted", "Sadly fearful", "Sadly angry", "Sadly surprised",
    "Sadly disgusted", "Fearfully angry", "Fearfully surprised", "Fearfully disgusted",
    "Angrily surprised", "Angrily disgusted", "Disgustedly surprised", "Awed",
)
RAFDB_COMPOUND_11 = (
    "Happily surprised", "Happily disgusted", "Sadly fearful", "Sadly angry", "Sadly surprised",
    "Sadly disgusted", "Fearfully angry", "Fearfully surprised", "Angrily surprised",
    "Angrily disgusted", "Disgustedly surprised",
)
FROM_DATA = "from_data"
IDENTITY_HEADS = ("arcface", "softmax")


@dataclass(frozen=True)
class Task:
    """One task of the network.

    ``labels`` are the class names (multiclass), label names (multilabel), dimension names
    (regression) or training identities (identity), in output order.
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    value_range: tuple[float, float] | None = None
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise DistmtlError(
                f"task '{self.name}': unknown kind '{self.kind}'{close_matches(self.kind, TASK_KINDS)}"
                f"; expected one of {', '.join(TASK_KINDS)}"
            )
        labels = tuple(str(x) for x in self.labels)
        object.__setattr__(self, "labels", labels)
        if not labels:
            raise DistmtlError(f"task '{self.name}': no labels given")
        seen: set[str] = set()
        for label in labels:
            if label in seen:
                raise DistmtlError(f"task '{self.name}': duplicate label '{label}'")
            seen.add(label)
        if self.kind == "multiclass" and len(labels) < 2:
            raise DistmtlError(f"task '{self.name}': a multiclass task needs at least 2 classes")
        if self.kind == "regression":
            low, high = self.value_range if self.value_range is not None else (-1.0, 1.0)
            if not low < high:
                raise DistmtlError(f"task '{self.name}': range [{low}, {high}] is empty")
            object.__setattr__(self, "value_range", (float(low), float(high)))
        if self.kind == "identity":
            head = self.options.get("head", "arcface")
            if head not in IDENTITY_HEADS:
                raise DistmtlError(f"tasks.{self.name}.options.head: unknown identity head '{head}'"
                                   f"{close_matches(str(head), IDENTITY_HEADS)}; expected arcface "
                                   f"(cosine logits, margin options.margin) or softmax (a linear layer)")

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise DistmtlError(
                f"task '{self.name}': unknown label '{label}'{close_matches(label, self.labels)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "labels": list(self.labels)}
        if self.value_range is not None:
            out["range"] = list(self.value_range)
        if self.options:
            out["options"] = dict(self.options)
        return out

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any]) -> Task:
        if "kind" not in spec:
            raise DistmtlError(f"tasks.{name}.kind: missing (one of {', '.join(TASK_KINDS)})")
        kind = spec["kind"]
        labels = spec.get("labels", spec.get("classes"))
        if labels_from_data(spec):
            raise DistmtlError(f"tasks.{name}.labels: taken from the training data; resolve them "
                               f"with distmtl.training.experiment.build_experiment")
        if labels == FROM_DATA:
            raise DistmtlError(f"tasks.{name}.labels: '{FROM_DATA}' is for identity tasks only; "
                               f"a {kind} task lists its labels")
        if isinstance(labels, str):
            labels = _named_label_set(name, labels)
        if labels is None:
            raise DistmtlError(f"tasks.{name}.labels: missing")
        value_range = spec.get("range")
        return cls(
            name=name,
            kind=kind,
            labels=tuple(labels),
            value_range=tuple(value_range) if value_range is not None else None,
            options=dict(spec.get("options", {})),
        )


def labels_from_data(spec: Mapping[str, Any]) -> bool:
    """An identity task spec without labels (or ``labels: from_data``): the data names them."""
    labels = spec.get("labels", spec.get("classes"))
    return spec.get("kind") == "identity" and (labels is None or labels == FROM_DATA)


NAMED_LABEL_SETS = {
    "basic7": BASIC_EXPRESSIONS,
    "au17": AUS_17,
    "compound13": COMPOUND_13,
    "compound11": RAFDB_COMPOUND_11,
    "valence_arousal": VALENCE_AROUSAL,
}


def _named_label_set(task: str, name: str) -> tuple[str, ...]:
    if name not in NAMED_LABEL_SETS:
        raise DistmtlError(
            f"tasks.{task}.labels: unknown label set '{name}'{close_matches(name, NAMED_LABEL_SETS)}"
        )
    return NAMED_LABEL_SETS[name]


def expression_task(name: str = "expression", classes: Sequence[str] = BASIC_EXPRESSIONS) -> Task:
    return Task(name, "multiclass", tuple(classes))


def au_task(name: str = "au", labels: Sequence[str] = AUS_17) -> Task:
    return Task(name, "multilabel", tuple(labels))


def va_task(name: str = "va") -> Task:
    return Task(name, "regression", VALENCE_AROUSAL, value_range=(-1.0, 1.0))
