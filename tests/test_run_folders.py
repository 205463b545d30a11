"""Run folders that cannot be clobbered: the lock, a new folder per new run, the config check on
resume, one training log across a resume, compare's data-aware cache and atomic re-export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distmtl.config import dump_config, resolve
from distmtl.errors import DistmtlError
from distmtl.training.experiment import build_experiment
from distmtl.training.folders import check_resume_config, choose_run_folder, run_lock
from test_bad_inputs import one_line
from toydata import raw_config, write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=16, n_au=16, n_eval=8)


def small(files, **train):
    raw = raw_config(files, **{"max_steps": 4, "val_every_steps": 2, "checkpoint_every_steps": 2, **train})
    raw["data"].update(oracle=None, test=None)
    raw["trainer"]["log_every_n_steps"] = 1
    return raw


# ---------------------------------------------------------------------------------- the lock


def test_a_held_run_folder_refuses_a_second_process(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from distmtl.training.folders import run_lock\n"
         f"with run_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DistmtlError) as err:
            with run_lock(folder):
                pass
        one_line(err, folder, "in use by another run", f"pid {holder.pid}", ".lock")
    finally:
        holder.kill()
        holder.wait()
    with run_lock(folder):  # the OS released the killed holder's lock: no stale lock
        assert f"pid {os.getpid()}" in (folder / ".lock").read_text()


def test_train_and_compare_take_the_lock(files, tmp_path):
    from distmtl.study.compare import run_compare
    from distmtl.training.runner import train_experiment

    config = resolve(small(files))
    exp = build_experiment(config)
    for folder, call, what in [
        (tmp_path / "run", lambda f: train_experiment(exp, f, progress=False), "run"),
        (tmp_path / "cmp", lambda f: run_compare(config, f, seeds=1, variants=["mtl"], progress=False), "compare"),
    ]:
        with run_lock(folder, what=what):
            with pytest.raises(DistmtlError) as err:
                call(folder)
            one_line(err, folder, f"in use by another {what}", f"pid {os.getpid()}")
        assert not (folder / "config.yaml").exists() and not (folder / "runs").exists()


# ---------------------------------------------------------------------------------- a new folder per run


def test_a_second_run_gets_a_new_folder_unless_overwrite(tmp_path, caplog):
    out = tmp_path / "toy"
    assert choose_run_folder(out) == out
    out.mkdir()
    (out / "config.yaml").write_text("name: first\n")
    (out / "notes.txt").write_text("mine\n")
    second = choose_run_folder(out)
    assert second == tmp_path / "toy-v2"
    assert any("toy-v2" in r.getMessage() for r in caplog.records)
    (second / "checkpoints").mkdir(parents=True)
    assert choose_run_folder(out) == tmp_path / "toy-v3"
    assert choose_run_folder(out, resume=True) == out
    assert choose_run_folder(out, overwrite=True) == out
    assert not (out / "config.yaml").exists() and (out / "notes.txt").read_text() == "mine\n"


# ---------------------------------------------------------------------------------- resume: the run's config


def test_resume_with_a_changed_config_names_the_keys(files, tmp_path):
    config = resolve(small(files))
    dump_config(config, tmp_path / "config.yaml")
    assert check_resume_config(tmp_path, config) == []
    changed = resolve(small(files))
    changed["optim"]["lr"] = 0.01
    changed["seed"] = 3
    changed["model"]["backbone"] = "resnet18"
    changed["train"]["max_steps"] = 8
    with pytest.raises(DistmtlError) as err:
        check_resume_config(tmp_path, changed, allow_change=["max_steps"])
    message = one_line(err, tmp_path, "--resume", "model.backbone", "optim.lr", "seed", "--allow-change")
    assert "max_steps" not in message
    assert check_resume_config(tmp_path, changed, ["lr", "seed", "model", "train.max_steps"]) == [
        "model.backbone", "optim.lr", "seed", "train.max_steps"]


def test_resume_keeps_config_yaml_records_changes_and_continues_the_log(files, tmp_path):
    import pandas as pd

    from distmtl.training.runner import load_checkpoint_dict, train_experiment

    out = tmp_path / "run"
    train_experiment(build_experiment(resolve(small(files))), out, progress=False)
    original = (out / "config.yaml").read_text()
    longer = resolve(small(files, max_steps=8))
    with pytest.raises(DistmtlError) as err:
        train_experiment(build_experiment(longer), out, resume=True, progress=False)
    one_line(err, "train.max_steps", "--allow-change")
    results = train_experiment(build_experiment(longer), out, resume=True, progress=False,
                               allow_change=["max_steps"])
    assert results["steps"] == 8 and load_checkpoint_dict(out / "checkpoints" / "last.ckpt")["global_step"] == 8
    assert (out / "config.yaml").read_text() == original
    record = yaml.safe_load((out / "resume_4.yaml").read_text())
    assert record["changed"] == {"train.max_steps": {"old": 4, "new": 8}}
    steps = pd.read_csv(out / "logs" / "metrics.csv").dropna(subset=["train/loss"])["step"].tolist()
    assert steps == sorted(set(steps)) and steps[0] <= 1 and steps[-1] >= 6 and len(steps) >= 7, steps
    assert not list((out / "logs").glob("metrics.until-*"))


# ---------------------------------------------------------------------------------- compare's cache


def test_compare_cache_keys_on_the_data(files, tmp_path):
    from distmtl.study.compare import run_hash

    csv = tmp_path / "au.csv"
    text = files["au"].read_text().replace("img/", f"{files['au'].parent}/img/")
    csv.write_text(text)
    raw = small(files)
    raw["data"]["sources"][1] = {"csv": str(csv)}
    before = run_hash(build_experiment(resolve(raw)), 0)
    assert run_hash(build_experiment(resolve(raw)), 0) == before
    lines = text.splitlines()
    fields = lines[1].split(",")
    fields[-1] = "0" if fields[-1] == "1" else "1"  # one AU label of one row, same size and columns
    csv.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    assert run_hash(build_experiment(resolve(raw)), 0) != before


# ---------------------------------------------------------------------------------- atomic re-export


@pytest.fixture(scope="module")
def checkpoint(files, tmp_path_factory):
    from distmtl.training.runner import train_experiment

    raw = small(files, max_steps=2)
    return Path(train_experiment(build_experiment(resolve(raw)), tmp_path_factory.mktemp("r"),
                                 progress=False)["checkpoint"])


def test_interrupted_re_export_leaves_the_previous_folder_whole(checkpoint, tmp_path, monkeypatch):
    import torch

    import distmtl.inference.export as export
    from distmtl.inference.predictor import Predictor
    from distmtl.training.runner import load_module

    out = tmp_path / "model"
    module = load_module(checkpoint)
    export.save_model_folder(module, out)
    (out / "README.md").write_text("my notes\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(1.0)

    def interrupted(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "atomic_write_text", interrupted)  # killed before config.json
    with pytest.raises(KeyboardInterrupt):
        export.save_model_folder(module, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    Predictor.from_pretrained(out, device="cpu")  # weights and config.json still belong together
    monkeypatch.undo()
    export.save_model_folder(module, out)
    assert (out / "README.md").read_text() == "my notes\n"
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["weights"]["sha256"] == export.file_sha256(out / "model.safetensors")


def test_cli_train_twice_with_one_name_writes_a_new_folder(files, tmp_path, capsys, monkeypatch):
    import distmtl.training.runner as runner
    from test_bad_inputs_2 import run_cli

    used = []

    def record(exp, out, **kwargs):
        used.append(Path(out))
        dump_config(exp.config, Path(out) / "config.yaml")
        return {"checkpoint": str(Path(out) / "checkpoints" / "best.ckpt")}

    monkeypatch.setattr(runner, "train_experiment", record)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small(files)))
    out = tmp_path / "runs" / "toy"
    for extra in ([], [], ["--overwrite"]):
        code, stderr = run_cli(["train", "--config", str(path), "--out", str(out), *extra], capsys)
        assert code == 0, stderr
    assert used == [out, tmp_path / "runs" / "toy-v2", out]


def test_a_rank_uses_only_its_own_launchers_folder_choice(tmp_path, monkeypatch):
    """A stale choice (left by an earlier in-process run, inherited through torchrun) is ignored."""
    import os

    from distmtl.training.folders import RUN_DIR_ENV, choose_run_folder

    out = tmp_path / "run"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(RUN_DIR_ENV, f"{os.getppid() + 12345}:{tmp_path / 'other-run'}")
    assert choose_run_folder(out, resume=True) == out
    monkeypatch.setenv(RUN_DIR_ENV, f"{os.getppid()}:{tmp_path / 'chosen-v2'}")
    assert choose_run_folder(out, resume=True) == tmp_path / "chosen-v2"


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"])
def test_a_non_zero_rank_from_any_launcher_is_a_follower(monkeypatch, variable):
    """Under SLURM's srun the ranks are in SLURM_PROCID alone: a rank that took itself for rank 0
    would write config.yaml and find the run folder's lock held by rank 0."""
    from distmtl.training.folders import RANK_VARIABLES, is_follower_rank

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not is_follower_rank()
    monkeypatch.setenv(variable, "1")
    assert is_follower_rank()
