"""Training a study's runs, one after another or several at once.

Each run is independent: its seed, data order and initialisation come from its own config
(``train_experiment`` seeds everything), so which process trains it does not change its result.
With ``jobs`` > 1 the runs go to a pool of ``jobs`` spawned processes, each limited to
``torch.get_num_threads() // jobs`` intra-op threads (at least one) so the runs share the cores
instead of fighting over them. The number of threads a run uses changes the order of
floating-point sums, hence the last digits of its results: to get identical numbers from
``jobs: 1`` and ``jobs: N``, give both the same threads per run (e.g. ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import shutil
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distmtl.config.loading import COUPLING_TERMS
from distmtl.errors import DistmtlError
from distmtl.io import atomic_write_text
from distmtl.training.experiment import Experiment
from distmtl.training.runner import train_experiment

log = logging.getLogger(__name__)


@dataclass
class PlannedRun:
    """One (variant, seed) training of a study; ``metrics`` is filled once it has finished."""

    variant: str
    name: str
    seed: int
    reported: list[str]
    exp: Experiment
    run_dir: Path
    expected_hash: str
    metrics: dict | None = field(default=None)


def started_run(run_dir: Path, expected_hash: str) -> bool:
    """A run of this exact config that was interrupted after writing a checkpoint: resume it."""
    try:
        marker = json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("hash") == expected_hash and (run_dir / "checkpoints" / "last.ckpt").exists()


def finished_run(run_dir: Path, expected_hash: str) -> dict | None:
    marker, metrics = run_dir / "run.json", run_dir / "metrics.json"
    if not (marker.exists() and metrics.exists()):
        return None
    try:
        state = json.loads(marker.read_text())
        if state.get("hash") != expected_hash or state.get("status", "finished") != "finished":
            return None
        return json.loads(metrics.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def train_one(exp: Experiment, run_dir: Path, expected_hash: str, variant: str, seed: int,
              progress: bool | None) -> dict[str, Any]:
    """Train (or resume) one run and mark it finished; returns its metrics."""
    resume = started_run(run_dir, expected_hash)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a different config's leftovers: start clean
    marker = {"hash": expected_hash, "variant": variant, "seed": seed}
    atomic_write_text(run_dir / "run.json", json.dumps({**marker, "status": "started"}))
    metrics = train_experiment(exp, run_dir, progress=progress, resume=resume)
    gc.collect()  # release the finished run's DataLoader workers before the next one
    atomic_write_text(run_dir / "run.json", json.dumps({**marker, "status": "finished"}))
    return metrics


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Intra-op threads for each of ``jobs`` trainings sharing ``cores`` (default: this process's
    torch thread count): an equal share, at least one. benchmarks/harness.py uses it too."""
    cores = torch.get_num_threads() if cores is None else int(cores)
    return max(1, cores // max(1, int(jobs)))


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def time_left(durations: list[float], running: list[float], queued: int, jobs: int) -> float:
    """Seconds until the last run ends, ``jobs`` at a time: each run still queued is expected to
    take the mean duration of the finished ones, each running one that mean less the time it has
    already run (never below 0)."""
    if not durations:
        return 0.0
    mean = sum(durations) / len(durations)
    work = mean * queued + sum(max(0.0, mean - r) for r in running)
    return work / max(1, min(jobs, queued + len(running)))


def _report(done: int, total: int, run: PlannedRun, started: float, how: str, left: float | None = None) -> None:
    elapsed = time.perf_counter() - started
    if left is None:
        left = elapsed / done * (total - done) if done else 0.0
    steps = (run.metrics or {}).get("steps")
    stopped = (run.metrics or {}).get("stopped")
    ended = f", {steps} steps ({stopped})" if steps is not None else ""
    line = (f"[{done}/{total}] {run.name} seed {run.seed}: {how}{ended}; elapsed {_clock(elapsed)}, "
            f"about {_clock(left)} left")
    log.info(line)
    print(line, flush=True)


def starting_line(done: int, total: int, run: PlannedRun, elapsed: float) -> str:
    """``[3/10] mtl seed 0: training; elapsed 4:12, about 9:48 left`` (left: the mean time of the
    runs trained so far times the runs still to train, this one included)."""
    left = f"about {_clock(elapsed / done * (total - done))} left" if done else "time left known after the first run"
    return f"[{done + 1}/{total}] {run.name} seed {run.seed}: training; elapsed {_clock(elapsed)}, {left}"


def expected_cost(run: PlannedRun) -> tuple[int, int]:
    """How long a run is expected to take, for ordering only: its number of tasks, then its
    number of coupling terms (a multi-task, coupled run costs most per step)."""
    terms = sum(bool(e.options[t]["enabled"]) for e in run.exp.edges for t in COUPLING_TERMS)
    return len(run.exp.tasks), terms


def longest_first(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The order in which ``jobs > 1`` starts the runs: the longest first, so that short runs fill
    the end instead of one long run training alone on a machine whose other cores are idle (equal
    costs keep their planned order)."""
    return sorted(runs, key=expected_cost, reverse=True)


def train_runs(runs: list[PlannedRun], *, jobs: int = 1, progress: bool | None = None) -> None:
    """Train ``runs`` (filling each one's ``metrics``), ``jobs`` at a time."""
    started = time.perf_counter()
    if jobs <= 1 or len(runs) <= 1:
        for i, run in enumerate(runs):
            print(starting_line(i, len(runs), run, time.perf_counter() - started), flush=True)
            run.metrics = train_one(run.exp, run.run_dir, run.expected_hash, run.variant, run.seed, progress)
            _report(i + 1, len(runs), run, started, "trained")
        return
    threads = threads_per_job(jobs)
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker,
                             initargs=(threads,)) as pool:
        order = longest_first(runs)
        pending = {pool.submit(train_one, r.exp, r.run_dir, r.expected_hash, r.variant, r.seed, False): r
                   for r in order}
        # the pool starts runs in submission order as workers free up: the first `jobs` at once,
        # then the next one each time a run ends; `running` holds the start times of the unfinished
        running = {id(r): started for r in order[:jobs]}
        next_start = min(jobs, len(order))
        durations: list[float] = []
        done = 0
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            now = time.perf_counter()
            for future in finished:
                run = pending.pop(future)
                durations.append(now - running.pop(id(run), started))
                if next_start < len(order):
                    running[id(order[next_start])] = now
                    next_start += 1
                try:
                    run.metrics = future.result()
                except DistmtlError:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                except Exception as exc:  # noqa: BLE001 - name the run that failed
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise DistmtlError(f"{run.name} seed {run.seed}: training failed in a worker "
                                       f"process ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                                       ) from exc
                done += 1
                left = time_left(durations, [now - t for t in running.values()], len(order) - next_start, jobs)
                _report(done, len(runs), run, started, f"trained ({jobs} at a time, {threads} thread(s) each)", left)
