"""Same seed, same metrics; a non-finite loss stops with a message naming task, term and step, or is skipped."""

import json

import pytest
import torch

from distmtl.config import resolve
from distmtl.errors import DistmtlError
from distmtl.training.experiment import build_experiment
from distmtl.training.runner import datamodule_from_experiment, module_from_experiment, train_experiment
from toydata import raw_config, write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=48, n_au=48, n_eval=24)


@pytest.mark.slow
def test_same_seed_and_config_give_identical_metrics_on_cpu(files, tmp_path):
    results = []
    for run in ("a", "b"):
        exp = build_experiment(resolve(raw_config(files, max_steps=6, val_every_steps=3)))
        train_experiment(exp, tmp_path / run, progress=False)
        results.append(json.loads((tmp_path / run / "metrics.json").read_text()))
    assert results[0]["val"] == results[1]["val"] and results[0]["test"] == results[1]["test"]


def nan_batch(files, on_nan):
    exp = build_experiment(resolve(raw_config(files, on_nan=on_nan)), with_eval=False)
    module = module_from_experiment(exp).train()
    batch = next(iter(datamodule_from_experiment(exp).train_dataloader()))
    batch["image"][0] = float("nan")
    return module, batch


def test_non_finite_loss_stops_with_task_term_and_step(files):
    module, batch = nan_batch(files, "stop")
    with pytest.raises(DistmtlError) as err:
        module.training_step(batch, 0)
    message = str(err.value)
    assert "\n" not in message
    assert "non-finite task loss" in message and "at step 0" in message
    assert "'expression'" in message or "'au'" in message


def test_non_finite_loss_is_skipped_and_counted_when_asked(files):
    module, batch = nan_batch(files, "skip")
    assert module.training_step(batch, 0) is None
    assert module.nan_skipped == 1
    batch["image"] = torch.nan_to_num(batch["image"])
    assert torch.isfinite(module.training_step(batch, 1))
    assert module.nan_skipped == 1


@pytest.mark.slow
@pytest.mark.parametrize("form", ["csv", "shards"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(files, tmp_path, form):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from distmtl.training.runner import load_checkpoint_dict

    raw = raw_config(files, max_steps=24, val_every_steps=12, checkpoint_every_steps=4)
    raw["weighting"] = {"name": "dynamic"}
    raw["trainer"]["log_every_n_steps"] = 1
    if form == "shards":  # the same sources, packed: resuming must not depend on the source form
        from distmtl.training.pack import pack_sources

        packed = pack_sources(resolve(raw), tmp_path / "shards", progress=False)
        raw["data"]["sources"] = [{"name": name, "shards": str(folder)} for name, folder, _ in packed]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count for both runs
    train = [sys.executable, "-m", "distmtl.cli", "train", "--config", str(cfg), "--out"]
    whole = subprocess.run(train + [str(tmp_path / "whole")], env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-1500:]
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    out = tmp_path / "killed"
    cmd = train + [str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and load_checkpoint_dict(last)["global_step"] >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint_dict(last)  # intact: written to a temporary file, then renamed
    assert 8 <= state["global_step"] < 24 and not (out / "metrics.json").exists()
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    got = json.loads((out / "metrics.json").read_text())
    assert got["steps"] == expected["steps"] == 24
    assert got["val"] == expected["val"] and got["test"] == expected["test"]
