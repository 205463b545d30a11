"""Running many ``distmtl compare`` studies side by side and collating their run records.

A study is one config plus overrides and a list of variants. Each (study, seed) is one
``distmtl compare --seeds 1`` subprocess writing to ``<out>/<study>/seed<k>``; several run at
once (``jobs``), each with ``cores // jobs`` intra-op threads, the share ``distmtl compare
--jobs`` gives each of its runs (``distmtl.study.parallel.threads_per_job``). Parallelism here is
across studies and seeds; within one study, ``compare --jobs`` does the same for its variants.
Finished runs are recognised by compare's run hash, so an interrupted benchmark re-run continues
where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from distmtl.study.parallel import threads_per_job
from distmtl.study.report import RunRecord, read_runs  # noqa: F401  (RunRecord: part of this module's API)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Study:
    name: str
    config: str
    variants: list[str]
    overrides: list[str] = field(default_factory=list)
    label: str | None = None  # how the study appears in a group table (default: its name)


def job_dir(out: Path, study: Study, seed: int) -> Path:
    return out / study.name / f"seed{seed}"


def compare_command(study: Study, out: Path, seed: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "distmtl.cli", "compare", "--config", study.config, "--seeds", "1",
            "--out", str(job_dir(out, study, seed)), "--quiet", f"seed={seed}", *study.overrides, *extra,
            "--variants", *study.variants]  # last: --variants takes every word after it


def run_jobs(studies: list[Study], out: Path, seeds: list[int], jobs: int, extra: list[str]) -> list[str]:
    """Run every (study, seed); returns one line per failed job (its log's last line)."""
    plan = [(s, seed) for seed in seeds for s in studies]  # seed by seed: a stopped run leaves whole seeds
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if jobs > 1:  # the same share of the cores as distmtl compare --jobs gives each run
        env.setdefault("OMP_NUM_THREADS", str(threads_per_job(jobs, os.cpu_count() or 1)))
    failures: list[str] = []
    started = time.perf_counter()
    done = 0

    def one(item):
        study, seed = item
        target = job_dir(out, study, seed)
        target.mkdir(parents=True, exist_ok=True)
        log = target.with_suffix(".log")
        t0 = time.perf_counter()
        with open(log, "w") as handle:
            rc = subprocess.call(compare_command(study, out, seed, extra), stdout=handle,
                                 stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return study, seed, rc, time.perf_counter() - t0, log

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in as_completed([pool.submit(one, item) for item in plan]):
            study, seed, rc, seconds, log = future.result()
            done += 1
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {log})"
            print(f"[{done}/{len(plan)}] {study.name} seed {seed}: {status} in {seconds:.0f} s "
                  f"({time.perf_counter() - started:.0f} s elapsed)", flush=True)
            if rc != 0:
                lines = log.read_text(errors="replace").strip().splitlines()
                failures.append(f"{study.name} seed {seed}: {lines[-1] if lines else 'no output'}")
    return failures


def study_records(out: Path, study: Study, rename: dict[str, str] | None = None) -> list[RunRecord]:
    """The study's run records over all its seed folders; variants renamed by ``rename``."""
    records = []
    for runs_csv in sorted((out / study.name).glob("seed*/runs.csv")):
        for r in read_runs(runs_csv):
            records.append(dataclasses.replace(r, variant=(rename or {}).get(r.variant, r.variant)))
    return records


def _verdict(row: pd.Series) -> str:
    if row["variant"] in ("single", "oracle") or row["n_seeds"] == 0:
        return ""
    text = ("**negative transfer**" if row["negative_transfer"] is True else
            "better" if row["beats_single"] is True else "within spread")
    if isinstance(row.get("seed_wins"), str):
        text += f" ({row['seed_wins']} seeds up)"
    return text


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_markdown(summary: pd.DataFrame) -> str:
    """Variants as rows; per task: mean ± std, gap closed, verdict against single-task; then the mean
    steps trained and, in plateau mode, how many runs reached their plateau."""
    tasks = list(dict.fromkeys(zip(summary["task"], summary["metric"])))
    head = ["variant", "steps", "plateau"]
    for task, metric in tasks:
        head += [f"{task} {metric}", "gap closed", "vs single-task"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    variants = list(dict.fromkeys(summary["variant"]))
    variants = [v for v in variants if v != "oracle"] + [v for v in variants if v == "oracle"]
    for variant in variants:
        rows = summary[summary["variant"] == variant]
        first = rows.iloc[0]
        cells = [str(first["display_name"]), _fmt(first.get("steps"), 0), str(first.get("plateau") or "-")]
        for task, metric in tasks:
            row = rows[(rows["task"] == task) & (rows["metric"] == metric)]
            if row.empty:
                cells += ["", "", ""]
                continue
            r = row.iloc[0]
            gap = "n/a" if r.get("gap_note") else _fmt(r["gap_closed"], 2)  # oracle not above the spread
            cells += [f"{_fmt(r['mean'])} ± {_fmt(r['std'])}", gap, _verdict(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_for(out: Path, extra: list[str], trained: bool) -> str:
    """The machine the runs in ``out`` trained on: measured now when this call trained them, else
    the line saved by the call that did (a report-only call on another machine keeps it)."""
    saved = out / "machine.txt"
    if trained or not saved.exists():
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(machine_line(extra) + "\n")
    return saved.read_text().strip()


def machine_line(extra: list[str]) -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = "CPU"
    if any(x.startswith("trainer.accelerator=") and not x.endswith("=cpu") for x in extra):
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "accelerator (unavailable)"
    return (f"machine: {os.cpu_count()} cores, {cpu}; training on {device}; torch {torch.__version__}; "
            f"date {date.today().isoformat()}")


def study_arguments(doc: str, out: str, parts: list[str]) -> argparse.ArgumentParser:
    """The options every study script takes; ``--parts`` chooses among ``parts``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synthfacs", help="SynthFACS demo preset (generated if missing)")
    p.add_argument("--out", default=out)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed + seeds - 1 (to add seeds to an earlier run)")
    p.add_argument("--jobs", type=int, default=1, help="compare subprocesses at once (one thread each)")
    p.add_argument("--parts", nargs="+", default=list(parts), choices=list(parts))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    p.add_argument("--report-only", action="store_true", help="collate finished runs, train nothing")
    return p


def seed_list(args: argparse.Namespace) -> list[int]:
    return list(range(args.first_seed, args.first_seed + args.seeds))


def shown_command(script: str, argv: list[str]) -> str:
    """The command a report names: the one that trains (``--report-only`` left out)."""
    return f"python benchmarks/{script} " + " ".join(shlex.quote(a) for a in argv if a != "--report-only")


def ensure_synthfacs(data: Path) -> None:
    if not (data / "synthfacs.json").exists():
        subprocess.check_call([sys.executable, "-m", "distmtl.cli", "data", "synth", "--out", str(data),
                               "--preset", "demo", "--seed", "0", "--workers", "4"], cwd=REPO)


def finish(report: Path, failures: list[str]) -> int:
    """Name the report, list the failed runs on stderr; the exit status (1 when any run failed)."""
    print(f"report: {report}")
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failures else 0
