"""Cost of one epoch of the multi-source batch sampler on a large mix (no images are read).

    python benchmarks/sampler_epoch.py                       # 7 sources, 4.6M rows, batch 64
    python benchmarks/sampler_epoch.py --world 4 --rank 1    # one rank of a 4-process run

Prints, per epoch: batches, indices drawn, time to the first batch, time for the whole epoch, and
the peak memory numpy allocated while iterating (tracemalloc) and the growth of the process's peak
RSS. The first epoch also computes the per-batch source counts, which later epochs reuse.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

from distmtl.data.sampler import MultiSourceBatchSampler

DEFAULT_SIZES = [2_600_000, 1_000_000, 450_000, 290_000, 150_000, 100_000, 15_000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sampling", default="equal")
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = MultiSourceBatchSampler(args.sizes, batch_size=args.batch, ratios=args.sampling, seed=0,
                                      rank=args.rank, world_size=args.world)
    print(f"{len(args.sizes)} sources, {sum(args.sizes):,} rows, batch {args.batch}, "
          f"rank {args.rank} of {args.world}: {len(sampler):,} batches an epoch")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        tracemalloc.start()
        started = time.perf_counter()
        first, drawn = None, 0
        for batch in sampler:
            if first is None:
                first = time.perf_counter() - started
            drawn += len(batch)
        total = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
        print(f"epoch {epoch}: {drawn:,} indices; first batch after {first:.3f} s, epoch {total:.2f} s; "
              f"peak traced {peak / 2**20:.1f} MiB, peak RSS growth {rss:.0f} MiB")


if __name__ == "__main__":
    main()
