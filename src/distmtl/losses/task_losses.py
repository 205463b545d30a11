"""Masked per-task losses.

Every loss consumes the batch layout of :mod:`distmtl.tasks`:

- multiclass: logits ``[B, K]``, class-probability rows ``[B, K]`` (one-hot for hard labels),
  mask ``[B]``;
- multilabel: logits ``[B, J]``, targets ``[B, J]`` in {0, 1}, mask ``[B, J]``;
- regression: predictions ``[B, D]``, targets ``[B, D]``, mask ``[B, D]``;
- identity: logits ``[B, N]``, identity indices (long) ``[B]``, mask ``[B]``.

Masked entries never reach the arithmetic: a target is replaced by 0 with ``torch.where`` before it
is used, and per-entry losses are selected with ``torch.where`` before reduction. Neither the loss
nor any gradient depends on the placeholder value (not even a NaN placeholder), and the
predictions of masked entries receive exactly zero gradient.

Reductions are means over what is annotated: samples (multiclass, identity), (sample, label)
entries (multilabel, MSE), and for CCC one value per dimension averaged over dimensions. When
nothing is annotated a loss is a zero that is still part of the autograd graph, so ``backward()``
works and gives zero gradients; no host-device synchronisation is needed to get there.

Half-precision inputs are computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import Task

REGRESSION_LOSSES = ("ccc", "mse")

TASK_LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "multiclass": ("label_smoothing", "class_weight"),
    "multilabel": ("pos_weight",),
    "regression": ("loss",),
    "identity": ("label_smoothing",),
}
"""The keyword options :func:`task_loss` accepts for each task kind."""


# --------------------------------------------------------------------------- helpers


def _as_float(x: Tensor) -> Tensor:
    """Upcast half/bfloat16 to float32; keep float32/float64 as they are."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if not x.is_floating_point():
        return x.to(torch.get_default_dtype())
    return x


def _check_shape(name: str, tensor: Tensor, shape: Sequence[int]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise DistmtlError(f"{name}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}")


def _check_2d(name: str, tensor: Tensor) -> None:
    if tensor.dim() != 2:
        raise DistmtlError(f"{name}: expected a [batch, n] tensor, got shape {tuple(tensor.shape)}")


def _bool_mask(name: str, mask: Tensor, shape: Sequence[int]) -> Tensor:
    """Return ``mask`` as bool with exactly ``shape``; a per-sample ``[B]`` mask is broadcast."""
    mask = torch.as_tensor(mask).to(torch.bool)
    shape = tuple(shape)
    if tuple(mask.shape) == shape:
        return mask
    if len(shape) == 2 and tuple(mask.shape) == shape[:1]:
        return mask.unsqueeze(-1).expand(shape)
    raise DistmtlError(f"{name}: expected shape {shape}, got {tuple(mask.shape)}")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is True (broadcast to ``values``).

    Returns a zero connected to ``values``' autograd graph when the mask selects nothing.
    """
    mask = torch.as_tensor(mask, device=values.device).to(torch.bool).expand_as(values)
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    count = mask.sum().clamp_min(1)
    return total / count


# --------------------------------------------------------------------------- losses


def masked_cross_entropy(
    logits: Tensor,
    target_probs: Tensor,
    mask: Tensor,
    label_smoothing: float = 0.0,
    class_weight: Tensor | None = None,
) -> Tensor:
    """Cross-entropy against class-probability rows, averaged over annotated samples.

    Per sample ``-sum_k w_k t_k log softmax(z)_k`` with ``t = (1 - ls) y + ls / K``. Without
    ``class_weight`` the mean is over annotated samples. With it, the sum is divided by
    ``sum_i sum_k w_k y_ik`` over annotated samples (the unsmoothed targets), which for one-hot
    targets is exactly ``F.cross_entropy(weight=w, label_smoothing=ls)``.
    """
    logits = _as_float(logits)
    _check_2d("logits", logits)
    batch, num_classes = logits.shape
    _check_shape("target_probs", target_probs, logits.shape)
    mask = _bool_mask("mask", mask, (batch,))
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise DistmtlError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")

    target = torch.where(mask.unsqueeze(-1), target_probs.to(logits.dtype), 0.0)
    smoothed = target
    if label_smoothing > 0:
        smoothed = target * (1.0 - label_smoothing) + label_smoothing / num_classes
    log_probs = F.log_softmax(logits, dim=-1)
    if class_weight is None:
        per_sample = -(smoothed * log_probs).sum(-1)
        return masked_mean(per_sample, mask)

    weight = torch.as_tensor(class_weight).to(device=logits.device, dtype=logits.dtype)
    _check_shape("class_weight", weight, (num_classes,))
    per_sample = -(smoothed * weight * log_probs).sum(-1)
    sample_weight = (target * weight).sum(-1)
    numerator = torch.where(mask, per_sample, 0.0).sum()
    denominator = torch.where(mask, sample_weight, 0.0).sum()
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


def masked_bce(
    logits: Tensor, targets: Tensor, mask: Tensor, pos_weight: Tensor | None = None
) -> Tensor:
    """Binary cross-entropy with logits, averaged over annotated (sample, label) entries.

    ``mask`` is ``[B, J]`` (a ``[B]`` mask is broadcast over labels). ``pos_weight`` ``[J]``
    multiplies the positive term, as in ``F.binary_cross_entropy_with_logits``.
    """
    logits = _as_float(logits)
    _check_2d("logits", logits)
    _check_shape("targets", targets, logits.shape)
    mask = _bool_mask("mask", mask, logits.shape)
    target = torch.where(mask, targets.to(logits.dtype), 0.0)
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight).to(device=logits.device, dtype=logits.dtype)
        _check_shape("pos_weight", pos_weight, logits.shape[-1:])
    per_entry = F.binary_cross_entropy_with_logits(
        logits, target, reduction="none", pos_weight=pos_weight
    )
    return masked_mean(per_entry, mask)


def masked_ccc_loss(pred: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 - CCC`` per dimension over its annotated samples, averaged over dimensions.

    ``CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2)`` with population (1/n) moments
    over the samples annotated for that dimension; ``eps`` is added to the denominator. A
    dimension with fewer than 2 annotated samples has no CCC and is left out of the mean.
    """
    pred = _as_float(pred)
    _check_2d("pred", pred)
    _check_shape("target", target, pred.shape)
    mask = _bool_mask("mask", mask, pred.shape)
    zeros = torch.zeros_like(pred)
    x = torch.where(mask, pred, zeros)
    y = torch.where(mask, target.to(pred.dtype), zeros)
    count = mask.sum(0).to(pred.dtype)
    n = count.clamp_min(1.0)
    mean_x = x.sum(0) / n
    mean_y = y.sum(0) / n
    dx = torch.where(mask, x - mean_x, zeros)
    dy = torch.where(mask, y - mean_y, zeros)
    var_x = (dx * dx).sum(0) / n
    var_y = (dy * dy).sum(0) / n
    cov = (dx * dy).sum(0) / n
    ccc = 2.0 * cov / (var_x + var_y + (mean_x - mean_y) ** 2 + eps)
    valid = count >= 2
    return masked_mean(1.0 - ccc, valid)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Squared error averaged over annotated entries (``mask`` ``[B, D]``, or ``[B]`` broadcast)."""
    pred = _as_float(pred)
    _check_2d("pred", pred)
    _check_shape("target", target, pred.shape)
    mask = _bool_mask("mask", mask, pred.shape)
    target = torch.where(mask, target.to(pred.dtype), 0.0)
    return masked_mean((pred - target) ** 2, mask)


def masked_identity_ce(
    logits: Tensor, index: Tensor, mask: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy over training identities (``index`` long ``[B]``), mean over annotated
    samples."""
    logits = _as_float(logits)
    _check_2d("logits", logits)
    batch = logits.shape[0]
    _check_shape("index", index, (batch,))
    mask = _bool_mask("mask", mask, (batch,))
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise DistmtlError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")
    safe_index = torch.where(mask, index.long(), 0)
    per_sample = F.cross_entropy(
        logits, safe_index, reduction="none", label_smoothing=float(label_smoothing)
    )
    return masked_mean(per_sample, mask)


def task_loss(task: Task, output: Tensor, target: Tensor, mask: Tensor, **options: Any) -> Tensor:
    """The masked loss of ``task`` by its kind.

    Options by kind (see :data:`TASK_LOSS_OPTIONS`): multiclass ``label_smoothing``,
    ``class_weight``; multilabel ``pos_weight``; regression ``loss`` (``"ccc"``, the default, or
    ``"mse"``); identity ``label_smoothing``. ``task.options`` is not read: the caller passes the
    options it means.
    """
    allowed = TASK_LOSS_OPTIONS[task.kind]
    for key in options:
        if key not in allowed:
            raise DistmtlError(
                f"task '{task.name}': unknown loss option '{key}' for a {task.kind} task"
                f"{close_matches(key, allowed)}; expected one of {', '.join(allowed)}"
            )
    if output.dim() != 2 or output.shape[-1] != task.num_outputs:
        raise DistmtlError(
            f"task '{task.name}': expected output [batch, {task.num_outputs}], "
            f"got {tuple(output.shape)}"
        )
    if task.kind == "multiclass":
        return masked_cross_entropy(output, target, mask, **options)
    if task.kind == "multilabel":
        return masked_bce(output, target, mask, **options)
    if task.kind == "regression":
        kind = options.get("loss", "ccc")
        if kind == "ccc":
            return masked_ccc_loss(output, target, mask)
        if kind == "mse":
            return masked_mse(output, target, mask)
        raise DistmtlError(
            f"task '{task.name}': unknown regression loss '{kind}'"
            f"{close_matches(str(kind), REGRESSION_LOSSES)}; expected one of "
            f"{', '.join(REGRESSION_LOSSES)}"
        )
    return masked_identity_ce(output, target, mask, **options)
