"""The validation curves of every variant of a comparison study on one figure.

One panel per task (its primary validation metric over optimiser steps); per variant the mean over
seeds as a line and the min..max over seeds as a band, so a reader sees whether coupling helps
early, late or both, and where each variant's curve flattens. A run that stopped on its plateau
ends earlier than the others: the mean at a step is over the seeds still training there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.errors import DistmtlError
from distmtl.study.report import display_name, variant_order
from distmtl.training.curves import LOG_FILE, read_log


def validation_series(run_dir: Path, task: str) -> pd.Series | None:
    """The run's primary validation metric of ``task`` indexed by optimiser step (1-based)."""
    if not (Path(run_dir) / LOG_FILE).is_file():
        return None
    try:
        frame = read_log(run_dir)
    except DistmtlError:
        return None
    column = next((c for c in frame.columns if c.startswith(f"val/{task}/")), None)
    if column is None:
        return None
    rows = frame[["step", column]].dropna()
    return pd.Series(rows[column].to_numpy(float), index=rows["step"].to_numpy(int) + 1, name=column)


def plot_variant_curves(runs: Mapping[tuple, tuple[Path, list[str]]], path: str | Path,
                        title: str | None = None) -> Path | None:
    """``runs``: (variant, seed, run name) -> (run folder, tasks it reports); the single-task
    variant has one run per task and seed. None when no run has a validation log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_task: dict[str, dict[str, list[pd.Series]]] = {}
    metric_of: dict[str, str] = {}
    for (variant, *_), (run_dir, tasks) in runs.items():
        for task in tasks:
            series = validation_series(run_dir, task)
            if series is None:
                continue
            metric_of[task] = str(series.name).split("/", 2)[-1]
            per_task.setdefault(task, {}).setdefault(variant, []).append(series)
    if not per_task:
        return None
    variants = variant_order(key[0] for key in runs)
    colours = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, len(per_task), figsize=(4.8 * len(per_task), 3.6), squeeze=False)
    for ax, (task, by_variant) in zip(axes[0], per_task.items()):
        for variant in (v for v in variants if v in by_variant):
            joined = pd.concat(by_variant[variant], axis=1).sort_index()
            values = joined.to_numpy(float)
            mean = np.nanmean(values, axis=1)
            n = len(by_variant[variant])
            ax.plot(joined.index, mean, color=colours[variant], label=f"{display_name(variant)} ({n})")
            if n > 1:
                ax.fill_between(joined.index, np.nanmin(values, axis=1), np.nanmax(values, axis=1),
                                color=colours[variant], alpha=0.18, linewidth=0)
            ends = [int(s.index.max()) for s in by_variant[variant]]
            ax.plot(ends, [float(s.iloc[-1]) for s in by_variant[variant]], "|", color=colours[variant],
                    markersize=9)
        ax.set_title(f"{task}: validation {metric_of[task]}", fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(metric_of[task])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="variant (seeds)", title_fontsize=7)
    if title:
        fig.suptitle(title + " (mean over seeds, band min..max, | last validation of a run)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
    return path
