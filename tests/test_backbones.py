"""Backbones: any timm name (hf-hub: included), offline weights files, data config from the backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from distmtl.config import resolve
from distmtl.errors import DistmtlError
from distmtl.models import MultiTaskNet, backbone_data_config, check_backbone
from distmtl.tasks import Task

TASKS = {"t": Task("t", "multiclass", ("a", "b"))}
HUB_ID = "distmtl-test/tiny-resnet"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_DATA = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "input_size": [3, 40, 40], "interpolation": "bicubic"}


def _config(model: dict, data: dict | None = None) -> dict:
    return resolve({"tasks": {"t": {"kind": "multiclass", "labels": ["a", "b"]}},
                    "data": {"sources": ["x.csv"], **(data or {})}, "model": model})


def _source_model(seed: int = 0, num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=num_classes)


def _same_backbone(net: MultiTaskNet, source: torch.nn.Module) -> bool:
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    got = net.backbone.state_dict()
    return set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_loads_into_the_backbone(tmp_path, suffix):
    source = _source_model(seed=3)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), path)
    else:
        torch.save({"state_dict": source.state_dict()}, path)  # a training checkpoint's wrapper
    net = MultiTaskNet(TASKS, backbone="test_resnet", weights=path)
    assert _same_backbone(net, source)
    assert not _same_backbone(MultiTaskNet(TASKS, backbone="test_resnet"), source)


def test_weights_file_adapts_the_first_convolution_to_grayscale(tmp_path):
    source = _source_model()
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    net = MultiTaskNet(TASKS, backbone="test_resnet", in_chans=1, weights=tmp_path / "w.safetensors")
    expected = source.state_dict()["conv1.0.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(net.backbone.state_dict()["conv1.0.weight"], expected)


def test_weights_of_another_architecture_are_an_error_naming_keys(tmp_path):
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(DistmtlError, match=r"model.weights: .*other.safetensors: .*(missing|shapes)"):
        MultiTaskNet(TASKS, backbone="test_resnet", weights=tmp_path / "other.safetensors")


class NotATensor:
    pass


def test_a_pickled_object_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.0.weight": NotATensor()}, path)
    with pytest.raises(DistmtlError, match=r"model.weights: .*evil.pt: not a safetensors file or a plain state dict"):
        MultiTaskNet(TASKS, backbone="test_resnet", weights=path)
    with pytest.raises(DistmtlError, match=r"model.weights: .*nothere.pt: file not found"):
        MultiTaskNet(TASKS, backbone="test_resnet", weights=tmp_path / "nothere.pt")


def test_data_config_comes_from_the_pretrained_backbone_unless_set():
    cfg = _config({"backbone": "resnet18.a1_in1k", "pretrained": True})
    timm_cfg = timm.models.get_pretrained_cfg("resnet18.a1_in1k").to_dict()
    expected = timm.data.resolve_data_config(pretrained_cfg=timm_cfg)
    assert cfg["data"]["image_size"] == expected["input_size"][1] == 224
    assert cfg["data"]["mean"] == pytest.approx(list(expected["mean"]))
    assert cfg["data"]["std"] == pytest.approx(list(expected["std"]))
    assert cfg["data"]["interpolation"] == expected["interpolation"] == "bicubic"
    assert cfg["_data_from_backbone"] == ["image_size", "mean", "std", "interpolation"]
    kept = _config({"backbone": "resnet18.a1_in1k", "pretrained": True}, {"image_size": 96, "mean": [0.5, 0.5, 0.5]})
    assert kept["data"]["image_size"] == 96 and kept["data"]["mean"] == [0.5, 0.5, 0.5]
    assert kept["data"]["std"] == pytest.approx(list(expected["std"]))
    plain = _config({"backbone": "resnet18.a1_in1k"})  # random init: nothing to match
    assert (plain["data"]["image_size"], plain["data"]["mean"], plain["data"]["interpolation"]) == \
        (64, [0.5, 0.5, 0.5], "bilinear")


def test_bad_data_config_values_are_one_line_errors():
    with pytest.raises(DistmtlError, match=r"data.interpolation: unknown mode 'bicubik' \(did you mean: bicubic"):
        _config({}, {"interpolation": "bicubik"})
    with pytest.raises(DistmtlError, match=r"data.image_size: expected a positive integer"):
        _config({}, {"image_size": 0})


def test_unknown_backbone_suggests_and_mentions_the_hub_prefix():
    with pytest.raises(DistmtlError, match=r"unknown timm model 'resnet181'.*did you mean.*hf-hub:org/name"):
        check_backbone("resnet181")
    check_backbone("hf-hub:timm/resnet18.a1_in1k")  # resolved by timm when the model is built


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache (HF_HOME/hub, the hub library's own layout) holding one timm model, offline."""
    import huggingface_hub.constants as constants
    from timm.models import save_for_hf

    cache = tmp_path / "hf_home" / "hub"
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    source = _source_model(seed=7)
    save_for_hf(source, str(snapshot), safe_serialization=True, data_config=dict(HUB_DATA))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return source


def test_hf_hub_backbone_from_the_local_cache_offline(hub_cache):
    name = f"hf-hub:{HUB_ID}"
    assert backbone_data_config(name) == {"image_size": 40, "mean": pytest.approx(HUB_DATA["mean"]),
                                          "std": pytest.approx(HUB_DATA["std"]), "interpolation": "bicubic"}
    cfg = _config({"backbone": name, "pretrained": True})
    assert cfg["data"]["image_size"] == 40 and cfg["data"]["interpolation"] == "bicubic"
    net = MultiTaskNet(TASKS, backbone=name, pretrained=True)
    assert _same_backbone(net, hub_cache)
    outputs, _ = net(torch.zeros(2, 3, 40, 40))
    assert outputs["t"].shape == (2, 2)


def test_hf_hub_backbone_missing_from_the_cache_offline_is_one_line(hub_cache):
    with pytest.raises(DistmtlError, match=r"model.backbone: cannot load 'hf-hub:distmtl-test/absent': not in "
                                         r"the local Hugging Face cache .* and HF_HUB_OFFLINE is set"):
        _config({"backbone": "hf-hub:distmtl-test/absent", "pretrained": True})
    with pytest.raises(DistmtlError, match=r"model.backbone: cannot load 'hf-hub:distmtl-test/absent'"):
        MultiTaskNet(TASKS, backbone="hf-hub:distmtl-test/absent", pretrained=True)


def test_dry_run_checks_the_weights_file(tmp_path):
    from distmtl.training.experiment import check_model_and_weighting

    cfg = _config({"backbone": "test_resnet", "weights": str(tmp_path / "missing.safetensors")})
    with pytest.raises(DistmtlError, match=r"model.weights: .*missing.safetensors: file not found"):
        check_model_and_weighting(cfg)
    assert Path(cfg["model"]["weights"]).name == "missing.safetensors"


def test_an_exported_hub_backbone_rebuilds_without_the_hub(hub_cache, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from distmtl.inference.export import build_net
    from distmtl.models import hub_architecture

    arch = hub_architecture(f"hf-hub:{HUB_ID}")
    assert arch["name"] == "test_resnet" and "num_classes" not in arch["args"]
    trained = MultiTaskNet(TASKS, backbone=f"hf-hub:{HUB_ID}", pretrained=True)
    config = {"model": {"backbone": f"hf-hub:{HUB_ID}", "in_chans": 3, "head": "linear", "hidden": 8,
                        "drop_rate": 0.0, "backbone_kwargs": {}, "timm_model": arch},
              "tasks": {"t": {"kind": "multiclass", "labels": ["a", "b"]}}}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # the Hub is out of reach
    rebuilt = build_net(config)
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.rand(2, 3, 40, 40)
    torch.testing.assert_close(rebuilt.eval()(x)[0]["t"], trained.eval()(x)[0]["t"])
