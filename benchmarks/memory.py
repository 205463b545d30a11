"""Peak memory of a training run: full multi-task pipeline vs the bare backbone, each in its own process.

The full pipeline is the one benchmarks/speed.py's S1 measures (two sources in every batch, masks,
co-annotation, DM both ways, dynamic weighting); the bare run is the timm backbone with one CE head.
Each run is a fresh child process (so neither inherits the other's allocations) that imports the same
modules, records its RSS after imports, then runs ``--steps`` AdamW steps on synthetic tensors of the
same batch and image size. Peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss`` inside the child, cross-
checked by the parent's ``os.wait4`` rusage of that child.

    python benchmarks/memory.py [--batch-sizes 32 128] [--image-sizes 64 112] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def status_mib(field: str = "VmRSS") -> float:
    """A field of /proc/self/status in MiB: VmRSS (resident now), RssAnon (anonymous) or RssFile (file-backed)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_multisource_batch(exp, batch: int, size: int) -> dict:
    """A batch in the DataModule's layout: half its rows from each training source, random pixels."""
    import torch

    per_source = [batch // 2, batch - batch // 2]
    rows = [torch.arange(n) % len(src) for n, src in zip(per_source, exp.train_sources)]
    targets = {t: torch.cat([torch.from_numpy(src.targets[t])[r] for src, r in zip(exp.train_sources, rows)])
               for t in exp.tasks}
    masks = {t: torch.cat([torch.from_numpy(src.masks[t])[r] for src, r in zip(exp.train_sources, rows)])
             for t in exp.tasks}
    source = torch.cat([torch.full((n,), s) for s, n in enumerate(per_source)])
    return {"image": torch.randn(batch, 3, size, size), "targets": targets, "masks": masks, "source": source}


def run_child(kind: str, batch: int, size: int, steps: int, data: Path) -> dict:
    """Body of one child process: imports, build, ``steps`` optimiser steps; returns the measurements."""
    import timm
    import torch
    from speed import config, write_data  # benchmarks/speed.py, next to this script

    from distmtl.training.experiment import build_experiment
    from distmtl.training.runner import module_from_experiment

    after_imports = {"rss_after_imports": status_mib(), "anon_after_imports": status_mib("RssAnon"),
                     "file_after_imports": status_mib("RssFile")}
    torch.manual_seed(0)
    files = {k: data / f"{k}.csv" for k in ("expr", "au")}
    if not all(f.exists() for f in files.values()):
        files = write_data(data, size=size)
    cfg = config(files, batch, size, workers=0)
    if kind == "full":
        exp = build_experiment(cfg, with_eval=False)
        model = module_from_experiment(exp).train()
        batch_tensors = synthetic_multisource_batch(exp, batch, size)

        def loss_of_step():
            return model.compute_losses(batch_tensors)[0]
    else:
        model = timm.create_model(cfg["model"]["backbone"], num_classes=7, in_chans=3).train()
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 7, (batch,))

        def loss_of_step():
            return torch.nn.functional.cross_entropy(model(x), y)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    params = sum(p.numel() for p in model.parameters())
    rss_after_build = status_mib()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_of_step().backward()
        opt.step()
    return {**after_imports, "rss_after_build": rss_after_build, "rss_end": status_mib(),
            "peak": peak_rss_mib(), "ms_per_step": 1000 * (time.perf_counter() - start) / steps,
            "params": params, "threads": torch.get_num_threads()}


def measure_in_fresh_process(kind: str, batch: int, size: int, steps: int, data: Path) -> dict:
    """Run one child; its JSON result plus the parent's view of its peak RSS (wait4 rusage)."""
    cmd = [sys.executable, __file__, "--child", kind, "--batch-sizes", str(batch), "--image-sizes", str(size),
           "--steps", str(steps), "--data", str(data)]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not proc.wait(): it returns the child's rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"child {kind} batch {batch} image {size} failed:\n{err.read()}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_seen_by_parent"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[64, 112])
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per run")
    parser.add_argument("--data", default="/tmp/distmtl_memory_data",
                        help="folder for the small CSV sources the full pipeline is built from")
    parser.add_argument("--child", choices=["full", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.batch_sizes[0], args.image_sizes[0], args.steps,
                                   Path(args.data))), flush=True)
        # torch's interpreter teardown alone raises the peak by ~130 MiB (measured); skip it so the
        # parent's wait4 figure is the training run's peak too
        os._exit(0)

    import timm
    import torch
    from speed import write_data

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    print(f"# {date.today()} | {os.cpu_count()} cores, {cpu} | torch {torch.__version__} | timm {timm.__version__}"
          f" | {args.steps} steps per run, each run a fresh process")
    print("| batch | image | RSS after imports MiB (anonymous + file-backed) | full peak MiB | bare peak MiB"
          " | full/bare peak | full - bare MiB | growth above imports full / bare MiB | ms/step full / bare |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.image_sizes:
        data = Path(args.data) / str(size)
        write_data(data, size=size)
        for batch in args.batch_sizes:
            full = measure_in_fresh_process("full", batch, size, args.steps, data)
            bare = measure_in_fresh_process("bare", batch, size, args.steps, data)
            for r in (full, bare):
                if abs(r["peak"] - r["peak_seen_by_parent"]) > 0.02 * r["peak"]:
                    print(f"<!-- note: in-child peak {r['peak']:.0f} MiB vs wait4 "
                          f"{r['peak_seen_by_parent']:.0f} MiB -->")
            growth = [r["peak"] - r["rss_after_imports"] for r in (full, bare)]
            print(f"| {batch} | {size} | {bare['rss_after_imports']:.0f} ({bare['anon_after_imports']:.0f} + "
                  f"{bare['file_after_imports']:.0f}) | {full['peak']:.0f} | {bare['peak']:.0f} | "
                  f"{full['peak'] / bare['peak']:.3f} | {full['peak'] - bare['peak']:+.0f} | "
                  f"{growth[0]:.0f} / {growth[1]:.0f} | {full['ms_per_step']:.0f} / {bare['ms_per_step']:.0f} |",
                  flush=True)
            print(f"<!-- full {json.dumps(full)} -->\n<!-- bare {json.dumps(bare)} -->", flush=True)


if __name__ == "__main__":
    main()
