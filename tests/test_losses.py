"""Masked task losses, co-annotation and distribution matching against hand-computed values.

Expected values are written out with math/numpy on tiny cases (2-5 classes, 2-4 labels); the
functions under test are never used to produce them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distmtl.errors import DistmtlError
from distmtl.losses import (
    NaiveBayesTable,
    b_to_a_posterior,
    coannotation_a_to_b_hard,
    coannotation_a_to_b_soft,
    coannotation_b_to_a_hard,
    coannotation_b_to_a_soft,
    dm_a_to_b,
    dm_b_to_a,
    hard_a_to_b_targets,
    hard_b_to_a_targets,
    masked_bce,
    masked_ccc_loss,
    masked_cross_entropy,
    masked_identity_ce,
    masked_mse,
    task_loss,
)
from distmtl.tasks import Task

F64 = torch.float64


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def b(values):
    return torch.tensor(values, dtype=torch.bool)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def np_softmax(z):
    z = np.asarray(z, dtype=float)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_log_softmax(z):
    z = np.asarray(z, dtype=float)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def bce(z, y):
    """Binary cross-entropy of a logit z against a (soft) target y, by hand."""
    p = sigmoid(z)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def close(actual, expected, tol=1e-10):
    if isinstance(actual, torch.Tensor):
        actual = actual.detach()
    if isinstance(expected, torch.Tensor):
        expected = expected.detach()
    assert float(actual) == pytest.approx(float(expected), rel=tol, abs=tol)


# Relatedness used throughout: class 2 is a "Neutral" row of zeros.
R = [[1.0, 0.5, 0.0],
     [0.0, 1.0, 0.25],
     [0.0, 0.0, 0.0]]
R_TILDE = [[0.95, 0.5, 0.05],
           [0.05, 0.95, 0.25],
           [0.05, 0.05, 0.05]]
PRIOR = [0.5, 0.3, 0.2]


# =========================================================================== task losses


def test_masked_cross_entropy_hand_value():
    z = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 2.0, 3.0]]
    targets = t([[1, 0, 0], [0.2, 0.8, 0], [0, 0, 1]])
    mask = b([True, True, False])
    lse0 = math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0))
    lse1 = math.log(2 * math.exp(0.5) + 1.0)
    loss0 = -(2.0 - lse0)
    loss1 = -(0.2 * (0.5 - lse1) + 0.8 * (0.5 - lse1))
    close(masked_cross_entropy(t(z), targets, mask), (loss0 + loss1) / 2)


def test_masked_cross_entropy_label_smoothing_and_class_weight():
    z = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 2.0, 3.0]]
    logp = np_log_softmax(z)
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    mask = [True, False, True]

    smoothed = 0.9 * targets + 0.1 / 3
    expected = -(smoothed[0] * logp[0]).sum() / 2 - (smoothed[2] * logp[2]).sum() / 2
    close(masked_cross_entropy(t(z), t(targets), b(mask), label_smoothing=0.1), expected)

    w = np.array([1.0, 2.0, 3.0])
    expected = (1.0 * -logp[0, 0] + 3.0 * -logp[2, 2]) / (1.0 + 3.0)
    close(masked_cross_entropy(t(z), t(targets), b(mask), class_weight=t(w)), expected)

    # One-hot targets: identical to PyTorch's weighted, smoothed cross-entropy on the kept rows.
    ours = masked_cross_entropy(t(z), t(targets), b(mask), label_smoothing=0.1, class_weight=t(w))
    ref = F.cross_entropy(t(z)[[0, 2]], torch.tensor([0, 2]), weight=t(w), label_smoothing=0.1)
    close(ours, ref)


def test_masked_bce_hand_value_and_pos_weight():
    z = [[1.0, -1.0, 0.5], [2.0, 0.0, -2.0]]
    y = [[1, 0, 1], [0, 1, 0]]
    mask = b([[True, False, True], [False, True, True]])
    expected = (-math.log(sigmoid(1.0)) - math.log(sigmoid(0.5))
                + math.log(2.0) - math.log(1 - sigmoid(-2.0))) / 4
    close(masked_bce(t(z), t(y), mask), expected)

    pos_weight = t([2.0, 3.0, 4.0])
    expected = (2 * -math.log(sigmoid(1.0)) + 4 * -math.log(sigmoid(0.5))
                + 3 * math.log(2.0) - math.log(1 - sigmoid(-2.0))) / 4
    close(masked_bce(t(z), t(y), mask, pos_weight=pos_weight), expected)


def _np_ccc(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return 2 * cov / (x.var() + y.var() + (mx - my) ** 2)


def test_masked_ccc_loss_hand_value():
    pred = [[0.1, 0.5], [0.4, -0.2], [0.3, 0.9], [-0.5, 0.0]]
    target = [[0.0, 0.6], [0.5, -0.1], [0.2, 0.7], [9.0, 9.0]]
    mask = b([[True, True], [True, True], [True, False], [False, False]])
    ccc0 = _np_ccc([0.1, 0.4, 0.3], [0.0, 0.5, 0.2])
    ccc1 = _np_ccc([0.5, -0.2], [0.6, -0.1])
    close(masked_ccc_loss(t(pred), t(target), mask), ((1 - ccc0) + (1 - ccc1)) / 2, tol=1e-6)

    # A dimension with a single annotated sample has no CCC and is left out.
    mask = b([[True, True], [True, False], [True, False], [False, False]])
    close(masked_ccc_loss(t(pred), t(target), mask), 1 - ccc0, tol=1e-6)


def test_masked_mse_hand_value():
    pred = [[0.1, 0.5], [0.4, -0.2]]
    target = [[0.0, 0.6], [0.5, 7.0]]
    mask = b([[True, True], [True, False]])
    expected = (0.1 ** 2 + 0.1 ** 2 + 0.1 ** 2) / 3
    close(masked_mse(t(pred), t(target), mask), expected)


def test_masked_identity_ce_hand_value():
    z = [[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.5, 0.0, 0.0]]
    index = torch.tensor([1, 99, 0])  # 99 is a placeholder on a masked sample: never read
    mask = b([True, False, True])
    lse0 = math.log(math.exp(1) + math.exp(2) + 1)
    lse2 = math.log(math.exp(0.5) + 2)
    expected = ((lse0 - 2.0) + (lse2 - 0.5)) / 2
    close(masked_identity_ce(t(z), index, mask), expected)


def _loss_cases():
    """(name, loss(pred, target, mask), pred, target, mask, target with masked entries changed)."""
    nan = float("nan")
    return [
        ("ce", masked_cross_entropy,
         [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], [[1, 0, 0], [0, 0, 0]], [True, False],
         [[1, 0, 0], [nan, 5.0, -3.0]]),
        ("bce", masked_bce,
         [[1.0, -1.0], [2.0, 0.0]], [[1, 0], [0, 0]], [[True, False], [False, True]],
         [[1, nan], [1, 0]]),
        ("ccc", masked_ccc_loss,
         [[0.1, 0.5], [0.4, -0.2], [0.3, 0.3]], [[0.0, 0.6], [0.5, 0.0], [0.2, 0.1]],
         [[True, True], [True, True], [True, False]],
         [[0.0, 0.6], [0.5, 0.0], [0.2, nan]]),
        ("mse", masked_mse,
         [[0.1, 0.5], [0.4, -0.2]], [[0.0, 0.6], [0.5, 0.0]], [[True, False], [True, True]],
         [[0.0, nan], [0.5, 0.0]]),
    ]


@pytest.mark.parametrize("case", _loss_cases(), ids=lambda c: c[0])
def test_masked_targets_change_neither_loss_nor_gradient(case):
    _, fn, pred, target, mask, other = case
    results = []
    for tgt in (target, other):
        z = t(pred).requires_grad_(True)
        loss = fn(z, t(tgt), b(mask))
        loss.backward()
        results.append((loss.detach(), z.grad.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert torch.isfinite(results[0][1]).all()


def test_masked_predictions_get_zero_gradient():
    z = t([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]).requires_grad_(True)
    masked_cross_entropy(z, t([[1, 0, 0], [0, 1, 0]]), b([True, False])).backward()
    assert torch.equal(z.grad[1], torch.zeros(3, dtype=F64))
    z = t([[1.0, -1.0], [2.0, 0.0]]).requires_grad_(True)
    masked_bce(z, t([[1, 0], [0, 1]]), b([[True, False], [False, True]])).backward()
    assert z.grad[0, 1] == 0 and z.grad[1, 0] == 0


def test_masked_identity_targets_change_neither_loss_nor_gradient():
    grads = []
    for placeholder in (0, 12345):
        z = t([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]).requires_grad_(True)
        loss = masked_identity_ce(z, torch.tensor([1, placeholder]), b([True, False]))
        loss.backward()
        grads.append((loss.detach(), z.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_nothing_annotated_gives_a_connected_zero():
    z2 = t([[1.0, -1.0], [0.3, 0.2]]).requires_grad_(True)
    cases = [
        masked_cross_entropy(z2, t([[1, 0], [0, 1]]), b([False, False])),
        masked_cross_entropy(z2, t([[1, 0], [0, 1]]), b([False, False]), class_weight=t([1, 2])),
        masked_bce(z2, t([[1, 0], [0, 1]]), torch.zeros(2, 2, dtype=torch.bool)),
        masked_ccc_loss(z2, t([[1, 0], [0, 1]]), torch.zeros(2, 2, dtype=torch.bool)),
        masked_mse(z2, t([[1, 0], [0, 1]]), torch.zeros(2, 2, dtype=torch.bool)),
        masked_identity_ce(z2, torch.tensor([0, 1]), b([False, False])),
    ]
    for loss in cases:
        assert loss.item() == 0.0
        assert loss.requires_grad
        (grad,) = torch.autograd.grad(loss, z2)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_task_loss_dispatches_on_kind():
    z = t([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    expr = Task("expr", "multiclass", ("a", "b", "c"))
    au = Task("au", "multilabel", ("x", "y", "z"))
    va = Task("va", "regression", ("valence", "arousal", "dominance"))
    ident = Task("id", "identity", ("p0", "p1", "p2"))
    y = t([[1, 0, 0], [0, 1, 0]])
    m1 = b([True, True])
    m2 = torch.ones(2, 3, dtype=torch.bool)
    close(task_loss(expr, z, y, m1, label_smoothing=0.1),
          masked_cross_entropy(z, y, m1, label_smoothing=0.1))
    close(task_loss(au, z, y, m2), masked_bce(z, y, m2))
    close(task_loss(va, z, y, m2), masked_ccc_loss(z, y, m2))
    close(task_loss(va, z, y, m2, loss="mse"), masked_mse(z, y, m2))
    index = torch.tensor([0, 1])
    close(task_loss(ident, z, index, m1), masked_identity_ce(z, index, m1))

    with pytest.raises(DistmtlError, match="option 'pos_wieght'.*did you mean: pos_weight"):
        task_loss(au, z, y, m2, pos_wieght=t([1, 1, 1]))
    with pytest.raises(DistmtlError, match="unknown regression loss 'mae'"):
        task_loss(va, z, y, m2, loss="mae")
    with pytest.raises(DistmtlError, match=r"expected output \[batch, 3\]"):
        task_loss(expr, z[:, :2], y, m1)


# =========================================================================== co-annotation


def test_soft_a_to_b_hand_value():
    z_b = [[0.3, -0.2, 1.0], [0.0, 0.5, -1.0], [2.0, 2.0, 2.0]]
    targets_a = t([[1, 0, 0], [0.5, 0.5, 0], [0, 0, 0]])
    mask_a = b([True, True, False])
    mask_b = b([[True, False, False], [False, False, False], [False, False, False]])
    # Sample 0 (class 0): t = R[0] = [1, .5, 0]; label 0 is annotated, so labels 1 and 2.
    # Sample 1 (.5/.5): t = .5 R[0] + .5 R[1] = [.5, .75, .125]; all three labels.
    # Sample 2 has no A label: nothing.
    expected = (bce(-0.2, 0.5) + bce(1.0, 0.0)
                + bce(0.0, 0.5) + bce(0.5, 0.75) + bce(-1.0, 0.125)) / 5
    close(coannotation_a_to_b_soft(t(z_b), targets_a, mask_a, mask_b, t(R)), expected)


def test_soft_b_to_a_hand_value_and_temperature():
    z_a = [[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [0.2, 0.1, 0.0], [-0.5, 0.5, 0.0]]
    targets_b = t([[1, 0, 0], [1, 1, 1], [0, 0, 0], [0, 1, 1]])
    mask_b = b([[True, False, True], [True, True, True], [False, False, False],
                [True, True, True]])
    mask_a = b([False, True, False, False])
    table = NaiveBayesTable.from_relatedness(t(R), t(PRIOR), eps=0.05)
    # Sample 0: b_0 = 1, b_2 = 0 on M = {0, 2}: pi_k R~[k,0] (1 - R~[k,2]).
    s0 = np.array([0.5 * 0.95 * 0.95, 0.3 * 0.05 * 0.75, 0.2 * 0.05 * 0.95])
    # Sample 3: b = (0, 1, 1), all annotated.
    s3 = np.array([0.5 * 0.05 * 0.5 * 0.05, 0.3 * 0.95 * 0.95 * 0.25, 0.2 * 0.95 * 0.05 * 0.05])
    # Sample 1 has an A label and sample 2 no B label: neither contributes.
    logp = np_log_softmax(z_a)
    for temperature in (1.0, 2.0):
        terms = []
        for s, row in ((s0, 0), (s3, 3)):
            s = s ** (1 / temperature)
            s = s / s.sum()
            terms.append(-(s * logp[row]).sum())
        got = coannotation_b_to_a_soft(t(z_a), targets_b, mask_b, mask_a, table, temperature)
        close(got, np.mean(terms))


def _brute_force_posterior(values, mask, r_tilde, prior):
    """p(a = k | the annotated labels), marginalising the unannotated ones by enumeration."""
    r_tilde = np.asarray(r_tilde)
    num_classes, num_labels = r_tilde.shape
    out = []
    for row, row_mask in zip(values, mask):
        joint = np.zeros(num_classes)
        for full in itertools.product((0, 1), repeat=num_labels):
            if any(m and full[j] != row[j] for j, m in enumerate(row_mask)):
                continue
            for k in range(num_classes):
                p = prior[k]
                for j in range(num_labels):
                    p *= r_tilde[k, j] if full[j] else 1 - r_tilde[k, j]
                joint[k] += p
        out.append(joint / joint.sum())
    return np.array(out)


def test_b_to_a_posterior_equals_enumeration():
    rng = np.random.default_rng(0)
    r_tilde = rng.uniform(0.05, 0.95, size=(3, 4))
    prior = np.array([0.2, 0.5, 0.3])
    values = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])
    mask = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]], bool)
    expected = _brute_force_posterior(values, mask, r_tilde, prior)
    # Masked entries hold a placeholder that must not be read.
    placeholder = np.where(mask, values, 1 - values)
    got = b_to_a_posterior(t(placeholder.tolist()), torch.tensor(mask), t(r_tilde.tolist()),
                           t(np.log(prior).tolist()))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[-1].numpy(), prior, rtol=1e-10)  # nothing annotated: prior


def test_b_to_a_posterior_soft_values_by_enumeration():
    """Soft b (e.g. predicted probabilities): exp of the expected log-likelihood, tempered."""
    rng = np.random.default_rng(1)
    r_tilde = rng.uniform(0.05, 0.95, size=(4, 3))
    probs = rng.uniform(0, 1, size=(2, 3))
    temperature = 0.7
    expected = []
    for p in probs:
        expected_ll = np.zeros(4)
        for full in itertools.product((0, 1), repeat=3):
            weight = np.prod([p[j] if full[j] else 1 - p[j] for j in range(3)])
            for k in range(4):
                expected_ll[k] += weight * sum(
                    math.log(r_tilde[k, j] if full[j] else 1 - r_tilde[k, j]) for j in range(3)
                )
        s = np.exp(expected_ll / temperature)
        expected.append(s / s.sum())
    got = b_to_a_posterior(t(probs.tolist()), None, t(r_tilde.tolist()), None, temperature)
    np.testing.assert_allclose(got.numpy(), np.array(expected), rtol=1e-10)


def test_hard_a_to_b_targets():
    rows = t([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0, 0]])
    # the specification's form (default): target 1 where R = 1, nothing else
    values, has = hard_a_to_b_targets(rows, t(R))
    assert has.tolist() == [[True, False, False], [False, True, False], [False, False, False],
                            [False, False, False], [False, False, False], [False, False, False]]
    assert (values * has).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0],
                                       [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    # the full form also trains 0 where R = 0:
    # class 0: R = [1, .5, 0] -> (1, none, 0); class 1: [0, 1, .25] -> (0, 1, none);
    # class 2 (Neutral, zeros) -> (0, 0, 0); classes 0+1 agree nowhere; classes 0+2 agree on
    # label 2 (0); an all-zero row (no A label) gets nothing.
    values, has = hard_a_to_b_targets(rows, t(R), targets="full")
    assert has.tolist() == [[True, False, True], [True, True, False], [True, True, True],
                            [False, False, False], [False, False, True], [False, False, False]]
    assert (values * has).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0],
                                       [0, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_hard_threshold_makes_an_estimated_table_usable():
    estimated = t([[0.96, 0.5, 0.02], [0.03, 0.93, 0.25], [0.01, 0.02, 0.04]])  # no exact 1 or 0
    rows = t([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    _, has = hard_a_to_b_targets(rows, estimated)
    assert not has.any()  # threshold 1: nothing
    values, has = hard_a_to_b_targets(rows, estimated, threshold=0.9)
    assert has.tolist() == [[True, False, False], [False, True, False], [False, False, False]]
    _, has = hard_a_to_b_targets(rows, estimated, threshold=0.9, targets="full")
    assert has.tolist() == [[True, False, True], [True, True, False], [True, True, True]]
    index, has = hard_b_to_a_targets(t([[1, 0, 0], [0, 1, 0]]), b([[True] * 3] * 2), estimated, 0.9)
    assert has.tolist() == [True, True] and index.tolist() == [0, 1]


def test_hard_a_to_b_loss_hand_value():
    z_b = [[0.3, -0.2, 1.0], [0.0, 0.5, -1.0], [2.0, 2.0, 2.0]]
    targets_a = t([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    mask_a = b([True, True, False])
    mask_b = b([[True, False, False], [False, False, False], [False, False, False]])
    # Sample 0 (class 0): label 0 annotated, label 1 has 0 < R < 1, label 2 (R = 0) -> 0 in the
    # full form only. Sample 1 (class 1): label 0 (R = 0) -> 0 in the full form, label 1 -> 1,
    # label 2 has R = .25: none.
    close(coannotation_a_to_b_hard(t(z_b), targets_a, mask_a, mask_b, t(R)), bce(0.5, 1))
    expected = (bce(1.0, 0) + bce(0.0, 0) + bce(0.5, 1)) / 3
    close(coannotation_a_to_b_hard(t(z_b), targets_a, mask_a, mask_b, t(R), targets="full"), expected)


R_PROTO = [
    [1.0, 1.0, 0.3, 0.0],  # class 0: prototypical {0, 1}
    [1.0, 1.0, 1.0, 0.0],  # class 1: prototypical {0, 1, 2}
    [0.0, 0.4, 0.0, 1.0],  # class 2: prototypical {3}
    [0.0, 0.0, 0.0, 0.0],  # class 3: Neutral, no prototypical label
    [0.0, 1.0, 0.0, 1.0],  # class 4: prototypical {1, 3}
]
HARD_B = [  # (values, mask, expected class or None)
    ([1, 1, 0, 0], [1, 1, 1, 1], 0),     # only class 0 complete
    ([1, 1, 1, 0], [1, 1, 1, 1], 1),     # classes 0 and 1 complete: 1 has more prototypical
    ([1, 1, 0, 1], [1, 1, 1, 1], None),  # classes 0 and 4 tie at 2 (class 2 has fewer)
    ([0, 0, 0, 0], [1, 1, 1, 1], None),  # Neutral is never assigned
    ([1, 1, 0, 0], [1, 0, 1, 1], None),  # class 0's label 1 not annotated
    ([0, 0, 0, 1], [1, 1, 1, 1], 2),
    ([1, 1, 1, 1], [1, 1, 0, 0], 0),     # masked labels 2 and 3 (placeholder 1) are not read
]


def test_hard_b_to_a_targets():
    values = t([row[0] for row in HARD_B])
    mask = torch.tensor([row[1] for row in HARD_B], dtype=torch.bool)
    index, has = hard_b_to_a_targets(values, mask, t(R_PROTO))
    assert has.tolist() == [row[2] is not None for row in HARD_B]
    assert [i if h else None for i, h in zip(index.tolist(), has.tolist())] == [
        row[2] for row in HARD_B
    ]


def test_hard_b_to_a_loss_hand_value():
    values = t([row[0] for row in HARD_B])
    mask_b = torch.tensor([row[1] for row in HARD_B], dtype=torch.bool)
    rng = np.random.default_rng(2)
    z_a = rng.normal(size=(len(HARD_B), 5))
    mask_a = b([False, True, False, False, False, False, False])  # sample 1 has an A label
    logp = np_log_softmax(z_a)
    # Pseudo-labelled and without an A label: sample 0 -> 0, sample 5 -> 2, sample 6 -> 0.
    expected = -(logp[0, 0] + logp[5, 2] + logp[6, 0]) / 3
    got = coannotation_b_to_a_hard(t(z_a.tolist()), values, mask_b, mask_a, t(R_PROTO))
    close(got, expected)


def test_coannotation_without_candidates_is_a_connected_zero():
    z_a = t([[1.0, 0.0, -1.0]]).requires_grad_(True)
    z_b = t([[0.3, -0.2, 1.0]]).requires_grad_(True)
    table = NaiveBayesTable.from_relatedness(t(R))
    full_b = torch.ones(1, 3, dtype=torch.bool)
    losses = [
        coannotation_a_to_b_soft(z_b, t([[1, 0, 0]]), b([True]), full_b, t(R)),  # B annotated
        coannotation_a_to_b_hard(z_b, t([[0, 0, 0]]), b([False]), ~full_b, t(R)),  # no A label
        coannotation_b_to_a_soft(z_a, t([[1, 0, 0]]), ~full_b, b([False]), table),  # no B label
        coannotation_b_to_a_hard(z_a, t([[1, 1, 1]]), full_b, b([True]), t(R)),  # A annotated
    ]
    for loss in losses:
        assert loss.item() == 0.0 and loss.requires_grad


def test_coannotation_ignores_masked_targets():
    z_a = t([[1.0, 0.0, -1.0], [0.2, 0.1, 0.0]])
    z_b = t([[0.3, -0.2, 1.0], [0.0, 0.5, -1.0]])
    table = NaiveBayesTable.from_relatedness(t(R), t(PRIOR))
    mask_a = b([True, False])
    mask_b = b([[True, False, False], [True, True, False]])
    ya, ya2 = t([[1, 0, 0], [0, 0, 0]]), t([[1, 0, 0], [0.3, 0.3, float("nan")]])
    yb, yb2 = t([[1, 0, 0], [0, 1, 0]]), t([[1, 7, float("nan")], [0, 1, 1]])
    for a_to_b in (coannotation_a_to_b_soft, coannotation_a_to_b_hard):
        assert torch.equal(a_to_b(z_b, ya, mask_a, mask_b, t(R)),
                           a_to_b(z_b, ya2, mask_a, mask_b, t(R)))
    assert torch.equal(coannotation_b_to_a_soft(z_a, yb, mask_b, mask_a, table),
                       coannotation_b_to_a_soft(z_a, yb2, mask_b, mask_a, table))
    assert torch.equal(coannotation_b_to_a_hard(z_a, yb, mask_b, mask_a, t(R)),
                       coannotation_b_to_a_hard(z_a, yb2, mask_b, mask_a, t(R)))


# =========================================================================== distribution matching

Z_A = [[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]]
Z_B = [[0.5, -0.5, 0.0], [1.0, 1.0, -1.0]]


def _np_q_and_pb():
    q = np.clip(np_softmax(Z_A) @ np.array(R), 1e-6, 1 - 1e-6)
    pb = 1 / (1 + np.exp(-np.array(Z_B)))
    return q, pb


def test_dm_a_to_b_forms_hand_values():
    q, pb = _np_q_and_pb()
    paper = -(pb * np.log(q)).sum(1)
    bce_form = -(pb * np.log(q) + (1 - pb) * np.log(1 - q)).sum(1)
    kl = (pb * np.log(pb / q) + (1 - pb) * np.log((1 - pb) / (1 - q))).sum(1)
    for form, per_sample in (("paper", paper), ("bce", bce_form), ("kl", kl)):
        close(dm_a_to_b(t(Z_A), t(Z_B), t(R), form), per_sample.mean())
        close(dm_a_to_b(t(Z_A), t(Z_B), t(R), form, label_reduction="mean"), per_sample.mean() / 3)
        close(dm_a_to_b(t(Z_A), t(Z_B), t(R), form, sample_mask=b([False, True])), per_sample[1])
        close(dm_a_to_b(t(Z_A), t(Z_B), t(R), form, stop_gradient=False), per_sample.mean())


def test_dm_a_to_b_clamps_q_before_logs():
    r_zero = [[1.0, 0.0], [0.5, 0.0]]  # label 1 never occurs: q_1 = 0, clamped to eps_num
    z_a, z_b = [[0.0, 0.0]], [[0.0, 0.0]]
    q = np.array([0.75, 1e-3])
    expected = -(0.5 * math.log(q[0]) + 0.5 * math.log(q[1]))
    got = dm_a_to_b(t(z_a), t(z_b), t(r_zero), "paper", eps_num=1e-3)
    close(got, expected)
    assert torch.isfinite(got)


def test_dm_b_to_a_forms_hand_values():
    pb = 1 / (1 + np.exp(-np.array(Z_B)))
    log_rt, log_1mrt = np.log(np.array(R_TILDE)), np.log(1 - np.array(R_TILDE))
    logits = np.log(PRIOR) + pb @ log_rt.T + (1 - pb) @ log_1mrt.T
    q = np_softmax(logits)
    logp = np_log_softmax(Z_A)
    ce = -(q * logp).sum(1)
    kl = (q * (np.log(q) - logp)).sum(1)
    table = NaiveBayesTable.from_relatedness(t(R), t(PRIOR), eps=0.05)
    close(dm_b_to_a(t(Z_A), t(Z_B), table, "ce"), ce.mean())
    close(dm_b_to_a(t(Z_A), t(Z_B), table, "kl"), kl.mean())
    close(dm_b_to_a(t(Z_A), t(Z_B), table, "kl", sample_mask=b([True, False])), kl[0])


def _heads(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(6, 4)
    return x, nn.Linear(4, 3), nn.Linear(4, 3)


def _grads(loss_fn, stop_gradient):
    x, head_a, head_b = _heads()
    z_a, z_b = head_a(x), head_b(x)
    # The zero-weighted term gives both heads a .grad tensor, so "no gradient" reads as zeros.
    loss = loss_fn(z_a, z_b, stop_gradient) + 0.0 * (z_a.sum() + z_b.sum())
    loss.backward()
    flat = lambda head: torch.cat([p.grad.flatten() for p in head.parameters()])
    return flat(head_a), flat(head_b)


@pytest.mark.parametrize("form", ["paper", "bce", "kl"])
def test_dm_a_to_b_stop_gradient_detaches_the_a_head(form):
    rel = torch.tensor(R)
    fn = lambda za, zb, stop: dm_a_to_b(za, zb, rel, form, stop_gradient=stop)
    grad_a, grad_b = _grads(fn, stop_gradient=True)
    assert torch.equal(grad_a, torch.zeros_like(grad_a))
    assert grad_b.abs().sum() > 0
    grad_a, grad_b = _grads(fn, stop_gradient=False)
    assert grad_a.abs().sum() > 0 and grad_b.abs().sum() > 0


@pytest.mark.parametrize("form", ["ce", "kl"])
def test_dm_b_to_a_stop_gradient_detaches_the_b_head(form):
    table = NaiveBayesTable.from_relatedness(torch.tensor(R), torch.tensor(PRIOR))
    fn = lambda za, zb, stop: dm_b_to_a(za, zb, table, form, stop_gradient=stop)
    grad_a, grad_b = _grads(fn, stop_gradient=True)
    assert torch.equal(grad_b, torch.zeros_like(grad_b))
    assert grad_a.abs().sum() > 0
    grad_a, grad_b = _grads(fn, stop_gradient=False)
    assert grad_a.abs().sum() > 0 and grad_b.abs().sum() > 0


def test_dm_a_to_b_kl_is_zero_when_predictions_agree():
    q, _ = _np_q_and_pb()
    z_b = t(np.log(q / (1 - q)).tolist()).requires_grad_(True)  # p^B = q
    loss = dm_a_to_b(t(Z_A), z_b, t(R), "kl")
    assert abs(loss.item()) < 1e-12
    (grad,) = torch.autograd.grad(loss, z_b)
    assert grad.abs().max() < 1e-12


def test_dm_b_to_a_is_minimal_when_predictions_agree():
    pb = 1 / (1 + np.exp(-np.array(Z_B)))
    logits = (np.log(PRIOR) + pb @ np.log(np.array(R_TILDE)).T
              + (1 - pb) @ np.log(1 - np.array(R_TILDE)).T)
    q = np_softmax(logits)
    table = NaiveBayesTable.from_relatedness(t(R), t(PRIOR))
    z_a = t(np.log(q).tolist()).requires_grad_(True)  # p^A = q^A
    kl = dm_b_to_a(z_a, t(Z_B), table, "kl")
    assert abs(kl.item()) < 1e-12
    ce = dm_b_to_a(z_a, t(Z_B), table, "ce")
    close(ce, -(q * np.log(q)).sum(1).mean())  # the entropy of q^A: CE's minimum
    (grad,) = torch.autograd.grad(ce, z_a)
    assert grad.abs().max() < 1e-12


def test_dm_a_to_b_paper_form_pushes_every_label_down():
    """The "paper" form is linear in p^B with slopes -log q_j >= 0 (see the module docstring)."""
    q, pb = _np_q_and_pb()
    z_b = t(Z_B).requires_grad_(True)
    (grad,) = torch.autograd.grad(dm_a_to_b(t(Z_A), z_b, t(R), "paper"), z_b)
    expected = -np.log(q) * pb * (1 - pb) / 2  # d/dz of -p log q, averaged over 2 samples
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-10)
    assert (grad >= 0).all()


def test_dm_unknown_form_is_an_error():
    table = NaiveBayesTable.from_relatedness(t(R))
    with pytest.raises(DistmtlError, match=r"unknown form 'klx' \(did you mean: kl\?\)"):
        dm_a_to_b(t(Z_A), t(Z_B), t(R), "klx")
    with pytest.raises(DistmtlError, match="unknown form 'paper'; expected one of ce, kl"):
        dm_b_to_a(t(Z_A), t(Z_B), table, "paper")
