"""docs/multi-gpu.md, checked as far as a CPU machine allows: its trainer block trains with torchrun
on 2 CPU processes, and under SLURM's variables Lightning takes the ranks from SLURM."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from toydata import raw_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "multi-gpu.md"


def doc_config() -> dict:
    """The first YAML block of the page (the one marked as the trainer block)."""
    block = re.search(r"```yaml\n(# trainer block.*?)```", DOC.read_text(), re.S)
    assert block, "docs/multi-gpu.md lost its trainer block"
    return yaml.safe_load(block.group(1))


def on_cpu(doc: dict) -> dict:
    trainer = dict(doc["trainer"], accelerator="cpu", devices=2, num_nodes=1, precision="32-true")
    trainer.pop("sync_batchnorm")  # SyncBatchNorm runs on GPUs only
    return trainer


def test_doc_config_is_a_valid_config():
    from distmtl.config import resolve

    doc = doc_config()
    raw = {"tasks": {"t": {"kind": "multiclass", "labels": ["a", "b"]}}, "data": {"sources": ["x.csv"]}, **doc}
    config = resolve(raw)
    assert config["trainer"]["num_nodes"] == 2 and config["trainer"]["sync_batchnorm"] is True


def test_slurm_variables_give_lightning_the_ranks(monkeypatch, tmp_path):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from distmtl.config import resolve
    from distmtl.training.runner import make_trainer

    env = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "0", "SLURM_JOB_NAME": "distmtl-faces", "SLURM_JOB_ID": "42",
           "SLURM_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # a Trainer on rank 1 sets Lightning's global rank-zero flags: restore them afterwards
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pl_rank_zero

    for holder in {fabric_rank_zero.rank_zero_only, pl_rank_zero.rank_zero_only}:
        monkeypatch.setattr(holder, "rank", getattr(holder, "rank", 0), raising=False)
    raw = {"tasks": {"t": {"kind": "multiclass", "labels": ["a", "b"]}}, "data": {"sources": ["x.csv"]},
           "trainer": on_cpu(doc_config()), "train": {"loggers": ["csv"]}}
    trainer = make_trainer(resolve(raw), tmp_path, progress=False)
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, SLURMEnvironment)
    assert (cluster.global_rank(), cluster.local_rank(), cluster.world_size()) == (1, 1, 2)
    assert trainer.world_size == 2 and trainer.global_rank == 1


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which("torchrun") is None
                    and not (Path(sys.executable).parent / "torchrun").exists(), reason="no torchrun")
def test_doc_trainer_block_trains_with_torchrun_on_two_cpu_processes(tmp_path):
    files = write_dataset(tmp_path / "data", n_expr=24, n_au=24, n_eval=12)
    raw = raw_config(files, max_steps=3, val_every_steps=3, checkpoint_every_steps=3)
    doc = doc_config()
    raw["trainer"] = on_cpu(doc)
    raw["model"].update(doc["model"])
    raw["train"]["loggers"] = ["csv"]
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(raw))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "distmtl.cli", "train",
                           "--config", str(config), "--out", str(tmp_path / "run"), "--resume"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
