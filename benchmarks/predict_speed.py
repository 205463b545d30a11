"""Predict throughput against the bare network forward.

A: ``Predictor.predict`` on PNG files (decode, the eval preprocessing, forward, softmax/sigmoid,
   thresholds, DataFrame), for a default-size model: backbone ``test_resnet``, 64x64 inputs,
   tasks expression (7 classes), au (17 labels), va (2 dimensions).
B: the same network (timm backbone + the same heads) on a ready float tensor of the same batch
   size: no decoding, no preprocessing, no post-processing.

A and B alternate within each repeat in one process; the figures are medians over repeats of
images/s and of the per-repeat ratio A/B.

    python benchmarks/predict_speed.py [--threads 1] [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def build_model_folder(folder: Path, size: int) -> None:
    from distmtl.config import resolve
    from distmtl.inference.export import save_model_folder
    from distmtl.training.module import MultiTaskModule

    config = resolve({"tasks": {"expression": {"kind": "multiclass", "labels": "basic7"},
                                "au": {"kind": "multilabel", "labels": "au17"},
                                "va": {"kind": "regression", "labels": "valence_arousal"}},
                      "data": {"sources": ["unused.csv"], "image_size": size}})
    tasks = {name: dict(spec) for name, spec in config["tasks"].items()}
    torch.manual_seed(0)
    save_model_folder(MultiTaskModule(config, tasks).eval(), folder)


def write_images(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_predict(predictor, paths, batch: int, workers: int) -> float:
    start = time.perf_counter()
    frame = predictor.predict(paths, batch_size=batch, num_workers=workers)
    elapsed = time.perf_counter() - start
    assert len(frame) == len(paths) and (frame["error"] == "").all()
    return len(paths) / elapsed


@torch.inference_mode()
def time_bare(net, n: int, batch: int, size: int, device: torch.device) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    steps = -(-n // batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        outputs, _ = net(x)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--images", type=int, default=256, help="images per measurement (batch >= 8)")
    parser.add_argument("--images-batch1", type=int, default=64, help="images per measurement at batch < 8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of predict")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from distmtl.inference.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        build_model_folder(Path(tmp) / "model", args.size)
        predictor = Predictor.from_pretrained(Path(tmp) / "model", device=args.device)
        paths = write_images(Path(tmp) / "images", max(args.images, args.images_batch1), args.size)
        net, device = predictor.net, predictor.device
        print(f"device {device}, torch threads {torch.get_num_threads()}, predict workers {args.num_workers}, "
              f"backbone test_resnet {args.size}x{args.size}, {args.repeats} repeats (median)")
        print(f"{'batch':>5} {'predict img/s':>14} {'bare img/s':>11} {'ratio':>6}")
        for batch in args.batches:
            n = args.images if batch >= 8 else args.images_batch1
            subset = paths[:n]
            time_predict(predictor, subset[: 2 * batch], batch, args.num_workers)  # warm-up
            time_bare(net, 2 * batch, batch, args.size, device)
            a, b, ratios = [], [], []
            for _ in range(args.repeats):
                a.append(time_predict(predictor, subset, batch, args.num_workers))
                b.append(time_bare(net, n, batch, args.size, device))
                ratios.append(a[-1] / b[-1])
            print(f"{batch:>5} {statistics.median(a):>14.1f} {statistics.median(b):>11.1f} "
                  f"{statistics.median(ratios):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
