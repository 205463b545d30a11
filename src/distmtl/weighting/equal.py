"""Fixed task weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distmtl.errors import close_matches
from distmtl.weighting.base import WeightingStrategy


class EqualWeighting(WeightingStrategy):
    """``total = sum_i w_i * L_i`` with fixed weights.

    Option ``weights``: ``{task: weight}``; tasks not listed get 1 (the default is 1 for every
    task). Weights must be finite and non-negative.
    """

    name: ClassVar[str] = "equal"
    OPTIONS: ClassVar[Mapping[str, Any]] = {"weights": None}

    def __init__(self, task_names: Sequence[str], **options: Any):
        super().__init__(task_names, **options)
        given = self.options["weights"]
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise self._error(f"option 'weights' must map task names to numbers, got {given!r}")
        values = [1.0] * self.num_tasks
        for task, value in given.items():
            if task not in self._task_index:
                raise self._error(
                    f"option 'weights' names unknown task '{task}'"
                    f"{close_matches(task, self.task_names)}; tasks: {', '.join(self.task_names)}"
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise self._error(
                    f"the weight of task '{task}' must be a non-negative number, got {value!r}"
                )
            values[self._task_index[task]] = float(value)
        self.options["weights"] = dict(zip(self.task_names, values))
        self.register_buffer("task_weights", torch.tensor(values))
        self.last_weights.copy_(self.task_weights)

    def combine(
        self,
        index: Tensor,
        losses: Tensor,
        *,
        features: Tensor | None,
        shared_parameters: list[nn.Parameter] | None,
    ) -> tuple[Tensor, Tensor]:
        weights = self.task_weights
        return (weights[index] * losses).sum(), weights
