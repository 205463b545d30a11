"""How to run: build the experiment, the Trainer and its callbacks; train, test, load checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from distmtl.config import dump_config, early_plateau_warning, plateau_patience
from distmtl.training.curves import read_log, write_training_curves
from distmtl.data.datamodule import MultiSourceDataModule
from distmtl.errors import DistmtlError
from distmtl.evaluation.metrics import calibrate_thresholds, task_metrics
from distmtl.training.experiment import Experiment, augment_on, build_experiment
from distmtl.io import atomic_write_text
from distmtl.training.module import MultiTaskModule
from distmtl.training.folders import (AtomicCheckpointIO, check_resume_config, choose_run_folder,  # noqa: F401
                                     is_follower_rank, merge_logs, record_resume_changes, run_lock,
                                     set_aside_log)
from distmtl.training.trainer_setup import StepProgressBar, deterministic_flag, make_loggers, passthrough_trainer_args

log = logging.getLogger(__name__)


class PlateauStopping(EarlyStopping):
    """EarlyStopping that declares no plateau before ``min_steps``: validations before it are not
    counted (a run whose score sits at chance for its first few hundred steps is not "converged").
    Lightning's own ``Trainer(min_steps)`` only delays a stop already decided, which then happens at
    ``min_steps`` even if the score has started to rise."""

    def __init__(self, min_steps: int, **kwargs):
        super().__init__(**kwargs)
        self.min_steps = int(min_steps)

    def _run_early_stopping_check(self, trainer) -> None:
        if trainer.global_step < self.min_steps:
            return
        super()._run_early_stopping_check(trainer)


def module_from_experiment(exp: Experiment) -> MultiTaskModule:
    edges = [{"task_a": e.task_a, "task_b": e.task_b, "classes": list(e.relatedness.classes),
              "labels": list(e.relatedness.labels), "matrix": e.relatedness.matrix.tolist(),
              "prior": e.relatedness.prior.tolist(), "options": e.options} for e in exp.edges]
    config = resolve_pos_weights(exp)
    module = MultiTaskModule(config, {n: t.to_dict() for n, t in exp.tasks.items()}, edges, exp.data_summary())
    for name, scale in module.term_scales.items():
        if scale < 1:
            log.info("%s: scaled by %g (relatedness balance: the images it acts on are drawn more often "
                     "than the task's labelled ones)", name, scale)
        else:
            log.info("%s: scaled by %g (relatedness lift_scarce: the task's labelled images are drawn "
                     "more often than the images it acts on)", name, scale)
    return module


def resolve_pos_weights(exp: Experiment, cap: float = 10.0) -> dict:
    """The run's config with ``losses.<task>.pos_weight: auto`` replaced by numbers.

    auto = negatives / positives per label over the annotated training entries (capped at ``cap``,
    at least 1), so rare AUs are not learned as "always absent"; the numbers are stored with the
    checkpoint, so evaluation and resumption use the same ones.
    """
    config = copy.deepcopy({k: v for k, v in exp.config.items() if not k.startswith("_")})
    for name, options in (config.get("losses") or {}).items():
        if not isinstance(options, dict) or options.get("pos_weight") != "auto":
            continue
        task = exp.tasks.get(name)
        if task is None:  # a run of a subset of the tasks (compare's single-task models)
            continue
        if task.kind != "multilabel":
            raise DistmtlError(f"losses.{name}.pos_weight: 'auto' needs a multilabel task")
        pos = np.zeros(task.num_outputs)
        neg = np.zeros(task.num_outputs)
        for s in exp.train_sources:
            t, m = s.targets[name], s.masks[name]
            pos += (t * m).sum(axis=0)
            neg += ((1 - t) * m).sum(axis=0)
        options["pos_weight"] = np.clip(neg / np.maximum(pos, 1.0), 1.0, cap).round(4).tolist()
    return config


def datamodule_from_experiment(exp: Experiment, train_sources=None, *, report: bool = False) -> MultiSourceDataModule:
    data = exp.config["data"]
    sources = train_sources if train_sources is not None else exp.train_sources
    caps = source_caps(exp.config)
    t = exp.config["train"]
    return MultiSourceDataModule(
        sources, exp.eval_sources, exp.preprocessing, exp.augmentation,
        batch_size=data["batch_size"], eval_batch_size=data["eval_batch_size"],
        sampling=data["sampling"] or "equal", epoch_batches=data["epoch_batches"],
        num_workers=data["num_workers"], seed=exp.config["seed"],
        pin_memory=data.get("pin_memory", "auto"), prefetch_factor=data.get("prefetch_factor"),
        persistent_workers=data.get("persistent_workers", True),
        max_repeats=[caps.get(s.name, data.get("max_repeats")) for s in sources],
        run_batches=int(t["max_steps"]) * int(exp.config["trainer"]["accumulate_grad_batches"] or 1),
        report=report, augment_on=augment_on(exp.config))


def source_caps(config: dict) -> dict[str, float]:
    """``max_repeats`` given per source in ``data.sources``, by source name."""
    from distmtl.training.experiment import source_label

    return {source_label(s): s["max_repeats"] for s in config["data"]["sources"]
            if isinstance(s, dict) and s.get("max_repeats") is not None}


def check_trainable(exp: Experiment, train_sources=None) -> None:
    """Build what training builds (module, optimiser, batch sampler), without pretrained weights,
    so that ``--dry-run`` and ``compare`` refuse up front every value the run itself would refuse."""
    from distmtl.data.sampler import source_weights

    sources = train_sources if train_sources is not None else exp.train_sources
    source_weights([len(s) for s in sources], exp.config["data"]["sampling"] or "equal")
    config = copy.deepcopy(exp.config)
    config["model"]["pretrained"] = False
    module = module_from_experiment(dataclasses.replace(exp, config=config))
    module.configure_optimizers()


def make_trainer(config: dict, out_dir: Path, *, progress: bool | None = None) -> L.Trainer:
    t, tr = config["train"], config["trainer"]
    ckpt_dir = out_dir / "checkpoints"
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=t["monitor"], mode=t["mode"],
                        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False),
        ModelCheckpoint(dirpath=ckpt_dir, filename="step", save_top_k=0, save_last=True,
                        every_n_train_steps=int(t["checkpoint_every_steps"]), enable_version_counter=False),
    ]
    if t["until"] == "plateau":
        warning = early_plateau_warning(config)
        if warning:
            log.warning(warning)
        callbacks.append(PlateauStopping(int(t["min_steps"] or 0), monitor=t["monitor"], mode=t["mode"],
                                         patience=plateau_patience(t), min_delta=float(t["min_delta"]),
                                         check_finite=False))
    elif t["early_stopping_patience"]:
        callbacks.append(EarlyStopping(monitor=t["monitor"], mode=t["mode"],
                                       patience=int(t["early_stopping_patience"])))
    show = bool(tr["enable_progress_bar"] if progress is None else progress)
    if show:
        callbacks.append(StepProgressBar(int(t["max_steps"])))
    val_every = min(int(t["val_every_steps"]), int(t["max_steps"]))
    options = {"enable_model_summary": False, **passthrough_trainer_args(config, {"enable_progress_bar"})}
    # Jacobian descent optimises manually and clips its aggregated gradient itself
    if config["weighting"]["name"] == "jd":
        options["gradient_clip_val"] = None
    return L.Trainer(
        default_root_dir=out_dir, max_steps=int(t["max_steps"]),
        max_epochs=-1, val_check_interval=val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, use_distributed_sampler=False, deterministic=deterministic_flag(config),
        enable_progress_bar=show, callbacks=callbacks, logger=make_loggers(config, out_dir),
        plugins=[AtomicCheckpointIO()], **options,
    )


def train_experiment(exp: Experiment, out_dir: str | Path, *, resume: bool = False,
                     progress: bool | None = None, train_sources=None,
                     allow_change: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint on val and test; returns and writes metrics.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(out_dir):
        return _train_locked(exp, out_dir, resume=resume, progress=progress, train_sources=train_sources,
                             allow_change=allow_change)


def _train_locked(exp: Experiment, out_dir: Path, *, resume: bool, progress: bool | None, train_sources,
                  allow_change) -> dict[str, Any]:
    config = exp.config
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if resume and last.exists() else None
    if resume and ckpt_path is None:
        log.warning("no checkpoint to resume from in %s; starting from scratch", out_dir)
    if ckpt_path is not None:  # the run's own config and a loadable checkpoint, before anything is built
        changed = check_resume_config(out_dir, config, allow_change)
        step = int(load_checkpoint_dict(last).get("global_step", 0))
        if not is_follower_rank():
            if changed:
                record_resume_changes(out_dir, yaml.safe_load((out_dir / "config.yaml").read_text()),
                                      config, changed, step)
            set_aside_log(out_dir, step)
    elif not is_follower_rank():
        dump_config(config, out_dir / "config.yaml")
    L.seed_everything(int(config["seed"]), workers=True, verbose=False)
    if not is_follower_rank():
        write_estimated_tables(exp, out_dir)
    module = module_from_experiment(exp)
    dm = datamodule_from_experiment(exp, train_sources, report=progress is not False)
    trainer = make_trainer(config, out_dir, progress=progress)
    # resume reads only tensors and plain data, never arbitrary pickles
    extra = {"weights_only": True} if _fit_takes_weights_only() else {}
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, **extra)
    except RuntimeError as exc:
        if ckpt_path is None or "state_dict" not in str(exc):
            raise
        raise DistmtlError(f"{last}: the checkpoint's weights do not fit this config's model "
                           f"({str(exc).splitlines()[0]}...)") from None
    trainer.save_checkpoint(last)  # collective under DDP: every rank calls it, rank 0 writes
    main = trainer.is_global_zero
    if main:
        for logger in trainer.loggers:
            logger.save()  # the CSV log is buffered: flush it before drawing the curves
        merge_logs(out_dir)  # a resumed run's log covers the whole run
        write_training_curves(out_dir)
    trainer.strategy.barrier("distmtl:log-flushed")  # other ranks read the log (stopping_summary)
    best = out_dir / "checkpoints" / "best.ckpt"
    best_module = load_module(best if best.exists() else last)
    # every rank returns the same results; only rank 0 writes files
    results: dict[str, Any] = {"checkpoint": str(best if best.exists() else last),
                               "steps": int(trainer.global_step), "nan_skipped": module.nan_skipped,
                               **stopping_summary(trainer, config, out_dir), "eval_samples": {}}
    eval_trainer = make_eval_trainer(config)
    outputs = {}
    for split in ("val", "test"):
        if split in exp.eval_sources:
            eval_trainer.test(best_module, dataloaders=dm.eval_dataloader(split), verbose=False)
            results[split] = best_module.last_metrics
            results["eval_samples"][split] = best_module.last_eval_samples
            outputs[split] = best_module.last_outputs
            if split == "test" and main:
                write_coactivation(exp, best_module.last_outputs, out_dir)
    add_calibrated_f1(exp, results, outputs)
    if main:
        atomic_write_text(out_dir / "metrics.json", json.dumps(results, indent=2, default=float))
    return results


def in_process_group() -> bool:
    """Whether this process is one of several in an initialised torch.distributed group (a DDP
    run launched by Lightning's script launcher, torchrun or a cluster)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0 of a process group; before one exists, the rank the launcher gave this process
    (Lightning reads it from the environment: RANK, LOCAL_RANK, SLURM_PROCID, ...)."""
    import torch.distributed as dist
    from lightning.pytorch.utilities import rank_zero_only

    if in_process_group():
        return dist.get_rank() == 0
    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def make_eval_trainer(config: dict) -> L.Trainer:
    """The Trainer of the final evaluation. Inside a DDP process group it uses the run's own
    devices and strategy, so every rank evaluates its shard of each split (the DataModule shards
    them; the module gathers each sample once). Otherwise (one process, or the main process of a
    spawn-based strategy after fit) one device of the run's accelerator."""
    tr = config["trainer"]
    common = dict(accelerator=tr["accelerator"], logger=False, enable_progress_bar=False,
                  enable_model_summary=False, use_distributed_sampler=False)
    if in_process_group():
        return L.Trainer(devices=tr["devices"], num_nodes=tr["num_nodes"], strategy=tr["strategy"], **common)
    return L.Trainer(devices=1, **common)


def add_calibrated_f1(exp: Experiment, results: dict, outputs: dict) -> None:
    """``mean_f1_calibrated`` (and per-label ``f1_calibrated``, ``calibrated_thresholds``) of every
    multilabel task, at the thresholds that maximise each label's F1 on the validation split. On
    the validation split itself the number is optimistic (chosen there); test is the fair one."""
    val = outputs.get("val", {})
    for name, task in exp.tasks.items():
        if task.kind != "multilabel" or name not in val:
            continue
        logits, targets, masks = val[name][:3]
        thresholds = calibrate_thresholds(torch.sigmoid(logits.float()), targets, masks)
        for split, collected in outputs.items():
            if name not in collected or name not in results.get(split, {}):
                continue
            calibrated = task_metrics(task, *collected[name][:3], thresholds=thresholds)
            results[split][name].update({"mean_f1_calibrated": calibrated["mean_f1"],
                                         "f1_calibrated": calibrated["f1"],
                                         "calibrated_thresholds": calibrated["thresholds"]})


def stopping_summary(trainer: L.Trainer, config: dict, out_dir: Path) -> dict[str, Any]:
    """How the run ended: ``until`` (steps | plateau), ``stopped`` (``plateau``: the validation
    score stopped improving; ``cap``: ``max_steps`` was reached first; ``budget``: the equal-budget
    mode, which always trains ``max_steps``), ``plateau_reached`` and ``best_step`` (the step of the
    best validation score, the checkpoint that is evaluated)."""
    t = config["train"]
    stopper = trainer.early_stopping_callback
    plateau = bool(t["until"] == "plateau" and stopper is not None and stopper.wait_count >= stopper.patience)
    stopped = "plateau" if plateau else ("cap" if t["until"] == "plateau" else "budget")
    best_step = None
    try:
        frame = read_log(out_dir)
        if t["monitor"] in frame.columns:
            scores = frame[["step", t["monitor"]]].dropna()
            if len(scores):
                pick = scores[t["monitor"]].idxmax() if t["mode"] == "max" else scores[t["monitor"]].idxmin()
                best_step = int(scores.loc[pick, "step"]) + 1  # the log's step is 0-based
    except DistmtlError:
        pass
    return {"until": t["until"], "stopped": stopped, "plateau_reached": plateau, "best_step": best_step,
            "max_steps": int(t["max_steps"])}


MAX_COACTIVATION_CLASSES = 100
MAX_PLOTTED_CLASSES = 1000  # a taller heat map exceeds what an image can hold; the CSV has every row


def write_estimated_tables(exp: Experiment, out_dir: Path) -> list[Path]:
    """Each table estimated from the data (``table: {estimate: source}``) as CSV + PNG in the run
    folder, so that what the run was coupled with can be read and checked."""
    written = []
    for edge in exp.edges:
        table = edge.options.get("table")
        if not (isinstance(table, dict) and "estimate" in table):
            continue
        stem = out_dir / f"relatedness_estimated_{edge.task_a}_{edge.task_b}"
        edge.relatedness.to_csv(stem.with_suffix(".csv"))
        written.append(stem.with_suffix(".csv"))
        if len(edge.relatedness.classes) <= MAX_PLOTTED_CLASSES:
            edge.relatedness.plot(stem.with_suffix(".png"),
                                  title=f"p({edge.task_b} | {edge.task_a}) estimated from "
                                        f"training source '{table['estimate']}'")
            written.append(stem.with_suffix(".png"))
        else:
            log.warning("%s: %d classes, too many to draw; the table is in %s", stem.name,
                        len(edge.relatedness.classes), stem.with_suffix(".csv"))
    return written


def write_coactivation(exp: Experiment, outputs: dict, out_dir: Path) -> None:
    """Draw what the trained model learned (co-activation on the test split) beside the prior table."""
    from distmtl.relatedness.estimate import coactivation
    from distmtl.relatedness.table import Relatedness

    for edge in exp.edges:
        if edge.task_a not in outputs or edge.task_b not in outputs:
            continue
        if len(edge.relatedness.classes) > MAX_COACTIVATION_CLASSES:  # e.g. thousands of identities
            continue
        means, counts = coactivation(outputs[edge.task_a][0], torch.sigmoid(outputs[edge.task_b][0].float()))
        learned = Relatedness(means, edge.relatedness.classes, edge.relatedness.labels, name="learned")
        stem = out_dir / f"coactivation_{edge.task_a}_{edge.task_b}"
        learned.to_csv(stem.with_suffix(".csv"))
        never = [c for c, n in zip(learned.classes, counts) if n == 0]
        note = f" (never predicted: {', '.join(never)})" if never else ""
        learned.plot(stem.with_suffix(".png"), other=edge.relatedness,
                     title=f"learned: mean p({edge.task_b} | predicted {edge.task_a}), test split{note}",
                     other_title=f"prior: {edge.relatedness.name or 'table'}")


def _fit_takes_weights_only() -> bool:
    import inspect

    return "weights_only" in inspect.signature(L.Trainer.fit).parameters


def load_checkpoint_dict(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DistmtlError(f"{path}: checkpoint not found")
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises the unsafe weights_only=False: not relayed
        raise DistmtlError(f"{path}: refused: the checkpoint holds objects other than tensors and plain "
                           f"data, and loading those could run arbitrary code (distmtl writes none)") from None
    except Exception as exc:  # truncated or corrupt file
        size = path.stat().st_size
        raise DistmtlError(f"{path}: not a loadable checkpoint, truncated or corrupt ({size} bytes; "
                           f"{str(exc).splitlines()[0].split('. ')[0]})") from None


def load_module(path: str | Path) -> MultiTaskModule:
    ckpt = load_checkpoint_dict(path)
    hp = ckpt.get("hyper_parameters")
    if not hp or "tasks" not in hp:
        raise DistmtlError(f"{path}: not a distmtl checkpoint (no task specification inside)")
    # the checkpoint's weights replace any pretrained ones: never go to the model hub for them
    module = MultiTaskModule(hp["config"], hp["tasks"], hp.get("edges"), hp.get("data_summary"),
                             download_pretrained=False)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise DistmtlError(f"{path}: weights do not match the task specification inside "
                           f"({str(exc).splitlines()[0]})") from None
    module.eval()
    return module


def variant_plan(config: dict, variant: str | None,
                 key: str = "variant") -> list[tuple[str, Experiment, list[str]]]:
    """The runs of ``variant`` (None: the config as written, one run), each checked with
    :func:`check_trainable` before any of them trains."""
    from distmtl.training.variants import check_variant, variant_runs

    if variant is None:
        exp = build_experiment(config)
        return [("", exp, list(exp.tasks))]
    check_variant(variant, key)
    exp = build_experiment(config, with_oracle=variant == "oracle")
    runs = variant_runs(exp, variant, key)
    for name, run, _ in runs:
        try:
            check_trainable(run)
        except DistmtlError as exc:
            raise DistmtlError(f"{key} {variant}, run '{name}': {exc}") from None
    return runs


def run_folder(out: Path, name: str, runs: list) -> Path:
    """A variant with one run trains into ``out``; ``single`` into ``out/single-<task>``."""
    return out if len(runs) == 1 else out / name.replace("/", "-")


def train_from_config(config: dict, out_dir: str | Path | None = None, *, resume: bool = False,
                      progress: bool | None = None, variant: str | None = None, overwrite: bool = False,
                      allow_change: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Train the config as written, or one of ``compare``'s variants (``single``, ``mtl``,
    ``coann``, ``dm``, ``coann+dm``, ``oracle``). Returns the run's metrics; for ``single``
    (one run per task), ``{run name: metrics}``. A folder holding an earlier run gets a ``-vN``
    sibling unless ``overwrite``; ``allow_change`` as in :func:`train_experiment`."""
    out = Path(out_dir or config["output"]["dir"] or Path("runs") / config["name"])
    out = choose_run_folder(out, resume=resume, overwrite=overwrite)
    runs = variant_plan(config, variant)
    results = {name: train_experiment(exp, run_folder(out, name, runs), resume=resume, progress=progress,
                                         allow_change=allow_change)
               for name, exp, _ in runs}
    return next(iter(results.values())) if len(results) == 1 else results


def set_threads() -> None:
    """Use every core for intra-op work unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
