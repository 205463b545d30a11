"""A batch sampler that draws every batch from all sources in configured ratios.

Each global batch (``batch_size * world_size`` indices) holds source ``s`` in proportion ``w_s``;
counts are allocated with a carried remainder, so proportions over an epoch match the ratios
exactly up to one sample per source. Each source is read as a stream of fresh permutations, so
within an epoch no sample repeats until its source is exhausted (a small source oversampled by
its ratio necessarily cycles). Under DDP every rank builds the same global batch from the shared
seed and takes its own disjoint slice; ``use_distributed_sampler=False`` in the Trainer leaves
this sampler in charge of the training loader.

The world size is read when an epoch's length is asked for or its iteration starts (after the
process group exists, not when the DataModule is built), so an epoch covers the data once
whatever the number of processes. Nothing of size "rows of a source" is built per epoch: the
permutations are keyed bijections of ``[0, size)`` (``data.permutation``), evaluated for the
positions a block of batches needs, and the per-batch source counts (which do not change between
epochs) are computed once per run as iteration reaches them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from distmtl.data.permutation import stream_values
from distmtl.errors import DistmtlError

RATIO_MODES = ("equal", "proportional", "sqrt")
BLOCK = 1 << 14  # indices of the global batches built at a time


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
        self._epoch_batches = int(epoch_batches) if epoch_batches else None
        self._table: list | None = None  # per-batch source cursors, see _cursors
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
    def epoch_batches(self) -> int:
        """Batches per rank and epoch: ``data.epoch_batches`` if given, else one pass over all the
        rows, split over the ranks of the run (read now, so under DDP once the group exists)."""
        if self._epoch_batches is not None:
            return self._epoch_batches
        return max(1, int(self.offsets[-1]) // (self.batch_size * self.world_size))

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

    def _counts(self, global_batch: int) -> Iterator[list[int]]:
        """Per-source counts of each global batch in turn (carried remainder, largest share first)."""
        shares = [global_batch * float(w) for w in self.weights]
        residual = [0.0] * len(shares)
        while True:
            residual = [r + g for r, g in zip(residual, shares)]
            n = [math.floor(r) for r in residual]
            short = global_batch - sum(n)
            if short > 0:
                order = sorted(range(len(n)), key=lambda i: n[i] - residual[i])  # stable: first wins ties
                for i in order[:short]:
                    n[i] += 1
            residual = [r - k for r, k in zip(residual, n)]
            yield n

    def _cursors(self, upto: int) -> np.ndarray:
        """``[upto + 1, n_sources]``: draws from each source before each of the first ``upto`` batches
        (and after the last). The table is the same every epoch: it is extended as iteration reaches
        new batches and rebuilt only when the weights, batch size or world size change."""
        global_batch = self.batch_size * self.world_size
        signature = (global_batch, tuple(float(w) for w in self.weights), self.epoch_batches)
        if self._table is None or self._table[0] != signature:
            cum = np.zeros((self.epoch_batches + 1, len(self.sizes)), dtype=np.int64)
            self._table = [signature, cum, 0, self._counts(global_batch)]
        _, cum, filled, counts = self._table
        for b in range(filled, upto):
            cum[b + 1] = cum[b] + next(counts)
        self._table[2] = max(filled, upto)
        return cum[: upto + 1]

    def batch_counts(self) -> np.ndarray:
        """[epoch_batches, n_sources] per-source counts of every global batch."""
        return np.diff(self._cursors(self.epoch_batches), axis=0)

    def block_batches(self) -> int:
        return max(1, BLOCK // (self.batch_size * self.world_size))

    def iter_global_batches(self, start: int = 0) -> Iterator[np.ndarray]:
        """The epoch's global batches from batch ``start`` on (identical on every rank).

        They are built a block of batches at a time (about ``BLOCK`` indices), each block from its
        sources' stream positions and its own generator keyed by (seed, epoch, block), so memory
        stays at one block and a resumed epoch rebuilds exactly the batches it skipped to."""
        global_batch = self.batch_size * self.world_size
        total, per_block = self.epoch_batches, self.block_batches()
        sources = np.arange(len(self.sizes))
        for block in range(start // per_block, -(-total // per_block)):
            lo, hi = block * per_block, min(total, (block + 1) * per_block)
            cum = self._cursors(hi)
            counts = cum[lo + 1: hi + 1] - cum[lo:hi]
            # slot -> source, batch after batch, each batch's slots grouped by source
            slot_source = np.repeat(np.tile(sources, hi - lo), counts.ravel())
            values = np.empty(len(slot_source), dtype=np.int64)
            for s, size in enumerate(self.sizes):
                values[slot_source == s] = self.offsets[s] + stream_values(
                    size, (self.seed, self.epoch, s), int(cum[lo, s]), int(cum[hi, s] - cum[lo, s]))
            # the order inside each batch decides which rank gets which of its samples
            rng = np.random.default_rng([self.seed, self.epoch, block])
            batches = rng.permuted(values.reshape(hi - lo, global_batch), axis=1)
            for i in range(max(start, lo) - lo, hi - lo):
                yield batches[i]

    def global_batches(self) -> list[np.ndarray]:
        """The whole epoch's global batches (for inspection; iteration never builds this list)."""
        return list(self.iter_global_batches())

    def __iter__(self) -> Iterator[list[int]]:
        rank, b = self.rank, self.batch_size
        start = self.start_batch
        self.start_batch = 0
        # indices carry the epoch (index + epoch * total) so the dataset can seed each sample's
        # augmentation by (seed, epoch, sample): reproducible across workers, prefetching and resumes
        offset = self.epoch * int(self.offsets[-1])
        for batch in self.iter_global_batches(start):
            yield (batch[rank * b: (rank + 1) * b] + offset).tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.start_batch = int(state["start_batch"])
        self.seed = int(state["seed"])
