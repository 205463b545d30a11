"""D1/D2: training images per second one worker core delivers, by path, from files and from shards.

Images: JPEG (quality 90) crops of scikit-image's astronaut photograph, resized to the model input
size (112 or 224 px), as face datasets ship aligned crops. Each path runs in this one process on one
thread (what one DataLoader worker does), items through ``MultiSourceDataset`` (the per-sample
seeding included) and ``default_collate`` into batches of 64:

  previous   PIL decode + the previous chain of torchvision v2 transforms on PIL images
             (RandomResizedCrop, RandomHorizontalFlip, RandomRotation, ColorJitter, ToImage,
             ToDtype, Normalize): the worker side before data.augment_on existed
  workers    the fused worker-side augmentation (augment_on: workers, the CPU default): one PIL
             affine warp + a brightness/contrast lookup table
  device     the worker side of augment_on: device (the GPU default): decode (torchvision.io, straight
             to a uint8 tensor) + resize and the 9 augmentation numbers; the augmentation itself
             runs batched on the GPU
  decode     PIL decode alone (open + load + convert to RGB): the limit on the CPU

plus, for reference, ``augment_batch`` on a batch of 64 on this one CPU thread (what a GPU does in
the device path). D2 repeats ``device`` and ``workers`` with the images read from a packed source
(LitData chunks) instead of individual files. Paths alternate within each repeat; figures are
medians over repeats. Rates are per CPU second of this process (``time.process_time``), which is
what "per worker core" means and keeps other processes on a shared machine out of the figures.

    OMP_NUM_THREADS=1 python benchmarks/data_path.py [--sizes 112 224] [--n 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import v2

from distmtl.data.augment import DecodeResize, FusedAugment, augment_batch
from distmtl.data.csvformat import EncodedSource
from distmtl.data.loaders.base import LoadedSource
from distmtl.data.shards import read_shards, write_shards
from distmtl.data.sources import MultiSourceDataset, SourceDataset
from distmtl.data.transforms import Augmentation, Preprocessing

FLAGSHIP = Augmentation(flip=True, crop_scale=(0.8, 1.0), rotation=10.0, color_jitter=0.2)
BATCH = 64


def previous_chain(pre: Preprocessing, aug: Augmentation) -> v2.Compose:
    """The training transform as it was: separate v2 transforms on a PIL image."""
    j = aug.color_jitter
    return v2.Compose([
        v2.RandomResizedCrop((pre.size, pre.size), scale=tuple(aug.crop_scale), ratio=(0.95, 1.05), antialias=True),
        v2.RandomHorizontalFlip(), v2.RandomRotation(aug.rotation),
        v2.ColorJitter(brightness=j, contrast=j, saturation=j),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)])


def write_jpegs(folder: Path, n: int, size: int) -> list[str]:
    from skimage import data

    photo = data.astronaut()
    rng = np.random.default_rng(size)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        side = int(rng.integers(220, 400))
        y, x = rng.integers(0, 512 - side, 2)
        crop = Image.fromarray(photo[y: y + side, x: x + side]).resize((size, size), Image.BILINEAR)
        path = folder / f"{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(str(path))
    return paths


def source_of(paths: list[str], shards: str | None = None) -> EncodedSource:
    n = len(paths)
    images = np.arange(n) if shards else np.asarray(paths)
    return EncodedSource("bench", images, {"t": np.zeros((n, 1), np.float32)}, {"t": np.ones(n, bool)},
                         shards=shards)


def rate(dataset, n: int, collate: bool = True) -> float:
    start = time.process_time()
    for b in range(0, n, BATCH):
        items = [dataset[i] for i in range(b, min(n, b + BATCH))]
        if collate:
            default_collate(items)
    return n / (time.process_time() - start)


def decode_rate(paths: list[str]) -> float:
    start = time.process_time()
    for p in paths:
        with Image.open(p) as img:
            img.load()
            img.convert("RGB")
    return len(paths) / (time.process_time() - start)


def batched_rate(size: int, repeats: int = 5) -> float:
    pre = Preprocessing(size=size)
    images = torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8)
    params = torch.rand(BATCH, 9)
    augment_batch(images, params, FLAGSHIP, pre)
    start = time.process_time()
    for _ in range(repeats):
        augment_batch(images, params, FLAGSHIP, pre)
    return repeats * BATCH / (time.process_time() - start)


def measure(size: int, n: int, repeats: int, work: Path) -> dict[str, float]:
    paths = write_jpegs(work / f"jpeg{size}", n, size)
    frame = __import__("pandas").DataFrame({"image": paths})
    shard_dir = work / f"shards{size}"
    if not shard_dir.exists():
        write_shards(LoadedSource("bench", frame), shard_dir)
    shards = read_shards(shard_dir).shards
    pre = Preprocessing(size=size)
    paths_for = {
        "previous": MultiSourceDataset([SourceDataset(source_of(paths), previous_chain(pre, FLAGSHIP), 3)]),
        "workers": MultiSourceDataset([SourceDataset(source_of(paths), FusedAugment(pre, FLAGSHIP), 3, size)]),
        "device": MultiSourceDataset([SourceDataset(source_of(paths), DecodeResize(pre), 3, size, as_tensor=True)]),
        "workers/shards": MultiSourceDataset([SourceDataset(source_of(paths, shards), FusedAugment(pre, FLAGSHIP), 3,
                                                            size)]),
        "device/shards": MultiSourceDataset([SourceDataset(source_of(paths, shards), DecodeResize(pre), 3, size,
                                                           as_tensor=True)]),
    }
    results: dict[str, list[float]] = {k: [] for k in [*paths_for, "decode", "batched"]}
    for ds in paths_for.values():  # warm: page cache, shard reader opened
        rate(ds, min(n, BATCH))
    for r in range(repeats):
        for name, ds in paths_for.items():
            results[name].append(rate(ds, n))
        results["decode"].append(decode_rate(paths))
        results["batched"].append(batched_rate(size))
        print(f"  {size} px repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()),
              flush=True)
    return {k: statistics.median(v) for k, v in results.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--n", type=int, default=400, help="images per size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the device worker path at the last size")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# D1/D2 data path, {date.today()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, 1 thread; command: python benchmarks/data_path.py "
          f"{' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = {size: measure(size, args.n, args.repeats, work) for size in args.sizes}
        print("\n| images/s per core | " + " | ".join(f"{s} px" for s in args.sizes) + " |")
        print("|---|" + "---|" * len(args.sizes))
        for key in ["previous", "workers", "device", "decode", "workers/shards", "device/shards", "batched"]:
            print(f"| {key} | " + " | ".join(f"{table[s][key]:.0f}" for s in args.sizes) + " |")
        print("\n| ratio | " + " | ".join(f"{s} px" for s in args.sizes) + " |")
        print("|---|" + "---|" * len(args.sizes))
        for label, a, b in [("workers / previous (CPU goal >= 2)", "workers", "previous"),
                            ("device worker side / decode (GPU goal >= 0.75)", "device", "decode"),
                            ("previous / decode", "previous", "decode"),
                            ("workers / decode", "workers", "decode"),
                            ("device from shards / from files", "device/shards", "device"),
                            ("workers from shards / from files", "workers/shards", "workers")]:
            print(f"| {label} | " + " | ".join(f"{table[s][a] / table[s][b]:.2f}" for s in args.sizes) + " |")
        if args.profile:
            import cProfile
            import pstats

            size = args.sizes[-1]
            paths = write_jpegs(work / f"jpeg{size}", args.n, size)
            ds = MultiSourceDataset([SourceDataset(source_of(paths), DecodeResize(Preprocessing(size=size)), 3, size,
                                                   as_tensor=True)])
            profile = cProfile.Profile()
            profile.runcall(rate, ds, args.n)
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
