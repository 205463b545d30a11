"""Dynamic multi-task weighting (Ming et al. 2019), with two fixes.

Ming, Xia, Luqman, Burie, Zhao: "Dynamic Multi-Task Learning for Face Recognition with Facial
Expression", ICCV Workshops 2019.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distmtl.weighting.base import REQUIRED, SelfOptimizingWeighting, count_first_losses

_TINY = 1e-12


class DynamicWeighting(SelfOptimizingWeighting):
    """A weight layer predicts the task weights from the shared features.

    ``h`` are the pooled shared features ``[B, F]``, detached and L2-normalised per sample; a
    weight layer ``Linear(feature_dim, T)`` (initialised to zero, so the first weights are
    uniform) gives ``w = mean over the batch of softmax(W h + b)``. Unlike the other strategies,
    **the dynamic weights sum to 1, not to T**.

    - Network loss: ``sum_i w_i.detach() * L_i``.
    - Weight-layer loss, minimised by the strategy's own SGD (``lr``, default 0.1, as in the
      original) at every training forward: ``sum_i w_i / (Lnorm_i.detach() + sigma)``, ``sigma``
      default 0.01. Its gradient moves weight towards the task with the larger (normalised) loss.

    Two fixes to the original, both on by default:

    1. ``normalize=True``: ``Lnorm_i = L_i / L_i(0)``, ``L_i(0)`` the running initial value of the
       task's loss: the mean of its first ``init_steps`` (default 10) training losses, the running
       mean of those seen until then. Without it (``normalize=False``, the original,
       ``Lnorm_i = L_i``) tasks with losses of a larger scale (a 10,000-way identity loss against
       a 7-way expression loss) win the weight regardless of how well they are learnt.
    2. ``detach=True``: the network loss uses ``w.detach()``. The original (``detach=False``) also
       lets the network loss reach the weight layer, which pushes weight towards the task with the
       smaller loss, against the weight layer's own objective. With ``detach=False`` the gradient
       the network's backward leaves in the weight layer's ``.grad`` is applied by the strategy's
       optimiser together with the weight-layer loss at its next step.

    Absent tasks take no part in either loss: the network loss uses the present tasks' weights
    (which then sum to less than 1), and the weight-layer loss renormalises the softmax over the
    present tasks, so no weight moves to or from an absent task; a batch with one task present
    (or a non-finite loss) leaves the weight layer unchanged. The weight layer runs in float32 outside autocast.
    """

    name: ClassVar[str] = "dynamic"
    needs_features: ClassVar[bool] = True
    OPTIONS: ClassVar[Mapping[str, Any]] = {
        "feature_dim": REQUIRED,
        "lr": 0.1,
        "sigma": 0.01,
        "normalize": True,
        "detach": True,
        "init_steps": 10,
    }

    def __init__(self, task_names: Sequence[str], **options: Any):
        super().__init__(task_names, **options)
        self.feature_dim = self._int_option("feature_dim", minimum=1)
        self.lr = self._float_option("lr", positive=True)
        self.sigma = self._float_option("sigma", positive=True)
        self.normalize = self._bool_option("normalize")
        self.detach = self._bool_option("detach")
        self.init_steps = self._int_option("init_steps", minimum=1)
        self.weight_layer = nn.Linear(self.feature_dim, self.num_tasks)
        nn.init.zeros_(self.weight_layer.weight)
        nn.init.zeros_(self.weight_layer.bias)
        self.register_buffer("initial_loss_sum", torch.zeros(self.num_tasks))
        self.register_buffer("initial_loss_count", torch.zeros(self.num_tasks, dtype=torch.long))
        self.optimizer = torch.optim.SGD(self.weight_layer.parameters(), lr=self.lr)
        self.last_weights.fill_(1.0 / self.num_tasks)

    def _task_weights(self, h: Tensor, *, clone: bool = False) -> Tensor:
        weight, bias = self.weight_layer.weight, self.weight_layer.bias
        if clone:  # keeps the graph valid after the optimiser updates the layer in place
            weight, bias = weight.clone(), bias.clone()
        return torch.softmax(F.linear(h, weight, bias), dim=1).mean(dim=0)

    def combine(
        self,
        index: Tensor,
        losses: Tensor,
        *,
        features: Tensor | None,
        shared_parameters: list[nn.Parameter] | None,
    ) -> tuple[Tensor, Tensor]:
        assert features is not None
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise self._error(
                f"features must have shape [batch, {self.feature_dim}], got {list(features.shape)}"
            )
        if features.shape[0] == 0:
            raise self._error("features of an empty batch")
        device_type = features.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            h = F.normalize(features.detach().float(), dim=1)
            if self.detach or not torch.is_grad_enabled():
                with torch.no_grad():
                    network_weights = self._task_weights(h)
            else:
                network_weights = self._task_weights(h, clone=True)
            total = (network_weights[index] * losses).sum()
            if self.training:
                self._update(index, losses.detach(), h)
        return total, network_weights.detach()

    def normalized_losses(self, index: Tensor, losses: Tensor) -> Tensor:
        """``L_i / L_i(0)`` with the running initial values (``L_i`` when ``normalize`` is off)."""
        if not self.normalize:
            return losses
        initial = self.initial_loss_sum[index] / self.initial_loss_count[index].clamp_min(1)
        return losses / initial.clamp_min(_TINY)

    def _update(self, index: Tensor, losses: Tensor, h: Tensor) -> None:
        with torch.no_grad():
            count_first_losses(self.initial_loss_sum, self.initial_loss_count, index, losses, self.init_steps)
        if index.numel() < 2 or not torch.isfinite(losses).all():
            return  # one task present: no weight to move between tasks
        coefficients = 1.0 / (self.normalized_losses(index, losses) + self.sigma)
        with torch.enable_grad():
            # the present tasks' weights renormalised among themselves: an absent task (no
            # coefficient) would otherwise look like the cheapest place to put weight
            logits = F.linear(h, self.weight_layer.weight, self.weight_layer.bias)[:, index]
            weights = torch.softmax(logits, dim=1).mean(dim=0)
            self._optimizer_step((weights * coefficients).sum())
