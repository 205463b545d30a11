"""``distmtl evaluate``: a checkpoint's metrics on data in the generic CSV format.

An identity task is scored as face verification too (see :mod:`distmtl.evaluation.verification`): on pairs
drawn from the CSV's identities, or on the pairs of an LFW-format ``pairs.txt``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from distmtl.data.csvformat import encode, identity_values, read_csv_source, soft_columns, task_columns
from distmtl.data.sources import SourceDataset
from distmtl.data.transforms import eval_transform
from distmtl.errors import DistmtlError
from distmtl.evaluation.metrics import task_metrics
from distmtl.training.experiment import preprocessing_from_config
from distmtl.training.runner import load_module
from distmtl.training.module import metrics_from_outputs
from distmtl.evaluation.verification import (
    DEFAULT_PAIRS,
    PairResolver,
    pair_folds,
    read_pairs_file,
    verification_pairs,
    verification_summary,
    write_pairs_file,
)


def describe_tasks(tasks: dict, max_labels: int = 6) -> str:
    """``expression (multiclass); au (multilabel: AU01, AU12, ...)``: the columns a CSV needs."""
    parts = []
    for name, task in tasks.items():
        if task.kind in ("multiclass", "identity"):
            parts.append(f"{name} ({task.kind})")
        else:
            labels = list(task.labels)
            shown = ", ".join(labels[:max_labels]) + (", ..." if len(labels) > max_labels else "")
            parts.append(f"{name} ({task.kind}: {shown})")
    return "; ".join(parts)


def check_columns_match(data: str | Path, checkpoint: str | Path, tasks: dict) -> None:
    """A CSV with no label column of any of the checkpoint's tasks: one line naming both files."""
    import pandas as pd

    try:
        columns = [c.strip() for c in pd.read_csv(data, nrows=0, dtype=str).columns]
    except Exception:  # noqa: BLE001 - unreadable: read_csv_source reports it with the details
        return
    if "image" not in columns:
        return
    wanted = {c for t in tasks.values() for c in task_columns(t) + soft_columns(t)}
    if not wanted & set(columns):
        raise DistmtlError(
            f"{data}: has no label column of the tasks of checkpoint {checkpoint} "
            f"({describe_tasks(tasks)}); its columns are {', '.join(columns[:10])}"
            f"{', ...' if len(columns) > 10 else ''} (was the checkpoint trained on other tasks?)"
        )


@torch.no_grad()
def collect_outputs(module, loader: DataLoader) -> dict[str, tuple]:
    """Run ``module`` over ``loader``: per task, (outputs, targets, masks) concatenated."""
    module.eval()
    for batch in loader:
        module.store_outputs(batch)
    return module.collected()


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, *, batch_size: int = 256,
                        num_workers: int = 2, n_pairs: int = DEFAULT_PAIRS, pairs_seed: int = 0,
                        pairs: str | Path | None = None,
                        save_pairs: str | Path | None = None) -> tuple[dict, dict]:
    """Metrics of ``checkpoint`` on CSV ``data``. An identity task is also scored on verification
    pairs: ``n_pairs`` drawn from the CSV's identities with ``pairs_seed`` (written to
    ``save_pairs`` in LFW's format when given), or those of the LFW-format file ``pairs``."""
    module = load_module(checkpoint)
    check_columns_match(data, checkpoint, module.tasks)
    loaded = read_csv_source(data, module.tasks)
    source = encode(loaded, module.tasks)
    if not source.annotated_tasks and not any((g >= 0).any() for g in source.groups.values()):
        raise DistmtlError(f"{data}: annotates none of the checkpoint's tasks ({', '.join(module.tasks)})")
    identity = [t for t, task in module.tasks.items() if task.kind == "identity"]
    if (pairs or save_pairs) and len(identity) != 1:
        option = "--pairs" if pairs else "--save-pairs"
        raise DistmtlError(f"{option}: checkpoint {checkpoint} has {len(identity)} identity tasks"
                           f"{' (' + ', '.join(identity) + ')' if identity else ''}; expected one")
    pre = preprocessing_from_config(module.config)
    loader = DataLoader(SourceDataset(source, eval_transform(pre), pre.channels),
                        batch_size=batch_size, num_workers=num_workers)
    collected = collect_outputs(module, loader)
    if pairs is None:
        metrics = metrics_from_outputs(module.tasks, collected, n_pairs=n_pairs, pairs_seed=pairs_seed)
    else:  # the file's pairs replace generated ones
        metrics = metrics_from_outputs(module.tasks, {t: parts[:3] for t, parts in collected.items()})
    if pairs or save_pairs:
        t = identity[0]
        column = loaded.frame[t] if t in loaded.frame.columns else None
        names = identity_values(column) if column is not None else [None] * len(source)
        resolver = PairResolver(loaded.frame["image"].tolist(), names, where=str(data))
        outputs, targets, masks, embeddings, groups = collected[t]
        if pairs is not None:
            folds, lines = read_pairs_file(pairs)
            idx_a, idx_b, same = resolver.resolve(pairs, lines)
            metrics.setdefault(t, task_metrics(module.tasks[t], outputs, targets, masks))
            metrics[t].update(verification_summary(embeddings, idx_a, idx_b, same, n_folds=folds))
        else:
            if not (groups >= 0).any():
                raise DistmtlError(f"--save-pairs: {data} has no identities in a '{t}' column to draw "
                                   f"pairs from")
            idx_a, idx_b, same = verification_pairs(groups, n_pairs, pairs_seed)
            write_pairs_file(save_pairs, idx_a, idx_b, same, pair_folds(len(same)), resolver)
    return metrics, module.tasks
