"""The Hugging Face Hub: models from a repo id through the local cache (offline), push with a model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from distmtl.cli import main
from distmtl.errors import DistmtlError
from test_predict import shared_tiny_run  # tests/ is on sys.path under pytest's default import mode

REPO = "distmtl-test/tiny-model"
MAIN_COMMIT = "1" * 40
V1_COMMIT = "2" * 40


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return shared_tiny_run(tmp_path_factory)


def _snapshot(repo_dir: Path, commit: str, model_dir: Path, config: dict | None = None) -> None:
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(model_dir / "model.safetensors", snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps(config) if config else (model_dir / "config.json").read_text())


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_run):
    """HF_HOME/hub in the hub library's own layout: refs/main and refs/v1 pointing at two snapshots."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf_home" / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    _snapshot(repo, MAIN_COMMIT, tiny_run.model)
    changed = json.loads((tiny_run.model / "config.json").read_text())
    changed["thresholds"]["au"] = {label: 0.99 for label in changed["thresholds"]["au"]}
    _snapshot(repo, V1_COMMIT, tiny_run.model, changed)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN_COMMIT)
    (repo / "refs" / "v1").write_text(V1_COMMIT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_predictor_from_a_repo_id_reads_the_cache_offline(hub_cache, tiny_run):
    from distmtl import Predictor

    local = Predictor.from_pretrained(tiny_run.model, device="cpu")
    hub = Predictor.from_pretrained(REPO, device="cpu")
    images = tiny_run.images[:3]
    pd.testing.assert_frame_equal(hub.predict(images), local.predict(images))
    assert float(hub.thresholds["au"][0]) != 0.99
    tagged = Predictor.from_pretrained(REPO, device="cpu", revision="v1")
    assert float(tagged.thresholds["au"][0]) == pytest.approx(0.99)


def test_a_repo_missing_from_the_cache_offline_is_one_line(hub_cache):
    from distmtl import Predictor

    with pytest.raises(DistmtlError, match=r"distmtl-test/absent: not a local folder, not in the Hugging Face "
                                           r"cache .* and HF_HUB_OFFLINE is set"):
        Predictor.from_pretrained("distmtl-test/absent")
    with pytest.raises(DistmtlError, match=r"no/such/folder: model folder not found"):
        Predictor.from_pretrained("no/such/folder")


def test_predict_cli_with_a_repo_id(hub_cache, tiny_run, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run.images[0]), "--model", REPO, "--revision", "v1", "-o", str(out),
                 "--quiet"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model"] == f"hf://{REPO}@v1" and meta["complete"]
    assert len(pd.read_csv(out)) == 1


class FakeApi:
    """Records what would be sent to the Hub."""

    def __init__(self, token=None):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, branch, **kwargs):
        self.calls.append(("create_branch", repo_id, branch))

    def create_commit(self, repo_id, operations, revision=None, commit_message=None):
        self.calls.append(("create_commit", repo_id, revision, commit_message))
        self.operations = {op.path_in_repo: op for op in operations}

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"
        return Info()


def _study_model(tiny_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the tiny model whose checkpoint lies in a compare study's layout, with its results.md."""
    study = tmp_path / "study"
    checkpoint = study / "runs" / "coann+dm" / "seed0" / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    (study / "results.md").write_text("**expression** (macro-F1)\n\n| variant | macro_f1 |\n|---|---|\n"
                                      "| single-task | 0.1420 |\n| +both | 0.3708 |\n")
    model = tmp_path / "model"
    shutil.copytree(tiny_run.model, model)
    config = json.loads((model / "config.json").read_text())
    config["source_checkpoint"] = str(checkpoint)
    (model / "config.json").write_text(json.dumps(config))
    return model, study / "results.md"


def test_push_uploads_the_folder_and_a_model_card_in_one_commit(tiny_run, tmp_path):
    from huggingface_hub import ModelCard

    from distmtl.inference.hub import push_model
    from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS

    model, results = _study_model(tiny_run, tmp_path)
    api = FakeApi()
    result = push_model(model, "org/name", api=api, revision="v2")
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "create_commit"]
    assert api.calls[2][2] == "v2"
    assert set(api.operations) == {"config.json", "model.safetensors", "README.md"}
    assert api.operations["model.safetensors"].path_or_fileobj == str(model / "model.safetensors")
    card = api.operations["README.md"].path_or_fileobj.decode()
    assert card == result["card"] and result["results"] == str(results)
    assert ModelCard(card).data.library_name == "distmtl"
    assert ", ".join(BASIC_EXPRESSIONS) in card and ", ".join(AUS_17) in card  # label orders
    assert "resized to 32 x 32 (bilinear" in card and "mean [0.5, 0.5, 0.5]" in card
    assert "## Training data" in card and "| data | 40 |" in card
    assert "## Comparison study" in card and "| +both | 0.3708 |" in card
    assert 'Predictor.from_pretrained("org/name")' in card


def test_push_without_a_study_has_no_results_section(tiny_run):
    from distmtl.inference.hub import push_model

    api = FakeApi()
    result = push_model(tiny_run.model, "org/name", api=api)
    assert result["results"] is None and "## Comparison study" not in result["card"]
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]


def test_push_cli(tiny_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    apis = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: apis.append(FakeApi()) or apis[-1])
    model, _ = _study_model(tiny_run, tmp_path)
    assert main(["push", "--model", str(model), "--repo", "org/name", "--private"]) == 0
    out = capsys.readouterr().out
    assert "pushed config.json, model.safetensors, README.md to org/name" in out
    assert "study results" in out
    assert apis[0].calls[0] == ("create_repo", "org/name", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert main(["push", "--model", str(model), "--repo", "not a repo"]) == 2
