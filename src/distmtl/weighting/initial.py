"""Fixed weights that balance the tasks' losses at the start of training."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distmtl.weighting.base import WeightingStrategy, count_first_losses

log = logging.getLogger(__name__)


class InitialLossWeighting(WeightingStrategy):
    """``w_i = max_j Lbar_j / Lbar_i``, ``Lbar_i`` task ``i``'s mean training loss over its first
    ``steps`` training batches; 1 for every task until then, and fixed afterwards.

    A 7-way cross-entropy starts near ``log 7 = 1.95`` and a mean of 17 binary cross-entropies near
    0.5: with equal weights the second task gets a quarter of the gradient. Dividing by the loss a
    task starts with puts every task on the scale of the one that starts highest (its weight is 1),
    without the feedback of ``uncertainty`` or ``gradnorm``, whose weights follow a loss that falls
    as a small source is memorised. The weights are fixed once every task has ``steps`` batches
    (a task absent from a batch does not count it). Under data-parallel training each process
    averages its own batches, as ``dwa`` does: the weights then differ between processes by the
    spread of a 20-batch mean. Option ``steps`` (default 20).
    """

    name: ClassVar[str] = "initial"
    OPTIONS: ClassVar[Mapping[str, Any]] = {"steps": 20}

    def __init__(self, task_names: Sequence[str], **options: Any):
        super().__init__(task_names, **options)
        self.steps = self._int_option("steps", minimum=1)
        t = self.num_tasks
        self.register_buffer("loss_sum", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(t, dtype=torch.long))
        self.register_buffer("task_weights", torch.ones(t))

    def combine(
        self,
        index: Tensor,
        losses: Tensor,
        *,
        features: Tensor | None,
        shared_parameters: list[nn.Parameter] | None,
    ) -> tuple[Tensor, Tensor]:
        if self.training and not self.fixed():
            with torch.no_grad():
                count_first_losses(self.loss_sum, self.loss_count, index, losses.detach(), self.steps)
                if self.fixed():
                    self._fix_weights()
        weights = self.task_weights.to(losses.dtype)
        return (weights[index] * losses).sum(), weights

    def fixed(self) -> bool:
        """Whether every task has its ``steps`` losses (the weights no longer change)."""
        return bool((self.loss_count >= self.steps).all())

    def _fix_weights(self) -> None:
        mean = self.loss_sum / self.loss_count
        if bool((mean > 0).all()) and bool(torch.isfinite(mean).all()):
            self.task_weights.copy_((mean.max() / mean).to(self.task_weights.dtype))
        else:
            log.warning("weighting 'initial': a task's mean first loss is not a positive number "
                        "(%s); every task keeps weight 1",
                        ", ".join(f"{t} {float(m):.4g}" for t, m in zip(self.task_names, mean)))
