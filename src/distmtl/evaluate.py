"""``distmtl evaluate``: a checkpoint's metrics on data in the generic CSV format."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from distmtl.data.csvformat import encode, read_csv_source, soft_columns, task_columns
from distmtl.data.sources import SourceDataset
from distmtl.data.transforms import eval_transform
from distmtl.errors import DistmtlError
from distmtl.experiment import preprocessing_from_config
from distmtl.runner import load_module
from distmtl.training import metrics_from_outputs


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
                        num_workers: int = 2) -> tuple[dict, dict]:
    module = load_module(checkpoint)
    check_columns_match(data, checkpoint, module.tasks)
    loaded = read_csv_source(data, module.tasks)
    source = encode(loaded, module.tasks)
    if not source.annotated_tasks:
        raise DistmtlError(f"{data}: annotates none of the checkpoint's tasks ({', '.join(module.tasks)})")
    pre = preprocessing_from_config(module.config)
    loader = DataLoader(SourceDataset(source, eval_transform(pre), pre.channels),
                        batch_size=batch_size, num_workers=num_workers)
    metrics = metrics_from_outputs(module.tasks, collect_outputs(module, loader))
    return metrics, module.tasks
