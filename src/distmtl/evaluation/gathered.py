"""An evaluation split's per-sample outputs as torchmetrics state, gathered once per sample.

Metrics such as macro-F1 or verification on pairs of images need every sample of the split at
once, so the state kept is the samples themselves ("cat" states). Under DDP each process evaluates
its shard of the split; ``compute()`` lets torchmetrics gather every process's rows, then puts
them back in dataset order by each row's position in the split and keeps each position once. A
sharded loader that pads its last shard (torch's ``DistributedSampler`` repeats a few samples so
that every process runs the same number of batches) therefore adds nothing, and the metrics are
those of a single-process evaluation of the same split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class GatheredOutputs(Metric):
    """``update(index, parts)`` keeps one batch: ``index`` the samples' positions in the split,
    ``parts`` ``{task: (tensor, ...)}`` with one row per sample in each tensor. ``compute()``
    returns ``(parts, index)`` over all processes, sorted by position, each position once."""

    full_state_update = False

    def __init__(self, layout: Mapping[str, int]):
        """``layout``: how many tensors each task keeps (3, or 5 for an identity task)."""
        super().__init__(compute_with_cache=False)
        self.layout = dict(layout)
        self._states = {t: [f"part_{i}_{j}" for j in range(n)] for i, (t, n) in enumerate(self.layout.items())}
        self._bool: set[str] = set()
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for names in self._states.values():
            for name in names:
                self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, parts: Mapping[str, Sequence[torch.Tensor]]) -> None:
        self.index.append(index.reshape(-1).long())
        for t, names in self._states.items():
            for name, tensor in zip(names, parts[t], strict=True):
                if tensor.dtype == torch.bool:  # gathered as bytes: not every backend moves bools
                    self._bool.add(name)
                    tensor = tensor.to(torch.uint8)
                getattr(self, name).append(tensor.detach())

    def compute(self) -> tuple[dict[str, tuple[torch.Tensor, ...]], torch.Tensor]:
        index = dim_zero_cat(self.index)
        order = torch.argsort(index, stable=True)
        ordered = index[order]
        first = torch.ones_like(ordered, dtype=torch.bool)
        first[1:] = ordered[1:] != ordered[:-1]
        keep = order[first]
        out = {}
        for t, names in self._states.items():
            tensors = []
            for name in names:
                value = dim_zero_cat(getattr(self, name))[keep]
                tensors.append(value.bool() if name in self._bool else value)
            out[t] = tuple(tensors)
        return out, index[keep]
