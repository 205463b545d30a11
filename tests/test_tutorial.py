"""docs/tutorial.md, run: its config on a toy dataset laid out as the page says, then its commands."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from distmtl.cli import main
from toydata import write_dataset

DOC = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
FAST = ["train.max_steps=4", "train.val_every_steps=4", "train.checkpoint_every_steps=4"]


def tutorial_config() -> dict:
    block = re.search(r"```yaml\n(name: faces\n.*?)```", DOC.read_text(), re.S)
    assert block, "docs/tutorial.md lost its config"
    return yaml.safe_load(block.group(1))


def commands(prefix: str) -> list[list[str]]:
    """The page's shell lines that start with ``prefix`` (e.g. ``distmtl export``), split into words."""
    lines = re.findall(r"^(distmtl [^\n]+)$", DOC.read_text(), re.M)
    return [line.split()[1:] for line in lines if line.startswith(prefix)]


@pytest.mark.slow
def test_tutorial_from_csvs_to_a_pushed_model(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    project = tmp_path / "my_project"
    write_dataset(project / "data", n_expr=24, n_au=24, n_eval=12)
    (project / "configs").mkdir()
    (project / "configs" / "faces.yaml").write_text(yaml.safe_dump(tutorial_config()))
    monkeypatch.chdir(project)

    dry, train = commands("distmtl train")
    assert main(dry) == 0
    assert "dm:" in capsys.readouterr().out  # the coupling terms the page turns on are listed
    assert main(train + FAST) == 0
    assert Path("runs/faces/checkpoints/best.ckpt").exists()
    for argv in commands("distmtl evaluate") + commands("distmtl export"):
        assert main(argv) == 0, argv
    (predict,) = commands("distmtl predict")
    assert main(predict + ["--quiet"]) == 0
    frame = pd.read_csv("predictions.csv")
    assert len(frame) == len(list(Path("data/img").glob("*.png"))) and "expression" in frame

    class FakeApi:
        def __init__(self, token=None):
            self.operations = []

        def create_repo(self, *args, **kwargs):
            pass

        def create_commit(self, repo_id, operations, **kwargs):
            self.operations = [op.path_in_repo for op in operations]
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    (push,) = commands("distmtl push")
    assert main(push) == 0
    assert "pushed config.json, model.safetensors, README.md to your-org/faces" in capsys.readouterr().out
