"""Verification pairs and metrics: drawing balanced pairs from identity groups, scoring them in
``metrics_from_outputs``, and LFW's pair-list format."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from distmtl.errors import DistmtlError
from distmtl.tasks import Task
from distmtl.training.module import metrics_from_outputs
from distmtl.evaluation.verification import (
    PairLine,
    PairResolver,
    pair_folds,
    read_pairs_file,
    verification_metrics,
    verification_pairs,
    write_pairs_file,
)

FIXTURES = Path(__file__).parent / "fixtures"


def test_verification_pairs_are_balanced_distinct_and_deterministic():
    rng = np.random.default_rng(3)
    groups = rng.integers(-1, 40, 500)
    a, b, same = verification_pairs(groups, n_pairs=600, seed=7)
    assert len(same) == 600 and same.sum() == 300
    assert (a < b).all()  # never a sample with itself
    assert (groups[a] >= 0).all() and (groups[b] >= 0).all()
    np.testing.assert_array_equal(same, groups[a] == groups[b])
    assert len(set(zip(a.tolist(), b.tolist()))) == 600
    folds = same.reshape(10, 60)  # LFW layout: each fold its same pairs, then its different ones
    assert (folds[:, :30]).all() and not folds[:, 30:].any()
    again = verification_pairs(groups, n_pairs=600, seed=7)
    for x, y in zip((a, b, same), again):
        np.testing.assert_array_equal(x, y)
    other = verification_pairs(groups, n_pairs=600, seed=8)
    assert set(zip(a.tolist(), b.tolist())) != set(zip(other[0].tolist(), other[1].tolist()))


def test_verification_pairs_take_all_there_are_when_the_data_is_small():
    groups = np.array([4, 4, 4, -1, 9, 9, 2])  # same pairs: (0,1) (0,2) (1,2) (4,5)
    a, b, same = verification_pairs(groups, n_pairs=3000, seed=0)
    assert sorted(zip(a[same].tolist(), b[same].tolist())) == [(0, 1), (0, 2), (1, 2), (4, 5)]
    assert (~same).sum() == 4 and (groups[a[~same]] != groups[b[~same]]).all()
    # more same pairs than folds: rounded down to a multiple of 10 per kind
    assert len(verification_pairs(np.repeat(np.arange(3), 6), n_pairs=3000)[2]) == 2 * 40


def test_verification_pairs_errors():
    with pytest.raises(DistmtlError, match="no identity has two or more samples"):
        verification_pairs([0, 1, 2, -1])
    with pytest.raises(DistmtlError, match="all 3 samples have one identity"):
        verification_pairs([5, 5, -1, 5])
    with pytest.raises(DistmtlError, match="only 1 same-identity pair"):
        verification_pairs([0, 0, 1, 2])


def test_verification_metrics_in_metrics_from_outputs_match_sklearn():
    gen = torch.Generator().manual_seed(0)
    groups = torch.arange(8).repeat_interleave(5)
    centres = torch.randn(8, 16, generator=gen)
    features = centres[groups] + 1.2 * torch.randn(40, 16, generator=gen)
    embeddings = F.normalize(features, dim=1)
    task = Task("identity", "identity", ("p0", "p1", "p2"))
    targets = torch.where(groups < 3, groups, 0)
    masks = groups < 3
    logits = torch.randn(40, 3, generator=gen)
    collected = {"identity": (logits, targets, masks, embeddings, groups)}
    metrics = metrics_from_outputs({"identity": task}, collected, n_pairs=100, pairs_seed=5)["identity"]

    a, b, same = verification_pairs(groups, n_pairs=100, seed=5)
    scores = (features[a] * features[b]).sum(1) / (features[a].norm(dim=1) * features[b].norm(dim=1))
    assert metrics["verification_pairs"] == 100
    assert metrics["verification_roc_auc"] == pytest.approx(roc_auc_score(same, scores.numpy()), abs=1e-6)
    assert 0.5 < metrics["verification_roc_auc"] < 1.0  # neither chance nor trivially separated
    expected = verification_metrics(features[a], features[b], same, n_folds=10, seed=None)
    assert metrics["verification_accuracy"] == pytest.approx(expected["accuracy"])
    closed = logits[masks].argmax(1) == targets[masks]
    assert metrics["accuracy"] == pytest.approx(float(closed.float().mean()))

    unseen = {"identity": (logits, targets, torch.zeros(40, dtype=torch.bool), embeddings, groups)}
    held_out = metrics_from_outputs({"identity": task}, unseen, n_pairs=100, pairs_seed=5)["identity"]
    assert held_out["accuracy"] is None
    assert held_out["verification_roc_auc"] == metrics["verification_roc_auc"]





def test_pair_resolver_prefers_lfw_file_names_then_row_order():
    # Ann_Lee's files listed from _0005 down (file name and row order disagree), Cy_Zed's files
    # without LFW names (k-th row of the person)
    images = ([f"Ann_Lee/Ann_Lee_{k:04d}.jpg" for k in range(5, 0, -1)]
              + [f"Bob_Ray/Bob_Ray_{k:04d}.jpg" for k in range(1, 6)]
              + [f"cz/x{k}.jpg" for k in range(1, 6)] + [f"Di_Fox/Di_Fox_{k:04d}.jpg" for k in range(1, 6)])
    names = [n for n in ("Ann_Lee", "Bob_Ray", "Cy_Zed", "Di_Fox") for _ in range(5)]
    resolver = PairResolver(images, names, where="test.csv")
    _, pairs = read_pairs_file(FIXTURES / "lfw_pairs.txt")
    a, b, same = resolver.resolve("lfw_pairs.txt", pairs)
    assert a.tolist() == [4, 11, 3, 10, 6, 15, 7, 0] and b.tolist() == [2, 13, 5, 19, 9, 18, 14, 16]
    assert same.tolist() == [True, True, False, False] * 2
    assert resolver.reference(0) == ("Ann_Lee", 5) and resolver.reference(10) == ("Cy_Zed", 1)
    for row, name in enumerate(names):
        assert resolver.reference(row)[0] == name and resolver.row(*resolver.reference(row)) == row
    with pytest.raises(DistmtlError, match=r"^p\.txt: line 7: 'Cy_Zed 6' matches no row of test\.csv \(no image "
                                           r"'Cy_Zed_0006', and identity 'Cy_Zed' has 5 rows\)$"):
        resolver.resolve("p.txt", [PairLine(7, "Cy_Zed", 1, "Cy_Zed", 6)])


def test_written_pairs_read_back_to_the_same_rows(tmp_path):
    images = [f"img/{i}.png" for i in range(12)]
    names = ["Ann", "Bob", "Cy"] * 4
    groups = np.array([0, 1, 2] * 4)
    a, b, same = verification_pairs(groups, n_pairs=20, seed=1)
    path = tmp_path / "pairs.txt"
    write_pairs_file(path, a, b, same, pair_folds(len(same)), PairResolver(images, names, where="d.csv"))
    folds, pairs = read_pairs_file(path)
    assert folds == 10 and path.read_text().splitlines()[0] == "10\t1"
    back = PairResolver(images, names, where="d.csv").resolve(path, pairs)
    for x, y in zip((a, b, same), back):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(DistmtlError, match=r"d\.csv: line 2 has identity 'A n', which a pairs file cannot name"):
        write_pairs_file(path, a, b, same, 10, PairResolver(images, ["A n"] + names[1:], where="d.csv"))


def test_pairs_file_count_must_match_its_header(tmp_path):
    short = tmp_path / "short.txt"
    shutil.copy(FIXTURES / "lfw_pairs.txt", short)
    short.write_text("\n".join(short.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DistmtlError, match=r"short\.txt: line 1 announces 8 pairs, the file has 7"):
        read_pairs_file(short)
    folds, pairs = read_pairs_file(FIXTURES / "lfw_pairs.txt")
    assert folds == 2 and [p.same for p in pairs] == [True, True, False, False] * 2


def test_verification_metrics_need_two_folds():
    x = torch.eye(4)
    with pytest.raises(DistmtlError, match="n_folds must be at least 2"):
        verification_metrics(x, x, [True, False, True, False], n_folds=1)
