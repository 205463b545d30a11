"""Homoscedastic-uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distmtl.weighting.base import WeightingStrategy


class UncertaintyWeighting(WeightingStrategy):
    """Learned log-variances ``s_i = log sigma_i^2``.

    ``total = sum_i exp(-s_i) * L_i + s_i``; the reported weight of task ``i`` is ``exp(-s_i)``.

    Variant: the paper derives ``L_i / (2 sigma_i^2) + log sigma_i`` for a Gaussian (regression)
    likelihood and ``L_i / sigma_i^2 + log sigma_i`` for a softmax (classification) one. We use the
    common single form ``exp(-s_i) L_i + s_i`` for every task kind: it is exactly twice the
    regression form (same minimiser ``s_i = log L_i``, gradients doubled), and for classification
    it differs from the paper only in the regulariser's factor (``s_i`` instead of ``s_i / 2``).
    Parameterising by ``s_i`` rather than ``sigma_i`` keeps the optimisation stable (no division
    by zero, no positivity constraint).

    The log-variances are ordinary parameters trained by the main optimiser together with the
    network (``owns_optimizer`` is False). Option ``init_log_var``: initial ``s_i`` (default 0,
    i.e. weight 1).
    """

    name: ClassVar[str] = "uncertainty"
    OPTIONS: ClassVar[Mapping[str, Any]] = {"init_log_var": 0.0}

    def __init__(self, task_names: Sequence[str], **options: Any):
        super().__init__(task_names, **options)
        init = self._float_option("init_log_var")
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), init))
        with torch.no_grad():
            self.last_weights.copy_(torch.exp(-self.log_vars))

    def combine(
        self,
        index: Tensor,
        losses: Tensor,
        *,
        features: Tensor | None,
        shared_parameters: list[nn.Parameter] | None,
    ) -> tuple[Tensor, Tensor]:
        s = self.log_vars[index]
        total = (torch.exp(-s) * losses + s).sum()
        return total, torch.exp(-self.log_vars.detach())
