"""The comparison study: single-task, plain multi-task, coupled variants and the oracle, over seeds.

Every run gets the same data, optimiser-step budget and backbone. A finished (variant, seed) run
is recognised by its ``run.json`` (a hash of the run's resolved config) and not retrained.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from distmtl.errors import DistmtlError, close_matches
from distmtl.evaluation.metrics import PRIMARY_METRIC, SECONDARY_METRICS
from distmtl.study.curves import plot_variant_curves
from distmtl.study.parallel import PlannedRun, finished_run, started_run, train_runs  # noqa: F401
from distmtl.study.report import RunRecord, format_table, summarise, write_results
from distmtl.training.experiment import Experiment, build_experiment
from distmtl.data.csvformat import EncodedSource
from distmtl.training.folders import run_lock
from distmtl.training.runner import check_trainable
from distmtl.training.variants import (  # noqa: F401  (the variants' definitions, re-exported)
    KNOWN_VARIANTS, coupled_edges, restrict, single_task_batch, variant_runs)

log = logging.getLogger(__name__)

def run_hash(exp: Experiment, seed: int) -> str:
    payload = {
        "config": {k: v for k, v in exp.config.items() if k not in ("compare", "output") and not k.startswith("_")},
        "seed": seed, "tasks": {n: t.to_dict() for n, t in exp.tasks.items()},
        "sources": [(s.name, len(s), sorted(s.annotated_tasks)) for s in exp.train_sources],
        "edges": [(e.task_a, e.task_b, e.relatedness.matrix.round(6).tolist(), e.options) for e in exp.edges],
        # the data themselves: a rewritten label in any CSV (training or evaluation) is a new run
        "data": {"train": [source_digest(s) for s in exp.train_sources],
                 "eval": {k: source_digest(s) for k, s in sorted(exp.eval_sources.items())}},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_digest(source: EncodedSource) -> str:
    """A content hash of a source's index as read: image paths, targets, masks, groups, subjects."""
    import numpy as np

    digest = hashlib.sha256()
    digest.update("\0".join(map(str, source.images.tolist())).encode())
    for name in sorted(source.targets):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(source.targets[name]).tobytes())
        digest.update(np.ascontiguousarray(source.masks[name]).tobytes())
    for name in sorted(source.groups):
        digest.update(np.ascontiguousarray(source.groups[name]).tobytes())
    if source.subjects is not None:
        digest.update("\0".join(map(str, source.subjects.tolist())).encode())
    if source.pixels is not None:
        digest.update(np.ascontiguousarray(source.pixels).tobytes())
    if source.shards:
        digest.update(str(source.shards).encode())
    return digest.hexdigest()


def run_compare(config: dict, out_dir: str | Path, *, seeds: int | None = None,
                variants: list[str] | None = None, progress: bool | None = None,
                jobs: int = 1) -> dict[str, Any]:
    """Train every (variant, seed) run not already finished, then report.

    ``jobs`` > 1 trains that many runs at once, each in its own process with
    ``torch.get_num_threads() // jobs`` intra-op threads (see :mod:`distmtl.study.parallel`). A
    run's result does not depend on which process trains it: with the same number of threads per
    run, ``jobs: 2`` and ``jobs: 1`` give identical numbers. ``out_dir`` is locked for the whole
    study, so a second study into it stops with the holder's pid.
    """
    out_dir = Path(out_dir)
    variants = list(variants or config["compare"]["variants"])
    for v in variants:
        if v not in KNOWN_VARIANTS:
            raise DistmtlError(f"compare.variants: unknown variant '{v}'{close_matches(v, KNOWN_VARIANTS)}")
    if int(jobs) < 1:
        raise DistmtlError(f"--jobs: expected a positive number of parallel runs, got {jobs}")
    n_seeds = config["compare"]["seeds"] if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        key = "compare.seeds" if seeds is None else "seeds"
        raise DistmtlError(f"{key}: expected a number of seeds >= 1, got {n_seeds!r}")
    with run_lock(out_dir, what="compare"):  # checked first: a bad argument creates no folder
        return _run_compare(config, out_dir, n_seeds=n_seeds, variants=variants, progress=progress, jobs=jobs)


def _run_compare(config: dict, out_dir: Path, *, n_seeds: int, variants: list[str],
                 progress: bool | None, jobs: int) -> dict[str, Any]:
    base = build_experiment(config, with_oracle="oracle" in variants)
    plan = [(v, name, exp, reported) for v in variants for name, exp, reported in variant_runs(base, v)]
    for _, name, exp, _ in plan:  # every run's options, before the first one trains
        try:
            check_trainable(exp)
        except DistmtlError as exc:
            raise DistmtlError(f"compare run '{name}': {exc}") from None
    runs: list[PlannedRun] = []
    for seed_offset in range(n_seeds):
        seed = int(config["seed"]) + seed_offset
        for variant, name, exp, reported in plan:
            run_cfg = copy.deepcopy(exp.config)
            run_cfg["seed"] = seed
            run_exp = dataclasses.replace(exp, config=run_cfg)
            run_dir = out_dir / "runs" / name.replace("/", "-") / f"seed{seed}"
            runs.append(PlannedRun(variant, name, seed, reported, run_exp, run_dir, run_hash(run_exp, seed)))
    for run in runs:
        run.metrics = finished_run(run.run_dir, run.expected_hash)
    todo = [r for r in runs if r.metrics is None]
    for run in (r for r in runs if r.metrics is not None):
        print(f"{run.name} seed {run.seed}: cached", flush=True)
    print(f"{len(runs)} runs: {len(todo)} to train"
          + (f", {jobs} at a time" if jobs > 1 and len(todo) > 1 else ""), flush=True)
    train_runs(todo, jobs=int(jobs), progress=progress)
    records = [record for run in runs for record in run_records(run)]
    budget = (f"until plateau (patience {config['train']['patience_steps']} steps, min_delta "
              f"{config['train']['min_delta']}), at most {config['train']['max_steps']} optimiser steps"
              if config["train"]["until"] == "plateau" else f"{config['train']['max_steps']} optimiser steps")
    paths = write_results(records, out_dir, title=f"distmtl compare: {config['name']}",
                          extra_lines=[f"seeds: {n_seeds} (from {config['seed']}), budget: {budget}, "
                                       f"backbone: {config['model']['backbone']}"])
    curves = plot_variant_curves({(r.variant, r.seed, r.name): (r.run_dir, r.reported) for r in runs},
                                 out_dir / "validation_curves.png",
                                 title=f"{config['name']}: validation score over training")
    if curves is not None:
        paths["validation_curves"] = curves
        with open(paths["markdown"], "a", encoding="utf-8") as handle:
            handle.write(f"\n![validation curves]({curves.name})\n")
    summary = summarise(records)
    return {"records": records, "summary": summary, "table": format_table(summary), "paths": paths}


def run_records(run: PlannedRun) -> list[RunRecord]:
    """The run's test metrics (validation when there is no test split): each reported task's
    primary metric, then the threshold-free and calibrated ones of its kind."""
    metrics = run.metrics or {}
    scores = metrics.get("test") or metrics.get("val") or {}
    out = []
    for t in run.reported:
        kind = run.exp.tasks[t].kind
        for name in (PRIMARY_METRIC[kind], *SECONDARY_METRICS.get(kind, ())):
            value = scores.get(t, {}).get(name)
            if value is not None:
                out.append(RunRecord(run.variant, run.seed, t, name, float(value),
                                     metrics.get("steps"), metrics.get("stopped")))
    return out
