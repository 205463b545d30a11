"""The relatedness graph: (A, B, R) edges, each adding co-annotation and matching terms.

An edge links a multiclass (or identity) task A (K classes) to a multilabel task B (J labels)
through ``R[k, j] = p(b_j = 1 | a = k)`` and a class prior ``pi`` (uniform when not given). Its forward
pass reads the logits of both tasks and their targets and masks (batch layout of
:mod:`distmtl.tasks`; an identity A's index targets become one-hot rows) and returns the enabled
terms, already weighted::

    'coann:{a}->{b}'  coannotation.weight * soft/hard A -> B co-annotation
    'coann:{b}->{a}'  coannotation.weight * soft/hard B -> A co-annotation
    'dm:{a}->{b}'     dm_a_to_b.weight * dm_scale * A -> B distribution matching
    'dm:{b}->{a}'     dm_b_to_a.weight * dm_scale * B -> A distribution matching

``dm_scale`` multiplies the matching terms only (a ramp of lambda over training). A task absent
from ``targets``/``masks`` counts as unannotated on every sample. ``only_unlabelled`` restricts
A -> B matching to samples none of whose B labels is annotated, and B -> A matching to samples
without an A label.

Configuration values are checked when an edge is built; an invalid value raises
:class:`~distmtl.errors.DistmtlError` whose message starts with the edge's config key, e.g.
``relatedness[0].dm_a_to_b.form: unknown form 'klx' (did you mean: kl?)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from distmtl.errors import DistmtlError, close_matches
from distmtl.losses.coannotation import (
    DEFAULT_EPS,
    HARD_TARGETS,
    NaiveBayesTable,
    coannotation_a_to_b_hard,
    coannotation_a_to_b_soft,
    coannotation_b_to_a_hard,
    coannotation_b_to_a_soft,
)
from distmtl.losses.distribution_matching import A_TO_B_FORMS, B_TO_A_FORMS, dm_a_to_b, dm_b_to_a

log = logging.getLogger(__name__)

COANNOTATION_VARIANTS = ("soft", "hard")


# --------------------------------------------------------------------------- validation helpers


def _check_choice(value: Any, choices: tuple[str, ...], key: str, what: str) -> None:
    if not isinstance(value, str) or value not in choices:
        hint = close_matches(str(value), choices) or f"; expected one of {', '.join(choices)}"
        raise DistmtlError(f"{key}: unknown {what} '{value}'{hint}")


def _check_bool(value: Any, key: str) -> None:
    if not isinstance(value, bool):
        raise DistmtlError(f"{key}: expected true or false, got {value!r}")


def _check_number(value: Any, key: str, *, low: float, high: float | None = None,
                  low_open: bool = False, high_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high is None or high_open else "]"
        upper = "inf" if high is None else f"{high:g}"
        raise DistmtlError(
            f"{key}: expected a number in {left}{low:g}, {upper}{right}, got {value!r}"
        )


def _from_dict(cls: type, spec: Any, key: str, defaults: Mapping[str, Any] | None = None) -> Any:
    if isinstance(spec, cls):
        return spec
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise DistmtlError(f"{key}: expected a mapping, got {type(spec).__name__}")
    names = [f.name for f in fields(cls)]
    for name in spec:
        if name not in names:
            raise DistmtlError(
                f"{key}: unknown key '{name}'{close_matches(str(name), names)}"
                f"; expected one of {', '.join(names)}"
            )
    return cls(**{**(defaults or {}), **spec})


# --------------------------------------------------------------------------- configuration


@dataclass
class CoannotationConfig:
    """Co-annotation on an edge: pseudo-labels for the task a sample lacks.

    A term that is named is on (``enabled`` defaults to True); an :class:`EdgeConfig` that does
    not name it holds a disabled one.
    """

    enabled: bool = True
    variant: str = "soft"  # soft | hard
    weight: float = 1.0
    a_to_b: bool = True
    b_to_a: bool = True
    temperature: float = 1.0  # soft B -> A only: divides the log-posterior
    threshold: float = 1.0  # hard only: R >= threshold marks a prototypical label
    hard_targets: str = "positive"  # hard A -> B: positive (1 where prototypical) | full (also 0s)

    def validate(self, key: str = "coannotation") -> CoannotationConfig:
        _check_bool(self.enabled, f"{key}.enabled")
        _check_choice(self.variant, COANNOTATION_VARIANTS, f"{key}.variant", "variant")
        _check_number(self.weight, f"{key}.weight", low=0.0)
        _check_bool(self.a_to_b, f"{key}.a_to_b")
        _check_bool(self.b_to_a, f"{key}.b_to_a")
        _check_number(self.temperature, f"{key}.temperature", low=0.0, low_open=True)
        _check_number(self.threshold, f"{key}.threshold", low=0.0, high=1.0, low_open=True,
                      high_open=False)
        _check_choice(self.hard_targets, HARD_TARGETS, f"{key}.hard_targets", "hard targets")
        return self

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None, key: str = "coannotation"):
        return _from_dict(cls, spec, key).validate(key)


@dataclass
class MatchingConfig:
    """Distribution matching in one direction of an edge.

    ``form``: A -> B ``kl`` (default; the one form whose minimum over ``p^B`` is the target when
    the target is detached) | ``paper`` | ``bce``; B -> A ``ce`` | ``kl``. Named means on
    (``enabled`` defaults to True), as for :class:`CoannotationConfig`.
    """

    enabled: bool = True
    weight: float = 0.1  # at 1, DM in either direction costs the plentiful task (methods.md)
    form: str = "kl"
    stop_gradient: bool = True
    only_unlabelled: bool = False

    def validate(self, key: str, forms: tuple[str, ...] = A_TO_B_FORMS) -> MatchingConfig:
        _check_bool(self.enabled, f"{key}.enabled")
        _check_number(self.weight, f"{key}.weight", low=0.0)
        _check_choice(self.form, forms, f"{key}.form", "form")
        _check_bool(self.stop_gradient, f"{key}.stop_gradient")
        _check_bool(self.only_unlabelled, f"{key}.only_unlabelled")
        return self


def _no_coannotation() -> CoannotationConfig:
    return CoannotationConfig(enabled=False)


def _no_a_to_b_matching() -> MatchingConfig:
    return MatchingConfig(enabled=False)


def _no_b_to_a_matching() -> MatchingConfig:
    return MatchingConfig(enabled=False, form="ce")


@dataclass
class EdgeConfig:
    """Everything one edge adds to the loss; ``eps`` clips ``R`` for the B -> A direction."""

    coannotation: CoannotationConfig = field(default_factory=_no_coannotation)
    dm_a_to_b: MatchingConfig = field(default_factory=_no_a_to_b_matching)
    dm_b_to_a: MatchingConfig = field(default_factory=_no_b_to_a_matching)
    eps: float = DEFAULT_EPS

    def validate(self, key: str = "relatedness") -> EdgeConfig:
        for name, kind in (("coannotation", CoannotationConfig), ("dm_a_to_b", MatchingConfig),
                           ("dm_b_to_a", MatchingConfig)):
            if not isinstance(getattr(self, name), kind):
                raise DistmtlError(f"{key}.{name}: expected a {kind.__name__}")
        self.coannotation.validate(f"{key}.coannotation")
        self.dm_a_to_b.validate(f"{key}.dm_a_to_b", A_TO_B_FORMS)
        self.dm_b_to_a.validate(f"{key}.dm_b_to_a", B_TO_A_FORMS)
        _check_number(self.eps, f"{key}.eps", low=0.0, high=0.5, low_open=True)
        return self

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None, key: str = "relatedness") -> EdgeConfig:
        """Build from a mapping (e.g. parsed YAML); unknown keys and bad values are errors."""
        raw = _from_dict(cls, spec, key)
        config = cls(
            coannotation=_from_dict(CoannotationConfig, raw.coannotation, f"{key}.coannotation"),
            dm_a_to_b=_from_dict(MatchingConfig, raw.dm_a_to_b, f"{key}.dm_a_to_b"),
            dm_b_to_a=_from_dict(MatchingConfig, raw.dm_b_to_a, f"{key}.dm_b_to_a",
                                 defaults={"form": "ce"}),
            eps=raw.eps,
        )
        return config.validate(key)


# --------------------------------------------------------------------------- modules


def class_rows(index: Tensor, mask: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot rows ``[B, K]`` of class indices ``[B]``; zero rows where ``mask`` is false."""
    mask = torch.as_tensor(mask).bool()
    safe = torch.where(mask, index.long(), 0).clamp(0, num_classes - 1)
    return torch.nn.functional.one_hot(safe, num_classes).to(dtype) * mask[:, None].to(dtype)


class RelatednessEdge(nn.Module):
    """One (A, B, R) edge. Buffers: ``R`` ``[K, J]``, ``log_r_tilde``, ``log_1m_r_tilde``
    (``log R~``, ``log(1 - R~)``) and ``log_prior`` ``[K]`` (normalised).

    ``key`` names the edge in error messages (e.g. ``relatedness[0]``).
    """

    def __init__(
        self,
        task_a: str,
        task_b: str,
        matrix: Tensor,
        prior: Tensor | None = None,
        config: EdgeConfig | None = None,
        *,
        key: str | None = None,
    ):
        super().__init__()
        self.key = key if key is not None else f"relatedness({task_a}->{task_b})"
        if task_a == task_b:
            raise DistmtlError(
                f"{self.key}: an edge needs two different tasks, got '{task_a}' twice"
            )
        self.task_a, self.task_b = str(task_a), str(task_b)
        self.config = (config if config is not None else EdgeConfig()).validate(self.key)

        matrix = torch.as_tensor(matrix)
        if not matrix.is_floating_point():
            matrix = matrix.to(torch.get_default_dtype())
        if matrix.dim() != 2 or 0 in matrix.shape:
            raise DistmtlError(f"{self.key}: the matrix must be [classes, labels], "
                               f"got shape {tuple(matrix.shape)}")
        in_range = torch.isfinite(matrix) & (matrix >= 0) & (matrix <= 1)
        if not bool(in_range.all()):
            raise DistmtlError(f"{self.key}: the matrix must hold probabilities in [0, 1]")
        try:
            table = NaiveBayesTable.from_relatedness(matrix, prior, self.config.eps)
        except DistmtlError as error:
            raise DistmtlError(f"{self.key}: {error}") from None
        self.register_buffer("R", matrix.clone())
        co = self.config.coannotation
        if co.enabled and co.variant == "hard":
            prototypical = int((matrix >= co.threshold).sum())
            if prototypical == 0:
                log.warning("%s.coannotation: hard co-annotation finds none of the table's %d entries "
                            ">= threshold %g, so it gives no pseudo-label; lower coannotation.threshold "
                            "(an estimated table rarely holds exact 1s)", self.key, matrix.numel(),
                            co.threshold)
            else:
                log.info("%s.coannotation: hard co-annotation: %d of %d table entries >= threshold %g",
                         self.key, prototypical, matrix.numel(), co.threshold)
        self.register_buffer("log_r_tilde", table.log_r)
        self.register_buffer("log_1m_r_tilde", table.log_1mr)
        self.register_buffer("log_prior", table.log_prior)

    @property
    def num_classes(self) -> int:
        return self.R.shape[0]

    @property
    def num_labels(self) -> int:
        return self.R.shape[1]

    def table(self) -> NaiveBayesTable:
        return NaiveBayesTable(self.log_r_tilde, self.log_1m_r_tilde, self.log_prior)

    def extra_repr(self) -> str:
        return f"{self.task_a}->{self.task_b}, classes={self.num_classes}, labels={self.num_labels}"

    def term_names(self) -> list[str]:
        """The keys :meth:`forward` returns with this configuration."""
        a, b, cfg = self.task_a, self.task_b, self.config
        names = []
        if cfg.coannotation.enabled and cfg.coannotation.a_to_b:
            names.append(f"coann:{a}->{b}")
        if cfg.coannotation.enabled and cfg.coannotation.b_to_a:
            names.append(f"coann:{b}->{a}")
        if cfg.dm_a_to_b.enabled:
            names.append(f"dm:{a}->{b}")
        if cfg.dm_b_to_a.enabled:
            names.append(f"dm:{b}->{a}")
        return names

    def _logits(self, outputs: Mapping[str, Tensor], task: str, size: int) -> Tensor:
        if task not in outputs:
            raise DistmtlError(f"{self.key}: no output for task '{task}'")
        logits = outputs[task]
        if logits.dim() != 2 or logits.shape[-1] != size:
            raise DistmtlError(f"{self.key}: output of task '{task}' must be [batch, {size}], "
                               f"got {tuple(logits.shape)}")
        return logits

    @staticmethod
    def _labels(targets: Mapping[str, Tensor], masks: Mapping[str, Tensor], task: str,
                like: Tensor, per_label: bool) -> tuple[Tensor, Tensor]:
        if task in targets and task in masks:
            return targets[task], masks[task]
        mask_shape = like.shape if per_label else like.shape[:1]
        return (torch.zeros_like(like),
                torch.zeros(mask_shape, dtype=torch.bool, device=like.device))

    def forward(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        dm_scale: float | Tensor = 1.0,
    ) -> dict[str, Tensor]:
        a, b, cfg = self.task_a, self.task_b, self.config
        logits_a = self._logits(outputs, a, self.num_classes)
        logits_b = self._logits(outputs, b, self.num_labels)
        target_a, mask_a = self._labels(targets, masks, a, logits_a, per_label=False)
        if target_a.dim() == 1:  # an identity task A: class indices -> class-probability rows
            target_a = class_rows(target_a, mask_a, self.num_classes, logits_a.dtype)
        target_b, mask_b = self._labels(targets, masks, b, logits_b, per_label=True)
        terms: dict[str, Tensor] = {}

        co = cfg.coannotation
        if co.enabled and co.a_to_b:
            if co.variant == "soft":
                loss = coannotation_a_to_b_soft(logits_b, target_a, mask_a, mask_b, self.R)
            else:
                loss = coannotation_a_to_b_hard(logits_b, target_a, mask_a, mask_b, self.R,
                                                co.threshold, co.hard_targets)
            terms[f"coann:{a}->{b}"] = co.weight * loss
        if co.enabled and co.b_to_a:
            if co.variant == "soft":
                loss = coannotation_b_to_a_soft(
                    logits_a, target_b, mask_b, mask_a, self.table(), co.temperature
                )
            else:
                loss = coannotation_b_to_a_hard(logits_a, target_b, mask_b, mask_a, self.R,
                                                co.threshold)
            terms[f"coann:{b}->{a}"] = co.weight * loss

        dm = cfg.dm_a_to_b
        if dm.enabled:
            sample_mask = ~torch.as_tensor(mask_b).bool().any(-1) if dm.only_unlabelled else None
            loss = dm_a_to_b(logits_a, logits_b, self.R, dm.form,
                             stop_gradient=dm.stop_gradient, sample_mask=sample_mask)
            terms[f"dm:{a}->{b}"] = (dm.weight * dm_scale) * loss
        dm = cfg.dm_b_to_a
        if dm.enabled:
            sample_mask = ~torch.as_tensor(mask_a).bool() if dm.only_unlabelled else None
            loss = dm_b_to_a(logits_a, logits_b, self.table(), dm.form,
                             stop_gradient=dm.stop_gradient, sample_mask=sample_mask)
            terms[f"dm:{b}->{a}"] = (dm.weight * dm_scale) * loss
        return terms


class RelatednessGraph(nn.Module):
    """A set of :class:`RelatednessEdge`; its forward merges the terms of all edges.

    Two edges on the same pair of tasks (in either order) would produce the same keys and are
    rejected.
    """

    def __init__(self, edges: Iterable[RelatednessEdge] = ()):
        super().__init__()
        self.edges = nn.ModuleList()
        seen: dict[frozenset[str], str] = {}
        for edge in edges:
            if not isinstance(edge, RelatednessEdge):
                raise DistmtlError(
                    f"relatedness: expected a RelatednessEdge, got {type(edge).__name__}"
                )
            pair = frozenset((edge.task_a, edge.task_b))
            if pair in seen:
                raise DistmtlError(
                    f"{edge.key}: tasks '{edge.task_a}' and '{edge.task_b}' are already linked "
                    f"by {seen[pair]}"
                )
            seen[pair] = edge.key
            self.edges.append(edge)

    def __len__(self) -> int:
        return len(self.edges)

    def term_names(self) -> list[str]:
        return [name for edge in self.edges for name in edge.term_names()]

    def forward(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        dm_scale: float | Tensor = 1.0,
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for edge in self.edges:
            terms.update(edge(outputs, targets, masks, dm_scale=dm_scale))
        return terms
