"""Why distribution matching alone can hurt: a small, fast study of DM's variants on one regime.

Every candidate is the ``dm`` variant (no co-annotation) with one change, or ``+both`` where its
label says so; single-task and plain MTL (``--no-mtl``: single-task only) are the references.
Candidates are ranked on the VALIDATION split only (mean over seeds of each task's primary
metric, and the worst task's difference from single-task); the test split is reported beside,
never used to choose.

    python benchmarks/dm_study.py                                  # digits, scarce digits, 3 seeds
    python benchmarks/dm_study.py --regime digits_scarce_attributes
    python benchmarks/dm_study.py --regime synthfacs_b --no-mtl --parts dm dm_lift both both_lift

Writes ``<out>/dm_study.md`` with the validation and test tables, and ``<out>/scores.csv`` with
every run's scores per seed.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
from harness import (REPO, Study, ensure_synthfacs, finish, machine_for, run_jobs, seed_list, shown_command,
                     study_arguments)

import quality

REL = "relatedness.0"
CANDIDATES = {  # name: (label, overrides[, variant]); the variant is dm unless named
    "dm": ("DM, both directions (default)", []),
    "dm_lift": ("DM, lift_scarce", [f"{REL}.lift_scarce=true"]),
    "dm_unbalanced": ("DM, balance off", [f"{REL}.balance=false"]),
    "dm_unbalanced_lift": ("DM, balance off, lift_scarce", [f"{REL}.balance=false", f"{REL}.lift_scarce=true"]),
    "dm_smooth_expression": ("DM, expression label_smoothing 0.1", ["losses.expression.label_smoothing=0.1"]),
    "both": ("+both (default)", [], "coann+dm"),
    "both_lift": ("+both, lift_scarce", [f"{REL}.lift_scarce=true"], "coann+dm"),
    "dm_a_to_b": ("DM A->B only", [f"{REL}.dm_b_to_a.weight=0"]),
    "dm_b_to_a": ("DM B->A only", [f"{REL}.dm_a_to_b.weight=0"]),
    "dm_unlabelled": ("DM on samples lacking the other task", [f"{REL}.dm_a_to_b.only_unlabelled=true",
                                                               f"{REL}.dm_b_to_a.only_unlabelled=true"]),
    "dm_lambda_0.3": ("DM lambda 0.3", [f"{REL}.dm_a_to_b.weight=0.3", f"{REL}.dm_b_to_a.weight=0.3"]),
    "dm_late": ("DM ramped over 1,000 steps", ["train.dm_ramp_steps=1000"]),
    "dm_a_to_b_late": ("DM A->B only, ramped over 1,000 steps", [f"{REL}.dm_b_to_a.weight=0",
                                                                 "train.dm_ramp_steps=1000"]),
    "dm_b_to_a_late": ("DM B->A only, ramped over 1,000 steps", [f"{REL}.dm_a_to_b.weight=0",
                                                                 "train.dm_ramp_steps=1000"]),
}


def variant_of(name: str) -> str:
    return CANDIDATES[name][2] if len(CANDIDATES[name]) > 2 else "dm"


def regime_study(regime: str, paths: dict[str, str]) -> Study:
    """The regime's sources and overrides, looked up in the quality benchmark's own plan."""
    part = "digits" if regime in quality.DIGITS_REGIMES else "fashion" if regime in quality.FASHION_REGIMES else (
        "regimes" if regime in ("synthfacs_b", "synthfacs_c") else None)
    if part is None:
        raise SystemExit(f"unknown regime '{regime}'")
    name = f"regime_{regime[-1]}" if part == "regimes" else regime
    study = next(s for s in quality.plan([part], paths, False)[part] if s.name == name)
    return Study(regime, study.config, [], study.overrides, study.label)


def seed_scores(out: Path, study: Study, variant: str, split: str) -> list[tuple[str, str, float]]:
    """(seed directory, 'task metric', value) on ``split`` (each task's primary metric, and mean
    average precision for a multilabel task), from each run's metrics.json."""
    found = []
    for path in sorted((out / study.name).glob(f"seed*/runs/{variant}*/seed*/metrics.json")):
        for task, values in (json.loads(path.read_text()).get(split) or {}).items():
            for name in ("macro_f1", "mean_f1", "mean_ap"):
                if values.get(name) is not None:
                    found.append((path.relative_to(out / study.name).parts[0], f"{task} {name}", float(values[name])))
    return found


def split_scores(out: Path, study: Study, variant: str, split: str) -> dict[str, list[float]]:
    """'task metric' -> value per seed on ``split``."""
    scores: dict[str, list[float]] = {}
    for _, key, value in seed_scores(out, study, variant, split):
        scores.setdefault(key, []).append(value)
    return scores


def write_seed_scores(path: Path, out: Path, studies: list[tuple[str, Study, str]]) -> None:
    """Every run's scores, one row per seed, split and metric, so that seeds added later with
    ``--first-seed`` can be pooled with these."""
    lines = ["candidate,split,seed,metric,value"]
    for label, study, variant in studies:
        for split in ("val", "test"):
            lines += [f'"{label}",{split},{seed},{key},{value:.6f}'
                      for seed, key, value in seed_scores(out, study, variant, split)]
    path.write_text("\n".join(lines) + "\n")


def table(out: Path, studies: list[tuple[str, Study, str]], split: str) -> str:
    return score_table({label: split_scores(out, study, variant, split) for label, study, variant in studies})


def score_table(rows: dict[str, dict[str, list[float]]]) -> str:
    """candidate -> 'task metric' -> values per seed, as mean ± std (seeds), with each candidate's
    largest loss against single-task."""
    keys = sorted({k for r in rows.values() for k in r})
    single = rows.get("single-task", {})
    lines = ["| candidate | " + " | ".join(keys) + " | worst diff from single-task |",
             "|---|" + "---|" * (len(keys) + 1)]
    for label, scores in rows.items():
        cells, diffs = [], []
        for k in keys:
            v = scores.get(k, [])
            cells.append(f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.4f} ({len(v)})" if v else "-")
            if v and single.get(k) and label != "single-task":
                diffs.append(np.mean(v) - np.mean(single[k]))
        worst = f"{min(diffs):+.4f}" if diffs else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {worst} |")
    return "\n".join(lines)


def pooled_scores(paths: list[Path]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """split -> candidate -> 'task metric' -> values, from several scores.csv files (studies of the
    same regime run with different seeds). A seed found twice is an error, not an average."""
    pooled: dict[str, dict[str, dict[str, list[float]]]] = {}
    seen: dict[tuple[str, str, str, str], str] = {}
    for path in paths:
        with open(path, newline="") as handle:
            for row_number, row in enumerate(csv.DictReader(handle), start=2):
                key = (row["candidate"], row["split"], row["seed"], row["metric"])
                if key in seen:
                    raise SystemExit(f"{path}: row {row_number}: seed '{row['seed']}' of '{row['candidate']}' "
                                     f"({row['split']}, {row['metric']}) is already in {seen[key]}")
                seen[key] = str(path)
                candidates = pooled.setdefault(row["split"], {})
                candidates.setdefault(row["candidate"], {}).setdefault(row["metric"], []).append(float(row["value"]))
    return pooled


def write_report(out: Path, title: str, command: str, provenance: str, val: str, test: str) -> Path:
    text = [f"# Distribution matching alone: {title}", "", f"command: `{command}`", "", provenance, "",
            "## Validation (candidates are chosen on this)", "", val, "", "## Test (reported only)", "", test, ""]
    path = out / "dm_study.md"
    path.write_text("\n".join(text) + "\n")
    return path


def main(argv=None) -> int:
    p = study_arguments(__doc__, "runs/dm_study", list(CANDIDATES))
    p.add_argument("--regime", default="digits_scarce_digits",
                   help="digits_scarce_digits | digits_scarce_attributes | fashion_scarce_categories | "
                        "fashion_scarce_attributes | synthfacs_b | synthfacs_c")
    p.add_argument("--no-mtl", dest="mtl", action="store_false", help="leave plain MTL out of the references")
    p.add_argument("--pool", nargs="+", type=Path, metavar="SCORES_CSV",
                   help="train nothing: pool these studies' scores.csv (one regime, different seeds) into one report")
    args = p.parse_args(argv)
    command = shown_command("dm_study.py", argv or sys.argv[1:])
    out = (REPO / args.out).resolve()
    if args.pool:
        pooled = pooled_scores(args.pool)
        out.mkdir(parents=True, exist_ok=True)
        sources = "sources: " + ", ".join(f"`{p}`" for p in args.pool)
        path = write_report(out, f"{args.regime}, pooled", command, sources,
                            score_table(pooled.get("val", {})), score_table(pooled.get("test", {})))
        print(f"report: {path}")
        return 0
    paths = {}
    if args.regime.startswith("synthfacs_"):
        data = (REPO / args.data).resolve()
        ensure_synthfacs(data)
        paths = quality.derive_data(data)
    base = regime_study(args.regime, paths)
    references = ["single", "mtl"] if args.mtl else ["single"]
    studies = [Study(f"{args.regime}_reference", base.config, references, base.overrides)]
    studies += [Study(f"{args.regime}_{name}", base.config, [variant_of(name)], base.overrides + CANDIDATES[name][1])
                for name in args.parts]
    seeds = seed_list(args)
    extra = ["data.num_workers=0", *args.set]
    failures = [] if args.report_only else run_jobs(studies, out, seeds, args.jobs, extra)
    rows = [("single-task", studies[0], "single")] + ([("plain MTL", studies[0], "mtl")] if args.mtl else [])
    rows += [(CANDIDATES[name][0], s, variant_of(name)) for name, s in zip(args.parts, studies[1:])]
    path = write_report(out, base.label, command, machine_for(out, extra, not args.report_only) +
                        f"\nseeds: {', '.join(map(str, seeds))}", table(out, rows, "val"), table(out, rows, "test"))
    write_seed_scores(out / "scores.csv", out, rows)
    return finish(path, failures)


if __name__ == "__main__":
    sys.exit(main())
