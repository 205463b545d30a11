"""Time per training step of Jacobian descent (``weighting: {name: jd}``) relative to ``equal``.

Each weighting trains the same model (``test_resnet``, expressions + 17 AUs from two sources, co-
annotation and DM both ways) for ``--steps`` optimiser steps in the real Lightning loop; a callback
times every step (forward, losses, backward or Jacobian, aggregation, optimiser), the first
``--warmup`` are dropped and the median is reported, with its ratio to ``equal``'s. ``coupling:
task`` gives 2 rows (one per task); ``coupling: rows`` 6 (2 tasks + 4 coupling terms).

    python benchmarks/jd_speed.py [--steps 20] [--batch 32] [--size 64] [--out runs/jd_speed]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import config, write_data  # noqa: E402

from distmtl.training.experiment import build_experiment  # noqa: E402
from distmtl.training.runner import datamodule_from_experiment, module_from_experiment  # noqa: E402

RUNS = [("equal", {"name": "equal"}), ("dwa", {"name": "dwa"}), ("gradnorm", {"name": "gradnorm"})] + [
    (f"jd {a}", {"name": "jd", "aggregator": a}) for a in
    ("mean", "upgrad", "mgda", "pcgrad", "cagrad", "imtlg", "alignedmtl", "dualproj", "nashmtl")] + [
    ("jd upgrad, coupling rows", {"name": "jd", "aggregator": "upgrad", "coupling": "rows"})]


class StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)


def time_steps(cfg: dict, steps: int, warmup: int) -> float:
    exp = build_experiment(cfg)
    module, dm = module_from_experiment(exp), datamodule_from_experiment(exp)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    return statistics.median(timer.times[warmup:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--only", nargs="*", help="names of RUNS to time (default all)")
    p.add_argument("--out", default="runs/jd_speed")
    args = p.parse_args()
    out = Path(args.out)
    files = write_data(out / "data", n=256, size=args.size)
    rows, started = [], time.monotonic()
    runs = [r for r in RUNS if not args.only or r[0] in args.only or r[0] == "equal"]
    for i, (label, weighting) in enumerate(runs, start=1):
        cfg = config(files, args.batch, args.size, 0)
        cfg["weighting"] = {**cfg["weighting"], "options": {}, "aggregator": None, "coupling": "task", **weighting}
        cfg["train"]["val_every_steps"] = args.steps
        torch.manual_seed(0)
        seconds = time_steps(cfg, args.steps, args.warmup)
        rows.append((label, seconds))
        elapsed = time.monotonic() - started
        print(f"[{i}/{len(runs)}] {label}: {seconds * 1000:.1f} ms/step "
              f"({elapsed:.0f} s elapsed, about {elapsed / i * (len(runs) - i):.0f} s left)", flush=True)
    equal = dict(rows)["equal"]
    lines = [f"{args.steps} steps ({args.warmup} warm-up dropped), batch {args.batch}, {args.size} px, "
             f"test_resnet, {platform.processor() or platform.machine()}, torch {torch.__version__.split('+')[0]}, "
             f"{torch.get_num_threads()} threads, {date.today().isoformat()}", "",
             "| weighting | ms / step (median) | relative to equal |", "|---|---|---|"]
    lines += [f"| {label} | {s * 1000:.1f} | {s / equal:.2f} |" for label, s in rows]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "jd_speed.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
