"""Evaluation under DDP: a 2-process CPU run (gloo) reports the metrics a single process gives for
the same checkpoint, counting each evaluation sample once, identity verification included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from distmtl.config import resolve
from distmtl.evaluation.metrics import PRIMARY_METRIC
from distmtl.training.evaluate import collect_outputs
from distmtl.training.experiment import build_experiment
from distmtl.training.module import metrics_from_outputs
from distmtl.training.runner import datamodule_from_experiment, load_module
from toydata import AUS, CLASSES, TABLE, make_image

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")]

TRAIN_PEOPLE = [f"p{i}" for i in range(4)]
HELD_OUT = [f"q{i}" for i in range(5)]


def write_people(root: Path) -> dict[str, Path]:
    """Expressions + AUs + identity; val and test are held-out people with odd row counts (21 and
    23), so two processes get unequal shards (one padded by the sampler)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    files = {}
    plan = [("expr", TRAIN_PEOPLE, 10, True, False), ("au", TRAIN_PEOPLE, 10, False, True),
            ("val", HELD_OUT, None, True, True), ("test", HELD_OUT, None, True, True)]
    for split, people, n, with_expr, with_au in plan:
        rows = []
        count = n * len(people) if n else (21 if split == "val" else 23)
        for i in range(count):
            person = people[i % len(people)]
            k = int(rng.integers(len(CLASSES)))
            aus = (rng.random(len(AUS)) < TABLE[k]).astype(int)
            rel = f"img/{split}_{i}.png"
            pixels = make_image(rng, k, aus).astype(int)
            pixels[28:, :] = 40 * (int(person[1:]) + 1)  # a per-person band
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / rel)
            row = {"image": rel, "identity": person, "expression": CLASSES[k] if with_expr else ""}
            row.update({a: (str(v) if with_au else "") for a, v in zip(AUS, aus)})
            rows.append(row)
        files[split] = root / f"{split}.csv"
        pd.DataFrame(rows).to_csv(files[split], index=False)
    return files


def config(files: dict[str, Path], out: Path) -> dict:
    return {
        "name": "ddp_eval",
        "tasks": {"expression": {"kind": "multiclass", "labels": list(CLASSES)},
                  "au": {"kind": "multilabel", "labels": list(AUS)},
                  "identity": {"kind": "identity"}},
        "data": {"sources": [{"csv": str(files["expr"])}, {"csv": str(files["au"])}],
                 "val": str(files["val"]), "test": str(files["test"]),
                 "image_size": 32, "batch_size": 8, "eval_batch_size": 4, "num_workers": 0},
        "model": {"backbone": "test_resnet"},
        "optim": {"lr": 0.003, "warmup_steps": 1},
        "train": {"max_steps": 4, "val_every_steps": 2, "checkpoint_every_steps": 2},
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "enable_progress_bar": False},
        "output": {"dir": str(out)},
    }


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    files = write_people(root)
    out = root / "run"
    raw = config(files, out)
    path = root / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "distmtl.cli", "train", "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=300)
    return raw, out, proc


def single_process_metrics(raw: dict, checkpoint: Path, split: str) -> tuple[dict, int]:
    one = dict(raw, trainer=dict(raw["trainer"], devices=1, strategy="auto"))
    exp = build_experiment(resolve(one))
    module = load_module(checkpoint)
    collected = collect_outputs(module, datamodule_from_experiment(exp).eval_dataloader(split))
    return metrics_from_outputs(module.tasks, collected), len(collected["expression"][0])


def assert_same_metrics(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for task, values in expected.items():
        for name, value in values.items():
            if isinstance(value, float):
                assert got[task][name] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (task, name)
            elif isinstance(value, (int, str)) or value is None:
                assert got[task][name] == value, (task, name)


def test_every_rank_finishes_and_only_rank_zero_prints(ddp_run):
    _, out, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint:") == 1
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


@pytest.mark.parametrize("split, rows", [("val", 21), ("test", 23)])
def test_two_process_metrics_equal_one_process_evaluation_of_the_checkpoint(ddp_run, split, rows):
    raw, out, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "metrics.json").read_text())
    expected, n = single_process_metrics(raw, Path(results["checkpoint"]), split)
    assert n == rows
    assert results["eval_samples"][split] == rows  # each sample once: not 2x, not padded
    assert expected["identity"]["verification_pairs"] > 0
    assert_same_metrics(results[split], expected)


def test_validation_during_ddp_training_scores_the_checkpoint_like_one_process(ddp_run):
    raw, out, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = pd.read_csv(out / "logs" / "metrics.csv")
    scores = log[["step", "val/score"]].dropna()
    assert len(scores) == 2  # validation at steps 2 and 4
    expected, _ = single_process_metrics(raw, out / "checkpoints" / "last.ckpt", "val")
    primaries = [expected[t][PRIMARY_METRIC[kind]] for t, kind in
                 (("expression", "multiclass"), ("au", "multilabel"), ("identity", "identity"))
                 if expected[t].get(PRIMARY_METRIC[kind]) is not None
                 and not np.isnan(expected[t][PRIMARY_METRIC[kind]])]
    # the last validation ran on the weights saved as last.ckpt (no step after it)
    assert float(scores["val/score"].iloc[-1]) == pytest.approx(float(np.mean(primaries)), rel=1e-5)
