"""GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distmtl.weighting.base import SelfOptimizingWeighting

_MIN_WEIGHT = 1e-4  # weights are kept positive so the network loss stays a positive combination
_TINY = 1e-12


class GradNormWeighting(SelfOptimizingWeighting):
    """Learnable weights that balance the gradient norms of the tasks on the last shared layer.

    Each training step, with ``W`` the shared parameters given to ``forward``:

    - ``G_i = ||grad_W (w_i L_i)|| = w_i ||grad_W L_i||``;
    - ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``, ``L_i(0)`` the task's first training loss;
    - ``L_grad = sum_i |G_i - mean(G) * r_i^alpha|`` with the target detached;
    - one step of the strategy's Adam (``lr``, default 0.025) on ``w`` for ``L_grad``, then the
      weights are clamped to at least 1e-4 and renormalised so that ``sum_i w_i = T``.

    The network loss is ``sum_i w_i.detach() * L_i`` with the weights before that step. The
    per-task gradients are taken with ``torch.autograd.grad(..., retain_graph=True)``, so the
    network's own backward works afterwards and nothing is written to the network's ``.grad``.
    Because ``w_i`` is a scalar, ``grad_w L_grad`` only needs ``||grad_W L_i||`` as a constant:
    no second-order graph is built. When tasks are absent from a batch, the quantities above
    are computed over the tasks present, the weights of the absent tasks are left as they are,
    and the present ones are renormalised to the share of ``T`` the absent ones leave;
    ``L_i(0)`` is the first loss of task ``i`` in a batch that has it; a batch with a single
    task present, or with a non-finite loss, leaves the weights unchanged. Steps whose shared
    parameters do not require grad (e.g. a frozen backbone) leave the weights unchanged.
    Options: ``alpha`` (default 1.5), ``lr`` (default 0.025).
    """

    name: ClassVar[str] = "gradnorm"
    needs_shared_parameters: ClassVar[bool] = True
    OPTIONS: ClassVar[Mapping[str, Any]] = {"alpha": 1.5, "lr": 0.025}

    def __init__(self, task_names: Sequence[str], **options: Any):
        super().__init__(task_names, **options)
        self.alpha = self._float_option("alpha", minimum=0.0)
        self.lr = self._float_option("lr", positive=True)
        self.task_weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.full((self.num_tasks,), float("nan")))
        self.optimizer = torch.optim.Adam([self.task_weights], lr=self.lr)

    def combine(
        self,
        index: Tensor,
        losses: Tensor,
        *,
        features: Tensor | None,
        shared_parameters: list[nn.Parameter] | None,
    ) -> tuple[Tensor, Tensor]:
        weights = self.task_weights.detach().clone()
        total = (weights[index] * losses).sum()
        if self.training:
            self._update(index, losses, shared_parameters or [])
        return total, weights

    def _update(self, index: Tensor, losses: Tensor, shared: list[nn.Parameter]) -> None:
        shared = [p for p in shared if p.requires_grad]
        if not shared or not torch.is_grad_enabled() or not losses.requires_grad:
            return
        if not torch.isfinite(losses.detach()).all():
            return  # a non-finite loss would make every later weight NaN
        if index.numel() < 2:
            return  # one task present: nothing to balance (and L(0) of the others stays unset)
        with torch.no_grad():
            initial = self.initial_losses[index]
            self.initial_losses[index] = torch.where(torch.isnan(initial), losses.detach(), initial)
        norms = []
        for k in range(losses.numel()):
            if not losses[k].requires_grad:
                norms.append(losses.new_zeros(()))
                continue
            grads = torch.autograd.grad(losses[k], shared, retain_graph=True, allow_unused=True)
            squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
            norms.append(torch.stack(squares).sum().sqrt() if squares else losses.new_zeros(()))
        grad_norms = self.task_weights[index] * torch.stack(norms)
        with torch.no_grad():
            ratio = losses.detach() / self.initial_losses[index].clamp_min(_TINY)
            relative = ratio / ratio.mean().clamp_min(_TINY)
            target = grad_norms.mean() * relative.pow(self.alpha)
        grad_loss = (grad_norms - target).abs().sum()
        absent = torch.ones(self.num_tasks, dtype=torch.bool, device=index.device)
        absent[index] = False
        kept = self.task_weights.detach()[absent].clone()
        self._optimizer_step(grad_loss)
        with torch.no_grad():
            # Adam's momentum would move the weights of absent tasks too: they keep their value,
            # and the present ones are rescaled to the share of T the absent ones leave.
            self.task_weights[absent] = kept
            self.task_weights[index] = self.task_weights[index].clamp(min=_MIN_WEIGHT)
            share = (self.num_tasks - kept.sum()).clamp_min(_MIN_WEIGHT * index.numel())
            self.task_weights[index] *= share / self.task_weights[index].sum()
