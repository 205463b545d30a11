"""The interface every task-weighting strategy implements.

A strategy is an ``nn.Module`` that turns the per-task losses of one step into the total loss the
network backpropagates. The training module calls it once per step::

    total = weighting(losses, features=pooled, shared_parameters=last_shared_layer_params)
    weighting.weights            # {task: weight used in that call}, for logging
    weighting.on_train_epoch_end()

Conventions shared by all strategies:

- ``losses`` maps task names to scalar tensors. It may hold a subset of the tasks (a batch without
  labels for a task): absent tasks contribute nothing to the total and are left out of every
  statistic the strategy keeps, and their weight is reported as the strategy currently assigns it.
- Strategies with learnable state either let the main optimiser train it (``owns_optimizer`` is
  False, e.g. ``uncertainty``) or train it themselves inside ``forward`` when ``self.training`` is
  True (``owns_optimizer`` True: ``gradnorm``, ``dynamic``); their parameters must then be left out
  of the main optimiser (``main_optimizer_parameters()`` returns what it should include).
  In eval mode a strategy only computes.
- All state needed to continue a run identically (running statistics, optimiser state) is in
  ``state_dict()``: buffers, plus the strategy's own optimiser state as the module's extra state.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distmtl.errors import DistmtlError, close_matches


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()
"""Default marking an option the user must give."""


def count_first_losses(total: Tensor, count: Tensor, index: Tensor, losses: Tensor, limit: int) -> None:
    """Add each present task's loss (``index`` into ``[T]`` buffers) to its running ``total`` while
    its ``count`` is under ``limit``, in place: the mean of a task's first ``limit`` training losses,
    counted over the batches that hold the task (``dynamic``'s normalisation, ``initial``'s weights)."""
    counting = count[index] < limit
    total[index] += torch.where(counting, losses.to(total.dtype), torch.zeros((), dtype=total.dtype,
                                                                             device=total.device))
    count[index] += counting.long()


class WeightingStrategy(nn.Module):
    """Base class: validates task names, options and losses, and records the weights used.

    Subclasses set ``name`` and ``OPTIONS`` (option name -> default, or ``REQUIRED``) and
    implement :meth:`combine`.
    """

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = False
    needs_shared_parameters: ClassVar[bool] = False
    owns_optimizer: ClassVar[bool] = False
    OPTIONS: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, task_names: Sequence[str], **options: Any):
        super().__init__()
        self.task_names: tuple[str, ...] = self._check_task_names(task_names)
        self.num_tasks = len(self.task_names)
        self._task_index = {t: i for i, t in enumerate(self.task_names)}
        self.options: dict[str, Any] = self._resolve_options(options)
        self.register_buffer("last_weights", torch.ones(self.num_tasks))

    # ----------------------------------------------------------------- public interface

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        features: Tensor | None = None,
        shared_parameters: Sequence[nn.Parameter] | None = None,
    ) -> Tensor:
        """Return the total loss the network backpropagates (a scalar tensor)."""
        index, values = self._gather(losses)
        if self.needs_features and features is None:
            raise DistmtlError(f"weighting '{self.name}' needs the pooled shared features")
        if shared_parameters is not None:
            shared_parameters = list(shared_parameters)
        if self.needs_shared_parameters and self.training and not shared_parameters:
            raise DistmtlError(
                f"weighting '{self.name}' needs the parameters of the last shared layer"
            )
        total, weights = self.combine(
            index, values, features=features, shared_parameters=shared_parameters
        )
        with torch.no_grad():
            self.last_weights.copy_(weights.detach())
        return total

    def combine(
        self,
        index: Tensor,
        losses: Tensor,
        *,
        features: Tensor | None,
        shared_parameters: list[nn.Parameter] | None,
    ) -> tuple[Tensor, Tensor]:
        """Combine the losses of the present tasks.

        ``index`` (long ``[k]``) holds the positions in ``task_names`` of the ``k`` tasks present
        and ``losses`` (float ``[k]``) their losses, in the same order. Return the total loss and
        the full weight vector ``[T]`` used (for ``weights``).
        """
        raise NotImplementedError

    @property
    def weights(self) -> dict[str, float]:
        """The weight of each task in the last forward (the initial weights before any)."""
        return dict(zip(self.task_names, (float(w) for w in self.last_weights.tolist())))

    def on_train_epoch_end(self) -> None:
        """Called by the training loop after each training epoch; no-op by default."""

    def main_optimizer_parameters(self) -> list[nn.Parameter]:
        """The parameters of this strategy the main optimiser must train (none if it owns one)."""
        return [] if self.owns_optimizer else [p for p in self.parameters() if p.requires_grad]

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"tasks={list(self.task_names)}" + (f", {opts}" if opts else "")

    # ----------------------------------------------------------------- helpers for subclasses

    def _error(self, message: str) -> DistmtlError:
        return DistmtlError(f"weighting '{self.name}': {message}")

    def _float_option(
        self, key: str, *, minimum: float | None = None, positive: bool = False
    ) -> float:
        value = self.options[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self._error(f"option '{key}' must be a finite number, got {value!r}")
        value = float(value)
        if positive and value <= 0:
            raise self._error(f"option '{key}' must be positive, got {value!r}")
        if minimum is not None and value < minimum:
            raise self._error(f"option '{key}' must be at least {minimum}, got {value!r}")
        self.options[key] = value
        return value

    def _int_option(self, key: str, *, minimum: int) -> int:
        value = self.options[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._error(f"option '{key}' must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def _bool_option(self, key: str) -> bool:
        value = self.options[key]
        if not isinstance(value, bool):
            raise self._error(f"option '{key}' must be true or false, got {value!r}")
        return value

    # ----------------------------------------------------------------- validation

    def _check_task_names(self, task_names: Sequence[str]) -> tuple[str, ...]:
        if isinstance(task_names, str) or not isinstance(task_names, Sequence):
            raise self._error(f"task names must be a list of names, got {task_names!r}")
        names = tuple(task_names)
        if not names:
            raise self._error("no tasks given")
        seen: set[str] = set()
        for t in names:
            if not isinstance(t, str) or not t:
                raise self._error(f"task names must be non-empty strings, got {t!r}")
            if t in seen:
                raise self._error(f"duplicate task '{t}'")
            seen.add(t)
        return names

    def _resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        known = sorted(self.OPTIONS)
        for key in options:
            if key not in self.OPTIONS:
                raise self._error(
                    f"unknown option '{key}'{close_matches(key, known)}; "
                    f"known: {', '.join(known) if known else '(none)'}"
                )
        resolved = {k: options.get(k, default) for k, default in self.OPTIONS.items()}
        for key, value in resolved.items():
            if value is REQUIRED:
                raise self._error(f"option '{key}' is required")
        return resolved

    def _gather(self, losses: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        if not isinstance(losses, Mapping):
            raise self._error(f"losses must be a dict of task -> loss, got {type(losses).__name__}")
        positions: list[int] = []
        values: list[Tensor] = []
        for task, loss in losses.items():
            if task not in self._task_index:
                raise self._error(
                    f"loss for unknown task '{task}'{close_matches(task, self.task_names)}; "
                    f"tasks: {', '.join(self.task_names)}"
                )
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise self._error(f"the loss of task '{task}' must be a scalar tensor")
            positions.append(self._task_index[task])
            values.append(loss.reshape(()).float())
        if not values:
            raise self._error("no task losses given")
        device = self.last_weights.device
        index = torch.tensor(positions, dtype=torch.long, device=device)
        return index, torch.stack([v.to(device) for v in values])


class SelfOptimizingWeighting(WeightingStrategy):
    """A strategy that trains its own parameters with its own optimiser inside ``forward``.

    Subclasses create ``self.optimizer`` over their parameters in ``__init__`` and call
    :meth:`_optimizer_step` with their own objective, once per training forward (so once per
    micro-batch under gradient accumulation). The optimiser state is saved and restored with the
    module (``get_extra_state`` / ``set_extra_state``); it is not a tensor, so it travels in
    ``torch.save`` checkpoints but not in tensor-only formats such as safetensors. Under
    data-parallel training each process updates its own copy from its own losses.
    """

    owns_optimizer: ClassVar[bool] = True
    optimizer: torch.optim.Optimizer

    def _optimizer_step(self, objective: Tensor) -> None:
        """One step of the strategy's optimiser on ``objective``.

        The gradient is taken with ``torch.autograd.grad`` on the strategy's parameters only, so
        nothing reaches the network's ``.grad``; gradients already in the strategy's ``.grad``
        (from a network loss that was not detached) are added to it, then cleared. A
        non-finite objective or gradient skips the step (the parameters stay as they are).
        """
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if not torch.isfinite(objective.detach()).all():
            for p in params:
                p.grad = None
            return  # a NaN step would leave every later weight NaN
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            for p in params:
                p.grad = None
            return
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
