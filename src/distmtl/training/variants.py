"""The named variants of one experiment: single-task, plain multi-task, coupled, and the oracle.

``distmtl train --variant`` trains one of them and ``distmtl compare`` trains them all over seeds;
both take their runs from :func:`variant_runs`, so a variant means the same thing in both.

- ``single``: one model per task, on the sources that annotate it, with the batch size of
  :func:`single_task_batch`.
- ``mtl``: every task, every coupling term off.
- ``coann`` / ``dm`` / ``coann+dm``: every edge's co-annotation and/or both distribution-matching
  directions on (with the edge's weights and forms), the others off.
- ``oracle``: the same network on ``data.oracle`` (the training images with every label), with the
  multi-task batch size and, per task, labels on as many images of each batch as a multi-task
  batch has (:func:`label_shares`): the only difference from ``mtl`` is which images carry which
  labels, not how many labels each task gets per step.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import numpy as np

from distmtl.data.csvformat import EncodedSource
from distmtl.data.sampler import source_weights
from distmtl.errors import DistmtlError, close_matches
from distmtl.training.experiment import Edge, Experiment

log = logging.getLogger(__name__)

KNOWN_VARIANTS = ("single", "mtl", "coann", "dm", "coann+dm", "oracle")
COUPLING = {"mtl": (False, False), "coann": (True, False), "dm": (False, True), "coann+dm": (True, True)}


def check_variant(variant: str, key: str = "compare.variants") -> None:
    if variant not in KNOWN_VARIANTS:
        raise DistmtlError(f"{key}: unknown variant '{variant}'"
                           f"{close_matches(variant, KNOWN_VARIANTS)}; known: {', '.join(KNOWN_VARIANTS)}")


def restrict(source: EncodedSource, tasks: list[str]) -> EncodedSource:
    return dataclasses.replace(source, targets={t: source.targets[t] for t in tasks},
                               masks={t: source.masks[t] for t in tasks})


def coupled_edges(edges: list[Edge], coann: bool, dm: bool, variant: str = "") -> list[Edge]:
    """The edges with the variant's coupling terms on and the others off. A term the config turns
    off that the variant needs is turned on, with a warning: a variant is defined by its terms (to
    leave one direction out of a variant, set its weight to 0)."""
    out = []
    for i, e in enumerate(edges):
        options = copy.deepcopy(e.options)
        for term, on in (("coannotation", coann), ("dm_a_to_b", dm), ("dm_b_to_a", dm)):
            if on and options[term].get("enabled") is False:
                log.warning("relatedness[%d].%s is off in the config, but variant '%s' trains "
                            "it; to leave it out, set its weight to 0", i, term, variant)
            options[term]["enabled"] = on
        out.append(Edge(e.task_a, e.task_b, e.relatedness, options))
    return out


def task_shares(exp: Experiment) -> dict[str, float]:
    """Per task, the expected share of a multi-task batch that is labelled for it."""
    weights = source_weights([len(s) for s in exp.train_sources], exp.config["data"]["sampling"] or "equal")
    return {t: float(sum(w for w, s in zip(weights, exp.train_sources) if t in s.annotated_tasks))
            for t in exp.tasks}


def label_shares(exp: Experiment) -> dict[str, float]:
    """``train.label_share`` of the oracle: the multi-task share of each task, rounded to 6 places."""
    return {t: round(share, 6) for t, share in task_shares(exp).items()}


def variant_runs(exp: Experiment, variant: str, key: str = "compare.variants"
                 ) -> list[tuple[str, Experiment, list[str]]]:
    """(run name, experiment, tasks it reports) for one variant."""
    check_variant(variant, key)
    cfg = exp.config
    if variant == "single":
        runs = []
        for t in exp.tasks:
            sources = [restrict(s, [t]) for s in exp.train_sources if t in s.annotated_tasks]
            evals = {k: restrict(s, [t]) for k, s in exp.eval_sources.items()}
            run_cfg = copy.deepcopy(cfg)
            run_cfg["data"]["batch_size"] = single_task_batch(exp, t)
            # one task has nothing to split: its own last stages are the backbone's, so the
            # single-task baseline is the same network (and the same run) whatever task_stages is
            run_cfg["model"]["task_stages"] = 0
            if isinstance(run_cfg["data"]["sampling"], list):
                weights = run_cfg["data"]["sampling"]
                run_cfg["data"]["sampling"] = [w for w, s in zip(weights, exp.train_sources)
                                               if t in s.annotated_tasks]
            runs.append((f"single/{t}", Experiment(run_cfg, {t: exp.tasks[t]}, sources, evals), [t]))
        return runs
    if variant == "oracle":
        if exp.oracle is None:
            raise DistmtlError(f"{key}: 'oracle' needs data.oracle (every training image "
                               "labelled for every task)")
        check_fully_labelled(exp.oracle, list(exp.tasks), "data.oracle", source_file(cfg["data"]["oracle"]))
        run_cfg = copy.deepcopy(cfg)
        run_cfg["data"]["sampling"] = "equal"  # one source: the weights of the others do not apply
        run_cfg["train"]["label_share"] = label_shares(exp)
        return [("oracle", Experiment(run_cfg, exp.tasks, [exp.oracle], exp.eval_sources), list(exp.tasks))]
    if variant != "mtl" and not exp.edges:
        raise DistmtlError(f"{key}: '{variant}' needs at least one relatedness edge")
    edges = coupled_edges(exp.edges, *COUPLING[variant], variant)
    return [(variant, Experiment(cfg, exp.tasks, exp.train_sources, exp.eval_sources, None, edges),
             list(exp.tasks))]


def source_file(spec: Any) -> str:
    """What a source reads, for messages: its CSV path, else ``loader <name> at <root>``."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and "csv" in spec:
        return str(spec["csv"])
    if isinstance(spec, dict) and "loader" in spec:
        return f"loader {spec['loader']} at {spec.get('root')}"
    return str(spec)


def check_fully_labelled(source: EncodedSource, tasks: list[str], where: str, file: str) -> None:
    """Every row of ``source`` annotated for every task (every label of a multilabel task)."""
    for t in tasks:
        mask = source.masks[t].reshape(len(source), -1).all(axis=1)
        missing = np.flatnonzero(~mask)
        if missing.size:
            i = int(missing[0])
            row = f"row {i + 1}" + ("" if source.skipped else f" (line {i + 2})")
            image = source.images[i]
            image = f" (image {image})" if isinstance(image, str) else ""  # cached: an index
            raise DistmtlError(f"{where}: {file}: {row}{image} is not annotated for '{t}'; "
                               f"the oracle needs every task on every row "
                               f"({missing.size} of {len(source)} rows lack it)")


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
    return max(1, int(round(batch * task_shares(exp)[task])))


def loss_terms(exp: Experiment) -> list[dict[str, Any]]:
    """The loss terms a run of ``exp`` trains: ``{name, weight, form}`` per task loss and per
    enabled coupling term (the task losses' weight is the weighting strategy's)."""
    from distmtl.training.module import edge_config

    weighting = exp.config["weighting"]["name"]
    share = exp.config["train"].get("label_share") or {}
    terms = []
    for t, task in exp.tasks.items():
        form = {"multiclass": "cross-entropy", "multilabel": "binary cross-entropy",
                "identity": "cross-entropy", "regression": "ccc"}.get(task.kind, task.kind)
        options = exp.config["losses"].get(t) or {}
        if task.kind == "regression" and options.get("loss"):
            form = options["loss"]
        note = f", labels on {share[t]:.0%} of each batch" if t in share else ""
        terms.append({"name": f"loss/{t}", "weight": f"weighting '{weighting}'", "form": form + note})
    for i, e in enumerate(exp.edges):
        cfg = edge_config(e.options, f"relatedness[{i}]")
        a, b = e.task_a, e.task_b
        co = cfg.coannotation
        if co.enabled:
            for on, name in ((co.a_to_b, f"coann:{a}->{b}"), (co.b_to_a, f"coann:{b}->{a}")):
                if on:
                    terms.append({"name": f"term/{name}", "weight": co.weight, "form": co.variant})
        ramp = exp.config["train"].get("dm_ramp_steps") or 0
        for dm, name in ((cfg.dm_a_to_b, f"dm:{a}->{b}"), (cfg.dm_b_to_a, f"dm:{b}->{a}")):
            if dm.enabled:
                extra = [dm.form] + (["stop_gradient"] if dm.stop_gradient else []) \
                    + (["only_unlabelled"] if dm.only_unlabelled else []) \
                    + ([f"ramped over {ramp} steps"] if ramp else [])
                terms.append({"name": f"term/{name}", "weight": dm.weight, "form": ", ".join(extra)})
    scales = experiment_term_scales(exp)
    for term in terms:
        scale = scales.get(term["name"].removeprefix("term/"))
        if scale is not None:
            term["form"] += f", x{scale:g} ({'balance' if scale < 1 else 'lift_scarce'})"
    return terms


def experiment_term_scales(exp: Experiment) -> dict[str, float]:
    """The ``relatedness[i].balance`` scale of each coupling term of ``exp`` (``training.balance``)."""
    from distmtl.training.balance import term_scales

    edges = [{"task_a": e.task_a, "task_b": e.task_b, "options": e.options} for e in exp.edges]
    return term_scales(edges, exp.data_summary()["sources"], exp.config["data"]["sampling"])
