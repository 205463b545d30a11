"""How the training sources mix over a run: caps on repetition and the report shown before training.

Under ``data.sampling: equal`` a 15k-image source beside a 2.6M-frame one is drawn as often as the
big one, so over a run it cycles about 170 times for every pass over the big one. ``max_repeats``
(for all sources in ``data``, or per source) caps the passes over a source in the whole run: the
source's share of each batch is lowered until the cap holds, and the share it gives up goes to the
uncapped sources in proportion to their weights. The report lists, for every source, its size,
its share of each batch and how many times it will be seen, before the first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distmtl.data.sampler import source_weights
from distmtl.errors import DistmtlError


def capped_weights(weights: Sequence[float], sizes: Sequence[int], caps: Sequence[float | None],
                   run_samples: int, names: Sequence[str] | None = None) -> np.ndarray:
    """``weights`` lowered so that source ``s`` is seen at most ``caps[s]`` times in ``run_samples``
    draws; the share taken off goes to the sources below their caps, in proportion to their weights."""
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    sizes_arr = np.asarray(sizes, dtype=float)
    limit = np.array([np.inf if c is None else float(c) * size / max(1, run_samples)
                      for c, size in zip(caps, sizes_arr)])
    fixed = np.zeros(len(w), dtype=bool)
    out = w.copy()
    for _ in range(len(w) + 1):
        over = ~fixed & (out > limit * (1 + 1e-12))
        if not over.any():
            break
        fixed |= over
        out[fixed] = limit[fixed]
        free = 1.0 - out[fixed].sum()
        base = w[~fixed]
        if free <= 0 or base.sum() <= 0:
            break
        out[~fixed] = base / base.sum() * free
    if out.sum() < 1 - 1e-9 or (out[~fixed].sum() <= 0 and not fixed.all()):
        labels = names or [f"source {i}" for i in range(len(w))]
        allowed = int(sum(limit[fixed] * run_samples))
        raise DistmtlError(
            f"data.max_repeats: the run draws {run_samples} samples, but the caps on "
            f"{', '.join(labels[i] for i in np.flatnonzero(fixed))} allow only {allowed} "
            f"(raise max_repeats, leave a source uncapped, or shorten train.max_steps)")
    return out / out.sum()


@dataclass
class SourceMix:
    names: list[str]
    sizes: list[int]
    weights: np.ndarray  # share of each global batch, after the caps
    caps: list[float | None]
    global_batch: int
    run_batches: int
    epoch_batches: int

    @property
    def passes(self) -> np.ndarray:
        """How many times each source is seen over the run (draws / size)."""
        return self.weights * self.global_batch * self.run_batches / np.asarray(self.sizes, dtype=float)

    def table(self) -> str:
        head = (f"training mix: {self.run_batches} batches of {self.global_batch} "
                f"({self.epoch_batches} batches an epoch)")
        rows = [("source", "size", "share", "per batch", "passes in run", "cap")]
        for name, size, w, p, cap in zip(self.names, self.sizes, self.weights, self.passes, self.caps):
            rows.append((name, f"{size:,}", f"{100 * w:.1f}%", f"{w * self.global_batch:.1f}",
                         f"{p:,.2f}", "-" if cap is None else f"{cap:g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(wd) if i == 0 else c.rjust(wd)
                                          for i, (c, wd) in enumerate(zip(r, widths))) for r in rows]
        return "\n".join(lines)


def source_mix(names: Sequence[str], sizes: Sequence[int], sampling, caps: Sequence[float | None], *,
               batch_size: int, world_size: int, run_batches: int,
               epoch_batches: int | None = None) -> SourceMix:
    """The per-source shares (caps applied) of a run of ``run_batches`` batches on ``world_size`` ranks."""
    global_batch = int(batch_size) * int(world_size)
    base = source_weights(sizes, sampling or "equal")
    weights = capped_weights(base, sizes, caps, global_batch * int(run_batches), list(names))
    epoch = int(epoch_batches or max(1, sum(sizes) // global_batch))
    return SourceMix(list(names), [int(s) for s in sizes], weights, list(caps), global_batch,
                     int(run_batches), epoch)
