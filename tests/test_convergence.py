"""Training to a plateau, parallel compare runs, and the threshold-free / calibrated metrics."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from distmtl.config import plateau_patience, resolve
from distmtl.errors import DistmtlError
from distmtl.evaluation.metrics import calibrate_thresholds, task_metrics
from distmtl.study.compare import run_compare
from distmtl.study.report import RunRecord, results_markdown, summarise
from distmtl.tasks import Task
from distmtl.training.experiment import build_experiment
from distmtl.training.runner import train_experiment
from toydata import raw_config, write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=48, n_au=48, n_eval=32)


def test_plateau_stops_when_the_score_stops_improving(files, tmp_path):
    # lr 1e-12: the weights do not change (only BatchNorm's running statistics settle), so the
    # validation score soon stops improving and the run must stop patience_steps after its best
    # check, long before the cap of 400 steps
    raw = raw_config(files, max_steps=400, val_every_steps=4, until="plateau", patience_steps=8,
                     min_delta=0.001)
    raw["optim"] = {"lr": 1e-12, "warmup_steps": 0}
    metrics = train_experiment(build_experiment(resolve(raw)), tmp_path, progress=False)
    assert metrics["stopped"] == "plateau" and metrics["plateau_reached"] is True
    assert metrics["steps"] < 100 and metrics["steps"] == metrics["best_step"] + 8  # 2 checks of 4 steps
    log = pd.read_csv(tmp_path / "logs" / "metrics.csv")[["step", "val/score"]].dropna()
    best = log["val/score"][log["step"] + 1 <= metrics["best_step"]].max()
    assert (log["val/score"][log["step"] + 1 > metrics["best_step"]] < best + 0.001).all()


def test_no_plateau_is_declared_before_min_steps(files, tmp_path):
    raw = raw_config(files, max_steps=400, val_every_steps=4, until="plateau", patience_steps=8,
                     min_delta=0.001, min_steps=20)
    raw["optim"] = {"lr": 1e-12, "warmup_steps": 0}
    metrics = train_experiment(build_experiment(resolve(raw)), tmp_path, progress=False)
    # checks from step 20 on: the first sets the best, two more without improvement stop the run
    assert metrics["stopped"] == "plateau" and metrics["steps"] >= 28 and metrics["steps"] < 100


def test_plateau_mode_reports_the_cap_when_the_score_keeps_improving(files, tmp_path):
    raw = raw_config(files, max_steps=8, val_every_steps=4, until="plateau", patience_steps=400)
    metrics = train_experiment(build_experiment(resolve(raw)), tmp_path, progress=False)
    assert metrics["stopped"] == "cap" and metrics["plateau_reached"] is False and metrics["steps"] == 8


def test_plateau_options_are_validated_and_patience_counts_validation_checks():
    base = raw_config({k: "x.csv" for k in ("expr", "au", "val", "test", "all", "table")})
    with pytest.raises(DistmtlError, match="train.until: expected one of steps, plateau, got 'plateu'"):
        resolve({**base, "train": {"until": "plateu"}})
    with pytest.raises(DistmtlError, match="train.patience_steps: expected a positive integer"):
        resolve({**base, "train": {"patience_steps": 0}})
    with pytest.raises(DistmtlError, match="train.min_delta"):
        resolve({**base, "train": {"min_delta": -1}})
    assert plateau_patience({"val_every_steps": 100, "max_steps": 1000, "patience_steps": 250}) == 3


def test_report_flags_a_variant_stopped_at_the_cap():
    records = [RunRecord("single", s, "t", "macro_f1", 0.5 + s / 100, 300 + s, "plateau") for s in range(2)]
    records += [RunRecord("mtl", s, "t", "macro_f1", 0.6, 1000, why) for s, why in enumerate(["cap", "plateau"])]
    summary = summarise(records).set_index("variant")
    assert summary.loc["single", "plateau"] == "2/2" and summary.loc["mtl", "plateau"] == "1/2"
    assert summary.loc["mtl", "at_cap"] == 1 and summary.loc["single", "steps"] == 300.5
    md = results_markdown(summarise(records))
    assert "NOT AT CONVERGENCE" in md and "plain MTL (1 run(s))" in md
    done = [RunRecord("single", 0, "t", "macro_f1", 0.5, 300, "plateau")]
    assert "Every run reached its plateau" in results_markdown(summarise(done))


@pytest.mark.slow
def test_compare_jobs_2_equals_jobs_1_and_draws_every_variant_curve(files, tmp_path, monkeypatch):
    import distmtl.study.compare as compare

    captured = []
    original = compare.plot_variant_curves
    monkeypatch.setattr(compare, "plot_variant_curves",
                        lambda runs, *a, **k: captured.append(runs) or original(runs, *a, **k))
    config = resolve(raw_config(files, max_steps=6, val_every_steps=3, until="plateau", patience_steps=3))
    variants = ["single", "coann+dm"]
    one = run_compare(config, tmp_path / "one", seeds=1, variants=variants, progress=False, jobs=1)
    two = run_compare(config, tmp_path / "two", seeds=1, variants=variants, progress=False, jobs=2)
    a, b = (pd.read_csv(tmp_path / d / "runs.csv") for d in ("one", "two"))
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a, b)  # every metric of every run, exactly
    assert set(a["metric"]) >= {"macro_f1", "mean_f1", "mean_ap", "mean_auc", "mean_f1_calibrated"}
    assert (tmp_path / "two" / "validation_curves.png").stat().st_size > 0
    drawn = captured[-1]  # every run's curve reaches the figure, both single-task ones included
    assert sorted(name for _, _, name in drawn) == ["coann+dm", "single/au", "single/expression"]
    assert "validation_curves" in two["paths"] and list(one["summary"]["mean"]) == list(two["summary"]["mean"])
    run = json.loads((tmp_path / "two" / "runs" / "coann+dm" / "seed0" / "metrics.json").read_text())
    assert run["stopped"] in ("plateau", "cap") and run["steps"] <= 6


def _multilabel_case(seed=0, n=80, k=4):
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, k, generator=g) < 0.35).float()
    logits = 2.0 * targets - 1.0 + 1.5 * torch.randn(n, k, generator=g)
    masks = torch.rand(n, k, generator=g) < 0.8
    masks[:, 3] = masks[:, 3] & (targets[:, 3] == 0)  # label 3: no annotated positive
    return Task("au", "multilabel", [f"AU{j}" for j in range(k)]), logits, targets, masks


def test_average_precision_and_auc_equal_scikit_learn_and_skip_undefined_labels():
    task, logits, targets, masks = _multilabel_case()
    metrics = task_metrics(task, logits, targets, masks)
    probs = torch.sigmoid(logits.double()).numpy()
    aps, aucs = [], []
    for j in range(3):
        keep = masks[:, j].numpy()
        aps.append(average_precision_score(targets[keep, j].numpy(), probs[keep, j]))
        aucs.append(roc_auc_score(targets[keep, j].numpy(), probs[keep, j]))
        assert metrics["ap"][f"AU{j}"] == pytest.approx(aps[-1], abs=1e-6)
        assert metrics["auc"][f"AU{j}"] == pytest.approx(aucs[-1], abs=1e-6)
    assert metrics["ap"]["AU3"] is None and metrics["auc"]["AU3"] is None
    assert metrics["mean_ap"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert metrics["mean_auc"] == pytest.approx(np.mean(aucs), abs=1e-6)


def test_calibrated_f1_equals_scikit_learn_at_the_validation_thresholds(files, tmp_path):
    raw = raw_config(files, max_steps=6, val_every_steps=6)
    exp = build_experiment(resolve(raw))
    metrics = train_experiment(exp, tmp_path, progress=False)
    thresholds = metrics["test"]["au"]["calibrated_thresholds"]
    assert thresholds == metrics["val"]["au"]["calibrated_thresholds"]
    # recompute from the saved best checkpoint's test outputs with scikit-learn
    from distmtl.training.evaluate import collect_outputs
    from distmtl.training.runner import datamodule_from_experiment, load_module

    module = load_module(tmp_path / "checkpoints" / "best.ckpt")
    dm = datamodule_from_experiment(exp)
    dm.setup("test")
    with torch.no_grad():
        val, test = (collect_outputs(module, dm.eval_dataloader(s))["au"] for s in ("val", "test"))
    expected = calibrate_thresholds(torch.sigmoid(val[0]), val[1], val[2])
    assert thresholds == pytest.approx(expected.tolist())
    per_label = []
    for j in range(test[0].shape[1]):
        keep = test[2][:, j].numpy()
        pred = torch.sigmoid(test[0][keep, j]).numpy() > thresholds[j]
        per_label.append(f1_score(test[1][keep, j].numpy(), pred, zero_division=0))
    assert metrics["test"]["au"]["mean_f1_calibrated"] == pytest.approx(float(np.mean(per_label)), abs=1e-6)


def test_each_parallel_run_gets_an_equal_share_of_the_cores():
    from distmtl.study.parallel import threads_per_job

    assert threads_per_job(2, cores=16) == 8 and threads_per_job(3, cores=16) == 5
    assert threads_per_job(4, cores=2) == 1 and threads_per_job(1, cores=2) == 2


def test_a_plateau_counted_early_in_a_cosine_schedule_is_warned_about():
    from distmtl.config import early_plateau_warning

    def config(min_steps, schedule="cosine", until="plateau"):
        return {"train": {"until": until, "min_steps": min_steps, "max_steps": 3200},
                "optim": {"schedule": schedule}}

    message = early_plateau_warning(config(1000))
    assert "train.min_steps: 1000" in message and "train.min_steps=2400" in message
    assert early_plateau_warning(config(2400)) is None
    assert early_plateau_warning(config(0, schedule="constant")) is None
    assert early_plateau_warning(config(0, until="steps")) is None


def test_the_demo_config_counts_its_plateau_late_in_the_schedule():
    from distmtl.config import early_plateau_warning, load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "synthfacs_demo.yaml")
    assert early_plateau_warning(config) is None
