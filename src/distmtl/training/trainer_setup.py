"""What the Lightning Trainer is given beyond the loop: loggers, the step progress bar, determinism,
and the ``trainer:`` arguments passed through from the config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from distmtl.config.environment import logger_specs


def uses_accelerator(accelerator: Any) -> bool:
    """Whether ``trainer.accelerator`` will train on something other than the CPU."""
    name = str(accelerator).lower()
    if name == "cpu":
        return False
    if name == "auto":
        mps = getattr(torch.backends, "mps", None)
        return torch.cuda.is_available() or bool(mps is not None and mps.is_available())
    return True


def deterministic_flag(config: dict) -> bool:
    """``train.deterministic``; unset, it is on for CPU runs and off on accelerators, where it would
    turn off cuDNN autotuning and make kernels without a deterministic version raise."""
    value = config["train"].get("deterministic")
    return (not uses_accelerator(config["trainer"]["accelerator"])) if value is None else bool(value)


def make_loggers(config: dict, out_dir: Path) -> list:
    """``train.loggers``: csv always (``logs/metrics.csv``, read by the curves), then the others."""
    from lightning.pytorch import loggers as pl_loggers

    made = []
    for name, options in logger_specs(config["train"].get("loggers")):
        if name == "csv":
            made.append(pl_loggers.CSVLogger(out_dir, name="logs", version="", **options))
        elif name == "tensorboard":
            made.append(pl_loggers.TensorBoardLogger(out_dir, name="tb", version="", **options))
        elif name == "wandb":
            made.append(pl_loggers.WandbLogger(**{"save_dir": str(out_dir), "name": config["name"], **options}))
        elif name == "mlflow":
            made.append(pl_loggers.MLFlowLogger(**{"experiment_name": config["name"],
                                                   "tracking_uri": f"file:{Path(out_dir).resolve() / 'mlruns'}",
                                                   **options}))
    return made


def passthrough_trainer_args(config: dict, handled: set[str]) -> dict[str, Any]:
    """The ``trainer:`` entries distmtl does not set itself, for ``Trainer(**...)``."""
    return {k: v for k, v in config["trainer"].items() if k not in handled and not str(k).startswith("_")}


def format_duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StepProgressBar(TQDMProgressBar):
    """One bar over the run's optimiser-step budget (``train.max_steps``), not per epoch: the
    step, elapsed time and the time left at the current rate, with the logged losses."""

    def __init__(self, max_steps: int, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.max_steps = int(max_steps)
        self._started = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=self.max_steps)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.n = trainer.global_step  # a resumed run starts where it left off
        self.train_progress_bar.set_description("steps")
        self._started = time.monotonic()
        self._start_step = trainer.global_step

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # the bar spans the whole budget: no reset per epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        step = trainer.global_step
        if step != bar.n and (step % self.refresh_rate == 0 or step >= self.max_steps):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module) | self.timing(step), refresh=False)
            bar.refresh()

    def timing(self, step: int) -> dict[str, str]:
        elapsed = time.monotonic() - (self._started or time.monotonic())
        done = max(1, step - self._start_step)
        left = elapsed / done * max(0, self.max_steps - step)
        return {"elapsed": format_duration(elapsed), "left": format_duration(left)}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, *_) -> None:
        if self.train_progress_bar is not None:
            self.train_progress_bar.close()
