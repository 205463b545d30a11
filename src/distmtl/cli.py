"""The ``distmtl`` command line: train, evaluate, compare, export, predict, data, datasets, relatedness."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import warnings
from pathlib import Path

from distmtl.errors import DistmtlError

# Modules that add their own subcommands: each defines add_parsers(subparsers).
EXTENSION_COMMANDS = ("distmtl.inference.cli", "distmtl.inference.relatedness_cli", "distmtl.faces.cli")


def cmd_train(args) -> int:
    from distmtl.config import load_config
    from distmtl.training.folders import choose_run_folder
    from distmtl.training.runner import run_folder, set_threads, train_experiment, variant_plan

    config = load_config(args.config, args.overrides)
    runs = variant_plan(config, args.variant, "--variant")
    if args.dry_run:
        from distmtl.training.runner import check_trainable

        for name, exp, _ in runs:
            if args.variant is None:
                check_trainable(exp)
            if name and len(runs) > 1:
                print(f"run {name}:")
            print(describe_experiment(exp))
        return 0
    set_threads()
    out = Path(args.out or config["output"]["dir"] or Path("runs") / config["name"])
    out = choose_run_folder(out, resume=args.resume, overwrite=args.overwrite)
    from distmtl.evaluation.metrics import format_metrics_table
    from distmtl.training.runner import is_main_process

    for name, exp, _ in runs:
        if name and len(runs) > 1 and is_main_process():
            print(f"\nrun {name}:")
        results = train_experiment(exp, run_folder(out, name, runs), resume=args.resume,
                                   allow_change=args.allow_change or ())
        if not is_main_process():  # under DDP every rank has the results; rank 0 prints them
            continue
        for split in ("val", "test"):
            if split in results:
                print(f"\n{split} metrics (best checkpoint):")
                print(format_metrics_table(results[split], exp.tasks))
        print(f"\ncheckpoint: {results['checkpoint']}")
        if results.get("stopped") in ("plateau", "cap"):
            print(f"trained {results['steps']} steps, best at step {results.get('best_step')}: "
                  + ("reached its plateau" if results["stopped"] == "plateau"
                     else "stopped at the cap train.max_steps before a plateau (raise it)"))
    return 0


def describe_experiment(exp) -> str:
    lines = [f"experiment '{exp.config['name']}': configuration is valid"]
    for name, task in exp.tasks.items():
        lines.append(f"  task {name}: {task.kind}, {task.num_outputs} outputs")
    for s in exp.train_sources:
        counts = ", ".join(f"{t}={n}" for t, n in s.label_counts().items() if n)
        lines.append(f"  source {s.name}: {len(s)} images ({counts})" + (f", {s.skipped} skipped" if s.skipped else ""))
    for split, s in exp.eval_sources.items():
        lines.append(f"  {split}: {len(s)} images")
    for e in exp.edges:
        lines.append(f"  relatedness {e.task_a} -> {e.task_b}: {e.relatedness.name or 'table'} "
                     f"{e.relatedness.matrix.shape[0]}x{e.relatedness.matrix.shape[1]}")
    from distmtl.training.variants import loss_terms

    lines.append("  loss terms trained (name, weight, form):")
    for term in loss_terms(exp):
        lines.append(f"    {term['name']:<32} {term['weight']!s:<18} {term['form']}")
    if exp.edges and not any(t["name"].startswith("term/") for t in loss_terms(exp)):
        lines.append("    (no coupling term: every edge's terms are disabled)")
    from distmtl.training.runner import datamodule_from_experiment

    trainer = exp.config["trainer"]
    devices = trainer["devices"] if isinstance(trainer["devices"], int) and trainer["devices"] > 0 else 1
    mix = datamodule_from_experiment(exp).source_mix(devices * int(trainer["num_nodes"] or 1))
    lines.extend("  " + line for line in mix.table().splitlines())
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from distmtl.training.evaluate import evaluate_checkpoint
    from distmtl.evaluation.metrics import abaw_score_if_defined, abaw_tasks, format_metrics_table

    metrics, tasks = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                         num_workers=args.num_workers, n_pairs=args.n_pairs,
                                         pairs_seed=args.pairs_seed, pairs=args.pairs,
                                         save_pairs=args.save_pairs)
    print(format_metrics_table(metrics, tasks))
    abaw = abaw_score_if_defined(metrics, tasks)
    if abaw is not None:
        expr, au, va = abaw_tasks(tasks)
        print(f"ABAW multi-task score: {abaw:.4f} (mean CCC of {va} + macro-F1 of {expr} + mean F1 of {au})")
        metrics = {**metrics, "abaw_mtl_score": abaw}
    if args.save_pairs:
        print(f"verification pairs written to {args.save_pairs}")
    if args.out:
        from distmtl.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(metrics, indent=2, default=float))
        print(f"metrics written to {args.out}")
    return 0


def cmd_compare(args) -> int:
    from distmtl.config import load_config
    from distmtl.training.runner import set_threads
    from distmtl.study.compare import run_compare

    if args.seeds is not None and args.seeds < 1:
        raise DistmtlError(f"--seeds: expected a number of seeds >= 1, got {args.seeds}")
    config = load_config(args.config, args.overrides)
    set_threads()
    out = Path(args.out or config["output"]["dir"] or Path("runs") / f"{config['name']}_compare")
    result = run_compare(config, out, seeds=args.seeds, variants=args.variants,
                         progress=False if args.quiet or args.jobs > 1 else None, jobs=args.jobs)
    print()
    print(result["table"])
    print(f"\nresults: {', '.join(str(p) for p in result['paths'].values())}")
    return 0


def cmd_data_synth(args) -> int:
    from distmtl.data.synthfacs import PRESETS, generate

    sizes = dict(PRESETS[args.preset])
    if args.n is not None:
        scale = args.n / max(1, sizes.get("n_expr", 1))
        sizes = {k: max(1, int(round(v * scale))) if k.startswith("n_") and k != "n_identities" else v
                 for k, v in sizes.items()}
    if args.size is not None:
        sizes["size"] = args.size
    paths = generate(args.out, seed=args.seed, workers=args.workers, **sizes)
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def cmd_data_pack(args) -> int:
    from distmtl.config import load_config
    from distmtl.training.pack import pack_sources

    config = load_config(args.config, args.overrides)
    packed = pack_sources(config, args.out, names=args.source, include_eval=args.eval)
    print("\nuse them in a config as:")
    for name, folder, _ in packed:
        print(f"    - {{name: {name}, shards: {folder}}}")
    return 0


def cmd_datasets_list(args) -> int:
    from distmtl.data.loaders.cli import list_datasets

    print(list_datasets())
    return 0


def cmd_datasets_check(args) -> int:
    from distmtl.data.loaders.cli import check_dataset

    ok, text = check_dataset(args.name, args.root)
    print(text)
    return 0 if ok else 1


def cmd_weighting_list(args) -> int:
    from distmtl.weighting import describe_weightings

    print(describe_weightings())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from distmtl import __version__
    from distmtl.data.synthfacs import PRESETS

    parser = argparse.ArgumentParser(prog="distmtl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages")
    parser.add_argument("--version", action="version", version=f"distmtl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model from an experiment YAML")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="run folder (default output.dir or runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--allow-change", action="append", metavar="KEY",
                   help="with --resume: a config key that may differ from the run's (e.g. max_steps); repeatable")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (by default a folder holding a run gets a new -vN sibling)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and data, list the loss terms, train nothing")
    p.add_argument("--variant", help="train one of compare's variants instead of the config as written: "
                   "single, mtl, coann, dm, coann+dm, oracle")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a CSV in the generic format")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--n-pairs", type=int, default=3000,
                   help="identity task: verification pairs to draw from the CSV's identities (half same)")
    p.add_argument("--pairs-seed", type=int, default=0, help="identity task: seed of the drawn pairs")
    pairs = p.add_mutually_exclusive_group()
    pairs.add_argument("--pairs", help="identity task: score the pairs of this LFW-format pairs.txt instead")
    pairs.add_argument("--save-pairs", help="identity task: write the drawn pairs here (LFW format)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="single-task vs multi-task vs coupled variants, over seeds")
    p.add_argument("--config", required=True)
    p.add_argument("--seeds", type=int, help="number of seeds (default compare.seeds), from the config's seed")
    p.add_argument("--out")
    p.add_argument("--variants", nargs="+")
    p.add_argument("--quiet", action="store_true", help="no per-run progress bars")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in its own process with cores/jobs threads")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.set_defaults(func=cmd_compare)

    data = sub.add_parser("data", help="generate data").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write SynthFACS (PNG images + CSVs in the generic format)")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="demo", choices=list(PRESETS),
                   help="dataset sizes (default: %(default)s)")
    p.add_argument("--n", type=int, help="expression-only source size (others scale with it)")
    p.add_argument("--size", type=int, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("pack", help="write a config's sources as shards (LitData chunks + a label table)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="folder; each source goes to <out>/<source name>")
    p.add_argument("--source", nargs="+", help="pack only these sources (by name)")
    p.add_argument("--eval", action="store_true", help="also pack data.val and data.test")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.set_defaults(func=cmd_data_pack)
    from distmtl.data.prepare_cli import add_parser as add_prepare_parser

    add_prepare_parser(data)

    ds = sub.add_parser("datasets", help="named dataset loaders").add_subparsers(dest="ds_command", required=True)
    p = ds.add_parser("list")
    p.set_defaults(func=cmd_datasets_list)
    p = ds.add_parser("check")
    p.add_argument("name")
    p.add_argument("--root", required=True)
    p.set_defaults(func=cmd_datasets_check)

    wl = sub.add_parser("weighting", help="task weightings and gradient aggregators")
    p = wl.add_subparsers(dest="weighting_command", required=True).add_parser(
        "list", help="the loss weightings and the aggregators of weighting 'jd'")
    p.set_defaults(func=cmd_weighting_list)

    for module_name in EXTENSION_COMMANDS:
        importlib.import_module(module_name).add_parsers(sub)
    return parser


def _one_line(exc: BaseException) -> str | None:
    """The user-facing message of a DistmtlError found in the exception or its cause chain.

    A DataLoader worker's error is re-raised as a new DistmtlError whose constructor already keeps
    only the original message (see distmtl.errors).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DistmtlError):
            return " ".join(str(exc).splitlines())
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command in ("train", "compare", "evaluate", "export"):
        import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import; override after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
        logging.getLogger(name).propagate = bool(args.verbose)
    if not args.verbose:
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - turn user errors into one line
        message = _one_line(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
