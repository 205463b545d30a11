"""Jacobian descent: the gradient aggregators of TorchJD (``weighting: {name: jd, aggregator: ...}``).

The loss weightings scale the task losses and backpropagate one sum. Jacobian descent instead takes
one gradient per objective with respect to the shared (backbone) parameters, the rows of the
Jacobian ``J`` ``[m, n]``, and an *aggregator* turns ``J`` into the update of the shared parameters:
UPGrad projects each row onto the dual cone of the rows (the update conflicts with no objective),
MGDA takes the minimum-norm convex combination, PCGrad projects conflicting rows onto each other's
normal planes, CAGrad, Nash-MTL, IMTL-G, Aligned-MTL, DualProj, ... (:data:`AGGREGATORS` lists what
the installed TorchJD provides). The task heads get their own task's gradient, as in plain
training. The training step lives in :mod:`distmtl.training.jacobian`; this module holds the
registry, the option checks and the per-row-set aggregator instances.

Objectives (rows). A task without a label in the batch contributes no row. The coupling terms of
the relatedness graph (``coann:A->B``, ``dm:A->B``, ...) enter according to ``coupling``:

- ``task`` (default): each term is added to the loss of the task it supervises (the task after the
  arrow), so there is one row per task. The aggregator then balances the *tasks*, as the papers'
  multi-task methods do, and a coupling term acts as part of its task's objective, as co-annotation
  and distribution matching do in the automatic path. A task with no labels in the batch but a
  coupling term that supervises it (co-annotation of AUs on an expression-only batch) has a row made
  of that term alone.
- ``rows``: each term is a row of its own, so the aggregator also protects the coupling terms from
  conflicts (and vice versa). A term that is exactly zero in a batch (distribution matching at the
  start of its ramp) gets no row: MGDA, for one, would otherwise return a zero update.

Aggregators with internal state (GradVac, Nash-MTL, ExcessMTL, PCD) keep one instance per set of
rows, so a row set that changes from batch to batch (absent tasks) never mixes their statistics.
Their plain state (tensors, arrays, numbers) is saved with the module, so a resumed run continues it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from distmtl.errors import DistmtlError, close_matches
from distmtl.weighting.base import WeightingStrategy

COUPLING_MODES = ("task", "rows")
# aggregators whose constructor needs a tensor per row (a weight or preference vector) that a
# config cannot give for a changing set of rows
_UNSUPPORTED = {"constant": "fixed weights per row: use weighting 'equal' instead"}
# what each needs from the row count rather than from the user
_FROM_ROWS = {"n_tasks"}
DESCRIPTIONS = {
    "upgrad": "each gradient projected onto the dual cone of all of them, then averaged: conflicts with none",
    "mgda": "minimum-norm convex combination of the gradients (Desideri 2012; Sener & Koltun 2018)",
    "pcgrad": "conflicting gradients projected onto each other's normal plane (Yu et al. 2020)",
    "cagrad": "conflict-averse: best worst-case descent in a ball of radius c around the mean (Liu et al. 2021)",
    "nashmtl": "Nash bargaining over the gradients (Navon et al. 2022); needs cvxpy",
    "imtlg": "impartial: equal projection of the update on every gradient (Liu et al. 2021)",
    "alignedmtl": "principal components of the gradients aligned (Senushkin et al. 2023)",
    "dualproj": "the mean gradient projected onto the dual cone of the gradients",
    "graddrop": "sign-consistency dropout of gradient entries (Chen et al. 2020)",
    "gradvac": "gradient vaccine: adaptive cosine-similarity targets (Wang et al. 2021)",
    "config": "ConFIG: a conflict-free direction with equal cosine to every gradient (Liu et al. 2024)",
    "fairgrad": "alpha-fair utility maximisation (Ban & Ji 2024)",
    "excessmtl": "weights from each objective's excess risk (He et al. 2024)",
    "pcd": "priority-constrained descent (hierarchical objectives, in row order)",
    "krum": "Byzantine-robust selection (federated learning)",
    "trimmedmean": "coordinate-wise trimmed mean (federated learning)",
    "mean": "the mean gradient (what equal weighting of the losses gives, up to a factor)",
    "sum": "the sum of the gradients (equal weighting of the losses)",
    "random": "a random positive combination (Lin et al. 2022)",
}
# sensible defaults where the constructor has none (documented in docs/config.md)
_DEFAULTS = {"cagrad": {"c": 0.4}, "fairgrad": {"alpha": 1.0}}


def _aggregator_classes() -> dict[str, type]:
    """``{lower-case name: class}`` of every aggregator the installed TorchJD provides."""
    import torchjd.aggregation as aggregation

    found = {}
    for name in getattr(aggregation, "__all__", dir(aggregation)):
        cls = getattr(aggregation, name, None)
        if (inspect.isclass(cls) and issubclass(cls, aggregation.Aggregator) and not inspect.isabstract(cls)
                and cls.__module__.startswith("torchjd.aggregation._") and not name.endswith("Aggregator")):
            found[name.lower()] = cls
    return found


try:
    AGGREGATORS: dict[str, type] = {k: v for k, v in _aggregator_classes().items() if k not in _UNSUPPORTED}
except ImportError:  # torchjd missing: the other strategies still work
    AGGREGATORS = {}


def aggregator_parameters(name: str) -> dict[str, Any]:
    """``{option: default}`` a config may give for aggregator ``name`` (``inspect.Parameter.empty``:
    required); the row count and tensor-valued parameters are left out."""
    params = {}
    for p in list(inspect.signature(AGGREGATORS[name].__init__).parameters.values())[1:]:
        if p.name in _FROM_ROWS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if "Tensor" in str(p.annotation) or "Callable" in str(p.annotation) or "Projector" in str(p.annotation):
            continue  # tensors (per-row vectors), functions and solver objects: the defaults only
        params[p.name] = _DEFAULTS.get(name, {}).get(p.name, p.default)
    return params


def describe_aggregators() -> str:
    """A table of the aggregator names with their options (``distmtl weighting list``)."""
    lines = []
    for name in sorted(AGGREGATORS):
        options = ", ".join(f"{k}={'<required>' if v is inspect.Parameter.empty else v!r}"
                            for k, v in aggregator_parameters(name).items())
        lines.append(f"  {name:<12} {DESCRIPTIONS.get(name, 'TorchJD ' + AGGREGATORS[name].__name__)}")
        lines.append(f"  {'':<12}   options: {options or '(none)'}")
    for name, why in _UNSUPPORTED.items():
        lines.append(f"  ({name}: not offered: {why})")
    return "\n".join(lines)


def check_jd_spec(aggregator: Any, coupling: Any, options: Mapping[str, Any], where: str = "weighting") -> dict:
    """Validate ``weighting.aggregator``, ``weighting.coupling`` and the aggregator's options;
    returns the options with defaults filled in. One-line errors name the key and the value."""
    if not AGGREGATORS:
        raise DistmtlError(f"{where}.name: 'jd' needs the torchjd package (pip install torchjd)")
    key = str(aggregator).strip().lower() if aggregator is not None else None
    if key is None:
        raise DistmtlError(f"{where}.aggregator: required with name: jd; one of {', '.join(sorted(AGGREGATORS))}")
    if key in _UNSUPPORTED:
        raise DistmtlError(f"{where}.aggregator: '{aggregator}' is not offered ({_UNSUPPORTED[key]})")
    if key not in AGGREGATORS:
        raise DistmtlError(f"{where}.aggregator: unknown aggregator '{aggregator}'{close_matches(key, AGGREGATORS)}"
                           f"; known: {', '.join(sorted(AGGREGATORS))}")
    if coupling not in COUPLING_MODES:
        raise DistmtlError(f"{where}.coupling: expected task or rows, got {coupling!r}"
                           f"{close_matches(str(coupling), COUPLING_MODES)}")
    allowed = aggregator_parameters(key)
    if not isinstance(options, Mapping):
        raise DistmtlError(f"{where}.options: expected a mapping of {key}'s options, got {options!r}")
    resolved = {}
    for name, value in options.items():
        if name not in allowed:
            raise DistmtlError(f"{where}.options.{name}: not an option of aggregator '{key}'"
                               f"{close_matches(str(name), allowed)}; its options: "
                               f"{', '.join(allowed) if allowed else '(none)'}")
        default = allowed[name]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and (isinstance(default, bool) or default is inspect.Parameter.empty)
        elif isinstance(default, (int, float)) or default is inspect.Parameter.empty or default is None:
            ok = isinstance(value, (int, float)) and math.isfinite(value)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise DistmtlError(f"{where}.options.{name}: {value!r} is not a valid value for aggregator "
                               f"'{key}' (default {default!r})")
        resolved[name] = value
    for name, default in allowed.items():
        if name not in resolved:
            if default is inspect.Parameter.empty:
                raise DistmtlError(f"{where}.options.{name}: required by aggregator '{key}'")
            resolved[name] = default
    try:  # the constructor's own checks (e.g. CAGrad's c >= 0) as one line, before any data loads
        _build(key, resolved, 2)
    except DistmtlError:
        raise
    except (ValueError, TypeError) as exc:
        raise DistmtlError(f"{where}.options: aggregator '{key}' rejects {resolved}: {exc}") from None
    return resolved


def _build(name: str, options: Mapping[str, Any], rows: int):
    cls = AGGREGATORS[name]
    kwargs = dict(options)
    if "n_tasks" in inspect.signature(cls.__init__).parameters:
        kwargs["n_tasks"] = rows
    try:
        return cls(**kwargs)
    except ImportError as exc:
        raise DistmtlError(f"weighting.aggregator: '{name}' needs an optional package ({exc}); "
                           f"install it, e.g. pip install 'torchjd[{name}]'") from None


class JacobianDescent(WeightingStrategy):
    """``weighting: {name: jd, aggregator: upgrad, coupling: task}`` (see the module docstring).

    Training with it uses manual optimisation (:func:`distmtl.training.jacobian.jacobian_step`);
    :meth:`combine` (the plain sum) is only what evaluation-time callers of a weighting get.
    """

    name: ClassVar[str] = "jd"
    aggregates_gradients: ClassVar[bool] = True

    def __init__(self, task_names: Sequence[str], aggregator: str = "upgrad", coupling: str = "task",
                 **options: Any):
        self._aggregator_options = check_jd_spec(aggregator, coupling, options)
        super().__init__(task_names)
        self.aggregator_name = str(aggregator).strip().lower()
        self.coupling = coupling
        self.options = {"aggregator": self.aggregator_name, "coupling": coupling, **self._aggregator_options}
        self._instances: dict[tuple[str, ...], Any] = {}
        self._pending_state: dict = {}
        self.row_weights: dict[str, float] = {}

    def _resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return dict(options)

    def combine(self, index: Tensor, losses: Tensor, *, features, shared_parameters):
        weights = torch.zeros(self.num_tasks, device=losses.device)
        weights[index] = 1.0
        return losses.sum(), weights

    def aggregator_for(self, rows: Sequence[str]):
        """The aggregator instance for this set of rows (one per set: see the module docstring)."""
        key = tuple(rows)
        if key not in self._instances:
            self._instances[key] = _build(self.aggregator_name, self._aggregator_options, len(key))
            if key in self._pending_state:
                _restore_plain_state(self._instances[key], self._pending_state.pop(key))
        return self._instances[key]

    def record(self, rows: Sequence[str], weights: Tensor | None) -> None:
        """Keep the row weights of the last step (for logging); tasks without a row get 0."""
        self.row_weights = {} if weights is None else dict(zip(rows, (float(w) for w in weights.detach().cpu())))
        with torch.no_grad():
            self.last_weights.zero_()
            for task, value in self.row_weights.items():
                if task in self._task_index:
                    self.last_weights[self._task_index[task]] = value

    # stateful aggregators: their plain state travels with the module's state_dict
    def get_extra_state(self) -> dict:
        state = {"|".join(rows): _plain_state(agg) for rows, agg in self._instances.items()}
        return {"instances": {k: v for k, v in state.items() if v}}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict):
            return
        for joined, values in (state.get("instances") or {}).items():
            rows = tuple(joined.split("|"))
            if rows in self._instances:
                _restore_plain_state(self._instances[rows], values)
            else:
                self._pending_state[rows] = values


def _plain_state(aggregator) -> dict:
    """Tensors, arrays and numbers held by a stateful aggregator's modules (nothing for stateless ones)."""
    from torchjd._mixins import Stateful

    if not isinstance(aggregator, Stateful):
        return {}
    out = {}
    for path, module in aggregator.named_modules():
        items = list(vars(module).items()) + list(module._buffers.items())  # noqa: SLF001
        for key, value in items:
            if key.startswith("__") or key in ("training",) or key.startswith("_forward") \
                    or key.startswith("_backward") or key.endswith("hooks") or key in (
                        "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
                        "_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
                continue
            where = f"{path}.{key}" if path else key
            if isinstance(value, Tensor):
                out[where] = ("tensor", value.detach().cpu().clone())
            elif isinstance(value, np.ndarray):
                out[where] = ("array", torch.from_numpy(np.array(value)))
            elif value is None or isinstance(value, (bool, int, float, str)):
                out[where] = ("value", value)
            elif isinstance(value, tuple) and all(isinstance(v, (int, str)) or v is None or
                                                   isinstance(v, torch.dtype) for v in value):
                out[where] = ("tuple", tuple(str(v) if isinstance(v, torch.dtype) else v for v in value))
    return out


def _restore_plain_state(aggregator, state: Mapping[str, tuple]) -> None:
    modules = dict(aggregator.named_modules())
    for where, (kind, value) in state.items():
        path, _, key = where.rpartition(".")
        module = modules.get(path)
        if module is None:
            continue
        if kind == "array":
            value = value.numpy()
        elif kind == "tuple":
            value = tuple(getattr(torch, v[len("torch."):]) if isinstance(v, str) and v.startswith("torch.")
                          else v for v in value)
        setattr(module, key, value)
    weighting = getattr(aggregator, "weighting", None)
    inner = getattr(weighting, "weighting", weighting)
    if hasattr(inner, "_init_optim_problem") and float(getattr(inner, "step", 0) or 0) > 0:
        inner._init_optim_problem()  # Nash-MTL rebuilds its solver problem from the restored state
