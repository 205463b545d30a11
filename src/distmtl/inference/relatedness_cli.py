"""``distmtl relatedness``: show, estimate and compare relatedness tables.

- ``show TABLE``: print any table (built-in name or CSV) and optionally draw its heat map.
- ``estimate --config FILE --source NAME -o table.csv``: the smoothed co-occurrence table of one
  *training* source of an experiment (the same estimate as ``table: {estimate: NAME}``).
- ``estimate --from-model DIR --data CSV -o table.csv``: what an exported model learned: for each
  class of its multiclass task, the mean predicted label probability over the images predicted as
  that class (its co-activation); the class prior is how often each class was predicted.
- ``compare A B``: per-cell differences ``A - B``, the mean and largest absolute difference, and a
  side-by-side PNG (A, B and ``|A - B|``).

This lives in ``inference/`` rather than ``relatedness/`` because estimating from a config reads
the experiment's sources (``training/``) and the learned table runs a model (``inference/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distmtl.errors import DistmtlError, close_matches

# --------------------------------------------------------------------------- choosing the tasks


def pick_tasks(tasks: dict, given: list[str] | None, edges: list[list[str]] | None, where: str):
    """The (multiclass or identity, multilabel) task pair to estimate for.

    ``given`` (``--tasks A B``) wins; else the only relatedness edge of the config; else the only
    multiclass task and the only multilabel task.
    """
    if given:
        for name in given:
            if name not in tasks:
                raise DistmtlError(f"--tasks: unknown task '{name}'{close_matches(name, tasks)}"
                                   f" (tasks of {where}: {', '.join(tasks)})")
        a, b = tasks[given[0]], tasks[given[1]]
        if a.kind not in ("multiclass", "identity") or b.kind != "multilabel":
            raise DistmtlError(f"--tasks: expected a multiclass (or identity) task then a multilabel task, "
                               f"got '{a.name}' ({a.kind}) and '{b.name}' ({b.kind})")
        return a, b
    if edges and len(edges) == 1:
        return tasks[edges[0][0]], tasks[edges[0][1]]
    classes = [t for t in tasks.values() if t.kind == "multiclass"]
    labels = [t for t in tasks.values() if t.kind == "multilabel"]
    if len(classes) == 1 and len(labels) == 1:
        return classes[0], labels[0]
    raise DistmtlError(f"{where}: cannot tell which two tasks to use "
                       f"({len(classes)} multiclass, {len(labels)} multilabel"
                       f"{f', {len(edges)} relatedness edges' if edges else ''}); pass --tasks A B")


# --------------------------------------------------------------------------- estimating


def estimate_from_config(config_path, source: str, *, overrides=None, tasks=None, alpha: float = 1.0):
    """The table estimated from one training source of an experiment config."""
    from distmtl.config import load_config
    from distmtl.training.experiment import (build_tasks, encode_source, estimate_from_source,
                                             read_source, source_label)

    config = load_config(config_path, overrides or [])
    specs = config["data"]["sources"]
    names = [source_label(s) for s in specs]
    if source not in names:
        evaluation = [split for split in ("val", "test", "oracle") if config["data"][split] is not None
                      and source_label(config["data"][split]) == source]
        if evaluation:
            raise DistmtlError(f"--source: '{source}' is the data.{evaluation[0]} split; only training "
                               f"sources are estimated from (data.sources: {', '.join(names)})")
        raise DistmtlError(f"--source: unknown source '{source}'{close_matches(source, names)}; "
                           f"training sources: {', '.join(names)}")
    wheres = [f"data.sources[{i}]" for i in range(len(specs))]
    reading = build_tasks(config)
    # every training source is read: an identity task's classes come from all of them
    loaded = [read_source(s, reading, config, w) for s, w in zip(specs, wheres)]
    all_tasks = build_tasks(config, loaded)
    i = names.index(source)
    from_csv = isinstance(specs[i], str) or "csv" in specs[i]
    encoded = encode_source(loaded[i], all_tasks, config, wheres[i], from_csv=from_csv)
    edges = [spec["tasks"] for spec in config["relatedness"]]
    a, b = pick_tasks(all_tasks, tasks, edges, str(config_path))
    rel = estimate_from_source(source, a, b, [encoded], f"source '{source}'", alpha=alpha)
    rel.name = f"estimated_{source}"
    return rel, a, b, len(encoded)


def learned_from_model(model_dir, data_csv, *, tasks=None, device: str = "cpu", batch_size: int = 64,
                       num_workers: int = 0):
    """The co-activation an exported model shows on the images of ``data_csv``.

    Returns ``(table, task_a, task_b, counts, n_errors)``; ``counts`` is how many images were
    predicted as each class (a class never predicted has an all-zero row and prior 0).
    """
    import pandas as pd

    from distmtl.inference.predictor import Predictor
    from distmtl.relatedness.table import Relatedness

    data_csv = Path(data_csv)
    if not data_csv.is_file():
        raise DistmtlError(f"--data: {data_csv}: CSV file not found")
    frame = pd.read_csv(data_csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    if "image" not in frame.columns:
        raise DistmtlError(f"{data_csv}: no 'image' column{close_matches('image', frame.columns)}")
    empty = np.flatnonzero(frame["image"].str.strip() == "")
    if len(empty):
        raise DistmtlError(f"{data_csv}: line {empty[0] + 2} column 'image': empty image path")
    if frame.empty:
        raise DistmtlError(f"{data_csv}: no rows")
    predictor = Predictor.from_pretrained(model_dir, device=device)
    a, b = pick_tasks(predictor.tasks, tasks, None, f"model {model_dir}")
    if a.kind != "multiclass":
        raise DistmtlError(f"--tasks: '{a.name}' is an identity task; a model's co-activation needs a "
                           "multiclass task")
    paths = [str(data_csv.parent / p.strip()) for p in frame["image"]]
    class_probs, label_probs, errors = [], [], 0
    for result in predictor.run(paths, batch_size=batch_size, num_workers=num_workers):
        errors += int((~result.valid).sum())
        if result.valid.any():
            class_probs.append(result.outputs[a.name])
            label_probs.append(result.outputs[b.name])
    if not class_probs:
        raise DistmtlError(f"{data_csv}: none of the {len(paths)} images could be read")
    table, counts = Relatedness.from_predictions(np.concatenate(class_probs), np.concatenate(label_probs),
                                                 a.labels, b.labels, name="learned")
    return table, a, b, counts, errors


# --------------------------------------------------------------------------- comparing


def comparison_tables(path_a, path_b, *, common: bool = False):
    """The two tables, the second aligned to the first (on their shared classes and labels with
    ``common``); also the classes and labels left out, per table."""
    from distmtl.relatedness.table import Relatedness

    first, second = Relatedness.load(path_a), Relatedness.load(path_b)
    left_out = {}
    if common:
        classes = [c for c in first.classes if c in set(second.classes)]
        labels = [x for x in first.labels if x in set(second.labels)]
        if not classes or not labels:
            raise DistmtlError(f"relatedness compare: '{path_a}' and '{path_b}' share "
                               f"{len(classes)} classes and {len(labels)} labels; nothing to compare")
        for table in (first, second):
            left_out[table] = ([c for c in table.classes if c not in classes],
                               [x for x in table.labels if x not in labels])
        first, second = (_restricted(first, classes, labels), _restricted(second, classes, labels))
    else:
        for kind, ours, theirs in (("classes", first.classes, second.classes),
                                   ("labels", first.labels, second.labels)):
            if set(ours) != set(theirs):
                only = sorted(set(ours) ^ set(theirs))
                raise DistmtlError(f"relatedness compare: the tables' {kind} differ (e.g. '{only[0]}'); "
                                   "pass --common to compare their shared classes and labels")
    return first, second, left_out


def _restricted(table, classes, labels):
    from distmtl.relatedness.table import Relatedness

    rows = [table.classes.index(c) for c in classes]
    cols = [table.labels.index(x) for x in labels]
    prior = table.prior[rows]
    return Relatedness(table.matrix[np.ix_(rows, cols)], classes, labels,
                       prior=prior if prior.sum() > 0 else None, name=table.name, source=table.source)


def write_comparison_png(path, first, second, comparison) -> None:
    from distmtl.relatedness.estimate import plot_tables, write_atomically

    panels = [(comparison.values, comparison.name), (comparison.other_values, comparison.other_name),
              (np.abs(comparison.difference), f"|{comparison.name} - {comparison.other_name}|")]
    write_atomically(Path(path), lambda handle: plot_tables(handle, panels, first.classes, first.labels))


# --------------------------------------------------------------------------- subcommands


def cmd_show(args) -> int:
    from distmtl.relatedness.table import Relatedness

    rel = Relatedness.load(args.table)
    print(rel.to_frame().round(args.decimals).to_string())
    if not np.allclose(rel.prior, 1.0 / len(rel.classes)):
        print("prior: " + ", ".join(f"{c} {p:.3f}" for c, p in zip(rel.classes, rel.prior)))
    if args.png:
        rel.plot(args.png, title=rel.name or str(args.table))
        print(f"heat map written to {args.png}")
    return 0


def cmd_estimate(args) -> int:
    if bool(args.config) == bool(args.from_model):
        raise DistmtlError("relatedness estimate: give either --config FILE --source NAME "
                           "or --from-model DIR --data CSV")
    if args.config:
        if not args.source:
            raise DistmtlError("relatedness estimate --config: --source NAME (a training source) is required")
        rel, a, b, n = estimate_from_config(args.config, args.source, overrides=args.overrides,
                                            tasks=args.tasks, alpha=args.alpha)
        what = f"estimated from source '{args.source}' ({n} images, alpha {args.alpha:g})"
    else:
        if not args.data:
            raise DistmtlError("relatedness estimate --from-model: --data CSV (the images to run) is required")
        if args.overrides:
            raise DistmtlError(f"relatedness estimate --from-model: unexpected argument '{args.overrides[0]}'")
        rel, a, b, counts, errors = learned_from_model(args.from_model, args.data, tasks=args.tasks,
                                                       device=args.device, batch_size=args.batch_size)
        never = [c for c, n in zip(rel.classes, counts) if n == 0]
        what = (f"learned by {args.from_model} on {int(counts.sum())} images of {args.data}"
                + (f", {errors} unreadable" if errors else "")
                + (f"; never predicted (zero rows): {', '.join(never)}" if never else ""))
    rel.to_csv(args.out)
    print(rel.to_frame().round(2).to_string())
    print(f"\n{a.name} x {b.name} table {what}; written to {args.out}")
    if args.png:
        rel.plot(args.png, title=f"{rel.name}: p({b.name} | {a.name})")
        print(f"heat map written to {args.png}")
    return 0


def cmd_compare(args) -> int:
    first, second, left_out = comparison_tables(args.a, args.b, common=args.common)
    comparison = first.compare(second, top=args.top)
    for table, (classes, labels) in left_out.items():
        if classes or labels:
            print(f"left out of '{table._short_name()}': "
                  + "; ".join(part for part in (f"classes {', '.join(classes)}" if classes else "",
                                                f"labels {', '.join(labels)}" if labels else "") if part))
    diff = first.to_frame() - second.aligned(first.classes, first.labels).to_frame()
    print(f"per-cell difference ({comparison.name} - {comparison.other_name}):")
    print(diff.round(2).to_string())
    print()
    print(comparison)
    if args.csv:
        from distmtl.io import atomic_write_text

        atomic_write_text(args.csv, diff.to_csv(float_format="%.6g"))
        print(f"differences written to {args.csv}")
    if args.png:
        write_comparison_png(args.png, first, second, comparison)
        print(f"side-by-side heat maps written to {args.png}")
    return 0


def add_parsers(sub) -> None:
    rel = sub.add_parser("relatedness", help="relatedness tables: show, estimate, compare")
    commands = rel.add_subparsers(dest="rel_command", required=True)

    p = commands.add_parser("show", help="print a table and draw its heat map")
    p.add_argument("table", help="built-in name (du2014, du2014_compound, emfacs, ...) or CSV path")
    p.add_argument("--png")
    p.add_argument("--decimals", type=int, default=2)
    p.set_defaults(func=cmd_show)

    p = commands.add_parser("estimate", help="a table from a training source, or a trained model's co-activation")
    p.add_argument("--config", help="experiment YAML (with --source)")
    p.add_argument("--source", help="name of a training source of the config (data.sources)")
    p.add_argument("--alpha", type=float, default=1.0, help="additive smoothing of the counts (default 1)")
    p.add_argument("--from-model", metavar="DIR", help="a model folder written by distmtl export (with --data)")
    p.add_argument("--data", help="CSV whose images the model is run on (with --from-model)")
    p.add_argument("--tasks", nargs=2, metavar=("CLASS_TASK", "LABEL_TASK"),
                   help="the multiclass and multilabel tasks (default: the only such pair)")
    p.add_argument("--device", default="cpu", help="with --from-model: cpu (default), cuda, auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("-o", "--out", required=True, help="CSV to write")
    p.add_argument("--png", help="also draw the table's heat map")
    p.add_argument("overrides", nargs="*", help="with --config: key.path=value overrides")
    p.set_defaults(func=cmd_estimate)

    p = commands.add_parser("compare", help="per-cell differences of two tables, side-by-side PNG")
    p.add_argument("a", help="built-in name or CSV path")
    p.add_argument("b", help="built-in name or CSV path")
    p.add_argument("--common", action="store_true",
                   help="compare only the classes and labels both tables have (the rest is listed)")
    p.add_argument("--top", type=int, default=10, help="largest differences to list")
    p.add_argument("--png", help="write A, B and |A - B| side by side")
    p.add_argument("--csv", help="write the per-cell differences A - B")
    p.set_defaults(func=cmd_compare)
