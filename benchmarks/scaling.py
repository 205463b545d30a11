"""How loading a large training index scales: 100,000 vs 1,000,000 rows in the generic CSV format.

The index has columns image, expression, AU01..AU26 (the 17 AUs); even rows expression-only, odd rows
AU-only; ``image`` cycles over a pool of real PNG files written once with PIL. Every measurement runs
in a fresh child process:

  write        time and peak RSS to write the CSV (context only)
  load-none    read_csv_source + encode with check_images='none'
  load-exists  the same with check_images='exists' (the default: one stat per row)
  first-batch  DataModule + DataLoader (2 workers, lazy decode, no cache_images) to the first batch of
               64; then RSS of the main process and of each worker after batch 1 and after batch 200
  profile      cProfile of load-exists at the largest size (top functions by own time)

    python benchmarks/scaling.py [--rows 100000 1000000] [--pool 1000] [--out /tmp/distmtl_scaling]
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

EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
PHASES = ("write", "load-none", "load-exists", "first-batch")


def status_mib(field: str = "VmRSS", pid: int | str = "self") -> float:
    """A field of /proc/<pid>/status (VmRSS: resident now) or smaps_rollup (Private_Dirty...) in MiB."""
    name = "smaps_rollup" if field.startswith(("Private", "Pss")) else "status"
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_pool(folder: Path, n: int, size: int = 64) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"{i:06d}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def csv_path(out: Path, rows: int) -> Path:
    return out / f"index_{rows}.csv"


def write_index(out: Path, rows: int, pool: int) -> dict:
    import numpy as np

    from distmtl.tasks import AUS_17

    rng = np.random.default_rng(0)
    au_bits = (rng.random((rows // 2 + 1, len(AUS_17))) < 0.3).astype(np.uint8)
    empty_aus = "," * len(AUS_17)
    with open(csv_path(out, rows), "w") as f:
        f.write("image,expression," + ",".join(AUS_17) + "\n")
        chunk = []
        for i in range(rows):
            if i % 2 == 0:
                chunk.append(f"pool/{i % pool:06d}.png,{EXPRESSIONS[(i // 2) % 7]}{empty_aus}\n")
            else:
                chunk.append(f"pool/{i % pool:06d}.png,," + ",".join(map(str, au_bits[i // 2])) + "\n")
            if len(chunk) == 50_000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return {"mb_on_disk": csv_path(out, rows).stat().st_size / 2**20}


def experiment_config(csv: Path, check: str, workers: int) -> dict:
    from distmtl.config import resolve

    return resolve({
        "tasks": {"expression": {"kind": "multiclass", "labels": "basic7"},
                  "au": {"kind": "multilabel", "labels": "au17"}},
        "data": {"sources": [{"csv": str(csv), "check_images": check}], "image_size": 64, "batch_size": 64,
                 "num_workers": workers, "cache_images": False},
    })


def configured_tasks(out: Path, rows: int) -> dict:
    from distmtl.training.experiment import build_tasks

    return build_tasks(experiment_config(csv_path(out, rows), "none", 0))


def load(out: Path, rows: int, check: str, tasks: dict) -> dict:
    from distmtl.data.csvformat import encode, read_csv_source

    base = status_mib()
    t0 = time.perf_counter()
    loaded = read_csv_source(csv_path(out, rows), tasks, check_images=check)
    t1 = time.perf_counter()
    encoded = encode(loaded, tasks)
    t2 = time.perf_counter()
    rss_loaded = status_mib()
    del loaded  # what training keeps is the encoded source
    return {"after_imports": base, "read_s": t1 - t0, "encode_s": t2 - t1, "rss_loaded_and_encoded": rss_loaded,
            "rss_encoded_only": status_mib(), "rows": len(encoded)}


def first_batch(out: Path, rows: int, workers: int, batches: int) -> dict:
    from distmtl.training.experiment import build_experiment
    from distmtl.training.runner import datamodule_from_experiment

    exp = build_experiment(experiment_config(csv_path(out, rows), "none", workers), with_eval=False)
    t0 = time.perf_counter()
    dm = datamodule_from_experiment(exp)
    loader_iter = iter(dm.train_dataloader())
    next(loader_iter)
    t_first = time.perf_counter() - t0
    pids = [w.pid for w in loader_iter._workers]

    def snapshot() -> dict:
        return {"main_rss": status_mib(), "worker_rss": [status_mib("VmRSS", p) for p in pids],
                "worker_private": [status_mib("Private_Dirty", p) + status_mib("Private_Clean", p) for p in pids]}

    after_first = snapshot()
    t1 = time.perf_counter()
    for _ in range(batches - 1):
        next(loader_iter)
    rate = 64 * (batches - 1) / (time.perf_counter() - t1)
    return {"first_batch_s": t_first, "after_first": after_first, "after_last": snapshot(),
            "images_per_s": rate, "batches": batches}


def profile_load(out: Path, rows: int, top: int = 12) -> dict:
    import cProfile
    import io
    import pstats

    tasks = configured_tasks(out, rows)  # every import happens before the profiler starts
    profiler = cProfile.Profile()
    profiler.enable()
    load(out, rows, "exists", tasks)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("tottime").print_stats(top)
    return {"profile": text.getvalue()}


def run_child(phase: str, args) -> dict:
    out, rows = Path(args.out), args.rows[0]
    if phase == "write":
        t0 = time.perf_counter()
        result = write_index(out, rows, args.pool)
        result["write_s"] = time.perf_counter() - t0
    elif phase.startswith("load-"):
        result = load(out, rows, phase.removeprefix("load-"), configured_tasks(out, rows))
    elif phase == "first-batch":
        result = first_batch(out, rows, args.workers, args.batches)
    else:
        result = profile_load(out, rows)
    return {**result, "peak": peak_rss_mib()}


def in_fresh_process(phase: str, rows: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", phase, "--rows", str(rows), "--pool", str(args.pool),
           "--out", args.out, "--workers", str(args.workers), "--batches", str(args.batches)]
    with tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        if done.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{phase} at {rows} rows failed:\n{err.read()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict, sizes: list[int], batches: int) -> list[str]:
    def mean(values):
        return sum(values) / len(values)

    def rows_of(phase, pick):
        return [pick(results[n][phase]) for n in sizes]

    lines = [f"| measurement | {' | '.join(f'{n:,} rows' for n in sizes)} | ratio largest/smallest |",
             "|---" * (len(sizes) + 2) + "|"]

    def add(label, phase, pick, fmt="{:.2f}", ratio=True):
        values = rows_of(phase, pick)
        r = f"{values[-1] / values[0]:.1f}x" if ratio and len(values) > 1 and values[0] else ""
        lines.append(f"| {label} | {' | '.join(fmt.format(v) for v in values)} | {r} |")

    add("CSV size on disk MiB", "write", lambda r: r["mb_on_disk"], "{:.0f}")
    add("write CSV: s", "write", lambda r: r["write_s"])
    add("write CSV: peak RSS MiB", "write", lambda r: r["peak"], "{:.0f}")
    for check in ("none", "exists"):
        p = f"load-{check}"
        add(f"check_images={check}: read_csv_source s", p, lambda r: r["read_s"])
        add(f"check_images={check}: encode s", p, lambda r: r["encode_s"])
        add(f"check_images={check}: peak RSS MiB", p, lambda r: r["peak"], "{:.0f}")
    add("RSS after imports MiB (load child)", "load-none", lambda r: r["after_imports"], "{:.0f}", False)
    add("RSS holding the encoded source only MiB", "load-none", lambda r: r["rss_encoded_only"], "{:.0f}")
    add("build DataModule + DataLoader -> first batch of 64 s", "first-batch", lambda r: r["first_batch_s"])
    add("main process RSS after batch 1 MiB", "first-batch", lambda r: r["after_first"]["main_rss"], "{:.0f}")
    add(f"main process RSS after batch {batches} MiB", "first-batch", lambda r: r["after_last"]["main_rss"],
        "{:.0f}")
    add("per worker RSS after batch 1 MiB (private)", "first-batch",
        lambda r: (mean(r["after_first"]["worker_rss"]), mean(r["after_first"]["worker_private"])),
        "{0[0]:.0f} ({0[1]:.0f})", False)
    add(f"per worker RSS after batch {batches} MiB (private)", "first-batch",
        lambda r: (mean(r["after_last"]["worker_rss"]), mean(r["after_last"]["worker_private"])),
        "{0[0]:.0f} ({0[1]:.0f})", False)
    add(f"images/s over batches 2..{batches}", "first-batch", lambda r: r["images_per_s"], "{:.0f}", False)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="index sizes")
    parser.add_argument("--pool", type=int, default=1000, help="distinct PNG files the index cycles over")
    parser.add_argument("--out", default="/tmp/distmtl_scaling", help="folder for the pool and the CSVs")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for first-batch")
    parser.add_argument("--batches", type=int, default=200, help="batches drawn in first-batch")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument("--child", choices=PHASES + ("profile",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args)), flush=True)
        os._exit(0)  # skip torch's interpreter teardown, which raises the peak RSS by itself

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"# {date.today()} | {os.cpu_count()} cores, {cpu} | torch {torch.__version__} | pool of {args.pool} "
          f"PNGs (64x64) | {args.workers} workers")
    sizes = sorted(args.rows)
    write_pool(Path(args.out) / "pool", args.pool)
    results: dict[int, dict] = {}
    for n in sizes:
        results[n] = {phase: in_fresh_process(phase, n, args) for phase in PHASES}
        print(f"<!-- {n} rows: {json.dumps(results[n])} -->", flush=True)
    print("\n".join(table(results, sizes, args.batches)), flush=True)
    if not args.no_profile:
        print(f"\ncProfile of read_csv_source + encode, check_images=exists, {sizes[-1]:,} rows:\n")
        print(in_fresh_process("profile", sizes[-1], args)["profile"])


if __name__ == "__main__":
    main()
