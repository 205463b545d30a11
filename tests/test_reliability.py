"""Same seed, same metrics; a non-finite loss stops with a message naming task, term and step, or is skipped."""

import json

import pytest
import torch

from distmtl.config import resolve
from distmtl.errors import DistmtlError
from distmtl.experiment import build_experiment
from distmtl.runner import datamodule_from_experiment, module_from_experiment, train_experiment
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
