"""Task weighting strategies, selectable by name.

Each strategy is one class in its own module implementing
:class:`~distmtl.weighting.base.WeightingStrategy`; adding one is a new module plus one line in
``WEIGHTINGS``.

==============  ====================================================  ==================
name            method                                                weights sum to
==============  ====================================================  ==================
equal           fixed weights (option ``weights``, default 1 each)    as configured
initial         fixed at max_j L_j / L_i, losses of the first steps   max 1 (each >= 1)
uncertainty     Kendall, Gal, Cipolla 2018: learned log-variances     (unconstrained)
dwa             Liu, Johns, Davison 2019: Dynamic Weight Average      T
gradnorm        Chen et al. 2018: gradient-norm balancing             T
dynamic         Ming et al. 2019, with normalised losses and detach   1
jd              Jacobian descent: a TorchJD aggregator of the per-    (gradients, not
                objective gradients (``aggregator: upgrad``, ...)     losses, combined)
==============  ====================================================  ==================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distmtl.errors import DistmtlError, close_matches
from distmtl.weighting.base import REQUIRED, SelfOptimizingWeighting, WeightingStrategy
from distmtl.weighting.dwa import DWAWeighting
from distmtl.weighting.dynamic import DynamicWeighting
from distmtl.weighting.equal import EqualWeighting
from distmtl.weighting.gradnorm import GradNormWeighting
from distmtl.weighting.initial import InitialLossWeighting
from distmtl.weighting.jd import AGGREGATORS, JacobianDescent, describe_aggregators
from distmtl.weighting.uncertainty import UncertaintyWeighting

WEIGHTINGS: dict[str, type[WeightingStrategy]] = {
    "equal": EqualWeighting,
    "initial": InitialLossWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWAWeighting,
    "gradnorm": GradNormWeighting,
    "dynamic": DynamicWeighting,
    "jd": JacobianDescent,
}


def describe_weightings() -> str:
    """What ``distmtl weighting list`` prints: the strategies, then the aggregators of ``jd``."""
    lines = ["loss weightings (weighting.name):"]
    for name, cls in WEIGHTINGS.items():
        if name == "jd":
            continue
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        options = ", ".join(f"{k}={v!r}" for k, v in cls.OPTIONS.items()) or "(no options)"
        lines.append(f"  {name:<12} {options}" + (f"  -- {doc}" if doc else ""))
    lines.append("gradient aggregators (weighting: {name: jd, aggregator: NAME, coupling: task|rows}, "
                 "options in weighting.options):")
    lines.append(describe_aggregators() if AGGREGATORS else "  (torchjd is not installed)")
    return "\n".join(lines)


def create_weighting(name: str, task_names: Sequence[str], **options: Any) -> WeightingStrategy:
    """Build the weighting strategy registered as ``name`` for ``task_names``.

    Raises :class:`~distmtl.errors.DistmtlError` on an unknown name, an unknown or missing
    option, or an invalid option value.
    """
    key = str(name).strip().lower()
    if key not in WEIGHTINGS:
        known = sorted(WEIGHTINGS)
        raise DistmtlError(
            f"unknown weighting '{name}'{close_matches(key, known)}; known: {', '.join(known)}"
        )
    return WEIGHTINGS[key](task_names, **options)


__all__ = [
    "AGGREGATORS",
    "REQUIRED",
    "JacobianDescent",
    "describe_weightings",
    "WEIGHTINGS",
    "DWAWeighting",
    "DynamicWeighting",
    "EqualWeighting",
    "GradNormWeighting",
    "SelfOptimizingWeighting",
    "UncertaintyWeighting",
    "WeightingStrategy",
    "create_weighting",
]
