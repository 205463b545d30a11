"""Repetition caps, the mix report, loader options and the threaded image check."""

import numpy as np
import pytest

from distmtl.config import resolve
from distmtl.data.csvformat import _image_problems
from distmtl.data.mixing import capped_weights, source_mix
from distmtl.data.sampler import MultiSourceBatchSampler, source_weights
from distmtl.errors import DistmtlError
from distmtl.training.experiment import build_experiment
from distmtl.training.runner import datamodule_from_experiment
from toydata import raw_config, write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=24, n_au=40, n_eval=8)


def test_cap_limits_passes_and_gives_the_share_to_the_others():
    sizes = [100_000, 20_000, 500]
    run = 64 * 2000
    base = source_weights(sizes, "equal")
    w = capped_weights(base, sizes, [None, None, 10], run)
    passes = w * run / np.asarray(sizes)
    assert passes[2] == pytest.approx(10)
    assert w.sum() == pytest.approx(1)
    # what the small source gave up went to the two others in their 1:1 ratio
    assert w[0] == pytest.approx(w[1]) and w[0] > base[0]
    # without a cap the small source would cycle 85 times
    assert base[2] * run / 500 == pytest.approx(85.33, abs=0.01)


def test_capped_weights_drive_the_sampler():
    sizes = [2000, 50]
    mix = source_mix(["big", "small"], sizes, "equal", [None, 2], batch_size=20, world_size=1, run_batches=50)
    sampler = MultiSourceBatchSampler(sizes, batch_size=20, epoch_batches=50)
    sampler.weights = mix.weights
    drawn = np.concatenate([np.asarray(b) for b in sampler])
    assert (drawn >= 2000).sum() == 100  # 2 passes over 50 images, not 500 draws


def test_caps_that_cannot_fill_the_run_fail_naming_the_key():
    with pytest.raises(DistmtlError, match=r"data\.max_repeats: the run draws 1000 samples.*a, b"):
        capped_weights([1, 1], [10, 10], [2, 3], 1000, ["a", "b"])


def test_report_lists_size_share_and_passes(files):
    raw = raw_config(files, max_steps=30)
    raw["data"]["sources"][1]["max_repeats"] = 4
    exp = build_experiment(resolve(raw), with_eval=False)
    table = datamodule_from_experiment(exp).source_mix(1).table()
    lines = table.splitlines()
    assert "30 batches of 16" in lines[0]
    expr = next(line for line in lines if line.strip().startswith("expr"))
    au = next(line for line in lines if line.strip().startswith("au "))
    # 480 draws; au capped at 4 passes over 40 images = 160 draws, so expr gets 320: 13.33 passes
    assert "24" in expr and "66.7%" in expr and "13.33" in expr
    assert "40" in au and "33.3%" in au and "4.00" in au and au.split()[-1] == "4"


@pytest.mark.parametrize("key, value, message", [
    ("pin_memory", "yes", "data.pin_memory: expected auto, true or false"),
    ("prefetch_factor", 0, "data.prefetch_factor: expected a positive integer"),
    ("persistent_workers", "no", "data.persistent_workers: expected true or false"),
    ("max_repeats", -1, "data.max_repeats: expected a positive number"),
])
def test_loader_options_are_validated(files, key, value, message):
    raw = raw_config(files)
    raw["data"][key] = value
    with pytest.raises(DistmtlError, match=message):
        resolve(raw)


def test_per_source_cap_is_validated(files):
    raw = raw_config(files)
    raw["data"]["sources"][0]["max_repeats"] = "lots"
    with pytest.raises(DistmtlError, match=r"data\.sources\[0\]\.max_repeats"):
        resolve(raw)


def test_loader_options_reach_the_dataloader(files):
    raw = raw_config(files)
    raw["data"].update(num_workers=1, prefetch_factor=3, persistent_workers=False, pin_memory=True)
    dm = datamodule_from_experiment(build_experiment(resolve(raw), with_eval=False))
    dm.report = False
    loader = dm.train_dataloader()
    assert loader.prefetch_factor == 3 and loader.pin_memory and not loader.persistent_workers
    assert resolve(raw_config(files))["data"]["pin_memory"] == "auto"


def test_threaded_image_check_finds_every_bad_row(tmp_path):
    paths = []
    for i in range(5000):
        p = tmp_path / f"{i}.png"
        if i % 997 == 0:
            pass  # missing
        elif i % 1231 == 0:
            p.write_bytes(b"")
        else:
            p.write_bytes(b"x")
        paths.append(str(p))
    bad = np.zeros(len(paths), dtype=bool)
    bad[1994] = True  # already flagged: not checked again
    problems = _image_problems(np.array(paths), bad, decode=False)
    missing = [i for i in range(5000) if i % 997 == 0 and i != 1994]
    empty = [i for i in range(5000) if i % 1231 == 0 and i % 997 != 0]
    assert problems == sorted([(i, "image file not found") for i in missing]
                              + [(i, "empty image file (0 bytes)") for i in empty])


def test_dry_run_prints_the_mix_table(files, tmp_path, capsys):
    import yaml

    from distmtl.cli import main

    raw = raw_config(files, max_steps=30)
    raw["data"]["max_repeats"] = 50
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "training mix: 30 batches of 16" in out
    assert any(line.split()[:2] == ["expr", "24"] and line.split()[-1] == "50" for line in out.splitlines())
