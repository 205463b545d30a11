"""Comparison-study report: per-seed run records -> summary table, markdown, CSV and bar chart.

Conventions:

- Statistics are over seeds: ``mean`` and sample ``std`` (ddof=1; 0 with a single seed). Runs
  with a non-finite value (a diverged run) are left out of the statistics and noted in the
  verdict.
- Gap closed (methods.md): ``(M_variant - M_single) / (M_oracle - M_single)`` on means, ``None``
  without a single-task or oracle run, or when ``|M_oracle - M_single| < 1e-9``.
- Spread: ``max(std_variant, std_single)``. A variant shows negative transfer when it is worse
  than single-task by more than the spread, and beats single-task when it is better by more than
  the spread. With a single seed on either side the spread may be 0 (any difference counts) and
  the verdict says "single seed".
- Higher is better for every metric except those named like errors or losses (``mse``, ``mae``,
  ``rmse``, ``loss``, ``error``, ``eer``), for which "worse" and "better" are reversed.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.errors import DistmtlError

VARIANTS = ("single", "mtl", "coann", "dm", "coann+dm", "oracle")
DISPLAY_NAMES = {
    "single": "single-task",
    "mtl": "plain MTL",
    "coann": "+co-annotation",
    "dm": "+DM",
    "coann+dm": "+both",
    "oracle": "oracle",
}
LOWER_IS_BETTER = ("mse", "mae", "rmse", "loss", "error", "eer")
GAP_EPS = 1e-9
RUN_COLUMNS = ("variant", "seed", "task", "metric", "value", "steps", "stopped")

SUMMARY_COLUMNS = (
    "task", "metric", "variant", "display_name", "mean", "std", "n_seeds",
    "gap_closed", "gap_note", "negative_transfer", "beats_single", "seed_wins", "paired_diff", "paired_std",
    "steps", "plateau", "at_cap", "verdict",
)


@dataclass(frozen=True)
class RunRecord:
    """The value of one metric of one task in one run (variant, seed), with how long the run
    trained: ``steps`` (optimiser steps) and ``stopped`` (``plateau``, ``cap`` or ``budget``, see
    :func:`distmtl.training.runner.stopping_summary`); both ``None`` when unknown."""

    variant: str
    seed: int
    task: str
    metric: str
    value: float
    steps: int | None = None
    stopped: str | None = None


def _flag(value: object) -> bool:
    """True only for a set boolean flag (None / NaN / False are not set)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(value)


def display_name(variant: str) -> str:
    return DISPLAY_NAMES.get(variant, variant)


def higher_is_better(metric: str) -> bool:
    name = metric.lower()
    return not any(name == s or name.startswith(s + "_") or name.endswith("_" + s)
                   for s in LOWER_IS_BETTER)


def variant_order(variants: Iterable[str]) -> list[str]:
    """Known variants in :data:`VARIANTS` order, then unknown ones in order of appearance."""
    seen = list(dict.fromkeys(variants))
    return [v for v in VARIANTS if v in seen] + [v for v in seen if v not in VARIANTS]


def _paired(variant: dict[int, float], single: dict[int, float], sign: float):
    """Seeds are matched across variants (same initialisation and data order), so per-seed
    differences from single-task are the sharper comparison: ('k/n' seeds better, mean, std)."""
    seeds = sorted(set(variant) & set(single))
    if not seeds:
        return None, None, None
    diffs = np.array([sign * (variant[s] - single[s]) for s in seeds])
    std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
    return f"{int((diffs > 0).sum())}/{len(diffs)}", float(diffs.mean()), std


def _verdict(variant: str, diff: float, spread: float, single_seed: bool) -> tuple[bool, bool, str]:
    """(negative_transfer, beats_single, text) for a signed improvement ``diff`` over single."""
    negative, beats = -diff > spread, diff > spread
    if negative:
        text = f"negative transfer: worse than single-task by {-diff:.4f} (> spread {spread:.4f})"
    elif beats:
        text = f"better than single-task by {diff:.4f} (> spread {spread:.4f})"
    else:
        text = f"within spread of single-task (diff {diff:+.4f}, spread {spread:.4f})"
    if variant == "oracle":
        text = "upper reference; " + text
    if single_seed:
        text += "; single seed"
    return negative, beats, text


def summarise(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per (task, metric, variant), in order of first appearance of task and metric."""
    seen: set[tuple[str, int, str, str]] = set()
    for r in records:
        key = (r.variant, int(r.seed), r.task, r.metric)
        if key in seen:
            raise DistmtlError(
                f"duplicate run record: variant '{r.variant}', seed {r.seed}, task '{r.task}', "
                f"metric '{r.metric}'"
            )
        seen.add(key)
    variants = variant_order(r.variant for r in records)
    groups = list(dict.fromkeys((r.task, r.metric) for r in records))
    rows = []
    for task, metric in groups:
        values: dict[str, list[float]] = {}
        by_seed: dict[str, dict[int, float]] = {}
        failed: dict[str, int] = {}
        stops: dict[str, list[tuple[int | None, str | None]]] = {}
        for r in records:
            if (r.task, r.metric) != (task, metric):
                continue
            stops.setdefault(r.variant, []).append((r.steps, r.stopped))
            value = float(r.value) if r.value is not None else math.nan
            if math.isfinite(value):
                values.setdefault(r.variant, []).append(value)
                by_seed.setdefault(r.variant, {})[int(r.seed)] = value
            else:
                failed[r.variant] = failed.get(r.variant, 0) + 1
                values.setdefault(r.variant, [])
        stats = {
            v: (
                float(np.mean(x)) if x else math.nan,
                float(np.std(x, ddof=1)) if len(x) > 1 else 0.0,
                len(x),
            )
            for v, x in values.items()
        }
        sign = 1.0 if higher_is_better(metric) else -1.0
        single, oracle = stats.get("single"), stats.get("oracle")
        for variant in (v for v in variants if v in stats):
            mean, std, n = stats[variant]
            gap = negative = beats = None
            if n == 0:
                verdict = "no finite results"
            elif single is None or single[2] == 0:
                verdict = "no single-task baseline"
            elif variant == "single":
                verdict = "single-task reference"
            else:
                spread = max(std, single[1])
                negative, beats, verdict = _verdict(
                    variant, sign * (mean - single[0]), spread, min(n, single[2]) == 1
                )
            gap_note = None
            if n and single is not None and single[2] and oracle is not None and oracle[2]:
                gap, gap_note = _gap_closed(mean, single, oracle, sign)
                if gap_note and variant != "single":
                    verdict += f"; gap closed n/a: {gap_note}"
            wins, paired, paired_sd = _paired(by_seed.get(variant, {}), by_seed.get("single", {}), sign)
            if variant != "single" and wins is not None:
                verdict += f"; better in {wins} seeds (paired diff {paired:+.4f} ± {paired_sd:.4f})"
            if failed.get(variant):
                verdict += f"; {failed[variant]} non-finite run(s) left out"
            steps, plateau, at_cap = _stopping(stops.get(variant, []))
            if at_cap:
                verdict += f"; {at_cap} run(s) stopped at the step cap before a plateau"
            rows.append({
                "task": task, "metric": metric, "variant": variant,
                "display_name": display_name(variant), "mean": mean, "std": std, "n_seeds": n,
                "gap_closed": gap, "gap_note": gap_note, "negative_transfer": negative, "beats_single": beats,
                "seed_wins": wins if variant != "single" else None,
                "paired_diff": paired if variant != "single" else None,
                "paired_std": paired_sd if variant != "single" else None,
                "steps": steps, "plateau": plateau, "at_cap": at_cap, "verdict": verdict,
            })
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for column in ("gap_closed", "gap_note", "negative_transfer", "beats_single", "seed_wins", "paired_diff",
                   "paired_std", "steps", "plateau", "at_cap"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def _gap_closed(mean: float, single: tuple, oracle: tuple, sign: float) -> tuple[float | None, str | None]:
    """``(gap closed, None)``, or ``(None, reason)`` when the oracle is not above single-task by
    more than the spread (max of their stds): a ratio over a gap that is noise means nothing."""
    diff = sign * (oracle[0] - single[0])
    spread = max(oracle[1], single[1])
    if diff <= spread or abs(diff) < GAP_EPS:
        return None, (f"the oracle is not above single-task by more than the spread "
                      f"({diff:+.4f} vs spread {spread:.4f})")
    return (mean - single[0]) / (oracle[0] - single[0]), None


def gap_cell(row, digits: int = 3) -> str:
    """The gap-closed cell of a summary row: the number, ``n/a`` (reason in the verdict) or ``-``."""
    if row.get("gap_note"):
        return "n/a"
    return _fmt(row["gap_closed"], digits)


def _stopping(stops: list[tuple[int | None, str | None]]) -> tuple[float | None, str | None, int | None]:
    """(mean steps, 'k/n' runs that reached their plateau, runs stopped at the cap) of one variant;
    the last two are None outside plateau mode (no run of the variant stopped on 'plateau' or 'cap')."""
    steps = [s for s, _ in stops if s is not None and not (isinstance(s, float) and math.isnan(s))]
    mean = float(np.mean(steps)) if steps else None
    judged = [why for _, why in stops if why in ("plateau", "cap")]
    if not judged:
        return mean, None, None
    return mean, f"{judged.count('plateau')}/{len(judged)}", judged.count("cap")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _mean_std(row: pd.Series) -> str:
    return f"{_fmt(row['mean'])} ± {_fmt(row['std'])}"


def format_table(summary: pd.DataFrame) -> str:
    """Fixed-width terminal table of a :func:`summarise` result."""
    header = ("task", "metric", "variant", "mean ± std", "seeds", "steps", "plateau", "gap closed", "verdict")
    rows = [header] + [
        (
            str(r["task"]), str(r["metric"]), str(r["display_name"]), _mean_std(r),
            str(r["n_seeds"]), _fmt(r["steps"], 0), str(r["plateau"] or "-"), gap_cell(r),
            str(r["verdict"]),
        )
        for _, r in summary.iterrows()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    return "\n".join(line.rstrip() for line in lines)


def _conclusions(summary: pd.DataFrame) -> list[str]:
    """Variants that beat single-task on every (task, metric), and negative-transfer cases."""
    compared = summary[[b is not None for b in summary["beats_single"]]]
    groups = list(dict.fromkeys(zip(summary["task"], summary["metric"])))
    with_baseline = [
        g for g in groups
        if ((summary["task"] == g[0]) & (summary["metric"] == g[1])
            & (summary["variant"] == "single") & (summary["n_seeds"] > 0)).any()
    ]
    winners = []
    for variant in variant_order(compared["variant"]):
        if variant == "oracle":
            continue
        rows = compared[compared["variant"] == variant]
        flags = zip(rows["task"], rows["metric"], rows["beats_single"])
        beaten = {(t, m) for t, m, b in flags if _flag(b)}
        if with_baseline and all(g in beaten for g in with_baseline):
            winners.append(display_name(variant))
    single_mean = {
        (t, m): mean
        for t, m, v, mean in zip(summary["task"], summary["metric"], summary["variant"],
                                 summary["mean"])
        if v == "single"
    }
    negatives = [
        f"{r['display_name']} on {r['task']} ({r['metric']} {_fmt(r['mean'])} vs single-task "
        f"{_fmt(single_mean.get((r['task'], r['metric'])))})"
        for _, r in summary.iterrows()
        if _flag(r["negative_transfer"]) and r["variant"] != "oracle"
    ]
    lines = [
        "Beat single-task by more than the spread on every task and metric: "
        + (", ".join(winners) if winners else "none") + ".",
        "Negative transfer: " + ("; ".join(negatives) if negatives else "none") + ".",
    ]
    capped = {r["display_name"]: r["at_cap"] for _, r in summary.iterrows() if r["at_cap"]}
    judged = [p for p in summary["plateau"] if p]
    if capped:
        lines.append("NOT AT CONVERGENCE: stopped at the step cap before their plateau: "
                     + ", ".join(f"{v} ({n} run(s))" for v, n in capped.items())
                     + "; raise train.max_steps.")
    elif judged:
        lines.append("Every run reached its plateau (train.until: plateau).")
    return lines


def results_markdown(
    summary: pd.DataFrame, title: str | None = None, extra_lines: Sequence[str] | None = None
) -> str:
    lines = [f"# {title or 'Comparison study'}", ""]
    if extra_lines:
        lines += [*extra_lines, ""]
    metrics_per_task = summary.groupby("task", sort=False)["metric"].nunique()
    for (task, metric), rows in summary.groupby(["task", "metric"], sort=False):
        heading = f"## {task}" if metrics_per_task[task] == 1 else f"## {task} ({metric})"
        lines += [
            heading, "",
            f"| variant | {metric} (mean ± std) | seeds | steps | plateau | gap closed | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, r in rows.iterrows():
            verdict = str(r["verdict"]).replace("|", "\\|")
            lines.append(
                f"| {r['display_name']} | {_mean_std(r)} | {r['n_seeds']} | {_fmt(r['steps'], 0)} "
                f"| {r['plateau'] or '-'} | {gap_cell(r)} | {verdict} |"
            )
        lines.append("")
    lines += ["## Summary", "", *(f"- {line}" for line in _conclusions(summary)), ""]
    lines.append(
        "Spread = max(std of variant, std of single-task) over seeds (sample std); gap closed = "
        "(variant - single) / (oracle - single) on means, n/a when the oracle is not above "
        "single-task by more than the spread."
    )
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def plot_summary(summary: pd.DataFrame, path: Path) -> None:
    """Grouped bar chart: one panel per (task, metric), one bar per variant with std error bars,
    the single-task mean as a dashed line."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    groups = list(summary.groupby(["task", "metric"], sort=False))
    variants = variant_order(summary["variant"])
    colours = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    fig = Figure(figsize=(max(4.0, 0.6 * len(variants) + 1.5) * len(groups), 3.8), dpi=100)
    axes = fig.subplots(1, max(len(groups), 1), squeeze=False)[0]
    for ax, ((task, metric), rows) in zip(axes, groups):
        x = np.arange(len(rows))
        ax.bar(
            x, rows["mean"].to_numpy(float), yerr=rows["std"].to_numpy(float), capsize=3,
            color=[colours[v] for v in rows["variant"]],
        )
        single = rows[rows["variant"] == "single"]
        if len(single) and math.isfinite(float(single["mean"].iloc[0])):
            ax.axhline(float(single["mean"].iloc[0]), color="0.3", linestyle="--", linewidth=1,
                       label="single-task")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(x, list(rows["display_name"]), rotation=30, ha="right", fontsize=8)
        ax.set_title(str(task))
        ax.set_ylabel(str(metric))
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_results(
    records: Sequence[RunRecord],
    out_dir: str | os.PathLike,
    title: str | None = None,
    extra_lines: list[str] | None = None,
) -> dict[str, Path]:
    """Write results.csv (summary), runs.csv (raw records), results.md and results.png."""
    if not records:
        raise DistmtlError("no run records to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(records)
    runs = pd.DataFrame([asdict(r) for r in records], columns=list(RUN_COLUMNS))
    paths = {
        "summary_csv": out / "results.csv",
        "runs_csv": out / "runs.csv",
        "markdown": out / "results.md",
        "plot": out / "results.png",
    }
    _atomic_write(paths["summary_csv"], lambda p: summary.to_csv(p, index=False))
    _atomic_write(paths["runs_csv"], lambda p: runs.to_csv(p, index=False))
    text = results_markdown(summary, title, extra_lines)
    _atomic_write(paths["markdown"], lambda p: p.write_text(text, encoding="utf-8"))
    _atomic_write(paths["plot"], lambda p: plot_summary(summary, p))
    return paths


def read_runs(path: str | os.PathLike) -> list[RunRecord]:
    """Run records from a runs.csv written by :func:`write_results`."""
    try:
        frame = pd.read_csv(path, dtype={"variant": str, "task": str, "metric": str, "stopped": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DistmtlError(f"{path}: cannot read run records ({exc})") from None
    missing = [c for c in RUN_COLUMNS[:5] if c not in frame.columns]
    if missing:
        raise DistmtlError(f"{path}: missing column(s) {', '.join(missing)}")
    def optional(row, column, kind):  # columns added later: older runs.csv files lack them
        value = getattr(row, column, None)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else kind(value)

    return [
        RunRecord(str(r.variant), int(r.seed), str(r.task), str(r.metric), float(r.value),
                  optional(r, "steps", int), optional(r, "stopped", str))
        for r in frame.itertuples(index=False)
    ]
