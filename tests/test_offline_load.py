"""Rebuilding a model from a checkpoint or an exported folder never goes to the model hub, even
when the run was trained from a pretrained backbone (``model.pretrained: true``)."""

from __future__ import annotations

import pytest
import torch

from distmtl.config import resolve
from distmtl.training.module import MultiTaskModule
from toydata import raw_config


class Downloaded(AssertionError):
    pass


@pytest.fixture
def offline(monkeypatch):
    """Every way timm fetches pretrained weights raises; HF_HUB_OFFLINE is set as well."""
    import huggingface_hub
    import timm.models._builder as builder
    import timm.models._hub as hub

    def refuse(*args, **kwargs):
        raise Downloaded("tried to download pretrained weights")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(builder, "load_pretrained", refuse)
    monkeypatch.setattr(hub, "hf_hub_download", refuse, raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def pretrained_checkpoint(tmp_path):
    """A checkpoint whose config says ``pretrained: true`` (the weights themselves are random)."""
    files = {k: tmp_path / f"{k}.csv" for k in ("expr", "au", "val", "test", "all", "table")}
    raw = raw_config(files)
    raw["relatedness"] = []
    config = resolve(raw)
    torch.manual_seed(0)
    tasks = {"expression": {"kind": "multiclass", "labels": ["Neutral", "Happiness", "Surprise"]},
             "au": {"kind": "multilabel", "labels": ["AU01", "AU12", "AU25"]}}
    module = MultiTaskModule(config, tasks)  # built without a download: pretrained is false here
    config = dict(config, model=dict(config["model"], pretrained=True))
    path = tmp_path / "pretrained.ckpt"
    torch.save({"hyper_parameters": {"config": config, "tasks": tasks, "edges": [], "data_summary": None},
                "state_dict": module.state_dict()}, path)
    return path, module


def test_the_offline_fixture_does_block_a_pretrained_build(offline):
    from distmtl.models import create_backbone

    with pytest.raises(Downloaded):
        create_backbone("test_resnet", 3, pretrained=True)


def test_load_module_of_a_pretrained_run_does_not_download(offline, pretrained_checkpoint):
    from distmtl.training.runner import load_module

    path, original = pretrained_checkpoint
    module = load_module(path)
    assert module.config["model"]["pretrained"] is True  # the run's config is kept as it was
    for key, value in original.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value)


def test_export_and_predictor_of_a_pretrained_run_do_not_download(offline, pretrained_checkpoint, tmp_path):
    from distmtl.inference.export import export_model
    from distmtl.inference.predictor import Predictor

    path, original = pretrained_checkpoint
    export_model(path, tmp_path / "model", calibrate_thresholds=False)
    predictor = Predictor.from_pretrained(tmp_path / "model", device="cpu")
    x = torch.zeros(2, 3, 32, 32)
    original.eval()
    with torch.no_grad():
        expected, _ = original.net(x)
        got, _ = predictor.net(x)
    torch.testing.assert_close(got["expression"], expected["expression"])
