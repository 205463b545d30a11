"""Learning quality on SynthFACS (expressions + AUs from disjoint sources), against single-task
models and the oracle. Every number comes from ``distmtl compare`` runs of configs/synthfacs_demo.yaml.

Parts (``--parts``):

- ``regimes``: (a) balanced sources (3,000 expression-only + 3,000 AU-only images), (b) scarce
  expressions (300 + 3,000), (c) scarce AUs (3,000 + 300); every variant (single-task, plain MTL,
  +co-annotation, +DM, +both, oracle). The oracle of a regime is the same images with every label.
- ``relatedness``: regime (a), +both, with the relatedness table du2014 (the prior), estimated from
  200 co-annotated training images, or the generator's true table.
- ``ablations``: regime (a), +both, one change each: DM direction, A->B DM form, stop-gradient,
  DM weight lambda.
- ``weighting``: regime (a), +both, with each loss weighting strategy; the task weights over training.
- ``aggregators``: the same with each gradient aggregator of ``weighting: {name: jd}``
  (``AGGREGATORS_STUDIED``), in the weighting table; 1.5-3x a loss weighting's time per run on CPU. Time per
  step relative to ``equal``: ``benchmarks/jd_speed.py``.
- ``fashion``: Fashion-MNIST (configs/fashion_mnist.yaml): scarce categories (300 category-labelled
  images beside 10,000 attribute-labelled ones) and the reverse (10,000 + 300); every variant.
  Needs the data (``make fashion-mnist``).
- ``digits``: scikit-learn's digits with class-level attributes (configs/digits.yaml): scarce digits
  (100 + 1,100) and the reverse (1,100 + 100); every variant.

``--until plateau`` (the default) trains every run until its validation score stops improving
(``CONVERGED``: the demo config's own plateau rule, SynthFACS at 32 px, patience 400 steps counted
from step 2,400, min_delta 0.005, cap 3,200) and each table gives the steps and how many runs
reached their plateau; ``--until steps`` is the earlier equal-budget study (450 steps, 48 px).

Writes ``<out>/quality.md`` (all tables, the commands, the machine) and one PNG per regime and part.

    python benchmarks/quality.py                      # everything at convergence, 3 seeds (CPU: many hours)
    python benchmarks/quality.py --jobs 14 --set trainer.accelerator=gpu   # on a GPU machine
    python benchmarks/quality.py --until steps        # the equal-budget study (450 steps)
    python benchmarks/quality.py --quick              # make bench-quick: regime (a), 1 seed, 300 steps
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from harness import (REPO, Study, ensure_synthfacs, finish, machine_for, run_jobs, seed_list, shown_command,
                     study_arguments, study_records, summary_markdown)

from distmtl.training.curves import plot_weight_runs, read_log
from distmtl.relatedness.table import Relatedness
from distmtl.study.report import plot_summary, summarise, write_results
from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS

CONFIG = "configs/synthfacs_demo.yaml"
FASHION_CONFIG = "configs/fashion_mnist.yaml"
DIGITS_CONFIG = "configs/digits.yaml"
# SynthFACS trained to its plateau with the demo config's own rule (32 px; the oracle flattens
# near step 1,800-2,400, every run fits in 2-3 core-minutes): the config's settings, unchanged
CONVERGED: list[str] = []
EQUAL_BUDGET = ["data.image_size=48", "train.until=steps", "train.max_steps=450", "train.val_every_steps=150",
                "train.checkpoint_every_steps=450", "train.dm_ramp_steps=150"]
FASHION = "data.sources.{i}.options.subset=[{lo},{hi}]"
FASHION_REGIMES = {  # name: (label, category images, attribute images)
    "fashion_scarce_categories": ("Fashion-MNIST, scarce categories (300 + 10,000)", (0, 300), (300, 10300)),
    "fashion_scarce_attributes": ("Fashion-MNIST, scarce attributes (10,000 + 300)", (0, 10000), (10000, 10300)),
}
DIGITS_REGIMES = {
    "digits_scarce_digits": ("digits, scarce digits (100 + 1,100)", (0, 100), (100, 1200)),
    "digits_scarce_attributes": ("digits, scarce attributes (1,100 + 100)", (0, 1100), (1100, 1200)),
}
ALL_VARIANTS = ["single", "mtl", "coann", "dm", "coann+dm", "oracle"]
QUICK_VARIANTS = ["single", "mtl", "coann+dm", "oracle"]
# 300 steps: at 150 the single-seed expression comparison was noise; at 300 the quick run shows
# the full study's shape (+both > plain MTL > single-task on both tasks)
QUICK_BUDGET = ["data.image_size=48", "train.until=steps",
                "train.max_steps=300", "train.val_every_steps=150", "train.checkpoint_every_steps=300",
                "train.dm_ramp_steps=100"]
REL = "relatedness.0"
ABLATIONS = {  # name: (label, overrides); the reference is regime (a)'s +both
    "dm_a_to_b_only": ("DM A->B only", [f"{REL}.dm_b_to_a.weight=0"]),
    "dm_b_to_a_only": ("DM B->A only", [f"{REL}.dm_a_to_b.weight=0"]),
    "form_paper": ("A->B form paper", [f"{REL}.dm_a_to_b.form=paper"]),
    "form_bce": ("A->B form bce", [f"{REL}.dm_a_to_b.form=bce"]),
    "no_stop_gradient": ("no stop-gradient", [f"{REL}.dm_a_to_b.stop_gradient=false",
                                              f"{REL}.dm_b_to_a.stop_gradient=false"]),
    **{f"lambda_{w}": (f"lambda {w}", [f"{REL}.dm_a_to_b.weight={w}", f"{REL}.dm_b_to_a.weight={w}"])
       for w in (0.03, 0.3, 1)},
}
REFERENCE_LABEL = "+both (kl, both ways, stop-grad, lambda 0.1)"
WEIGHTINGS = ("equal", "uncertainty", "dwa", "gradnorm", "dynamic")  # beside the default, initial
# Jacobian descent (weighting.name=jd) with these aggregators, coupling terms in their task's row
AGGREGATORS_STUDIED = ("upgrad", "mgda", "pcgrad", "cagrad", "nashmtl", "imtlg", "alignedmtl", "dualproj")


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _write(frame: pd.DataFrame, path: Path) -> str:
    """Write a derived CSV into ``<data>/quality/``; image paths stay valid (one folder down)."""
    frame = frame.assign(image="../" + frame["image"])
    frame.to_csv(path, index=False)
    return _rel(path)


def _rel(path: Path) -> str:
    """Paths in overrides and reports relative to the repository, where they resolve."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def derive_data(data: Path) -> dict[str, str]:
    """The scarce sources, their oracles, the 200-image co-annotated subset and its table."""
    out = data / "quality"
    out.mkdir(exist_ok=True)
    expr, au, oracle = _read(data / "expr_train.csv"), _read(data / "au_train.csv"), _read(data / "oracle_expr_au.csv")
    paths = {}
    for regime, (e, a) in {"b": (expr.sample(frac=0.1, random_state=0), au),
                           "c": (expr, au.sample(frac=0.1, random_state=0))}.items():
        paths[f"expr_{regime}"] = _write(e, out / f"expr_train_{regime}.csv")
        paths[f"au_{regime}"] = _write(a, out / f"au_train_{regime}.csv")
        keep = set(e["image"]) | set(a["image"])
        paths[f"oracle_{regime}"] = _write(oracle[oracle["image"].isin(keep)], out / f"oracle_{regime}.csv")
    coannotated = oracle.sample(n=200, random_state=1)
    _write(coannotated, out / "coannotated_200.csv")
    class_index = coannotated["expression"].map(BASIC_EXPRESSIONS.index).to_numpy()
    values = coannotated[list(AUS_17)].to_numpy(float)
    table = Relatedness.estimate(class_index, values, np.ones_like(values, bool), BASIC_EXPRESSIONS, AUS_17)
    table.to_csv(out / "estimated_200.csv")
    paths["estimated"] = _rel(out / "estimated_200.csv")
    paths["true"] = _rel(data / "generator_table.csv")
    return paths


def table_errors(paths: dict[str, str]) -> dict[str, float]:
    """Mean absolute difference of each table from the generator's true one."""
    true = Relatedness.load(paths["true"]).aligned(BASIC_EXPRESSIONS, AUS_17)
    out = {}
    for name, spec in (("du2014", "du2014"), ("estimated", paths["estimated"]), ("true", paths["true"])):
        table = Relatedness.load(spec).aligned(BASIC_EXPRESSIONS, AUS_17)
        out[name] = float(np.abs(table.matrix - true.matrix).mean())
    return out


def disjoint_regime(name: str, label: str, config: str, first: tuple, second: tuple, budget: list[str],
                    variants: list[str]) -> Study:
    """Two disjoint windows of one split as the two sources; the oracle is their union, labelled."""
    lo, hi = min(first[0], second[0]), max(first[1], second[1])
    return Study(name, config, variants, budget + [
        FASHION.format(i=0, lo=first[0], hi=first[1]), FASHION.format(i=1, lo=second[0], hi=second[1]),
        f"data.oracle.options.subset=[{lo},{hi}]"], label)


def plan(parts: list[str], paths: dict[str, str], quick: bool, until: str = "plateau") -> dict[str, list[Study]]:
    budget = QUICK_BUDGET if quick else (CONVERGED if until == "plateau" else EQUAL_BUDGET)
    variants = QUICK_VARIANTS if quick else ALL_VARIANTS
    groups: dict[str, list[Study]] = {}
    if "fashion" in parts:
        extra = [] if until == "plateau" else ["train.until=steps", "train.max_steps=450"]
        groups["fashion"] = [disjoint_regime(n, label, FASHION_CONFIG, a, b, extra, variants)
                             for n, (label, a, b) in FASHION_REGIMES.items()]
    if "digits" in parts:
        extra = [] if until == "plateau" else ["train.until=steps", "train.max_steps=450"]
        groups["digits"] = [disjoint_regime(n, label, DIGITS_CONFIG, a, b, extra, variants)
                            for n, (label, a, b) in DIGITS_REGIMES.items()]
    if "regimes" in parts:
        regimes = [Study("regime_a", CONFIG, variants, budget, "(a) balanced")]
        if not quick:
            for r, label in (("b", "(b) scarce expressions"), ("c", "(c) scarce AUs")):
                regimes.append(Study(f"regime_{r}", CONFIG, variants, budget + [
                    f"data.sources.0.csv={paths[f'expr_{r}']}", f"data.sources.1.csv={paths[f'au_{r}']}",
                    f"data.oracle={paths[f'oracle_{r}']}"], label))
        groups["regimes"] = regimes
    if "relatedness" in parts:
        groups["relatedness"] = [
            Study("rel_estimated", CONFIG, ["coann+dm"], budget + [f"{REL}.table={paths['estimated']}"],
                  "estimated from 200 co-annotated images"),
            Study("rel_true", CONFIG, ["coann+dm"], budget + [f"{REL}.table={paths['true']}"],
                  "generator's true table")]
    if "ablations" in parts:
        groups["ablations"] = [Study(name, CONFIG, ["coann+dm"], budget + ov, label)
                               for name, (label, ov) in ABLATIONS.items()]
    if "weighting" in parts:
        groups["weighting"] = [Study(f"weighting_{w}", CONFIG, ["coann+dm"], budget + [f"weighting.name={w}"], w)
                               for w in WEIGHTINGS]
    if "aggregators" in parts:  # 1.5-3x the time of a loss weighting per run: a part of its own
        groups["aggregators"] = [Study(f"weighting_jd_{a}", CONFIG, ["coann+dm"],
                                       budget + ["weighting.name=jd", f"weighting.aggregator={a}"], f"jd {a}")
                                 for a in AGGREGATORS_STUDIED]
    return groups


def group_records(out: Path, studies: list[Study], reference: Study, reference_label: str) -> list:
    """Single-task, the reference (+both of regime a) and oracle, with each study as a variant."""
    base = study_records(out, reference, {"coann+dm": reference_label})
    records = [r for r in base if r.variant in ("single", reference_label)]
    for s in studies:
        records += study_records(out, s, {"coann+dm": s.label or s.name})
    return records + [r for r in base if r.variant == "oracle"]


def weights_figure(out: Path, studies: list[Study], reference: Study) -> Path | None:
    logs = {}
    for label, study in [("initial", reference)] + [(s.label or s.name, s) for s in studies]:
        logs[label] = [read_log(p.parent.parent) for p in sorted(
            (out / study.name).glob("seed*/runs/coann+dm/seed*/logs/metrics.csv"))]
    if not any(logs.values()):
        return None
    return plot_weight_runs(logs, out / "weighting_weights.png",
                            title="task weights over training, regime (a), +both (mean and min..max over seeds)")


def report(out: Path, groups: dict[str, list[Study]], command: str, machine: str, seeds: list[int],
           errors: dict[str, float] | None) -> Path:
    lines = ["# Learning quality: SynthFACS, Fashion-MNIST, digits", "", f"command: `{command}`", "", machine,
             f"seeds: {', '.join(map(str, seeds))}; config: {CONFIG} (plus each study's overrides)", ""]
    reference = next((s for s in groups.get("regimes", []) if s.name == "regime_a"), Study("regime_a", CONFIG, []))
    for study in [*groups.get("regimes", []), *groups.get("fashion", []), *groups.get("digits", [])]:
        records = study_records(out, study)
        if not records:
            continue
        synthfacs = study.name.startswith("regime_")
        write_results(records, out / study.name, title=f"SynthFACS {study.label}" if synthfacs else study.label)
        heading = f"Regime {study.label}" if synthfacs else study.label
        overrides = " ".join(study.overrides) or "(none)"
        lines += [f"## {heading}", "", f"config: {study.config}; overrides: `{overrides}`", "",
                  summary_markdown(summarise(records)), "", f"![{study.name}]({study.name}/results.png)", ""]
    titles = {"relatedness": "Relatedness table quality, regime (a), +both",
              "ablations": "Ablations, regime (a), +both", "weighting": "Weighting strategies, regime (a), +both"}
    reference_labels = {"relatedness": "du2014 (prior)", "ablations": REFERENCE_LABEL, "weighting": "initial"}
    studied = {**groups, "weighting": groups.get("weighting", []) + groups.get("aggregators", [])}
    for part in ("relatedness", "ablations", "weighting"):
        if not studied.get(part):
            continue
        records = group_records(out, studied[part], reference, reference_labels[part])
        if not records:
            continue
        summary = summarise(records)
        plot_summary(summary, out / f"{part}.png")
        lines += [f"## {titles[part]}", "", summary_markdown(summary), "", f"![{part}]({part}.png)", ""]
        if part == "relatedness" and errors:
            lines += ["Mean absolute difference of each table from the generator's true table: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in errors.items()) + ".", ""]
        if part == "weighting" and weights_figure(out, studied[part], reference):
            lines += ["![task weights](weighting_weights.png)", ""]
    path = out / "quality.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    p = study_arguments(__doc__, "runs/quality", ["regimes", "relatedness", "ablations", "weighting",
                                                   "aggregators", "fashion", "digits"])
    p.add_argument("--quick", action="store_true", help="regime (a), 1 seed, 300 steps, 4 variants")
    p.add_argument("--until", choices=["plateau", "steps"], default="plateau",
                   help="train every run to its plateau (default) or for the equal budget of 450 steps")
    args = p.parse_args(argv)
    command = shown_command("quality.py", argv or sys.argv[1:])
    data, out = (REPO / args.data).resolve(), (REPO / args.out).resolve()
    parts = ["regimes"] if args.quick else args.parts
    seeds = [0] if args.quick else seed_list(args)
    ensure_synthfacs(data)
    paths = derive_data(data)
    groups = plan(sorted(set(parts) | {"regimes"}) if not args.quick else parts, paths, args.quick, args.until)
    if "regimes" not in parts:  # the other parts compare against regime (a): train only its runs
        groups["regimes"] = [s for s in groups["regimes"] if s.name == "regime_a"]
    extra = ["data.num_workers=0", *args.set]
    failures = [] if args.report_only else run_jobs(
        [s for studies in groups.values() for s in studies], out, seeds, args.jobs, extra)
    errors = table_errors(paths) if "relatedness" in groups else None
    path = report(out, groups, command, machine_for(out, extra, not args.report_only), seeds, errors)
    return finish(path, failures)


if __name__ == "__main__":
    sys.exit(main())
