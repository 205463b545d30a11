import numpy as np
import pytest

from distmtl.data.sampler import MultiSourceBatchSampler, source_weights
from distmtl.errors import DistmtlError


def source_of(index, offsets):
    return np.searchsorted(offsets, index, side="right") - 1


@pytest.mark.parametrize("ratios", ["equal", "proportional", "sqrt", [3.0, 1.0, 1.0]])
def test_per_source_proportions_match_ratios_within_2_percent(ratios):
    sizes = [5000, 1200, 300]
    sampler = MultiSourceBatchSampler(sizes, batch_size=32, ratios=ratios, epoch_batches=200, seed=1)
    drawn = np.concatenate([np.asarray(b) for b in sampler])
    counts = np.bincount(source_of(drawn, sampler.offsets), minlength=3) / len(drawn)
    expected = source_weights(sizes, ratios)
    assert np.abs(counts - expected).max() < 0.02
    assert all(len(b) == 32 for b in sampler)


def test_every_batch_mixes_all_sources_under_equal_ratios():
    sampler = MultiSourceBatchSampler([100, 1000], batch_size=16, epoch_batches=20)
    for batch in sampler:
        assert set(source_of(np.asarray(batch), sampler.offsets)) == {0, 1}


def test_no_repeat_within_epoch_while_source_not_exhausted():
    sampler = MultiSourceBatchSampler([400, 400], batch_size=20, epoch_batches=20, seed=3)
    drawn = np.concatenate([np.asarray(b) for b in sampler])
    assert len(drawn) == len(set(drawn.tolist())) == 400


def test_two_rank_ddp_split_is_disjoint_and_covers_the_epoch():
    kwargs = dict(sizes=[300, 500], batch_size=10, epoch_batches=30, seed=7)
    ranks = [MultiSourceBatchSampler(**kwargs, rank=r, world_size=2) for r in range(2)]
    sets = [np.concatenate([np.asarray(b) for b in s]) for s in ranks]
    assert len(set(sets[0]) & set(sets[1])) == 0
    union = np.concatenate(sets)
    full = np.concatenate(ranks[0].global_batches())
    assert sorted(union.tolist()) == sorted(full.tolist())
    assert len(union) == 30 * 20


def test_epochs_differ_and_same_epoch_is_deterministic():
    a = MultiSourceBatchSampler([50, 50], batch_size=10, seed=0)
    first = [list(b) for b in a]
    again = [list(b) for b in a]
    a.set_epoch(1)
    second = [list(b) for b in a]
    assert first == again and first != second


def test_resume_position_continues_the_same_sequence():
    a = MultiSourceBatchSampler([80, 40], batch_size=8, seed=5)
    full = [list(b) for b in a]
    b = MultiSourceBatchSampler([80, 40], batch_size=8, seed=5)
    b.load_state_dict({"epoch": 0, "start_batch": 4, "seed": 5})
    assert [list(x) for x in b] == full[4:]


def test_bad_ratios_name_the_key():
    with pytest.raises(DistmtlError, match="data.sampling"):
        MultiSourceBatchSampler([10, 10], batch_size=4, ratios="weird")
    with pytest.raises(DistmtlError, match="2 sources"):
        MultiSourceBatchSampler([10, 10], batch_size=4, ratios=[1.0])
