"""A batch sampler that draws every batch from all sources in configured ratios.

Each global batch (``batch_size * world_size`` indices) holds source ``s`` in proportion ``w_s``;
counts are allocated with a carried remainder, so proportions over an epoch match the ratios
exactly up to one sample per source. Each source is read as a stream of fresh permutations, so
within an epoch no sample repeats until its source is exhausted (a small source oversampled by
its ratio necessarily cycles). Under DDP every rank builds the same global batch from the shared
seed and takes its own disjoint slice; ``use_distributed_sampler=False`` in the Trainer leaves
this sampler in charge.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from distmtl.errors import DistmtlError

RATIO_MODES = ("equal", "proportional", "sqrt")


def source_weights(sizes: Sequence[int], ratios: str | Sequence[float]) -> np.ndarray:
    sizes_arr = np.asarray(sizes, dtype=float)
    if isinstance(ratios, str):
        if ratios == "equal":
            w = np.ones_like(sizes_arr)
        elif ratios == "proportional":
            w = sizes_arr.copy()
        elif ratios == "sqrt":
            w = np.sqrt(sizes_arr)
        else:
            raise DistmtlError(f"data.sampling: unknown mode '{ratios}'; expected one of "
                               f"{', '.join(RATIO_MODES)} or a list of weights, one per source")
    else:
        w = np.asarray(list(ratios), dtype=float)
        if len(w) != len(sizes_arr):
            raise DistmtlError(f"data.sampling: {len(w)} weights for {len(sizes_arr)} sources")
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise DistmtlError(f"data.sampling: weights must be non-negative and not all 0, got {list(w)}")
    return w / w.sum()


class MultiSourceBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        ratios: str | Sequence[float] = "equal",
        epoch_batches: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if any(s <= 0 for s in sizes):
            raise DistmtlError(f"every training source needs at least one sample, sizes: {list(sizes)}")
        self.sizes = [int(s) for s in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.batch_size = int(batch_size)
        self.weights = source_weights(self.sizes, ratios)
        self.seed = int(seed)
        self._rank, self._world = rank, world_size
        total = sum(self.sizes)
        self.epoch_batches = int(epoch_batches or max(1, total // (self.batch_size * self.world_size)))
        self.epoch = 0
        self.start_batch = 0  # batches of the current epoch already consumed (resume)

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        if self._world is not None:
            return self._world
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def sampler(self) -> MultiSourceBatchSampler:
        # Lightning calls set_epoch on ``dataloader.batch_sampler.sampler`` at every epoch start;
        # pointing it here makes each epoch draw a fresh order instead of replaying epoch 0
        return self

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.epoch_batches

    def batch_counts(self) -> np.ndarray:
        """[epoch_batches, n_sources] per-source counts of every global batch."""
        global_batch = self.batch_size * self.world_size
        residual = np.zeros(len(self.sizes))
        counts = np.zeros((self.epoch_batches, len(self.sizes)), dtype=np.int64)
        for b in range(self.epoch_batches):
            residual += global_batch * self.weights
            n = np.floor(residual).astype(np.int64)
            short = global_batch - int(n.sum())
            if short > 0:
                order = np.argsort(-(residual - n), kind="stable")
                n[order[:short]] += 1
            residual -= n
            counts[b] = n
        return counts

    def global_batches(self) -> list[np.ndarray]:
        """The epoch's global batches (identical on every rank)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        counts = self.batch_counts()
        streams = []
        for s, size in enumerate(self.sizes):
            need = int(counts[:, s].sum())
            reps = max(1, math.ceil(need / size))
            streams.append(np.concatenate([rng.permutation(size) for _ in range(reps)])[:need]
                           + self.offsets[s])
        cursors = np.zeros(len(self.sizes), dtype=np.int64)
        batches = []
        for b in range(self.epoch_batches):
            parts = []
            for s in range(len(self.sizes)):
                n = counts[b, s]
                parts.append(streams[s][cursors[s]: cursors[s] + n])
                cursors[s] += n
            batch = np.concatenate(parts)
            batches.append(batch[rng.permutation(len(batch))])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        rank, b = self.rank, self.batch_size
        batches = self.global_batches()
        start = self.start_batch
        self.start_batch = 0
        # indices carry the epoch (index + epoch * total) so the dataset can seed each sample's
        # augmentation by (seed, epoch, sample): reproducible across workers, prefetching and resumes
        offset = self.epoch * int(self.offsets[-1])
        for batch in batches[start:]:
            yield (batch[rank * b: (rank + 1) * b] + offset).tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.start_batch = int(state["start_batch"])
        self.seed = int(state["seed"])
