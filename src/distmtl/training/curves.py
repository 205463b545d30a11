"""Training curves from a run's CSV log (``<run>/logs/metrics.csv``): task losses, coupling terms,
task weights and validation scores over optimiser steps, drawn as PNGs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.errors import DistmtlError

LOG_FILE = Path("logs") / "metrics.csv"
PANELS = (("loss/", "task loss"), ("term/", "coupling term"), ("weight/", "task weight"),
          ("val/", "validation"))


def read_log(run_dir: str | Path) -> pd.DataFrame:
    """The run's logged values, one row per logged step (rows merged when several share a step)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise DistmtlError(f"{path}: no training log (was the run trained with distmtl train?)")
    frame = pd.read_csv(path)
    if "step" not in frame.columns:
        raise DistmtlError(f"{path}: no 'step' column")
    return frame.groupby("step", as_index=False).first()


def columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefix) and frame[c].notna().any()]


def plot_training_curves(frame: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """One panel per group of logged values present (losses, coupling terms, weights, validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(prefix, label, columns(frame, prefix)) for prefix, label in PANELS]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise DistmtlError("training log holds no losses, weights or validation scores to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (prefix, label, cols) in zip(axes[0], panels):
        for c in cols:
            rows = frame[["step", c]].dropna()
            ax.plot(rows["step"], rows[c], marker="o" if len(rows) < 12 else None, markersize=3,
                    label=c[len(prefix):])
        _label_axes(ax, label)
    return _save(fig, path, title)


PANELS_PER_ROW = 5  # a 15-strategy study stays readable: three rows, not one strip


def plot_weight_runs(logs: Mapping[str, list[pd.DataFrame]], path: str | Path, title: str | None = None) -> Path:
    """Task weights over training, one panel per label (e.g. weighting strategy): the mean over the
    label's runs (seeds) as a line, their min..max as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {k: v for k, v in logs.items() if v}
    if not logs:
        raise DistmtlError("no training logs to plot")
    ncols = min(len(logs), PANELS_PER_ROW)
    nrows = -(-len(logs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharey=False)
    for ax in axes.flat[len(logs):]:
        ax.set_visible(False)
    for ax, (label, frames) in zip(axes.flat, logs.items()):
        tasks = [c[len("weight/"):] for c in columns(frames[0], "weight/")]
        for task in tasks:
            series = [f.set_index("step")[f"weight/{task}"].dropna() for f in frames
                      if f"weight/{task}" in f.columns]
            joined = pd.concat(series, axis=1).sort_index()
            values = joined.to_numpy(float)
            mean = np.nanmean(values, axis=1)
            line = ax.plot(joined.index, mean, label=task)[0]
            if values.shape[1] > 1:
                ax.fill_between(joined.index, np.nanmin(values, axis=1), np.nanmax(values, axis=1),
                                color=line.get_color(), alpha=0.2)
        ax.set_title(f"{label} ({len(frames)} run{'s' if len(frames) > 1 else ''})", fontsize=9)
        _label_axes(ax, "task weight")
    return _save(fig, path, title)


def _label_axes(ax, ylabel: str) -> None:
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _save(fig, path: str | Path, title: str | None) -> Path:
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
    return path


def write_training_curves(run_dir: str | Path) -> Path | None:
    """``<run>/curves.png`` from the run's log; None when there is no log to draw."""
    run_dir = Path(run_dir)
    if not (run_dir / LOG_FILE).is_file():
        return None
    frame = read_log(run_dir)
    if not any(columns(frame, prefix) for prefix, _ in PANELS):
        return None
    return plot_training_curves(frame, run_dir / "curves.png", title=f"{run_dir.parent.name} {run_dir.name}")
