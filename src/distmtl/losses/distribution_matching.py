"""Distribution matching: coupling the predictions of two related tasks on every sample.

Task A is multiclass (``p^A = softmax(z^A)``, K classes), task B multilabel
(``p^B_j = sigmoid(z^B_j)``, J labels), and ``R[k, j] = p(b_j = 1 | a = k)`` relates them. No
labels are read: the terms apply to labelled and unlabelled samples alike (``sample_mask`` can
restrict them, e.g. to samples lacking the coupled task's labels).

A -> B (the FaceBehaviorNet form). The A prediction induces ``q_j = sum_k p^A_k R[k, j]``,
clamped to ``[eps_num, 1 - eps_num]`` before logs. Per sample, summed over labels as the papers
write it (``label_reduction="mean"`` divides by J instead):

- ``"paper"``: ``-sum_j p^B_j log q_j``;
- ``"bce"``: ``-sum_j [p^B_j log q_j + (1 - p^B_j) log(1 - q_j)]`` (the binary cross-entropy
  ``H(p^B_j, q_j)``);
- ``"kl"``: ``sum_j KL(Bern(p^B_j) || Bern(q_j))``, i.e. ``"bce"`` minus the entropy of ``p^B``.

What each form rewards, as a function of the B prediction with ``q`` held fixed (the target):

- ``"paper"`` is linear in ``p^B`` with non-negative slopes ``-log q_j``. It is not a divergence
  and is not minimised at ``p^B = q``: it is minimised by pushing ``p^B`` towards the labels with
  the largest ``log q_j``. With independent sigmoids that means it never raises a label: every
  ``p^B_j`` with ``q_j < 1`` is pushed towards 0, hardest where ``q_j`` is smallest and least where
  ``log q_j`` is largest (were ``p^B`` normalised over labels, the minimum would put all its mass
  on the label with the largest ``log q_j``). Its gradient into A, when not stopped, raises ``q``
  where ``p^B`` is high. With ``stop_gradient`` on, this form therefore only lowers the B
  predictions; ``"kl"`` trains B towards ``q``.
- ``"bce"`` is linear in ``p^B`` too: minimised at ``p^B_j = 1`` where ``q_j > 1/2`` and 0 where
  ``q_j < 1/2`` (a hard rounding of ``q``). As a function of ``q`` it is minimised at
  ``q = p^B``.
- ``"kl"`` is the only one of the three that is zero exactly when ``p^B = q``.

B -> A (our formulation, symmetric to soft co-annotation). The B prediction induces
``q^A_k ∝ pi_k exp(sum_j [p^B_j log R~[k,j] + (1 - p^B_j) log(1 - R~[k,j])])`` with
``R~ = clip(R, eps, 1 - eps)``; forms ``"ce"``: ``-sum_k q^A_k log p^A_k`` and ``"kl"``:
``KL(q^A || p^A)``. Both are minimised over ``p^A`` at ``p^A = q^A``; ``"kl"`` is then 0.

Stop-gradient (default on) detaches the target side: ``q`` (from ``p^A``) in A -> B, ``q^A`` (from
``p^B``) in B -> A. The detached head's parameters then receive exactly zero gradient from the term.

Both losses are means over the contributing samples (all, or those selected by ``sample_mask``),
and a zero connected to the autograd graph when none contributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distmtl.errors import DistmtlError, close_matches
from distmtl.losses.coannotation import NaiveBayesTable, naive_bayes_log_posterior
from distmtl.losses.task_losses import _as_float, _bool_mask, _check_2d, _check_shape, masked_mean

A_TO_B_FORMS = ("paper", "bce", "kl")
B_TO_A_FORMS = ("ce", "kl")
LABEL_REDUCTIONS = ("sum", "mean")
DEFAULT_EPS_NUM = 1e-6


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        hint = close_matches(str(value), choices) or f"; expected one of {', '.join(choices)}"
        raise DistmtlError(f"{what}: unknown {what} '{value}'{hint}")


def _check_logits(logits_a: Tensor, logits_b: Tensor) -> tuple[Tensor, Tensor]:
    logits_a, logits_b = _as_float(logits_a), _as_float(logits_b)
    _check_2d("logits_a", logits_a)
    _check_2d("logits_b", logits_b)
    if logits_a.shape[0] != logits_b.shape[0]:
        raise DistmtlError(
            f"logits_a and logits_b: batch sizes differ "
            f"({logits_a.shape[0]} vs {logits_b.shape[0]})"
        )
    dtype = torch.promote_types(logits_a.dtype, logits_b.dtype)
    return logits_a.to(dtype), logits_b.to(dtype)


def _reduce_samples(per_sample: Tensor, sample_mask: Tensor | None) -> Tensor:
    if sample_mask is None:
        return per_sample.mean()
    mask = _bool_mask("sample_mask", sample_mask, per_sample.shape)
    return masked_mean(per_sample, mask)


def induced_label_probs(class_probs: Tensor, relatedness: Tensor) -> Tensor:
    """``q = p^A @ R``: the label probabilities ``[B, J]`` implied by class probabilities."""
    class_probs = _as_float(class_probs)
    return class_probs @ relatedness.to(class_probs)


def dm_a_to_b(
    logits_a: Tensor,
    logits_b: Tensor,
    relatedness: Tensor,
    form: str = "paper",
    *,
    stop_gradient: bool = True,
    sample_mask: Tensor | None = None,
    label_reduction: str = "sum",
    eps_num: float = DEFAULT_EPS_NUM,
) -> Tensor:
    """A -> B distribution matching (see the module docstring for the forms).

    ``relatedness`` is ``R`` ``[K, J]`` (unclipped). ``stop_gradient`` detaches ``q`` (the A side).
    """
    _check_choice(form, A_TO_B_FORMS, "form")
    _check_choice(label_reduction, LABEL_REDUCTIONS, "label_reduction")
    if not 0.0 < float(eps_num) < 0.5:
        raise DistmtlError(f"eps_num: expected a value in (0, 0.5), got {eps_num}")
    logits_a, logits_b = _check_logits(logits_a, logits_b)
    _check_shape("relatedness", relatedness, (logits_a.shape[-1], logits_b.shape[-1]))

    source = logits_a.detach() if stop_gradient else logits_a
    q = induced_label_probs(F.softmax(source, dim=-1), relatedness)
    q = q.clamp(float(eps_num), 1.0 - float(eps_num))
    log_q, log_1mq = q.log(), torch.log1p(-q)
    p_b = torch.sigmoid(logits_b)
    if form == "paper":
        per_label = -p_b * log_q
    elif form == "bce":
        per_label = -(p_b * log_q + (1.0 - p_b) * log_1mq)
    else:
        log_p, log_1mp = F.logsigmoid(logits_b), F.logsigmoid(-logits_b)
        per_label = p_b * (log_p - log_q) + (1.0 - p_b) * (log_1mp - log_1mq)
    per_sample = per_label.sum(-1) if label_reduction == "sum" else per_label.mean(-1)
    return _reduce_samples(per_sample, sample_mask)


def induced_class_log_probs(
    label_probs: Tensor, table: NaiveBayesTable, temperature: float = 1.0
) -> Tensor:
    """``log q^A`` ``[B, K]``: the class distribution a label prediction ``[B, J]`` implies."""
    return naive_bayes_log_posterior(label_probs, None, table, temperature)


def dm_b_to_a(
    logits_a: Tensor,
    logits_b: Tensor,
    table: NaiveBayesTable,
    form: str = "ce",
    *,
    stop_gradient: bool = True,
    sample_mask: Tensor | None = None,
) -> Tensor:
    """B -> A distribution matching (see the module docstring for the forms).

    ``table`` holds ``log R~``, ``log(1 - R~)`` and ``log pi``
    (:meth:`NaiveBayesTable.from_relatedness`). ``stop_gradient`` detaches ``q^A`` (the B side).
    """
    _check_choice(form, B_TO_A_FORMS, "form")
    logits_a, logits_b = _check_logits(logits_a, logits_b)
    _check_shape("table.log_r", table.log_r, (logits_a.shape[-1], logits_b.shape[-1]))

    source = logits_b.detach() if stop_gradient else logits_b
    log_q = induced_class_log_probs(torch.sigmoid(source), table)
    q = log_q.exp()
    log_p_a = F.log_softmax(logits_a, dim=-1)
    if form == "ce":
        per_sample = -(q * log_p_a).sum(-1)
    else:
        per_sample = (q * (log_q - log_p_a)).sum(-1)
    return _reduce_samples(per_sample, sample_mask)
