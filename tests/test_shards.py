"""Packed (sharded) sources: exact round trip, mixing with CSV sources, DDP slices, resuming."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distmtl.cli import main
from distmtl.config import resolve
from distmtl.data.loaders.base import LoadedSource
from distmtl.data.sampler import MultiSourceBatchSampler
from distmtl.data.shards import ShardReader, read_shards, write_shards
from distmtl.errors import DistmtlError
from distmtl.training.experiment import build_experiment
from distmtl.training.pack import pack_sources
from distmtl.training.runner import datamodule_from_experiment
from toydata import raw_config, write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    files = write_dataset(root, n_expr=30, n_au=50, n_eval=10)
    # a few rows as JPEG (kept byte for byte) and a subject column, to round-trip them too
    lines = files["au"].read_text().splitlines()
    lines[0] += ",subject"
    for i in range(1, len(lines)):
        if i % 5 == 0:
            rel = lines[i].split(",")[0]
            Image.open(root / rel).save(root / rel.replace(".png", ".jpg"), quality=90)
            lines[i] = lines[i].replace(".png", ".jpg")
        lines[i] += f",s{i % 4}"
    files["au"].write_text("\n".join(lines) + "\n")
    return files


@pytest.fixture(scope="module")
def packed(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    pack_sources(resolve(raw_config(files)), out, progress=False)
    return out


def shard_config(files, packed, csv_au=False):
    raw = raw_config(files)
    raw["data"]["sources"] = [{"name": "expr", "shards": str(packed / "expr")},
                              {"csv": str(files["au"])} if csv_au else {"name": "au", "shards": str(packed / "au")}]
    return raw


def test_round_trip_keeps_every_label_mask_and_image_byte(files, packed):
    from_csv = build_experiment(resolve(raw_config(files)), with_eval=False)
    from_shards = build_experiment(resolve(shard_config(files, packed)), with_eval=False)
    for a, b in zip(from_csv.train_sources, from_shards.train_sources):
        assert a.name == b.name and len(a) == len(b)
        for t in a.targets:
            assert a.targets[t].dtype == b.targets[t].dtype and np.array_equal(a.targets[t], b.targets[t])
            assert np.array_equal(a.masks[t], b.masks[t])
        assert (a.subjects is None) == (b.subjects is None)
        if a.subjects is not None:
            assert list(a.subjects) == list(b.subjects)
        reader = ShardReader(b.shards)
        assert len(reader) == len(a)
        for i, path in enumerate(a.images):
            assert reader[int(b.images[i])] == Path(path).read_bytes()
    assert any(str(p).endswith(".jpg") for p in from_csv.train_sources[1].images)


def test_array_backed_source_packs_as_lossless_png(tmp_path):
    import pandas as pd

    pixels = np.random.default_rng(0).integers(0, 256, (6, 12, 12), dtype=np.uint8)
    loaded = LoadedSource("arrays", pd.DataFrame({"image": np.arange(6), "expression": ["Happiness"] * 6}),
                          images=pixels)
    write_shards(loaded, tmp_path / "arrays")
    back = read_shards(tmp_path / "arrays")
    reader = ShardReader(back.shards)
    for i in range(6):
        assert np.array_equal(np.asarray(Image.open(__import__("io").BytesIO(reader[i]))), pixels[i])
    assert list(back.frame["expression"]) == ["Happiness"] * 6


def test_shards_mix_with_csv_sources_under_weights(files, packed):
    raw = shard_config(files, packed, csv_au=True)
    raw["data"].update(sampling=[3.0, 1.0], epoch_batches=20)
    exp = build_experiment(resolve(raw), with_eval=False)
    assert exp.train_sources[0].shards and not exp.train_sources[1].shards
    dm = datamodule_from_experiment(exp)
    drawn = np.concatenate([np.asarray(b) for b in dm.sampler])
    from_shards = (drawn < dm.train_set.offsets[1]).mean()
    assert from_shards == pytest.approx(0.75, abs=0.01)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and set(batch["source"].tolist()) == {0, 1}


def test_two_ranks_read_disjoint_equal_slices_of_every_batch(files, packed):
    exp = build_experiment(resolve(shard_config(files, packed)), with_eval=False)
    dm = datamodule_from_experiment(exp)
    sizes = dm.train_set.sizes
    ranks = [MultiSourceBatchSampler(sizes, batch_size=8, epoch_batches=6, seed=3, rank=r, world_size=2)
             for r in range(2)]
    per_rank = [[np.asarray(b) for b in s] for s in ranks]
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]] == [8] * 6
    for b0, b1, whole in zip(per_rank[0], per_rank[1], ranks[0].global_batches()):
        assert not set(b0.tolist()) & set(b1.tolist())
        assert sorted(np.concatenate([b0, b1]).tolist()) == sorted(whole.tolist())
    items = [dm.train_set[int(i)] for i in per_rank[1][0]]  # rank 1 decodes its slice from the shards
    assert all(item["image"].shape == (3, 32, 32) for item in items)


def test_resuming_mid_epoch_from_shards_continues_the_same_batches(files, packed):
    raw = shard_config(files, packed)
    raw["data"]["epoch_batches"] = 5
    exp = build_experiment(resolve(raw), with_eval=False)
    whole = list(datamodule_from_experiment(exp).train_dataloader())
    dm = datamodule_from_experiment(exp)
    dm.load_state_dict({"sampler": {"epoch": 0, "start_batch": 3, "seed": 0}})
    resumed = list(dm.train_dataloader())
    assert len(resumed) == 2
    for a, b in zip(whole[3:], resumed):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"]["au"], b["masks"]["au"])


def test_pack_command_prints_the_config_lines(files, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw_config(files)))
    assert main(["data", "pack", "--config", str(cfg), "--out", str(tmp_path / "p"), "--source", "expr"]) == 0
    out = capsys.readouterr().out
    assert f"{{name: expr, shards: {tmp_path / 'p' / 'expr'}}}" in out
    assert not (tmp_path / "p" / "au").exists()
    assert main(["data", "pack", "--config", str(cfg), "--out", str(tmp_path / "p"), "--source", "exp"]) == 2
    assert "no source named 'exp' (did you mean: expr" in capsys.readouterr().err


def test_a_folder_that_is_not_packed_is_a_one_line_error(files, tmp_path):
    raw = raw_config(files)
    raw["data"]["sources"][0] = {"name": "x", "shards": str(tmp_path)}
    with pytest.raises(DistmtlError, match=r"data\.sources\[0\]\.shards: .* is not a packed source"):
        build_experiment(resolve(raw), with_eval=False)
    raw["data"]["sources"][0] = {"shards": str(tmp_path), "csv": "x.csv"}
    with pytest.raises(DistmtlError, match="give exactly one of 'csv', 'loader' or 'shards'"):
        resolve(raw)
