"""``distmtl export``: the model folder, its JSON config, loading without pickle, ONNX."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import distmtl
from distmtl.errors import DistmtlError
from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS
from test_predict import shared_tiny_run  # tests/ is on sys.path under pytest's default import mode


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return shared_tiny_run(tmp_path_factory)


def _run_cli(*argv) -> int:
    from distmtl.cli import main

    return main([str(a) for a in argv])


def test_config_holds_everything_needed_to_run_the_model(tiny_run):
    from distmtl.inference.export import file_sha256

    config = json.loads((tiny_run.model / "config.json").read_text())
    assert config["format"] == "distmtl-model" and config["format_version"] == 1
    assert config["distmtl_version"] == distmtl.__version__
    assert config["model"]["backbone"] == "test_resnet" and config["model"]["in_chans"] == 3
    assert list(config["tasks"]) == ["expression", "au", "va"]
    assert config["tasks"]["expression"] == {"kind": "multiclass", "labels": list(BASIC_EXPRESSIONS)}
    assert config["tasks"]["au"]["labels"] == list(AUS_17)
    assert config["tasks"]["va"]["range"] == [-1.0, 1.0]
    assert config["preprocessing"] == {"size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3,
                                       "interpolation": "bilinear"}
    assert list(config["thresholds"]["au"]) == list(AUS_17)
    assert all(0.0 < t < 1.0 for t in config["thresholds"]["au"].values())
    assert config["calibration"]["au"]["source"] == str(tiny_run.csv)  # the experiment's data.val
    assert config["data_summary"]["sources"][0]["size"] == 40
    assert config["weights"]["sha256"] == file_sha256(tiny_run.model / "model.safetensors")


def test_val_csv_and_no_calibration(tiny_run, tmp_path):
    from distmtl.inference.export import calibrate, export_model
    from distmtl.training.runner import load_module

    config = export_model(tiny_run.checkpoint, tmp_path / "plain", calibrate_thresholds=False)
    assert set(config["thresholds"]["au"].values()) == {0.5}
    calibrated = json.loads((tiny_run.model / "config.json").read_text())["thresholds"]
    config = export_model(tiny_run.checkpoint, tmp_path / "val", val=tiny_run.csv)
    assert config["thresholds"] == calibrated
    with pytest.raises(DistmtlError, match="nope.csv: CSV file not found"):
        export_model(tiny_run.checkpoint, tmp_path / "x", val=tmp_path / "nope.csv")
    module = load_module(tiny_run.checkpoint)
    module.config["data"]["val"] = str(tmp_path / "moved.csv")  # the experiment's val data is gone
    thresholds, info = calibrate(module, None)
    assert thresholds == {} and "data.val unreadable" in info["au"]["note"]


def test_loading_never_unpickles(tiny_run, monkeypatch):
    from distmtl.inference.predictor import Predictor

    reference = Predictor.from_pretrained(tiny_run.model, device="cpu").predict(tiny_run.images[:4])

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling in the loading path")

    class Refuse(pickle.Unpickler):
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refuse)
    frame = Predictor.from_pretrained(tiny_run.model, device="cpu").predict(tiny_run.images[:4])
    assert frame.equals(reference)


def test_broken_model_folders_are_one_line_errors(tiny_run, tmp_path):
    from distmtl.inference.predictor import Predictor

    folder = tmp_path / "broken"
    folder.mkdir()
    with pytest.raises(DistmtlError, match="config.json: not found"):
        Predictor.from_pretrained(folder)
    config = json.loads((tiny_run.model / "config.json").read_text())
    # without a recorded SHA-256 (the weights check comes first: tests/test_bad_inputs_2.py)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "weights"}))
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(DistmtlError, match="model.safetensors: not a readable safetensors file"):
        Predictor.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(dict(config, format_version=99)))
    with pytest.raises(DistmtlError, match="format_version 99 is newer"):
        Predictor.from_pretrained(folder)
    with pytest.raises(DistmtlError, match="model folder not found"):
        Predictor.from_pretrained(tmp_path / "nowhere")


def test_onnx_outputs_equal_pytorch(tiny_run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from distmtl.inference.predictor import Predictor

    out = tmp_path / "onnx_model"
    assert _run_cli("export", "--checkpoint", tiny_run.checkpoint, "--out", out, "--onnx", "--no-calibrate") == 0
    assert "model.onnx" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    names = ["expression_logits", "expression_probs", "au_logits", "au_probs", "va_values"]
    assert config["onnx"]["outputs"] == names
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    assert session.get_inputs()[0].name == "image"
    meta = json.loads(session.get_modelmeta().custom_metadata_map["distmtl_config"])
    assert meta["tasks"]["au"]["labels"] == list(AUS_17)
    predictor = Predictor.from_pretrained(out, device="cpu")
    for batch in (1, 5):  # the batch axis is dynamic (export traced 2)
        x = torch.randn(batch, 3, 32, 32)
        got = dict(zip(names, session.run(None, {"image": x.numpy()})))
        with torch.no_grad():
            logits, _ = predictor.net(x)
        probs = predictor.forward(x)
        for task in ("expression", "au"):
            np.testing.assert_allclose(got[f"{task}_logits"], logits[task].numpy(), atol=1e-4)
            np.testing.assert_allclose(got[f"{task}_probs"], probs[task], atol=1e-4)
        np.testing.assert_allclose(got["va_values"], probs["va"], atol=1e-4)
