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

from distmtl.data.csvformat import EncodedSource
from distmtl.data.sampler import source_weights
from distmtl.errors import DistmtlError, close_matches
from distmtl.evaluation.metrics import PRIMARY_METRIC, SECONDARY_METRICS
from distmtl.study.curves import plot_variant_curves
from distmtl.study.parallel import PlannedRun, finished_run, started_run, train_runs  # noqa: F401
from distmtl.study.report import RunRecord, format_table, summarise, write_results
from distmtl.training.experiment import Edge, Experiment, build_experiment
from distmtl.training.runner import check_trainable

log = logging.getLogger(__name__)

KNOWN_VARIANTS = ("single", "mtl", "coann", "dm", "coann+dm", "oracle")


def restrict(source: EncodedSource, tasks: list[str]) -> EncodedSource:
    return dataclasses.replace(source, targets={t: source.targets[t] for t in tasks},
                               masks={t: source.masks[t] for t in tasks})


def coupled_edges(edges: list[Edge], coann: bool, dm: bool) -> list[Edge]:
    out = []
    for e in edges:
        options = copy.deepcopy(e.options)
        options["coannotation"]["enabled"] = coann
        options["dm_a_to_b"]["enabled"] = dm
        options["dm_b_to_a"]["enabled"] = dm
        out.append(Edge(e.task_a, e.task_b, e.relatedness, options))
    return out


def variant_runs(exp: Experiment, variant: str) -> list[tuple[str, Experiment, list[str]]]:
    """(run name, experiment, tasks it reports) for one variant."""
    cfg = exp.config
    if variant == "single":
        runs = []
        for t in exp.tasks:
            sources = [restrict(s, [t]) for s in exp.train_sources if t in s.annotated_tasks]
            evals = {k: restrict(s, [t]) for k, s in exp.eval_sources.items()}
            run_cfg = copy.deepcopy(cfg)
            run_cfg["data"]["batch_size"] = single_task_batch(exp, t)
            if isinstance(run_cfg["data"]["sampling"], list):
                weights = run_cfg["data"]["sampling"]
                run_cfg["data"]["sampling"] = [w for w, s in zip(weights, exp.train_sources)
                                               if t in s.annotated_tasks]
            runs.append((f"single/{t}", Experiment(run_cfg, {t: exp.tasks[t]}, sources, evals), [t]))
        return runs
    if variant == "oracle":
        if exp.oracle is None:
            raise DistmtlError("compare.variants: 'oracle' needs data.oracle (every training image "
                               "labelled for every task)")
        return [("oracle", Experiment(cfg, exp.tasks, [exp.oracle], exp.eval_sources), list(exp.tasks))]
    flags = {"mtl": (False, False), "coann": (True, False), "dm": (False, True), "coann+dm": (True, True)}
    if variant not in flags:
        raise DistmtlError(f"compare.variants: unknown variant '{variant}'"
                           f"{close_matches(variant, KNOWN_VARIANTS)}; known: {', '.join(KNOWN_VARIANTS)}")
    if variant != "mtl" and not exp.edges:
        raise DistmtlError(f"compare.variants: '{variant}' needs at least one relatedness edge")
    edges = coupled_edges(exp.edges, *flags[variant])
    return [(variant, Experiment(cfg, exp.tasks, exp.train_sources, exp.eval_sources, None, edges),
             list(exp.tasks))]


def single_task_batch(exp: Experiment, task: str) -> int:
    """Batch size of the single-task model of ``task`` under ``compare.single_task_batch``.

    ``matched`` (default): the number of ``task``-labelled images a multi-task batch holds, so every
    model sees the same labelled images of each task per optimiser step, and the single-task models
    together cost what one multi-task model costs. ``full``: the whole batch, so a single-task model
    sees more labels of its task per step than any multi-task model that shares batches between
    sources (at budgets far from convergence this alone decides the comparison).
    """
    batch = int(exp.config["data"]["batch_size"])
    mode = exp.config["compare"]["single_task_batch"]
    if mode == "full":
        return batch
    if mode != "matched":
        raise DistmtlError(f"compare.single_task_batch: unknown mode '{mode}' (matched or full)")
    weights = source_weights([len(s) for s in exp.train_sources], exp.config["data"]["sampling"] or "equal")
    share = sum(w for w, s in zip(weights, exp.train_sources) if task in s.annotated_tasks)
    return max(1, int(round(batch * share)))


def run_hash(exp: Experiment, seed: int) -> str:
    payload = {
        "config": {k: v for k, v in exp.config.items() if k not in ("compare", "output") and not k.startswith("_")},
        "seed": seed, "tasks": {n: t.to_dict() for n, t in exp.tasks.items()},
        "sources": [(s.name, len(s), sorted(s.annotated_tasks)) for s in exp.train_sources],
        "edges": [(e.task_a, e.task_b, e.relatedness.matrix.round(6).tolist(), e.options) for e in exp.edges],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_compare(config: dict, out_dir: str | Path, *, seeds: int | None = None,
                variants: list[str] | None = None, progress: bool | None = None,
                jobs: int = 1) -> dict[str, Any]:
    """Train every (variant, seed) run not already finished, then report.

    ``jobs`` > 1 trains that many runs at once, each in its own process with
    ``torch.get_num_threads() // jobs`` intra-op threads (see :mod:`distmtl.study.parallel`). A
    run's result does not depend on which process trains it: with the same number of threads per
    run, ``jobs: 2`` and ``jobs: 1`` give identical numbers.
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
    curves = plot_variant_curves({(r.variant, r.seed): (r.run_dir, r.reported) for r in runs},
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
