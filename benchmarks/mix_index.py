"""D3: a 2,000,000-row, 7-source training mix: time to first batch, peak RSS, per-epoch index cost.

Seven generic-CSV sources with the relative sizes of the users' job (Aff-Wild2 2.6M frames,
EmotioNet 1M, AffectNet 290k, CelebA 200k, BP4D 140k, DISFA 130k, RAF-DB 15k), scaled to 2,000,000
rows in all; each annotates its own tasks (expressions, 12 AUs, valence/arousal, 5 attributes).
``image`` cycles over a pool of small real PNG files, so ``check_images: exists`` stats real files.
Each measurement runs in a fresh child process, once on this checkout's sources and, with
``--before DIR``, once on another checkout (e.g. ``git archive <commit> src | tar -x -C DIR``):

  load         build_experiment (read, validate, stat every image, encode): seconds
  first batch  DataModule + DataLoader (0 workers: this rank's own cost) to the first batch of 64
  epoch index  the sampler's cost of an epoch's indices: time to its first batch (what every epoch
               start pays) and to all of them (31,250 batches of 64)
  peak RSS     of the process, after all of the above

    OMP_NUM_THREADS=1 python benchmarks/mix_index.py [--rows 2000000] [--before /tmp/before/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

SOURCES = {"affwild2": 2_600_000, "emotionet": 1_000_000, "affectnet": 290_000, "celeba": 200_000,
           "bp4d": 140_000, "disfa": 130_000, "rafdb": 15_000}
TASKS_OF = {"affwild2": ("expression", "au", "va"), "emotionet": ("au",), "affectnet": ("expression", "va"),
            "celeba": ("attr",), "bp4d": ("au",), "disfa": ("au",), "rafdb": ("expression",)}
EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
AUS = ("AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
ATTRS = ("Eyeglasses", "Smiling", "Male", "Young", "Bald")


def sizes_for(rows: int) -> dict[str, int]:
    total = sum(SOURCES.values())
    sizes = {k: max(1, round(v * rows / total)) for k, v in SOURCES.items()}
    sizes["affwild2"] += rows - sum(sizes.values())
    return sizes


def write_sources(out: Path, rows: int, pool: int = 500) -> None:
    import numpy as np
    from PIL import Image

    (out / "pool").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(pool):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out / "pool" / f"{i:04d}.png")
    for name, n in sizes_for(rows).items():
        path = out / f"{name}_{rows}.csv"
        if path.exists():
            continue
        tasks = TASKS_OF[name]
        cols = {"image": [f"pool/{i % pool:04d}.png" for i in range(n)]}
        if "expression" in tasks:
            cols["expression"] = np.asarray(EXPRESSIONS)[rng.integers(0, 7, n)]
        if "au" in tasks:
            for au in AUS:
                cols[au] = (rng.random(n) < 0.3).astype(np.int8)
        if "va" in tasks:
            cols["valence"] = rng.uniform(-1, 1, n).round(3)
            cols["arousal"] = rng.uniform(-1, 1, n).round(3)
        if "attr" in tasks:
            for a in ATTRS:
                cols[a] = (rng.random(n) < 0.4).astype(np.int8)
        import pandas as pd

        pd.DataFrame(cols).to_csv(path, index=False)


def config(out: Path, rows: int) -> dict:
    from distmtl.config import resolve

    return resolve({
        "tasks": {"expression": {"kind": "multiclass", "labels": list(EXPRESSIONS)},
                  "au": {"kind": "multilabel", "labels": list(AUS)},
                  "va": {"kind": "regression", "labels": ["valence", "arousal"]},
                  "attr": {"kind": "multilabel", "labels": list(ATTRS)}},
        "data": {"sources": [{"name": n, "csv": str(out / f"{n}_{rows}.csv")} for n in SOURCES],
                 "sampling": "equal", "image_size": 32, "batch_size": 64, "num_workers": 0},
        "train": {"max_steps": 10_000, "val_every_steps": 10_000},
    })


def child(out: Path, rows: int) -> dict:
    import resource

    from distmtl.training.experiment import build_experiment
    from distmtl.training.runner import datamodule_from_experiment

    t0 = time.perf_counter()
    exp = build_experiment(config(out, rows), with_eval=False)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dm = datamodule_from_experiment(exp)
    next(iter(dm.train_dataloader()))
    first_s = time.perf_counter() - t0
    sampler = dm.sampler
    sampler.set_epoch(1)
    t0 = time.perf_counter()
    it = iter(sampler)
    next(it)
    epoch_first_s = time.perf_counter() - t0
    count = 1 + sum(1 for _ in it)
    epoch_all_s = time.perf_counter() - t0
    return {"load_s": load_s, "first_batch_s": first_s, "epoch_first_s": epoch_first_s,
            "epoch_all_s": epoch_all_s, "epoch_batches": count,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(src: str, out: Path, rows: int) -> dict:
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", "--rows", str(rows), "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child on {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "distmtl_mix_index"))
    parser.add_argument("--before", help="another checkout's src/ folder to compare with")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.child:
        print(json.dumps(child(out, args.rows)))
        return 0
    start = time.perf_counter()
    write_sources(out, args.rows)
    print(f"# D3 {args.rows:,} rows in 7 sources ({', '.join(f'{k} {v:,}' for k, v in sizes_for(args.rows).items())}), "
          f"{date.today()}, written in {time.perf_counter() - start:.0f} s", flush=True)
    here = str(Path(__file__).resolve().parents[1] / "src")
    results = {}
    for label, src in [("before", args.before), ("after", here)]:
        if src:
            results[label] = run(src, out, args.rows)
            print(f"  {label}: {results[label]} ({time.perf_counter() - start:.0f} s elapsed)", flush=True)
    keys = [("load_s", "load + check + encode, s"), ("first_batch_s", "DataModule to first batch, s"),
            ("epoch_first_s", "epoch start: sampler to its first batch, s"),
            ("epoch_all_s", "a whole epoch of indices, s"), ("peak_rss_mib", "peak RSS of the rank, MiB")]
    print("\n| measurement | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for key, label in keys:
        print(f"| {label} | " + " | ".join(f"{r[key]:.2f}" if key != "peak_rss_mib" else f"{r[key]:.0f}"
                                          for r in results.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
