"""Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distmtl.weighting.base import WeightingStrategy


class DWAWeighting(WeightingStrategy):
    """Weights from the rate at which each task's epoch-average training loss falls.

    ``w_i(t) = T * exp(r_i(t-1) / temperature) / sum_j exp(r_j(t-1) / temperature)`` with
    ``r_i(t-1) = Lbar_i(t-1) / Lbar_i(t-2)``, ``Lbar_i`` the mean of task ``i``'s training losses
    over an epoch. The weights sum to ``T`` and are constant within an epoch; they are 1 during the
    first two epochs (no ratio yet). A task absent from one of the two previous epochs gets
    ``r_i = 1``.

    The training loop must call :meth:`on_train_epoch_end` after each training epoch; only
    forwards in training mode count towards the epoch averages. Under data-parallel training each
    process averages its own losses. Option ``temperature`` (default 2).
    """

    name: ClassVar[str] = "dwa"
    OPTIONS: ClassVar[Mapping[str, Any]] = {"temperature": 2.0}

    def __init__(self, task_names: Sequence[str], **options: Any):
        super().__init__(task_names, **options)
        self.temperature = self._float_option("temperature", positive=True)
        t = self.num_tasks
        self.register_buffer("epoch_loss_sum", torch.zeros(t))
        self.register_buffer("epoch_loss_count", torch.zeros(t, dtype=torch.long))
        # row 0: Lbar(t-2), row 1: Lbar(t-1); NaN until known
        self.register_buffer("epoch_averages", torch.full((2, t), float("nan")))
        self.register_buffer("epochs_completed", torch.zeros((), dtype=torch.long))

    def current_weights(self) -> Tensor:
        """The weights in force for the current epoch, ``[T]``."""
        before, last = self.epoch_averages[0], self.epoch_averages[1]
        ratio = last / before
        ratio = torch.where(torch.isfinite(ratio) & (before > 0), ratio, torch.ones_like(ratio))
        return self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def combine(
        self,
        index: Tensor,
        losses: Tensor,
        *,
        features: Tensor | None,
        shared_parameters: list[nn.Parameter] | None,
    ) -> tuple[Tensor, Tensor]:
        weights = self.current_weights()
        if self.training:
            with torch.no_grad():
                self.epoch_loss_sum.index_add_(0, index, losses.detach())
                self.epoch_loss_count.index_add_(0, index, torch.ones_like(index))
        return (weights[index] * losses).sum(), weights

    def on_train_epoch_end(self) -> None:
        """Roll the epoch averages; does nothing if no training step happened this epoch."""
        if int(self.epoch_loss_count.sum()) == 0:
            return
        with torch.no_grad():
            count = self.epoch_loss_count
            average = torch.where(
                count > 0,
                self.epoch_loss_sum / count.clamp_min(1),
                torch.full_like(self.epoch_loss_sum, float("nan")),
            )
            self.epoch_averages[0].copy_(self.epoch_averages[1])
            self.epoch_averages[1].copy_(average)
            self.epoch_loss_sum.zero_()
            self.epoch_loss_count.zero_()
            self.epochs_completed += 1
