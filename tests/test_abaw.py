"""The ABAW multi-task score in `distmtl evaluate` when a model has expression, AU and VA tasks."""

import json

import pandas as pd
import pytest
from toydata import CLASSES, raw_config, write_dataset

from distmtl.cli import main
from distmtl.config import resolve
from distmtl.evaluation.metrics import abaw_mtl_score, abaw_tasks
from distmtl.training.experiment import build_experiment
from distmtl.training.runner import train_experiment
from distmtl.tasks import Task, au_task, expression_task, va_task

VA_OF_CLASS = {"Neutral": (0.0, 0.0), "Happiness": (0.7, 0.4), "Surprise": (0.2, 0.8)}


def with_va(path, out, keep_other_labels: bool):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    source = frame["expression"]
    frame["valence"] = [f"{VA_OF_CLASS[c][0]:.2f}" for c in source]
    frame["arousal"] = [f"{VA_OF_CLASS[c][1]:.2f}" for c in source]
    if not keep_other_labels:
        frame = frame.assign(**{c: "" for c in frame.columns if c not in ("image", "valence", "arousal")})
    frame.to_csv(out, index=False)
    return out


def test_abaw_tasks_needs_one_task_of_each_kind_and_valence_arousal():
    tasks = {t.name: t for t in (expression_task(), au_task(), va_task())}
    assert abaw_tasks(tasks) == ("expression", "au", "va")
    assert abaw_tasks({k: v for k, v in tasks.items() if k != "va"}) is None
    other = Task("pose", "regression", ("yaw", "pitch"))
    assert abaw_tasks({**{k: v for k, v in tasks.items() if k != "va"}, "pose": other}) is None


def test_evaluate_prints_and_saves_the_abaw_score(tmp_path, capsys):
    files = write_dataset(tmp_path / "toy", n_expr=60, n_au=60, n_eval=40)
    va_train = with_va(files["val"], tmp_path / "toy" / "va_train.csv", keep_other_labels=False)
    test = with_va(files["test"], tmp_path / "toy" / "test_va.csv", keep_other_labels=True)
    raw = raw_config(files, max_steps=6, val_every_steps=6, checkpoint_every_steps=6)
    raw["tasks"]["va"] = {"kind": "regression", "labels": "valence_arousal", "range": [-1, 1]}
    raw["data"]["sources"].append({"csv": str(va_train)})
    raw["data"]["val"] = raw["data"]["test"] = str(test)
    exp = build_experiment(resolve(raw))
    train_experiment(exp, tmp_path / "run", progress=False)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.ckpt"),
                 "--data", str(test), "--num-workers", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    expected = abaw_mtl_score(saved, "expression", "au", "va")
    assert saved["abaw_mtl_score"] == pytest.approx(expected)
    assert f"ABAW multi-task score: {expected:.4f}" in printed
    assert len(CLASSES) == 3  # the toy classes VA_OF_CLASS covers


def test_evaluate_prints_no_abaw_score_without_va(tmp_path, capsys):
    files = write_dataset(tmp_path / "toy", n_expr=40, n_au=40, n_eval=30)
    exp = build_experiment(resolve(raw_config(files, max_steps=4, val_every_steps=4, checkpoint_every_steps=4)))
    train_experiment(exp, tmp_path / "run", progress=False)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
                 "--data", str(files["test"]), "--num-workers", "0"]) == 0
    assert "ABAW" not in capsys.readouterr().out
