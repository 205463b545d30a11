import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from distmtl.errors import DistmtlError
from distmtl.evaluation.metrics import (
    PRIMARY_METRIC,
    abaw_mtl_score,
    calibrate_thresholds,
    concordance_cc,
    format_metrics_table,
    primary_metric,
    task_metrics,
    verification_metrics,
)
from distmtl.tasks import Task, au_task, expression_task, va_task


def _soft_rows(labels: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Probability rows whose argmax is ``labels`` (soft, not one-hot)."""
    rows = torch.rand(len(labels), k, generator=gen) * 0.3
    rows[torch.arange(len(labels)), labels] = 1.0
    return rows / rows.sum(dim=1, keepdim=True)


def test_primary_metric_per_kind():
    assert primary_metric(expression_task()) == "macro_f1"
    assert primary_metric(au_task()) == "mean_f1"
    assert primary_metric(va_task()) == "mean_ccc"
    assert primary_metric(Task("id", "identity", ("a", "b"))) == "verification_accuracy"
    assert set(PRIMARY_METRIC) == {"multiclass", "multilabel", "regression", "identity"}


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_matches_sklearn_with_mask_and_absent_class(seed):
    gen = torch.Generator().manual_seed(seed)
    task = expression_task()  # 7 classes
    n, k = 200, task.num_outputs
    # class 6 never occurs in the targets; class 5 occurs only on masked-out samples
    labels = torch.randint(0, 5, (n,), generator=gen)
    masks = torch.rand(n, generator=gen) < 0.7
    labels[~masks] = 5
    logits = torch.randn(n, k, generator=gen)
    # predictions include class 6 (never true) for a few samples; class 5 is never predicted
    logits[:, 5] = -10
    logits[:10, 6] = 10
    out = task_metrics(task, logits, _soft_rows(labels, k, gen), masks)

    y_true = labels[masks].numpy()
    y_pred = logits[masks].argmax(1).numpy()
    assert 6 in y_pred and 6 not in y_true and 5 not in y_true and 5 not in y_pred
    assert out["n"] == int(masks.sum())
    assert out["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert out["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert out["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(k)).tolist()


def test_multiclass_macro_f1_hand_computed():
    task = Task("e", "multiclass", ("a", "b", "c"))
    # true: a a b b ; pred: a b b b ; class c absent everywhere -> excluded
    targets = torch.eye(3)[[0, 0, 1, 1]]
    logits = torch.eye(3)[[0, 1, 1, 1]] * 5
    out = task_metrics(task, logits, targets, torch.ones(4, dtype=torch.bool))
    f1_a, f1_b = 2 * 1 / (2 * 1 + 0 + 1), 2 * 2 / (2 * 2 + 1 + 0)
    assert out["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert out["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_multiclass_nothing_annotated():
    task = Task("e", "multiclass", ("a", "b"))
    out = task_metrics(task, torch.randn(3, 2), torch.eye(2)[[0, 1, 0]], torch.zeros(3, dtype=bool))
    assert out["n"] == 0 and out["macro_f1"] is None and out["accuracy"] is None


def test_multilabel_matches_sklearn_per_label_with_masks():
    gen = torch.Generator().manual_seed(3)
    task = Task("au", "multilabel", ("AU01", "AU02", "AU04", "AU06"))
    n = 150
    logits = torch.randn(n, 4, generator=gen)
    targets = (torch.rand(n, 4, generator=gen) < 0.4).float()
    masks = torch.rand(n, 4, generator=gen) < 0.6
    masks[:, 2] = False  # AU04 never annotated
    out = task_metrics(task, logits, targets, masks)

    assert out["f1"]["AU04"] is None and out["accuracy"]["AU04"] is None and out["n"]["AU04"] == 0
    expected_f1, expected_acc = [], []
    for j, label in enumerate(task.labels):
        if j == 2:
            continue
        m = masks[:, j]
        y_true = targets[m, j].numpy().astype(int)
        y_pred = (torch.sigmoid(logits[m, j]) > 0.5).numpy().astype(int)
        expected_f1.append(f1_score(y_true, y_pred, zero_division=0))
        expected_acc.append(accuracy_score(y_true, y_pred))
        assert out["f1"][label] == pytest.approx(expected_f1[-1])
        assert out["accuracy"][label] == pytest.approx(expected_acc[-1])
        assert out["n"][label] == int(m.sum())
    assert out["mean_f1"] == pytest.approx(np.mean(expected_f1))
    assert out["mean_accuracy"] == pytest.approx(np.mean(expected_acc))


def test_multilabel_per_label_thresholds_change_predictions():
    task = Task("au", "multilabel", ("x", "y"))
    probs = torch.tensor([[0.3, 0.3], [0.7, 0.7], [0.35, 0.35]])
    logits = torch.logit(probs)
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    masks = torch.ones(3, 2, dtype=torch.bool)
    default = task_metrics(task, logits, targets, masks)
    assert default["f1"]["x"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))  # tp=1, fn=2
    tuned = task_metrics(task, logits, targets, masks, thresholds=torch.tensor([0.25, 0.5]))
    assert tuned["f1"]["x"] == pytest.approx(1.0)
    assert tuned["f1"]["y"] == pytest.approx(1.0)
    with pytest.raises(DistmtlError):
        task_metrics(task, logits, targets, masks, thresholds=torch.tensor([0.5]))


def test_ccc_hand_computed():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([2.0, 2.0, 4.0, 4.0])
    # population moments: mx=2.5, my=3, vx=1.25, vy=1, cov=1
    expected = 2 * 1.0 / (1.25 + 1.0 + 0.25)
    assert concordance_cc(x, y) == pytest.approx(expected)  # 0.8
    assert concordance_cc(x, x) == pytest.approx(1.0)
    c = x - x.mean()
    assert concordance_cc(c, -c) == pytest.approx(-1.0)
    assert concordance_cc(x[:1], y[:1]) is None


def test_regression_metrics_masked_per_dimension():
    task = va_task()
    outputs = torch.tensor([[1.0, 9.0], [2.0, 0.0], [3.0, 0.5], [4.0, 0.1], [9.0, 0.2]])
    targets = torch.tensor([[2.0, 0.0], [2.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 0.0]])
    masks = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0], [0, 0]], dtype=torch.bool)
    out = task_metrics(task, outputs, targets, masks)
    assert out["ccc"]["valence"] == pytest.approx(0.8)
    assert out["ccc"]["arousal"] is None
    assert out["mean_ccc"] == pytest.approx(0.8)
    assert out["mse"]["valence"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert out["n"] == {"valence": 4, "arousal": 0}


def test_identity_accuracy_closed_set_only():
    task = Task("id", "identity", ("p0", "p1", "p2"))
    logits = torch.eye(3)[[0, 1, 2, 0, 1]] * 4
    targets = torch.tensor([0, 1, 0, 7, -1])  # 7 and -1 are not training identities
    masks = torch.tensor([True, True, True, True, False])
    out = task_metrics(task, logits, targets, masks)
    assert out == {"accuracy": pytest.approx(2 / 3), "n": 3}


def test_shape_errors_name_the_task():
    with pytest.raises(DistmtlError, match="expression"):
        task_metrics(expression_task(), torch.randn(4, 3), torch.zeros(4, 3), torch.ones(4))


def test_abaw_score_sums_terms():
    metrics = {
        "expression": {"macro_f1": 0.4},
        "au": {"mean_f1": 0.5},
        "va": {"ccc": {"valence": 0.6, "arousal": 0.2}, "mean_ccc": 0.4},
    }
    score = abaw_mtl_score(metrics, expression_task(), au_task(), "va")
    assert score == pytest.approx(0.4 + 0.4 + 0.5)
    metrics["au"]["mean_f1"] = None
    with pytest.raises(DistmtlError, match="mean_f1"):
        abaw_mtl_score(metrics, "expression", "au", "va")


def test_calibrate_thresholds_finds_known_best():
    # label 0: positives have prob 0.62..0.70, negatives 0.40..0.58 -> only thresholds in
    # [0.58, 0.62) separate them, and the grid point 0.6 is the unique F1 = 1 choice
    pos = torch.linspace(0.62, 0.70, 20)
    neg = torch.linspace(0.40, 0.58, 30)
    col0 = torch.cat([pos, neg])
    y0 = torch.cat([torch.ones(20), torch.zeros(30)])
    # label 1: annotated but no positives -> 0.5; label 2: positives only where masked out -> 0.5
    probs = torch.stack([col0, torch.rand(50), torch.rand(50)], dim=1)
    targets = torch.stack([y0, torch.zeros(50), torch.ones(50)], dim=1)
    masks = torch.ones(50, 3, dtype=torch.bool)
    masks[:, 2] = False
    thresholds = calibrate_thresholds(probs, targets, masks)
    assert thresholds.tolist() == pytest.approx([0.6, 0.5, 0.5])
    task = Task("au", "multilabel", ("a", "b", "c"))
    tuned = task_metrics(task, torch.logit(probs), targets, masks, thresholds=thresholds)
    assert tuned["f1"]["a"] == pytest.approx(1.0)
    assert task_metrics(task, torch.logit(probs), targets, masks)["f1"]["a"] < 1.0


def _pairs(same_cluster: bool, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.eye(8)[:2] * 10
    ida = torch.randint(0, 2, (n,), generator=gen)
    idb = ida if same_cluster else 1 - ida
    noise_a, noise_b = (torch.randn(n, 8, generator=gen) * 0.5 for _ in range(2))
    return centres[ida] + noise_a, centres[idb] + noise_b


def test_verification_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    a1, b1 = _pairs(True, 100, gen)
    a2, b2 = _pairs(False, 100, gen)
    same = np.array([True] * 100 + [False] * 100)
    out = verification_metrics(torch.cat([a1, a2]), torch.cat([b1, b2]), same)
    assert out["roc_auc"] == pytest.approx(1.0)
    assert out["accuracy"] >= 0.99
    assert out["tar_at_far_1e-3"] == pytest.approx(1.0)
    assert out["n_pairs"] == 200


def test_verification_random_embeddings_near_chance_and_matches_sklearn():
    gen = torch.Generator().manual_seed(1)
    n = 2000
    a, b = torch.randn(n, 16, generator=gen), torch.randn(n, 16, generator=gen)
    same = (torch.rand(n, generator=gen) < 0.5).numpy()
    out = verification_metrics(a, b, same)
    scores = torch.nn.functional.cosine_similarity(a.double(), b.double()).numpy()
    assert out["roc_auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-6)
    assert abs(out["roc_auc"] - 0.5) < 0.05
    assert abs(out["accuracy"] - 0.5) < 0.06
    fpr, tpr, _ = roc_curve(same, scores)
    assert out["tar_at_far_1e-3"] == pytest.approx(tpr[fpr <= 1e-3].max())
    assert out["accuracy_std"] >= 0.0


def _pairs_with_similarities(sims: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.tensor(sims, dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(len(sims), 2)
    return a, torch.stack([s, (1 - s**2).sqrt()], dim=1)


def test_verification_ten_fold_accuracy_hand_computed():
    # 20 pairs in given order (seed=None) -> folds of 2 consecutive pairs. Same pairs score 0.9,
    # different pairs 0.1, except fold 0, whose two pairs have swapped scores: the threshold
    # learnt on the other folds separates 0.1 from 0.9, so fold 0 scores 0 and the others 1.
    same = np.array([True, False] * 10)
    sims = [0.9 if s else 0.1 for s in same]
    sims[0], sims[1] = 0.1, 0.9
    a, b = _pairs_with_similarities(sims)
    out = verification_metrics(a, b, same, seed=None)
    assert out["accuracy"] == pytest.approx(0.9)
    assert out["accuracy_std"] == pytest.approx(math.sqrt(0.1))  # sample std of [0, 1 x 9]
    assert 0.1 < out["threshold"] <= 0.9
    with pytest.raises(DistmtlError, match="folds"):
        verification_metrics(a[:5], b[:5], same[:5])


def test_format_metrics_table_lists_tasks():
    tasks = [expression_task(), au_task("au", ("AU01", "AU02")), va_task()]
    metrics = {
        "expression": {"accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.3,
                       "confusion_matrix": [[1]], "n": 10},
        "au": {"f1": {"AU01": 0.5, "AU02": None}, "mean_f1": 0.5, "n": {"AU01": 3, "AU02": 0}},
    }
    text = format_metrics_table(metrics, tasks)
    assert "expression" in text and "macro_f1" in text and "0.3000" in text
    assert "AU01=0.5000" in text and "AU02=-" in text
    assert "not evaluated" in text.splitlines()[-1] and text.splitlines()[-1].startswith("va")
