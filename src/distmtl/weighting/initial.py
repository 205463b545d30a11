"""Fixed weights that balance the tasks' losses at the start of training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distmtl.weighting.base import WeightingStrategy


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
        self.register_buffer("fixed", torch.zeros((), dtype=torch.bool))

    def combine(
        self,
        index: Tensor,
        losses: Tensor,
        *,
        features: Tensor | None,
        shared_parameters: list[nn.Parameter] | None,
    ) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.fixed):
            with torch.no_grad():
                self.loss_sum.index_add_(0, index, losses.detach().to(self.loss_sum.dtype))
                self.loss_count.index_add_(0, index, torch.ones_like(index))
                if bool((self.loss_count >= self.steps).all()):
                    self._fix_weights()
        weights = self.task_weights.to(losses.dtype)
        return (weights[index] * losses).sum(), weights

    def _fix_weights(self) -> None:
        mean = self.loss_sum / self.loss_count.clamp_min(1)
        usable = bool((mean > 0).all()) and bool(torch.isfinite(mean).all())
        if usable:
            self.task_weights.copy_((mean.max() / mean).to(self.task_weights.dtype))
        self.fixed.fill_(True)
