"""Run options: paths relative to the config file, Trainer pass-through, loggers, determinism,
channels-last and compile, the step progress bar."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from distmtl.config import load_config, resolve
from distmtl.errors import DistmtlError
from toydata import raw_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy") / "data", n_expr=24, n_au=24, n_eval=12)


def _relative_config(files, folder: Path) -> Path:
    """The toy config with every path relative to ``folder``, written there."""
    raw = raw_config(files)
    rel = lambda p: os.path.relpath(p, folder)  # noqa: E731
    raw["data"]["sources"] = [{"csv": rel(files["expr"])}, {"csv": rel(files["au"])}]
    raw["data"].update(val=rel(files["val"]), test=rel(files["test"]), oracle=rel(files["all"]))
    raw["relatedness"][0]["table"] = rel(files["table"])
    raw["model"]["weights"] = "weights/backbone.safetensors"
    raw["output"] = {"dir": "out/run"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_paths_are_relative_to_the_config_file(files, tmp_path, monkeypatch):
    path = _relative_config(files, tmp_path / "elsewhere" / "configs")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(path)
    assert config["data"]["sources"][0]["csv"] == str(files["expr"])
    assert config["data"]["val"] == str(files["val"]) and config["data"]["oracle"] == str(files["all"])
    assert config["relatedness"][0]["table"] == str(files["table"])
    assert config["model"]["weights"] == str(path.parent / "weights" / "backbone.safetensors")
    assert config["output"]["dir"] == str(path.parent / "out" / "run")
    builtin = load_config(path, ["relatedness.0.table=du2014"])
    assert builtin["relatedness"][0]["table"] == "du2014"  # a built-in name is not a path


def test_override_paths_are_relative_to_the_current_folder(files, tmp_path, monkeypatch):
    path = _relative_config(files, tmp_path / "configs")
    monkeypatch.chdir(files["val"].parent)
    config = load_config(path, ["data.val=val.csv"])
    assert config["data"]["val"] == "val.csv" and Path(config["data"]["val"]).resolve() == files["val"]


def test_shipped_configs_find_their_data_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "configs" / "synthfacs_demo.yaml")
    assert config["data"]["sources"][0]["csv"] == str(ROOT / "data" / "synthfacs" / "expr_train.csv")


def _resolve(**sections):
    raw = {"tasks": {"t": {"kind": "multiclass", "labels": ["a", "b"]}}, "data": {"sources": ["x.csv"]}}
    raw.update(sections)
    return resolve(raw)


def test_trainer_passes_any_lightning_argument_through():
    config = _resolve(trainer={"sync_batchnorm": True, "benchmark": False, "limit_val_batches": 0.5})
    assert config["trainer"]["sync_batchnorm"] is True and config["trainer"]["limit_val_batches"] == 0.5
    assert config["trainer"]["accelerator"] == "auto"


def test_trainer_typo_suggests_close_arguments():
    with pytest.raises(DistmtlError, match=r"trainer.sync_batchnrm: not an argument of Lightning's Trainer "
                                           r"\(did you mean: sync_batchnorm"):
        _resolve(trainer={"sync_batchnrm": True})
    with pytest.raises(DistmtlError, match=r"trainer.max_steps: set by distmtl from train.max_steps"):
        _resolve(trainer={"max_steps": 5})


def test_loggers_are_checked():
    with pytest.raises(DistmtlError,
                       match=r"train.loggers\[1\]: unknown logger 'tensorbord' \(did you mean: tensorboard"):
        _resolve(train={"loggers": ["csv", "tensorbord"]})
    from distmtl.config.environment import LOGGERS, logger_specs

    assert [n for n, _ in logger_specs(["tensorboard"])] == ["csv", "tensorboard"]  # csv always
    assert set(LOGGERS) == {"csv", "tensorboard", "wandb", "mlflow"}


def test_deterministic_is_a_cpu_default(monkeypatch):
    from distmtl.training.trainer_setup import deterministic_flag

    config = _resolve()
    assert config["train"]["deterministic"] is None
    assert deterministic_flag(_resolve(trainer={"accelerator": "cpu"})) is True
    assert deterministic_flag(_resolve(trainer={"accelerator": "gpu"})) is False
    assert deterministic_flag(_resolve(trainer={"accelerator": "gpu"}, train={"deterministic": True})) is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert deterministic_flag(_resolve()) is False  # auto on a GPU machine


def test_model_compile_values_are_checked():
    with pytest.raises(DistmtlError, match=r"model.compile: expected true, false or a mapping"):
        _resolve(model={"compile": "yes"})


def test_a_run_with_channels_last_tensorboard_and_a_passed_through_flag(files, tmp_path, capsys):
    from distmtl.training.experiment import build_experiment
    from distmtl.training.runner import make_trainer, train_experiment

    raw = raw_config(files, max_steps=4, val_every_steps=4, checkpoint_every_steps=4)
    raw["model"].update(channels_last=True)
    raw["trainer"] = {"accelerator": "cpu", "enable_progress_bar": True, "benchmark": False,
                      "limit_val_batches": 1}
    raw["train"]["loggers"] = ["tensorboard"]
    config = resolve(raw)
    trainer = make_trainer(config, tmp_path / "probe")
    assert trainer.limit_val_batches == 1
    results = train_experiment(build_experiment(config), tmp_path / "run")
    assert results["steps"] == 4
    assert (tmp_path / "run" / "logs" / "metrics.csv").exists()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    state = torch.load(results["checkpoint"], weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in k for k in state)  # channels_last keeps plain names
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "steps" in text and "4/4" in text and "elapsed" in text and "left" in text, text
    assert "Epoch" not in text  # one bar over the step budget, not one per epoch


def test_channels_last_and_compile_take_effect(files):
    from distmtl.training.experiment import build_experiment
    from distmtl.training.runner import module_from_experiment

    raw = raw_config(files)
    raw["model"].update(channels_last=True, compile={"backend": "eager"})
    module = module_from_experiment(build_experiment(resolve(raw), with_eval=False))
    module.on_fit_start()
    conv = next(m for m in module.net.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.__dict__.get("_compiled_net") is not None
    outputs, _ = module.run_net(torch.zeros(2, 3, 32, 32))
    assert outputs["expression"].shape == (2, 3)
    assert not any("_orig_mod" in k or "_compiled" in k for k in module.state_dict())  # plain names


def test_compare_start_line_shows_elapsed_and_an_estimate_of_what_is_left():
    from types import SimpleNamespace

    from distmtl.study.parallel import starting_line

    run = SimpleNamespace(name="mtl", seed=0)
    assert starting_line(2, 10, run, 120.0) == "[3/10] mtl seed 0: training; elapsed 2:00, about 8:00 left"
    assert starting_line(0, 10, run, 0.0) == \
        "[1/10] mtl seed 0: training; elapsed 0:00, time left known after the first run"


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_an_optional_logger_that_is_not_installed_is_one_line(name):
    import importlib.util

    from distmtl.config.environment import logger_specs

    if importlib.util.find_spec(name) is not None:
        assert [n for n, _ in logger_specs([{"name": name, "project": "x"}])] == ["csv", name]
    else:
        with pytest.raises(DistmtlError, match=rf"train.loggers\[0\]: {name} is not installed \(pip install {name}\)"):
            _resolve(train={"loggers": [name]})


def test_time_left_counts_the_runs_in_flight_and_the_parallel_slots():
    from distmtl.study.parallel import time_left

    # the demo's first report, 2 at a time: one run done in 326 s, its neighbour running as long,
    # three queued. The old estimate (elapsed per finished run x runs left) said 1305 s.
    assert time_left([326.0], [326.0], queued=3, jobs=2) == pytest.approx(3 * 326 / 2)
    # a run in flight is counted for what it has left of the mean, never below nothing
    assert time_left([100.0, 200.0], [50.0, 400.0], queued=0, jobs=2) == pytest.approx(100 / 2)
    # fewer runs than slots: the last one alone sets the time
    assert time_left([100.0], [40.0], queued=0, jobs=4) == pytest.approx(60.0)
    assert time_left([], [10.0], queued=5, jobs=2) == 0.0
