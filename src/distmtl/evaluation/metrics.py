"""Evaluation metrics per task kind, computed on annotated entries only.

Conventions (kept identical to scikit-learn's on the same data, and checked against it in tests):

- Masking: only annotated entries count. Multiclass and identity masks are per sample, multilabel
  and regression masks per entry (per label, per dimension).
- Multiclass: soft target rows are reduced to their argmax. ``balanced_accuracy`` is the mean
  per-class recall over the classes present in the annotated targets
  (``sklearn.metrics.balanced_accuracy_score``). ``macro_f1`` is the mean per-class F1 over the
  classes present in the annotated targets or in the predictions, i.e.
  ``f1_score(average='macro')`` with sklearn's default ``labels`` (a class that is never true and
  never predicted is left out; one that is predicted but never true counts with F1 = 0).
  The averaging is done here rather than by torchmetrics' ``average='macro'``, whose handling of
  absent classes has changed between versions.
- Multilabel: a label is predicted positive when ``sigmoid(logit) > threshold`` (torchmetrics'
  strict rule; default threshold 0.5). A label without annotated entries is reported as ``None``
  and left out of the means. F1 of a label with no true and no predicted positive is 0
  (sklearn's ``zero_division`` default).
  Threshold-free, per label, from ``sigmoid(logit)``: ``ap`` (average precision, the step-wise
  area under the precision-recall curve, ``sklearn.metrics.average_precision_score``) and ``auc``
  (ROC AUC, ``roc_auc_score``); ``mean_ap`` / ``mean_auc`` average them over the labels whose
  annotated entries hold both a positive and a negative (``None`` for the others, where neither
  is defined). ``mean_f1_calibrated`` is mean F1 at per-label thresholds chosen on the
  validation split (:func:`calibrate_thresholds`), so a change in calibration is not read as a
  change in skill.
- Regression: Lin's concordance correlation coefficient with population moments,
  ``2 cov / (var_x + var_y + (mean_x - mean_y)^2)``. torchmetrics' ``concordance_corrcoef``
  mixes sample variances with the squared mean difference, so it is not used. A dimension with
  fewer than two annotated values has CCC ``None``.
- Identity: closed-set ``accuracy`` over samples whose identity is one of the training identities
  (target in ``[0, K)``); other samples are left out (``None`` when there are none). Face
  verification, computed by :func:`distmtl.training.metrics_from_outputs` from the L2-normalised
  shared features and the per-source identity groups (held-out people included), is reported
  beside it: ``verification_accuracy`` (the primary metric; LFW protocol: balanced same/different
  pairs drawn by :func:`distmtl.evaluation.verification.verification_pairs`, 10 folds, cosine threshold
  chosen on the other 9), ``verification_accuracy_std``, ``verification_roc_auc``,
  ``verification_tar_at_far_1e-3``, ``verification_threshold`` and ``verification_pairs`` (the
  number of pairs). See :mod:`distmtl.evaluation.verification`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_recall,
)

from distmtl.errors import DistmtlError
from distmtl.tasks import Task
from distmtl.evaluation.verification import verification_metrics  # noqa: F401  (part of this module's API)

PRIMARY_METRIC = {
    "multiclass": "macro_f1",
    "multilabel": "mean_f1",
    "regression": "mean_ccc",
    "identity": "verification_accuracy",
}

# Reported beside the primary metric (compare's tables show them): for multilabel tasks the
# threshold-free mean average precision and ROC AUC, and mean F1 at per-label thresholds calibrated
# on the validation split (filled in by training.runner, which has both splits).
SECONDARY_METRICS = {"multilabel": ("mean_ap", "mean_auc", "mean_f1_calibrated")}

DEFAULT_THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


def primary_metric(task: Task) -> str:
    """Name of the metric a task is compared on (higher is better for all of them)."""
    return PRIMARY_METRIC[task.kind]


def _check_shape(task: Task, name: str, tensor: Tensor, shape: Sequence[int]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise DistmtlError(
            f"task '{task.name}': {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
        )


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(sum(kept) / len(kept)) if kept else None


def task_metrics(
    task: Task,
    outputs: Tensor,
    targets: Tensor,
    masks: Tensor,
    thresholds: Tensor | None = None,
) -> dict[str, Any]:
    """Metrics of one task on the annotated entries of ``outputs`` (logits) vs ``targets``."""
    outputs = outputs.detach().float().cpu()
    targets = targets.detach().cpu()
    masks = masks.detach().cpu().bool()
    n, k = outputs.shape[0], task.num_outputs
    _check_shape(task, "outputs", outputs, (n, k))
    if task.kind == "multiclass":
        _check_shape(task, "targets", targets, (n, k))
        _check_shape(task, "masks", masks, (n,))
        return _multiclass_metrics(outputs[masks], targets[masks].float().argmax(dim=1), k)
    if task.kind == "multilabel":
        _check_shape(task, "targets", targets, (n, k))
        _check_shape(task, "masks", masks, (n, k))
        return _multilabel_metrics(task, outputs, targets.float(), masks, thresholds)
    if task.kind == "regression":
        _check_shape(task, "targets", targets, (n, k))
        _check_shape(task, "masks", masks, (n, k))
        return _regression_metrics(task, outputs, targets.float(), masks)
    _check_shape(task, "targets", targets, (n,))
    _check_shape(task, "masks", masks, (n,))
    ids = targets.long()
    keep = masks & (ids >= 0) & (ids < k)
    correct = outputs[keep].argmax(dim=1) == ids[keep]
    return {"accuracy": float(correct.float().mean()) if keep.any() else None, "n": int(keep.sum())}


def _multiclass_metrics(logits: Tensor, target: Tensor, k: int) -> dict[str, Any]:
    n = int(target.numel())
    if n == 0:
        return {
            "accuracy": None, "balanced_accuracy": None, "macro_f1": None,
            "confusion_matrix": [[0] * k for _ in range(k)], "n": 0,
        }
    pred = logits.argmax(dim=1)
    in_target = torch.bincount(target, minlength=k) > 0
    in_either = in_target | (torch.bincount(pred, minlength=k) > 0)
    recall = multiclass_recall(pred, target, num_classes=k, average="none")
    f1 = multiclass_f1_score(pred, target, num_classes=k, average="none")
    confusion = multiclass_confusion_matrix(pred, target, num_classes=k)
    return {
        "accuracy": float((pred == target).float().mean()),
        "balanced_accuracy": float(recall[in_target].mean()),
        "macro_f1": float(f1[in_either].mean()),
        "confusion_matrix": confusion.long().tolist(),
        "n": n,
    }


def _binary_counts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """True positives, false positives, false negatives along dim 0."""
    tp = (pred & target).sum(dim=0)
    fp = (pred & ~target).sum(dim=0)
    fn = (~pred & target).sum(dim=0)
    return tp, fp, fn


def _f1(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.zeros_like(den)).double()


def _multilabel_metrics(
    task: Task, logits: Tensor, targets: Tensor, masks: Tensor, thresholds: Tensor | None
) -> dict[str, Any]:
    k = task.num_outputs
    if thresholds is None:
        thresholds = torch.full((k,), 0.5)
    thresholds = torch.as_tensor(thresholds, dtype=torch.float32).flatten().cpu()
    _check_shape(task, "thresholds", thresholds, (k,))
    pred = torch.sigmoid(logits) > thresholds
    truth = targets > 0.5
    probs = torch.sigmoid(logits.double())
    f1: dict[str, float | None] = {}
    accuracy: dict[str, float | None] = {}
    ap: dict[str, float | None] = {}
    auc: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for j, label in enumerate(task.labels):
        keep = masks[:, j]
        counts[label] = int(keep.sum())
        if counts[label] == 0:
            f1[label] = accuracy[label] = ap[label] = auc[label] = None
            continue
        p, t = pred[keep, j], truth[keep, j]
        f1[label] = float(_f1(*_binary_counts(p, t)))
        accuracy[label] = float((p == t).float().mean())
        if t.any() and not t.all():
            ap[label] = float(binary_average_precision(probs[keep, j], t.long()))
            auc[label] = float(binary_auroc(probs[keep, j], t.long()))
        else:
            ap[label] = auc[label] = None
    return {
        "f1": f1,
        "mean_f1": _mean(f1.values()),
        "accuracy": accuracy,
        "mean_accuracy": _mean(accuracy.values()),
        "ap": ap,
        "mean_ap": _mean(ap.values()),
        "auc": auc,
        "mean_auc": _mean(auc.values()),
        "thresholds": [float(x) for x in thresholds],
        "n": counts,
    }


def concordance_cc(pred: Tensor, target: Tensor) -> float | None:
    """Lin's concordance correlation coefficient (population moments); None below 2 values."""
    x, y = pred.double().flatten(), target.double().flatten()
    if x.numel() < 2:
        return None
    mx, my = x.mean(), y.mean()
    vx, vy = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean()
    den = vx + vy + (mx - my) ** 2
    if float(den) == 0.0:
        return 1.0  # identical constant sequences agree perfectly
    return float(2 * ((x - mx) * (y - my)).mean() / den)


def _regression_metrics(
    task: Task, outputs: Tensor, targets: Tensor, masks: Tensor
) -> dict[str, Any]:
    ccc: dict[str, float | None] = {}
    mse: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for d, label in enumerate(task.labels):
        keep = masks[:, d]
        x, y = outputs[keep, d], targets[keep, d]
        counts[label] = int(keep.sum())
        ccc[label] = concordance_cc(x, y)
        mse[label] = float(((x.double() - y.double()) ** 2).mean()) if counts[label] else None
    return {"ccc": ccc, "mean_ccc": _mean(ccc.values()), "mse": mse, "n": counts}


def _task_name(task: Task | str) -> str:
    return task.name if isinstance(task, Task) else str(task)


def _metric(metrics_by_task: Mapping[str, Mapping[str, Any]], task: Task | str, key: str) -> Any:
    name = _task_name(task)
    if name not in metrics_by_task:
        raise DistmtlError(f"no metrics for task '{name}'")
    value = metrics_by_task[name].get(key)
    if value is None:
        raise DistmtlError(f"task '{name}': metric '{key}' is not available")
    return value


def abaw_mtl_score(
    metrics_by_task: Mapping[str, Mapping[str, Any]],
    expression_task: Task | str,
    au_task: Task | str,
    va_task: Task | str,
) -> float:
    """ABAW multi-task score: (CCC_v + CCC_a)/2 + macro-F1 (expression) + mean F1 (AUs)."""
    ccc = _metric(metrics_by_task, va_task, "ccc")
    if ccc.get("valence") is not None and ccc.get("arousal") is not None:
        va = (ccc["valence"] + ccc["arousal"]) / 2
    else:
        va = _metric(metrics_by_task, va_task, "mean_ccc")
    expr = _metric(metrics_by_task, expression_task, "macro_f1")
    au = _metric(metrics_by_task, au_task, "mean_f1")
    return float(va + expr + au)


def abaw_tasks(tasks: Mapping[str, Task]) -> tuple[str, str, str] | None:
    """(expression, AU, VA) task names when a model has exactly one multiclass task, one
    multilabel task and one regression task over valence and arousal; else None."""
    by_kind: dict[str, list[Task]] = {}
    for task in tasks.values():
        by_kind.setdefault(task.kind, []).append(task)
    picked = [by_kind.get(kind, []) for kind in ("multiclass", "multilabel", "regression")]
    if any(len(group) != 1 for group in picked):
        return None
    if set(picked[2][0].labels) != {"valence", "arousal"}:
        return None
    return picked[0][0].name, picked[1][0].name, picked[2][0].name


def abaw_score_if_defined(metrics_by_task: Mapping[str, Mapping[str, Any]],
                          tasks: Mapping[str, Task]) -> float | None:
    """The ABAW multi-task score when the model has the three tasks and the data annotates them."""
    names = abaw_tasks(tasks)
    if names is None or any(n not in metrics_by_task for n in names):
        return None
    try:
        return abaw_mtl_score(metrics_by_task, *names)
    except DistmtlError:  # a metric is undefined on this data (e.g. a constant VA column)
        return None


def calibrate_thresholds(
    probs: Tensor,
    targets: Tensor,
    masks: Tensor,
    grid: Sequence[float] | Tensor = DEFAULT_THRESHOLD_GRID,
) -> Tensor:
    """Per-label threshold from ``grid`` maximising F1 on annotated validation entries.

    Uses the same rule as :func:`task_metrics` (positive when ``prob > threshold``). Ties go to
    the grid value closest to 0.5; a label without annotated positives keeps 0.5.
    """
    probs = probs.detach().double().cpu()
    truth = targets.detach().cpu() > 0.5
    masks = masks.detach().cpu().bool()
    if probs.ndim != 2 or truth.shape != probs.shape or masks.shape != probs.shape:
        raise DistmtlError(
            f"calibrate_thresholds: probs, targets and masks must share one [N, J] shape, got "
            f"{tuple(probs.shape)}, {tuple(truth.shape)}, {tuple(masks.shape)}"
        )
    grid_t = torch.as_tensor(grid, dtype=torch.float64).flatten()
    if grid_t.numel() == 0:
        raise DistmtlError("calibrate_thresholds: empty threshold grid")
    closeness = (grid_t - 0.5).abs()
    out = torch.full((probs.shape[1],), 0.5)
    for j in range(probs.shape[1]):
        keep = masks[:, j]
        t = truth[keep, j]
        if not t.any():
            continue
        pred = probs[keep, j, None] > grid_t[None, :]  # [n, G]
        f1 = _f1(*_binary_counts(pred, t[:, None]))
        best = torch.isclose(f1, f1.max(), rtol=0.0, atol=1e-12)
        out[j] = float(grid_t[best][closeness[best].argmin()])
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_metrics_table(
    metrics_by_task: Mapping[str, Mapping[str, Any]], tasks: Iterable[Task] | Mapping[str, Task]
) -> str:
    """Plain-text table: one row per task with its primary metric, then per-label details."""
    task_list = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    rows: list[tuple[str, ...]] = []
    details: dict[str, list[str]] = {}
    for task in task_list:
        metrics = metrics_by_task.get(task.name)
        if metrics is None:
            rows.append((task.name, task.kind, primary_metric(task), "-", "not evaluated"))
            continue
        primary = primary_metric(task)
        extra = [
            f"{key}={_fmt(value)}"
            for key, value in metrics.items()
            if key != primary and (value is None or isinstance(value, (int, float)))
        ]
        rows.append((task.name, task.kind, primary, _fmt(metrics.get(primary)), " ".join(extra)))
        per_label = {"multilabel": "f1", "regression": "ccc"}.get(task.kind)
        if per_label and isinstance(metrics.get(per_label), Mapping):
            details[task.name] = [
                f"{per_label}: " + " ".join(f"{k}={_fmt(v)}" for k, v in metrics[per_label].items())
            ]
    header = ("task", "kind", "primary", "value", "other")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
        for detail in details.get(row[0], []) if row is not header else []:
            lines.append(" " * (sum(widths[:2]) + 4) + detail)
    return "\n".join(line.rstrip() for line in lines)
