"""SynthFACS rendering throughput, one process.

Times the full per-image path of the dataset writer (per-image RNG, labels, nuisance, identity
lookup, drawing, downsampling, blur/lighting/noise) and, with --png, the PNG encoding too.

    python benchmarks/synthfacs_render.py                 # 2000 images at 64x64, nuisance 1
    python benchmarks/synthfacs_render.py --size 128 --png

Prints images/s of wall-clock time and images/s of process CPU time (the latter is the
figure to compare on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image

from distmtl.data.synthfacs.dataset import sample_image
from distmtl.data.synthfacs.faces import make_identity, split_identities
from distmtl.data.synthfacs.render import DEFAULT_SUPERSAMPLE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images to render")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--nuisance", type=float, default=1.0)
    parser.add_argument("--supersample", type=int, default=DEFAULT_SUPERSAMPLE)
    parser.add_argument("--identities", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="report the best of these runs")
    parser.add_argument("--png", action="store_true",
                        help="include PNG encoding (in memory, as the writer does)")
    args = parser.parse_args(argv)

    train_ids, _ = split_identities(args.identities)
    for index in train_ids:  # identities are drawn once per process and cached
        make_identity(args.seed, index)
    ids = (train_ids.start, train_ids.stop)

    best_wall = best_cpu = float("inf")
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(args.n):
            image, _ = sample_image(args.seed, "expr_train", index, size=args.size,
                                    nuisance=args.nuisance, identities=ids,
                                    supersample=args.supersample)
            if args.png:
                Image.fromarray(image).save(io.BytesIO(), format="PNG", compress_level=1)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    what = "rendered + PNG-encoded" if args.png else "rendered"
    print(f"{what} {args.n} images at {args.size}x{args.size} (supersample {args.supersample}, "
          f"nuisance {args.nuisance}), best of {args.repeats}")
    for label, seconds in (("wall clock", best_wall), ("per CPU second", best_cpu)):
        print(f"{args.n / seconds:.0f} images/s ({label}, {1e3 * seconds / args.n:.2f} ms/image)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
