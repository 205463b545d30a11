"""The heterogeneous studies on SynthFACS: face recognition with expressions (each weighting
strategy), identity + attributes coupled through p(attribute | identity) estimated from data, and
expressions + AUs + valence/arousal with the ABAW multi-task score.

- ``identity``: configs/synthfacs_identity.yaml. Single-task recognition, single-task expression,
  and one multi-task model per weighting strategy (equal, uncertainty, dwa, gradnorm, dynamic, and
  dynamic without its loss-normalisation fix). Recognition is verification on unseen identities.
- ``attributes``: configs/synthfacs_identity_attributes.yaml, single / MTL / +both / oracle.
- ``va``: configs/synthfacs_va.yaml, single / MTL / +both / oracle, plus the ABAW score.

    python benchmarks/identity_va.py                  # everything, 3 seeds (CPU: hours)
    python benchmarks/identity_va.py --jobs 14 --set trainer.accelerator=gpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from harness import (REPO, Study, ensure_synthfacs, finish, machine_for, run_jobs, seed_list, shown_command,
                     study_arguments, study_records, summary_markdown)

from distmtl.training.curves import plot_weight_runs, read_log
from distmtl.evaluation.metrics import abaw_mtl_score
from distmtl.study.report import plot_summary, summarise

IDENTITY = "configs/synthfacs_identity.yaml"
ATTRIBUTES = "configs/synthfacs_identity_attributes.yaml"
VA = "configs/synthfacs_va.yaml"
WEIGHTINGS = {  # study suffix: (label, overrides)
    "equal": ("equal", ["weighting.name=equal"]),
    "uncertainty": ("uncertainty", ["weighting.name=uncertainty"]),
    "dwa": ("dwa", ["weighting.name=dwa"]),
    "gradnorm": ("gradnorm", ["weighting.name=gradnorm"]),
    "dynamic": ("dynamic", ["weighting.name=dynamic"]),
    "dynamic_nonorm": ("dynamic, no loss normalisation", ["weighting.name=dynamic",
                                                          "weighting.options={normalize: false}"]),
}
VERIFICATION = ("verification_accuracy", "verification_roc_auc", "verification_tar_at_far_1e-3")


def plan(parts: list[str]) -> dict[str, list[Study]]:
    groups: dict[str, list[Study]] = {}
    if "identity" in parts:
        groups["identity"] = [Study("identity_single", IDENTITY, ["single"], [], "single-task")] + [
            Study(f"identity_{k}", IDENTITY, ["mtl"], ov, label) for k, (label, ov) in WEIGHTINGS.items()]
    # one study per variant, so that the variants of a seed train side by side
    for part, config in (("attributes", ATTRIBUTES), ("va", VA)):
        if part in parts:
            groups[part] = [Study(f"{part}_{v.replace('+', '_')}", config, [v], [], part)
                            for v in ("single", "mtl", "coann+dm", "oracle")]
    return groups


def run_metrics(out: Path, study: Study) -> dict[str, dict[int, dict]]:
    """Test metrics of every run of a study: {run name: {seed: {task: metrics}}}."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted((out / study.name).glob("seed*/runs/*/seed*/metrics.json")):
        metrics = json.loads(path.read_text()).get("test") or {}
        seed = int(path.parent.name.removeprefix("seed"))
        found.setdefault(path.parent.parent.name, {})[seed] = metrics
    return found


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {std:.3f}"


def verification_table(out: Path, studies: list[Study]) -> str:
    lines = ["| model | " + " | ".join(VERIFICATION) + " |", "|---|" + "---|" * len(VERIFICATION)]
    for study in studies:
        for run, by_seed in run_metrics(out, study).items():
            values = [[m["identity"][k] for m in by_seed.values() if m.get("identity", {}).get(k) is not None]
                      for k in VERIFICATION]
            if any(values):
                label = study.label if run == "mtl" and study.label else run
                lines.append(f"| {label} | " + " | ".join(_mean_std(v) for v in values) + " |")
    return "\n".join(lines)


def abaw_table(out: Path, studies: list[Study]) -> str:
    runs = {run: by_seed for study in studies for run, by_seed in run_metrics(out, study).items()}
    lines = ["| model | ABAW score (CCC_va + expression macro-F1 + AU mean F1) |", "|---|---|"]
    singles = {r: runs.get(f"single-{r}", {}) for r in ("expression", "au", "va")}
    seeds = sorted(set.intersection(*(set(s) for s in singles.values()))) if all(singles.values()) else []
    if seeds:
        scores = [abaw_mtl_score({t: singles[t][s][t] for t in singles}, "expression", "au", "va") for s in seeds]
        lines.append(f"| single-task (three networks) | {_mean_std(scores)} |")
    for run in ("mtl", "coann+dm", "oracle"):
        if run in runs:
            scores = [abaw_mtl_score(m, "expression", "au", "va") for m in runs[run].values()]
            lines.append(f"| {run} | {_mean_std(scores)} |")
    return "\n".join(lines)


def weights_figure(out: Path, studies: list[Study]) -> Path | None:
    logs = {s.label or s.name: [read_log(p.parent.parent) for p in sorted(
        (out / s.name).glob("seed*/runs/mtl/seed*/logs/metrics.csv"))] for s in studies}
    if not any(logs.values()):
        return None
    return plot_weight_runs(logs, out / "identity_weights.png",
                            title="task weights over training: identity + expression (mean, min..max over seeds)")


def report(out: Path, groups: dict[str, list[Study]], command: str, machine: str, seeds: list[int]) -> Path:
    lines = ["# Identity, attributes and valence/arousal on SynthFACS", "", f"command: `{command}`", "",
             machine, f"seeds: {', '.join(map(str, seeds))}", ""]
    if "identity" in groups:
        studies = groups["identity"]
        records = []
        for s in studies:
            records += study_records(out, s, None if s.name == "identity_single" else {"mtl": s.label})
        if records:
            summary = summarise(records)
            plot_summary(summary, out / "identity.png")
            lines += ["## Identity + expression, each weighting strategy", "", f"config: {IDENTITY}", "",
                      summary_markdown(summary), "", "Verification on the test split's unseen identities:", "",
                      verification_table(out, studies), "", "![identity](identity.png)", ""]
            if weights_figure(out, studies[1:]):
                lines += ["![task weights](identity_weights.png)", ""]
    for part, title, config in (("attributes", "Identity + attributes (glasses, beard)", ATTRIBUTES),
                                ("va", "Expressions + AUs + valence/arousal", VA)):
        if part not in groups:
            continue
        # every study folder of the part, however its runs were split into studies
        studies = [Study(d.name, config, []) for d in sorted(out.glob(f"{part}*")) if d.is_dir()]
        records = [r for study in studies for r in study_records(out, study)]
        if not records:
            continue
        summary = summarise(records)
        plot_summary(summary, out / f"{part}.png")
        lines += [f"## {title}", "", f"config: {config}", "", summary_markdown(summary), ""]
        if part == "attributes":
            lines += ["Verification on unseen identities:", "", verification_table(out, studies), ""]
        else:
            lines += ["ABAW multi-task score on the test split:", "", abaw_table(out, studies), ""]
        lines += [f"![{part}]({part}.png)", ""]
    path = out / "identity_va.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    p = study_arguments(__doc__, "runs/identity_va", ["identity", "attributes", "va"])
    args = p.parse_args(argv)
    command = shown_command("identity_va.py", argv or sys.argv[1:])
    data, out = REPO / args.data, (REPO / args.out).resolve()
    ensure_synthfacs(data)
    groups = plan(args.parts)
    seeds = seed_list(args)
    extra = ["data.num_workers=0", *args.set]
    failures = [] if args.report_only else run_jobs(
        [s for studies in groups.values() for s in studies], out, seeds, args.jobs, extra)
    path = report(out, groups, command, machine_for(out, extra, not args.report_only), seeds)
    return finish(path, failures)


if __name__ == "__main__":
    sys.exit(main())
