"""Speed of the multi-task pipeline against the bare backbone, measured side by side in one process.

S1: one optimiser step of the full pipeline (two sources per batch, masks, co-annotation, DM both
    ways, dynamic weighting) / one step of the bare timm backbone + one CE head, same batch.
S2: images/s the DataModule delivers (workers as configured) / images/s the training step consumes.
Memory: peak RSS growth during full-pipeline steps vs bare steps (same batch), in MiB.

A/B alternate within each repeat; figures are medians over repeats.

    python benchmarks/speed.py [--batch-sizes 32 128] [--image-sizes 64 112] [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from distmtl.config import resolve
from distmtl.training.experiment import build_experiment
from distmtl.training.runner import datamodule_from_experiment, module_from_experiment
from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS


def write_data(root: Path, n: int = 512, size: int = 64) -> dict:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    header = "image,expression," + ",".join(AUS_17)
    rows = {"expr": [header], "au": [header]}
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"img/{i}.png")
        k = BASIC_EXPRESSIONS[i % 7]
        aus = ",".join(str(int(v)) for v in rng.random(17) < 0.3)
        if i % 2:
            rows["expr"].append(f"img/{i}.png,{k}" + "," * 17)
        else:
            rows["au"].append(f"img/{i}.png,,{aus}")
    for name, lines in rows.items():
        (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return {k: root / f"{k}.csv" for k in rows}


def config(files: dict, batch: int, size: int, workers: int) -> dict:
    on = {"enabled": True}
    return resolve({
        "tasks": {"expression": {"kind": "multiclass", "labels": "basic7"},
                  "au": {"kind": "multilabel", "labels": "au17"}},
        "data": {"sources": [{"csv": str(files["expr"])}, {"csv": str(files["au"])}], "image_size": size,
                 "batch_size": batch, "num_workers": workers},
        "relatedness": [{"tasks": ["expression", "au"], "table": "du2014", "coannotation": on,
                         "dm_a_to_b": on, "dm_b_to_a": on}],
        "weighting": {"name": "dynamic"},
    })


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(batch: int, size: int, repeats: int, steps: int, workers: int, files: dict) -> dict:
    exp = build_experiment(config(files, batch, size, workers), with_eval=False)
    module = module_from_experiment(exp).train()
    dm = datamodule_from_experiment(exp)
    loader_iter = iter(dm.train_dataloader())
    batches = [next(loader_iter) for _ in range(2)]
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)

    bare = timm.create_model(module.config["model"]["backbone"], num_classes=7, in_chans=3)
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=1e-3)
    x = batches[0]["image"]
    y = torch.randint(0, 7, (x.shape[0],))

    def full_step(b):
        opt.zero_grad(set_to_none=True)
        loss, _ = module.compute_losses(b)
        loss.backward()
        opt.step()

    def bare_step():
        bare_opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(bare(x), y).backward()
        bare_opt.step()

    for _ in range(2):
        full_step(batches[0])
        bare_step()
    ratios, full_t, bare_t = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(steps):
            full_step(batches[i % 2])
        a = (time.perf_counter() - t) / steps
        t = time.perf_counter()
        for _ in range(steps):
            bare_step()
        b = (time.perf_counter() - t) / steps
        ratios.append(a / b)
        full_t.append(a)
        bare_t.append(b)
    step_s = statistics.median(full_t)
    # S2: DataModule delivery rate, consumed alone
    n, t = 0, time.perf_counter()
    for _ in range(max(4, 2 * steps)):
        try:
            b = next(loader_iter)
        except StopIteration:
            loader_iter = iter(dm.train_dataloader())
            b = next(loader_iter)
        n += b["image"].shape[0]
    deliver = n / (time.perf_counter() - t)
    return {"batch": batch, "size": size, "s1": statistics.median(ratios), "full_ms": 1000 * step_s,
            "bare_ms": 1000 * statistics.median(bare_t), "s2": deliver / (batch / step_s),
            "deliver": deliver, "consume": batch / step_s, "rss": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[64, 112])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", default="/tmp/distmtl_speed_data")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# {date.today()} | {platform.processor() or platform.machine()} | {torch.get_num_threads()} threads"
          f" | torch {torch.__version__} | timm {timm.__version__}")
    print("| batch | image | S1 full/bare step | full ms | bare ms | S2 deliver/consume | delivered img/s"
          " | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.image_sizes:
        files = write_data(Path(args.data) / str(size), size=size)
        for batch in args.batch_sizes:
            r = bench(batch, size, args.repeats, args.steps, args.workers, files)
            print(f"| {r['batch']} | {r['size']} | {r['s1']:.3f} | {r['full_ms']:.1f} | {r['bare_ms']:.1f} | "
                  f"{r['s2']:.2f} | {r['deliver']:.0f} | {r['rss']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
