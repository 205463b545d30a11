"""Co-annotation: pseudo-labels for the task a sample is not annotated for.

Task A is multiclass with K classes, task B multilabel with J labels, and the relatedness
``R[k, j] = p(b_j = 1 | a = k)`` (``[K, J]``, classes on rows) links them. Targets and masks follow
the batch layout of :mod:`distmtl.tasks`.

Soft variant (methods.md):

- A -> B. A sample labelled for A with class distribution ``y`` (one-hot for a hard label) gets
  soft B-targets ``t = y @ R``. The loss is ``BCE(sigmoid(z^B), t)`` averaged over the
  (sample, label) entries that the sample does *not* annotate for B, over samples labelled for A.
  The mean is over all such entries of the batch (equal to the mean of per-sample means when the
  samples have equally many such entries).
- B -> A. A sample with B labels ``b`` on a non-empty annotated set ``M`` and no A label gets the
  naive-Bayes posterior ``s_k ∝ pi_k prod_{j in M} R~[k,j]^{b_j} (1 - R~[k,j])^{1 - b_j}``
  with ``R~ = clip(R, eps, 1 - eps)``, computed in log space; a temperature ``T`` divides the
  log-posterior (prior included) before normalisation. The loss is ``CE(p^A, s) =
  -sum_k s_k log p^A_k``, averaged over those samples.

Hard variant (as in FaceBehaviorNet). A label is prototypical of class ``k`` where
``R[k, j] >= threshold`` (default 1: exact 1s only; an estimated table rarely has any, so lower it):

- A -> B. Class ``k`` gives each prototypical label ``j`` the target 1; other labels get no
  pseudo-label (``targets="positive"``, the specification). ``targets="full"`` also gives target 0
  where ``R[k, j] <= 1 - threshold`` (``R == 0`` at threshold 1), so e.g. every Neutral image
  trains every AU towards 0. For a soft class row ``y``, a label gets a pseudo-label only when
  every class with ``y_k > 0`` agrees on it.
- B -> A. Class ``k`` is assigned when all of its prototypical labels are
  annotated and present (``b_j > 0.5``, i.e. ``b_j = 1`` for binary targets). When several classes
  qualify, the one with the most prototypical labels wins; if that still ties, the sample gets no
  pseudo-label. A class without prototypical labels (Neutral) is never assigned.

The loss functions return the mean over the entries that receive a pseudo-label and a zero still
connected to the autograd graph when there are none.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from distmtl.errors import DistmtlError
from distmtl.losses.task_losses import _as_float, _bool_mask, _check_2d, _check_shape, masked_mean

DEFAULT_EPS = 0.05


# --------------------------------------------------------------------------- relatedness tables


def clip_relatedness(relatedness: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``R~ = clip(R, eps, 1 - eps)``: one contradicting label must not zero a class."""
    if not 0.0 < float(eps) < 0.5:
        raise DistmtlError(f"eps: expected a value in (0, 0.5), got {eps}")
    return relatedness.clamp(float(eps), 1.0 - float(eps))


def log_prior_of(prior: Tensor | None, num_classes: int, like: Tensor) -> Tensor:
    """Log of the normalised class prior ``pi`` (uniform when ``prior`` is None).

    Entries must be positive and finite: a zero prior would make a class impossible.
    """
    if prior is None:
        return torch.full(
            (num_classes,), -math.log(num_classes), dtype=like.dtype, device=like.device
        )
    prior = torch.as_tensor(prior).to(dtype=like.dtype, device=like.device)
    _check_shape("prior", prior, (num_classes,))
    if not bool(torch.isfinite(prior).all()) or not bool((prior > 0).all()):
        raise DistmtlError("prior: expected positive, finite class probabilities")
    return (prior / prior.sum()).log()


class NaiveBayesTable(NamedTuple):
    """The parameters of the B -> A naive-Bayes model, in log space.

    ``log_r = log R~`` and ``log_1mr = log(1 - R~)`` are ``[K, J]``; ``log_prior`` is ``[K]``
    (normalised or not: the posterior is normalised anyway).
    """

    log_r: Tensor
    log_1mr: Tensor
    log_prior: Tensor

    @classmethod
    def from_relatedness(
        cls, relatedness: Tensor, prior: Tensor | None = None, eps: float = DEFAULT_EPS
    ) -> NaiveBayesTable:
        relatedness = _as_float(torch.as_tensor(relatedness))
        _check_2d("relatedness", relatedness)
        r_tilde = clip_relatedness(relatedness, eps)
        return cls(
            r_tilde.log(),
            torch.log1p(-r_tilde),
            log_prior_of(prior, relatedness.shape[0], relatedness),
        )


def naive_bayes_log_posterior(
    label_values: Tensor,
    label_mask: Tensor | None,
    table: NaiveBayesTable,
    temperature: float = 1.0,
) -> Tensor:
    """Log of ``s_k ∝ pi_k prod_{j in M} R~[k,j]^{b_j} (1 - R~[k,j])^{1 - b_j}``, ``[B, K]``.

    ``label_values`` ``[B, J]`` may be soft (probabilities): each label then contributes
    ``b_j log R~ + (1 - b_j) log(1 - R~)``, the expected log-likelihood. ``label_mask`` ``[B, J]``
    selects the annotated labels (None: all). The log-posterior is divided by ``temperature``
    before normalisation.
    """
    values = _as_float(label_values)
    _check_2d("label_values", values)
    num_classes, num_labels = table.log_r.shape
    _check_shape("log_prior", table.log_prior, (num_classes,))
    if values.shape[-1] != num_labels:
        raise DistmtlError(
            f"label_values: expected [batch, {num_labels}], got {tuple(values.shape)}"
        )
    if not float(temperature) > 0:
        raise DistmtlError(f"temperature: expected a positive value, got {temperature}")
    if label_mask is None:
        on, off = values, 1.0 - values
    else:
        mask = _bool_mask("label_mask", label_mask, values.shape)
        on = torch.where(mask, values, 0.0)
        off = mask.to(values.dtype) - on
    log_r = table.log_r.to(values)
    log_1mr = table.log_1mr.to(values)
    log_prior = table.log_prior.to(values)
    log_likelihood = on @ log_r.T + off @ log_1mr.T
    return F.log_softmax((log_likelihood + log_prior) / float(temperature), dim=-1)


def b_to_a_posterior(
    label_values: Tensor,
    label_mask: Tensor | None,
    R_tilde: Tensor,
    log_prior: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Class probabilities ``[B, K]`` implied by (possibly soft) B labels; see the module docstring.

    ``R_tilde`` is the clipped relatedness ``[K, J]`` (values are additionally kept off exactly 0
    and 1 by the dtype's machine epsilon); ``log_prior`` ``[K]`` defaults to uniform. With
    predicted probabilities as ``label_values`` and ``label_mask=None`` this is zero-shot
    recognition of the classes of ``R`` (e.g. compound expressions) from label predictions.
    """
    r_tilde = _as_float(torch.as_tensor(R_tilde))
    _check_2d("R_tilde", r_tilde)
    tiny = torch.finfo(r_tilde.dtype).eps
    r_tilde = r_tilde.clamp(tiny, 1.0 - tiny)
    if log_prior is None:
        log_prior = torch.zeros(r_tilde.shape[0], dtype=r_tilde.dtype, device=r_tilde.device)
    table = NaiveBayesTable(r_tilde.log(), torch.log1p(-r_tilde), torch.as_tensor(log_prior))
    return naive_bayes_log_posterior(label_values, label_mask, table, temperature).exp()


# --------------------------------------------------------------------------- pseudo-labels


def soft_a_to_b_targets(class_probs: Tensor, relatedness: Tensor) -> Tensor:
    """Soft B-targets ``t = y @ R`` ``[B, J]`` from class-probability rows ``[B, K]``."""
    class_probs = _as_float(class_probs)
    return class_probs @ relatedness.to(class_probs)


HARD_TARGETS = ("positive", "full")


def hard_a_to_b_targets(class_probs: Tensor, relatedness: Tensor, threshold: float = 1.0,
                        targets: str = "positive") -> tuple[Tensor, Tensor]:
    """Hard B pseudo-labels: ``(targets [B, J] float, has_target [B, J] bool)``.

    Target 1 where ``R[k, j] >= threshold`` (prototypical) for every class ``k`` with
    ``class_probs[:, k] > 0``. ``targets="full"`` also gives target 0 where ``R[k, j] <= 1 -
    threshold`` for every such class (``R == 0`` at the default threshold 1). No pseudo-label
    otherwise (also for an all-zero row).
    """
    class_probs = _as_float(class_probs)
    relatedness = relatedness.to(class_probs)
    support = (class_probs > 0).to(class_probs.dtype)
    num_support = support.sum(-1, keepdim=True)
    some = num_support > 0
    agree_one = support @ (relatedness >= threshold).to(class_probs.dtype)
    is_one = some & (agree_one == num_support)
    if targets == "positive":
        return is_one.to(class_probs.dtype), is_one
    agree_zero = support @ (relatedness <= 1 - threshold).to(class_probs.dtype)
    is_zero = some & (agree_zero == num_support)
    return is_one.to(class_probs.dtype), is_one | is_zero


def hard_b_to_a_targets(
    label_values: Tensor, label_mask: Tensor, relatedness: Tensor, threshold: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Hard A pseudo-labels: ``(class_index [B] long, has_target [B] bool)``.

    See the module docstring for the rule; ``class_index`` is 0 where ``has_target`` is False.
    """
    values = _as_float(label_values)
    _check_2d("label_values", values)
    mask = _bool_mask("label_mask", label_mask, values.shape)
    prototypical = (relatedness >= threshold).to(values.dtype)  # [K, J]
    num_prototypical = prototypical.sum(-1)  # [K]
    present = (mask & (torch.where(mask, values, 0.0) > 0.5)).to(values.dtype)
    num_present = present @ prototypical.T  # [B, K]
    qualifies = (num_prototypical > 0) & (num_present == num_prototypical)
    score = torch.where(qualifies, num_prototypical, torch.full_like(num_present, -1.0))
    best, index = score.max(dim=-1)
    unique = (score == best.unsqueeze(-1)).sum(-1) == 1
    has_target = (best > 0) & unique
    return torch.where(has_target, index, torch.zeros_like(index)), has_target


# --------------------------------------------------------------------------- losses


def _a_to_b_inputs(logits_b: Tensor, targets_a: Tensor, mask_a: Tensor, mask_b: Tensor, relatedness: Tensor):
    """Checked inputs of an A -> B co-annotation loss; A targets of unlabelled samples zeroed."""
    logits_b = _as_float(logits_b)
    _check_2d("logits_b", logits_b)
    _check_shape("relatedness", relatedness, (targets_a.shape[-1], logits_b.shape[-1]))
    mask_a = _bool_mask("mask_a", mask_a, (logits_b.shape[0],))
    mask_b = _bool_mask("mask_b", mask_b, logits_b.shape)
    y = torch.where(mask_a.unsqueeze(-1), targets_a.to(logits_b.dtype), 0.0)
    return logits_b, y, mask_a, mask_b


def coannotation_a_to_b_soft(
    logits_b: Tensor, targets_a: Tensor, mask_a: Tensor, mask_b: Tensor, relatedness: Tensor
) -> Tensor:
    """Soft A -> B co-annotation loss (see the module docstring)."""
    logits_b, y, mask_a, mask_b = _a_to_b_inputs(logits_b, targets_a, mask_a, mask_b, relatedness)
    soft = soft_a_to_b_targets(y, relatedness).detach()
    entries = mask_a.unsqueeze(-1) & ~mask_b
    per_entry = F.binary_cross_entropy_with_logits(logits_b, soft, reduction="none")
    return masked_mean(per_entry, entries)


def coannotation_a_to_b_hard(
    logits_b: Tensor, targets_a: Tensor, mask_a: Tensor, mask_b: Tensor, relatedness: Tensor,
    threshold: float = 1.0, targets: str = "positive",
) -> Tensor:
    """Hard A -> B co-annotation loss: BCE on the pseudo-labelled, unannotated entries."""
    logits_b, y, mask_a, mask_b = _a_to_b_inputs(logits_b, targets_a, mask_a, mask_b, relatedness)
    hard, has_target = hard_a_to_b_targets(y, relatedness, threshold, targets)
    entries = mask_a.unsqueeze(-1) & ~mask_b & has_target
    per_entry = F.binary_cross_entropy_with_logits(logits_b, hard, reduction="none")
    return masked_mean(per_entry, entries)


def coannotation_b_to_a_soft(
    logits_a: Tensor,
    targets_b: Tensor,
    mask_b: Tensor,
    mask_a: Tensor,
    table: NaiveBayesTable,
    temperature: float = 1.0,
) -> Tensor:
    """Soft B -> A co-annotation loss ``CE(p^A, s)`` on samples with B labels and no A label."""
    logits_a = _as_float(logits_a)
    _check_2d("logits_a", logits_a)
    batch = logits_a.shape[0]
    mask_a = _bool_mask("mask_a", mask_a, (batch,))
    _check_2d("targets_b", targets_b)
    mask_b = _bool_mask("mask_b", mask_b, targets_b.shape)
    if targets_b.shape[0] != batch:
        raise DistmtlError(f"targets_b: expected {batch} rows, got {targets_b.shape[0]}")
    log_s = naive_bayes_log_posterior(targets_b.to(logits_a.dtype), mask_b, table, temperature)
    soft = log_s.exp().detach()
    per_sample = -(soft * F.log_softmax(logits_a, dim=-1)).sum(-1)
    selected = ~mask_a & mask_b.any(-1)
    return masked_mean(per_sample, selected)


def coannotation_b_to_a_hard(
    logits_a: Tensor, targets_b: Tensor, mask_b: Tensor, mask_a: Tensor, relatedness: Tensor,
    threshold: float = 1.0,
) -> Tensor:
    """Hard B -> A co-annotation loss: CE to the assigned class on samples without an A label."""
    logits_a = _as_float(logits_a)
    _check_2d("logits_a", logits_a)
    batch = logits_a.shape[0]
    _check_shape("relatedness", relatedness, (logits_a.shape[-1], targets_b.shape[-1]))
    mask_a = _bool_mask("mask_a", mask_a, (batch,))
    index, has_target = hard_b_to_a_targets(targets_b, mask_b, relatedness, threshold)
    per_sample = F.cross_entropy(logits_a, index, reduction="none")
    return masked_mean(per_sample, ~mask_a & has_target)
