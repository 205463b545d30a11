"""End to end on CPU with tiny data: training helps, evaluate matches scikit-learn, compare resumes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import f1_score

from distmtl.config import resolve
from distmtl.training.evaluate import collect_outputs, evaluate_checkpoint
from distmtl.training.experiment import build_experiment
from distmtl.training.runner import datamodule_from_experiment, load_module, module_from_experiment, train_experiment
from distmtl.study.compare import run_compare
from distmtl.training.module import metrics_from_outputs
from toydata import raw_config, write_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory):
    exp = build_experiment(resolve(raw_config(files)))
    out = tmp_path_factory.mktemp("run")
    results = train_experiment(exp, out, progress=False)
    return exp, out, results


def test_two_epochs_improve_validation_over_untrained(trained):
    exp, out, results = trained
    torch.manual_seed(0)
    untrained = module_from_experiment(exp)
    loader = datamodule_from_experiment(exp).eval_dataloader("val")
    before = metrics_from_outputs(untrained.tasks, collect_outputs(untrained, loader))
    after = results["val"]
    assert results["steps"] == 30  # 2 epochs of 15 batches
    assert after["expression"]["macro_f1"] > before["expression"]["macro_f1"] + 0.2
    assert after["au"]["mean_f1"] > before["au"]["mean_f1"] + 0.1
    assert (out / "checkpoints" / "best.ckpt").exists() and (out / "checkpoints" / "last.ckpt").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 30
    assert (out / "logs" / "metrics.csv").exists()


def test_evaluate_equals_scikit_learn(trained, files):
    _, out, _ = trained
    ckpt = out / "checkpoints" / "best.ckpt"
    metrics, _ = evaluate_checkpoint(ckpt, files["test"], num_workers=0)
    module = load_module(ckpt)
    exp = build_experiment(resolve(raw_config(files)))
    outputs = collect_outputs(module, datamodule_from_experiment(exp).eval_dataloader("test"))
    logits, targets, _ = outputs["expression"]
    expected = f1_score(targets.argmax(1).numpy(), logits.argmax(1).numpy(), average="macro")
    assert metrics["expression"]["macro_f1"] == pytest.approx(expected, abs=1e-6)
    au_logits, au_targets, _ = outputs["au"]
    per_label = [f1_score(au_targets[:, j].numpy(), (torch.sigmoid(au_logits[:, j]) > 0.5).numpy(),
                          zero_division=0) for j in range(au_targets.shape[1])]
    assert metrics["au"]["mean_f1"] == pytest.approx(float(np.mean(per_label)), abs=1e-6)


def test_compare_has_every_variant_and_resume_skips_finished_runs(files, tmp_path, capsys):
    raw = raw_config(files, max_steps=8, val_every_steps=8)
    config = resolve(raw)
    result = run_compare(config, tmp_path, seeds=2, progress=False)
    table = result["table"]
    for name in ("single", "mtl", "coann", "dm", "oracle"):
        assert name in set(result["summary"]["variant"])
    assert "expression" in table and "au" in table
    for f in ("results.csv", "results.md", "results.png", "runs.csv"):
        assert (tmp_path / f).exists()
    md = (tmp_path / "results.md").read_text()
    assert "gap" in md.lower()
    capsys.readouterr()
    again = run_compare(config, tmp_path, seeds=2, progress=False)
    printed = capsys.readouterr().out
    assert printed.count("cached") == 14 and "training" not in printed
    assert again["summary"]["mean"].tolist() == result["summary"]["mean"].tolist()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_ddp_on_cpu_trains_and_checkpoint_loads(files, tmp_path):
    raw = raw_config(files, max_steps=4, val_every_steps=4)
    raw["trainer"].update(devices=2, strategy="ddp", accelerator="cpu")
    raw["relatedness"] = []
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "distmtl.cli", "train", "--config", str(cfg),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert set(module.tasks) == {"expression", "au"}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 4


def test_learned_coactivation_is_mean_label_probability_per_predicted_class():
    from distmtl.relatedness.estimate import coactivation

    logits_a = torch.tensor([[2.0, 0.0], [3.0, 1.0], [0.0, 1.0]])  # predicted: 0, 0, 1
    logits_b = torch.tensor([[0.0, 100.0], [0.0, -100.0], [100.0, 0.0]])
    means, counts = coactivation(logits_a, torch.sigmoid(logits_b))  # what training writes
    assert counts.tolist() == [2.0, 1.0]
    torch.testing.assert_close(torch.as_tensor(means), torch.tensor([[0.5, 0.5], [1.0, 0.5]], dtype=torch.float64))


def test_training_writes_coactivation_beside_prior(trained):
    _, out, _ = trained
    assert (out / "coactivation_expression_au.png").stat().st_size > 1000
    assert (out / "coactivation_expression_au.csv").exists()


def test_single_task_batch_matches_label_exposure_or_takes_full_batch(files):
    from distmtl.study.compare import single_task_batch, variant_runs

    exp = build_experiment(resolve(raw_config(files)))  # batch 16, two sources, equal sampling
    assert single_task_batch(exp, "expression") == 8 and single_task_batch(exp, "au") == 8
    runs = variant_runs(exp, "single")
    assert [r[1].config["data"]["batch_size"] for r in runs] == [8, 8]
    assert exp.config["data"]["batch_size"] == 16
    exp.config["compare"]["single_task_batch"] = "full"
    assert single_task_batch(exp, "au") == 16


def test_single_task_runs_share_the_whole_backbone_whatever_task_stages(files):
    from distmtl.study.compare import run_hash, variant_runs

    raw = raw_config(files)
    plain = build_experiment(resolve(raw))
    raw["model"] = {**raw.get("model", {}), "task_stages": 1}
    split = build_experiment(resolve(raw))
    singles = variant_runs(split, "single")
    assert [r[1].config["model"]["task_stages"] for r in singles] == [0, 0]
    assert [run_hash(r[1], 0) for r in singles] == [run_hash(r[1], 0) for r in variant_runs(plain, "single")]
    (_, mtl, _), = variant_runs(split, "mtl")
    assert mtl.config["model"]["task_stages"] == 1


def test_parallel_compare_starts_the_longest_runs_first(files, tmp_path):
    from distmtl.study.compare import variant_runs
    from distmtl.study.parallel import PlannedRun, expected_cost, longest_first

    exp = build_experiment(resolve(raw_config(files)), with_oracle=True)
    runs = [PlannedRun(v, name, 0, rep, e, tmp_path / name, "h")
            for v in ("single", "mtl", "coann", "coann+dm", "oracle") for name, e, rep in variant_runs(exp, v)]
    assert [r.name for r in runs][:2] == ["single/expression", "single/au"]
    assert [expected_cost(r) for r in runs] == [(1, 0), (1, 0), (2, 0), (2, 1), (2, 3), (2, 0)]
    assert [r.name for r in longest_first(runs)] == ["coann+dm", "coann", "mtl", "oracle",
                                                     "single/expression", "single/au"]


def test_pos_weight_auto_is_negatives_over_positives_of_annotated_entries(files):
    from distmtl.training.runner import resolve_pos_weights

    raw = raw_config(files)
    raw["losses"] = {"au": {"pos_weight": "auto"}}
    exp = build_experiment(resolve(raw))
    weights = resolve_pos_weights(exp)["losses"]["au"]["pos_weight"]
    src = next(s for s in exp.train_sources if "au" in s.annotated_tasks)
    t, m = src.targets["au"], src.masks["au"]
    expected = np.clip(((1 - t) * m).sum(0) / np.maximum((t * m).sum(0), 1), 1, 10)
    np.testing.assert_allclose(weights, expected, atol=1e-4)
    module = module_from_experiment(exp)
    assert torch.is_tensor(module.loss_options["au"]["pos_weight"])


def test_each_epoch_draws_a_new_order_under_lightning(files, tmp_path):
    from distmtl.training.runner import make_trainer

    exp = build_experiment(resolve(raw_config(files, max_steps=30, val_every_steps=30)), with_eval=False)
    dm = datamodule_from_experiment(exp)
    seen = []
    original = dm.sampler.iter_global_batches

    def recording(start=0):
        seen.append(dm.sampler.epoch)
        return original(start)

    dm.sampler.iter_global_batches = recording
    trainer = make_trainer(exp.config, tmp_path, progress=False)
    trainer.fit(module_from_experiment(exp), datamodule=dm)
    assert seen == [0, 1]  # 15 batches per epoch, 30 steps


def test_compare_resumes_an_interrupted_run_from_its_last_checkpoint(files, tmp_path, monkeypatch):
    import distmtl.study.parallel as parallel

    config = resolve(raw_config(files, max_steps=8, val_every_steps=8))
    run_compare(config, tmp_path, seeds=1, variants=["mtl"], progress=False)
    run_dir = tmp_path / "runs" / "mtl" / "seed0"
    first = json.loads((run_dir / "metrics.json").read_text())
    marker = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(dict(marker, status="started")))  # as if killed
    (run_dir / "metrics.json").unlink()
    calls = []
    original = parallel.train_experiment

    def spy(*args, **kwargs):
        calls.append(kwargs.get("resume"))
        return original(*args, **kwargs)

    monkeypatch.setattr(parallel, "train_experiment", spy)
    run_compare(config, tmp_path, seeds=1, variants=["mtl"], progress=False)
    assert calls == [True]
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["steps"] == 8 and again["test"] == first["test"]
