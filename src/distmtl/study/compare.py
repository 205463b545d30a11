"""The comparison study: single-task, plain multi-task, coupled variants and the oracle, over seeds.

Every run gets the same data, optimiser-step budget and backbone. A finished (variant, seed) run
is recognised by its ``run.json`` (a hash of the run's resolved config) and not retrained.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from distmtl.data.csvformat import EncodedSource
from distmtl.data.sampler import source_weights
from distmtl.errors import DistmtlError, close_matches
from distmtl.evaluation.metrics import PRIMARY_METRIC
from distmtl.training.experiment import Edge, Experiment, build_experiment
from distmtl.io import atomic_write_text
from distmtl.study.report import RunRecord, format_table, summarise, write_results
from distmtl.training.runner import check_trainable, train_experiment

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
                variants: list[str] | None = None, progress: bool | None = None) -> dict[str, Any]:
    out_dir = Path(out_dir)
    variants = list(variants or config["compare"]["variants"])
    for v in variants:
        if v not in KNOWN_VARIANTS:
            raise DistmtlError(f"compare.variants: unknown variant '{v}'{close_matches(v, KNOWN_VARIANTS)}")
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
    records: list[RunRecord] = []
    total = len(plan) * n_seeds
    done = 0
    for seed_offset in range(n_seeds):
        seed = int(config["seed"]) + seed_offset
        for variant, name, exp, reported in plan:
            done += 1
            run_cfg = copy.deepcopy(exp.config)
            run_cfg["seed"] = seed
            run_exp = dataclasses.replace(exp, config=run_cfg)
            run_dir = out_dir / "runs" / name.replace("/", "-") / f"seed{seed}"
            metrics = finished_run(run_dir, run_hash(run_exp, seed))
            status = "cached" if metrics is not None else "training"
            log.info("[%d/%d] %s seed %d: %s", done, total, name, seed, status)
            print(f"[{done}/{total}] {name} seed {seed}: {status}", flush=True)
            if metrics is None:
                expected = run_hash(run_exp, seed)
                resume = started_run(run_dir, expected)
                if not resume and run_dir.exists():
                    shutil.rmtree(run_dir)  # a different config's leftovers: start clean
                atomic_write_text(run_dir / "run.json", json.dumps(
                    {"hash": expected, "variant": variant, "seed": seed, "status": "started"}))
                metrics = train_experiment(run_exp, run_dir, progress=progress, resume=resume)
                gc.collect()  # release the finished run's DataLoader workers before the next one
                atomic_write_text(run_dir / "run.json", json.dumps(
                    {"hash": expected, "variant": variant, "seed": seed, "status": "finished"}))
            for t in reported:
                kind = exp.tasks[t].kind
                value = (metrics.get("test") or metrics.get("val") or {}).get(t, {}).get(PRIMARY_METRIC[kind])
                if value is not None:
                    records.append(RunRecord(variant, seed, t, PRIMARY_METRIC[kind], float(value)))
    paths = write_results(records, out_dir, title=f"distmtl compare: {config['name']}",
                          extra_lines=[f"seeds: {n_seeds} (from {config['seed']}), "
                                       f"budget: {config['train']['max_steps']} optimiser steps, "
                                       f"backbone: {config['model']['backbone']}"])
    summary = summarise(records)
    return {"records": records, "summary": summary, "table": format_table(summary), "paths": paths}


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
