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


# ----------------------------------------------------------------------------- world size, laziness


def _two_rank_worker(rank: int, store: str, out: str) -> None:
    import json

    import torch.distributed as dist

    # built as the DataModule builds it: before the process group exists
    sampler = MultiSourceBatchSampler([300, 500], batch_size=10, ratios="proportional", seed=7)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        drawn = [i for batch in sampler for i in batch]
        with open(f"{out}.{rank}", "w") as handle:
            json.dump({"len": len(sampler), "world": sampler.world_size, "drawn": drawn}, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not __import__("torch").distributed.is_available(), reason="torch.distributed unavailable")
def test_under_two_ranks_an_epoch_is_half_as_long_and_the_ranks_draw_disjoint_samples(tmp_path):
    import json

    import torch.multiprocessing as mp

    single = MultiSourceBatchSampler([300, 500], batch_size=10, ratios="proportional", seed=7)
    assert len(single) == 80  # 800 rows in batches of 10
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank.{r}").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["len"] for r in ranks] == [40, 40]  # half the single-process epoch
    drawn = [r["drawn"] for r in ranks]
    assert len(drawn[0]) == len(drawn[1]) == 400
    assert not set(drawn[0]) & set(drawn[1])
    # together one epoch over the data: with proportional ratios, every row exactly once
    assert sorted(drawn[0] + drawn[1]) == list(range(800))
    assert sorted(i for batch in single for i in batch) == list(range(800))


def test_iteration_never_materialises_a_source_index():
    import time
    import tracemalloc

    sizes = [20_000_000, 5_000_000, 1_000]
    sampler = MultiSourceBatchSampler(sizes, batch_size=64, seed=0)
    assert len(sampler) == sum(sizes) // 64
    tracemalloc.start()
    started = time.perf_counter()
    try:
        batches = []
        for batch in sampler:
            batches.append(batch)
            if len(batches) == 20:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a permutation of the 20M-row source alone would take 160 MB and seconds
    assert peak < 16 * 2**20, peak
    assert time.perf_counter() - started < 2.0
    drawn = np.concatenate(batches)
    assert len(set(drawn.tolist())) == len(drawn) == 20 * 64
    assert drawn.min() >= 0 and drawn.max() < sum(sizes)


def test_resume_at_any_batch_continues_the_same_sequence_across_blocks_and_passes(monkeypatch):
    import distmtl.data.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "BLOCK", 24)  # 3 batches of 8 per block
    full = [list(b) for b in MultiSourceBatchSampler([12, 40], batch_size=8, seed=2, epoch_batches=11)]
    assert len(full) == 11
    for start in range(11):
        b = MultiSourceBatchSampler([12, 40], batch_size=8, seed=2, epoch_batches=11)
        b.load_state_dict({"epoch": 0, "start_batch": start, "seed": 2})
        assert [list(x) for x in b] == full[start:], start
    # the 12-row source (4 per batch) cycles: each pass of 3 batches is a permutation of its rows
    small = [i for batch in full for i in batch if i < 12]
    assert len(small) == 44
    for p in range(len(small) // 12):
        assert sorted(small[12 * p: 12 * (p + 1)]) == list(range(12))
    assert len({tuple(small[12 * p: 12 * (p + 1)]) for p in range(3)}) == 3  # a fresh order each pass


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_keyed_permutation_is_a_bijection_and_depends_on_the_key(n):
    from distmtl.data.permutation import KeyedPermutation

    values = KeyedPermutation(n, (0, 1))(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))
    if n >= 64:
        other = KeyedPermutation(n, (0, 2))(np.arange(n))
        assert (values != other).mean() > 0.9
        assert abs(np.corrcoef(np.arange(n), values)[0, 1]) < 0.2
