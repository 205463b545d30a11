"""Predictor, ``distmtl predict`` and zero-shot compound expressions on a tiny trained model."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from distmtl.errors import DistmtlError
from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS

N_IMAGES = 40


pytestmark = pytest.mark.usefixtures("one_thread")


def _train_tiny(root: Path) -> SimpleNamespace:
    from distmtl.config import resolve
    from distmtl.training.experiment import build_experiment
    from distmtl.inference.export import export_model
    from distmtl.training.runner import train_experiment

    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, (32 + i % 3, 32, 3), dtype=np.uint8)  # not all model-sized
        Image.fromarray(pixels).save(root / "img" / f"{i:03d}.png")
        rows.append([f"img/{i:03d}.png", BASIC_EXPRESSIONS[i % 7], *rng.integers(0, 2, len(AUS_17)),
                     f"{rng.uniform(-1, 1):.3f}", f"{rng.uniform(-1, 1):.3f}"])
    with open(root / "data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "expression", *AUS_17, "valence", "arousal"])
        writer.writerows(rows)
    config = resolve({
        "name": "tiny",
        "tasks": {"expression": {"kind": "multiclass", "labels": "basic7"},
                  "au": {"kind": "multilabel", "labels": "au17"},
                  "va": {"kind": "regression", "labels": "valence_arousal", "range": [-1, 1]}},
        "data": {"sources": [{"csv": str(root / "data.csv")}], "val": {"csv": str(root / "data.csv"), "name": "val"},
                 "image_size": 32, "batch_size": 8, "eval_batch_size": 16, "num_workers": 0},
        "train": {"max_steps": 5, "val_every_steps": 5, "checkpoint_every_steps": 5},
        "optim": {"warmup_steps": 0},
        "trainer": {"enable_progress_bar": False, "log_every_n_steps": 1},
    })
    results = train_experiment(build_experiment(config), root / "run", progress=False)
    export_model(results["checkpoint"], root / "model")
    return SimpleNamespace(root=root, csv=root / "data.csv", config=config, model=root / "model",
                           checkpoint=Path(results["checkpoint"]),
                           images=sorted((root / "img").glob("*.png")))


def shared_tiny_run(tmp_path_factory) -> SimpleNamespace:
    """A 5-step model on 40 random 32x32 images, trained and exported once per test session."""
    root = tmp_path_factory.getbasetemp() / "distmtl_tiny_run"
    done = root / "done.json"
    if not done.exists():  # test_export.py shares it
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run = _train_tiny(root)
        finally:
            torch.set_num_threads(threads)
        done.write_text(json.dumps({"checkpoint": str(run.checkpoint), "config": run.config}))
    saved = json.loads(done.read_text())
    return SimpleNamespace(root=root, csv=root / "data.csv", config=saved["config"], model=root / "model",
                           checkpoint=Path(saved["checkpoint"]), images=sorted((root / "img").glob("*.png")))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    return shared_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(tiny_run):
    from distmtl.inference.predictor import Predictor

    return Predictor.from_pretrained(tiny_run.model, device="cpu")


EXPECTED_COLUMNS = (
    ["input", "expression", *(f"expression_{c}" for c in BASIC_EXPRESSIONS)]
    + list(AUS_17) + [f"{au}_c" for au in AUS_17] + ["valence", "arousal", "error"]
)
COMPOUND_CLASSES = ["Happily surprised", "Happily disgusted", "Sadly fearful", "Sadly angry",
                    "Sadly surprised", "Sadly disgusted", "Fearfully angry", "Fearfully surprised",
                    "Fearfully disgusted", "Angrily surprised", "Angrily disgusted",
                    "Disgustedly surprised", "Awed"]


def _run_cli(*argv) -> int:
    from distmtl.cli import main

    return main([str(a) for a in argv])


def test_columns_are_the_documented_ones_in_order(predictor, tiny_run, tmp_path):
    assert predictor.columns() == EXPECTED_COLUMNS
    compound = ["compound", *(f"compound_{c}" for c in COMPOUND_CLASSES)]
    assert predictor.columns(compound=True) == EXPECTED_COLUMNS[:-1] + compound + ["error"]
    faces = ["frame", "timestamp", "face_id", "FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight",
             "FaceScore", "x_0", "x_1", "x_2", "x_3", "x_4", "y_0", "y_1", "y_2", "y_3", "y_4"]
    assert predictor.columns(detect=True) == ["input", *faces, *EXPECTED_COLUMNS[1:]]
    frame = predictor.predict(tiny_run.images[:3])
    assert list(frame.columns) == EXPECTED_COLUMNS
    out = tmp_path / "preds.csv"
    assert _run_cli("predict", *tiny_run.images[:5], "--model", tiny_run.model, "-o", out, "--quiet") == 0
    assert list(pd.read_csv(out).columns) == EXPECTED_COLUMNS
    assert len(pd.read_csv(out)) == 5


def test_predictions_equal_the_lightning_model(predictor, tiny_run):
    from distmtl.training.experiment import build_experiment
    from distmtl.training.runner import datamodule_from_experiment, load_module

    module = load_module(tiny_run.checkpoint)
    loader = datamodule_from_experiment(build_experiment(tiny_run.config)).eval_dataloader("val")
    images = torch.cat([batch["image"] for batch in loader])
    with torch.no_grad():
        outputs, _ = module(images)
    frame = predictor.predict(tiny_run.images, batch_size=7)  # the val CSV lists the same images
    assert frame["input"].tolist() == [str(p) for p in tiny_run.images]
    expr = frame[[f"expression_{c}" for c in BASIC_EXPRESSIONS]].to_numpy()
    np.testing.assert_allclose(expr, torch.softmax(outputs["expression"], 1).numpy(), atol=1e-5)
    aus = frame[list(AUS_17)].to_numpy()
    np.testing.assert_allclose(aus, torch.sigmoid(outputs["au"]).numpy(), atol=1e-5)
    np.testing.assert_allclose(frame[["valence", "arousal"]].to_numpy(), outputs["va"].numpy(), atol=1e-5)
    assert frame["expression"].tolist() == [BASIC_EXPRESSIONS[k] for k in expr.argmax(1)]
    decisions = frame[[f"{au}_c" for au in AUS_17]].to_numpy(dtype=int)
    np.testing.assert_array_equal(decisions, (aus > predictor.thresholds["au"]).astype(int))
    assert (frame["error"] == "").all()


def test_preprocessing_is_the_training_time_eval_transform(predictor, tiny_run):
    from distmtl.training.experiment import build_experiment
    from distmtl.inference.predictor import InputDataset, gather_inputs
    from distmtl.training.runner import datamodule_from_experiment

    loader = datamodule_from_experiment(build_experiment(tiny_run.config)).eval_dataloader("val")
    training = torch.cat([batch["image"] for batch in loader])
    dataset = InputDataset(gather_inputs(tiny_run.root / "img"), predictor.preprocessing)
    # workers resize to uint8, the batch is converted and normalised at once: the same numbers
    ours = predictor.model_batch([dataset[i][1] for i in range(len(dataset))])
    assert dataset[0][1].dtype == torch.uint8
    assert ours.shape == training.shape == (N_IMAGES, 3, 32, 32)
    assert torch.equal(ours, training)


def test_every_input_kind_gives_the_same_predictions(predictor, tiny_run):
    from distmtl.inference.predictor import InputDataset, gather_inputs

    paths = tiny_run.images[:3]
    reference = predictor.predict([str(p) for p in paths])
    arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
    pils = [Image.open(p) for p in paths]
    raw = torch.from_numpy(arrays[0]).permute(2, 0, 1)  # uint8 CHW: gets the preprocessing
    prepared = torch.stack([InputDataset(gather_inputs(paths), predictor.preprocessing)[i][1] for i in range(3)])
    probs = EXPECTED_COLUMNS[1:-1]
    for inputs, names in [(arrays, ["array:0", "array:1", "array:2"]), (pils, ["image:0", "image:1", "image:2"]),
                          (prepared, ["tensor:0", "tensor:1", "tensor:2"]), (raw, ["tensor:0"]),
                          (arrays[0], ["array:0"]), (paths[0], [str(paths[0])])]:
        frame = predictor.predict(inputs, batch_size=2)
        assert frame["input"].tolist() == names
        pd.testing.assert_frame_equal(frame[probs], reference[probs].iloc[:len(names)], atol=1e-5)


def test_unreadable_inputs_give_error_rows(predictor, tiny_run, tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for p in tiny_run.images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "001_corrupt.png").write_bytes(b"not an image")
    (folder / "002_empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not an image file")
    frame = predictor.predict([folder, np.zeros((4, 4), dtype=np.float32), tmp_path / "missing.png"])
    assert len(frame) == 5 + 2
    bad = frame["error"] != ""
    assert frame.loc[bad, "input"].tolist() == [str(folder / "001_corrupt.png"), str(folder / "002_empty.jpg"),
                                                 "array:5", str(tmp_path / "missing.png")]
    assert "001_corrupt.png: cannot decode image" in frame["error"][2]  # sorted by file name
    assert "empty file" in frame["error"][4] and "must be uint8" in frame["error"][5]
    assert "not found" in frame["error"].iloc[-1]
    assert frame.loc[bad, EXPECTED_COLUMNS[1:-1]].isna().all().all()
    assert frame.loc[~bad, EXPECTED_COLUMNS[1:-1]].notna().all().all()
    assert all("\n" not in e for e in frame["error"])
    with pytest.raises(DistmtlError, match="001_corrupt.png"):
        predictor.predict(folder, strict=True)


def test_empty_folder_is_a_one_line_error(predictor, tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty_faces"
    empty.mkdir()
    with pytest.raises(DistmtlError, match="empty_faces: folder has no image files"):
        predictor.predict(empty)
    assert _run_cli("predict", empty, "--model", tiny_run.model, "-o", tmp_path / "p.csv") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(empty) in err and "\n" not in err


def test_cli_sidecar_records_model_hash_labels_thresholds(predictor, tiny_run, tmp_path):
    from distmtl.inference.export import file_sha256

    out = tmp_path / "preds.csv"
    assert _run_cli("predict", tiny_run.root / "img", "--model", tiny_run.model, "-o", out,
                    "--batch-size", "16", "--compound", "--quiet") == 0
    side = json.loads((tmp_path / "preds.json").read_text())
    assert side["complete"] is True and side["rows"] == N_IMAGES and side["errors"] == 0
    assert side["config_sha256"] == file_sha256(tiny_run.model / "config.json")
    assert side["tasks"]["au"]["labels"] == list(AUS_17)
    assert side["tasks"]["expression"]["labels"] == list(BASIC_EXPRESSIONS)
    assert list(side["thresholds"]["au"].values()) == pytest.approx(predictor.thresholds["au"].tolist())
    assert side["columns"] == list(pd.read_csv(out).columns) == predictor.columns(compound=True)


def test_killed_predict_leaves_a_csv_of_whole_rows(tiny_run, tmp_path):
    out = tmp_path / "preds.csv"
    env = dict(os.environ, DISTMTL_PREDICT_TEST_DELAY="0.5", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "distmtl.cli", "predict", str(tiny_run.root / "img"),
                             "--model", str(tiny_run.model), "-o", str(out), "--batch-size", "2", "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 3:  # header + the first batch
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("predict wrote no rows in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    text = out.read_text()
    assert text.endswith("\n")
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == EXPECTED_COLUMNS
    assert 2 <= len(frame) < N_IMAGES and len(frame) % 2 == 0
    assert frame["input"].tolist() == [str(tiny_run.root / "img" / p.name) for p in tiny_run.images[:len(frame)]]
    assert frame[EXPECTED_COLUMNS[2:-1]].map(lambda v: isinstance(v, (int, float))).all().all()
    assert json.loads((tmp_path / "preds.json").read_text())["complete"] is False


def test_plot_writes_one_png_per_image(tiny_run, tmp_path):
    plots = tmp_path / "plots"
    assert _run_cli("predict", *tiny_run.images[:2], "--model", tiny_run.model, "-o", tmp_path / "p.csv",
                    "--plot", plots, "--compound", "--quiet") == 0
    pngs = sorted(plots.glob("*.png"))
    assert [p.name for p in pngs] == ["000000_000.png", "000001_001.png"]
    assert Image.open(pngs[0]).size[0] > 400


def test_unknown_device_is_an_error(tiny_run):
    from distmtl.inference.predictor import Predictor

    with pytest.raises(DistmtlError, match="device"):
        Predictor.from_pretrained(tiny_run.model, device="warp-drive")


# ----------------------------------------------------------------------------- compound


def _naive_bayes(b: np.ndarray, matrix: np.ndarray, eps: float = 0.05) -> np.ndarray:
    r = np.clip(matrix, eps, 1 - eps)
    log_s = b @ np.log(r).T + (1 - b) @ np.log(1 - r).T
    s = np.exp(log_s - log_s.max(axis=1, keepdims=True))
    return s / s.sum(axis=1, keepdims=True)


def test_compound_scores_are_the_naive_bayes_posterior():
    from distmtl.inference.compound import compound_scores
    from distmtl.relatedness.table import Relatedness

    table = Relatedness.builtin("du2014_compound")
    rng = np.random.default_rng(1)
    b = rng.uniform(size=(6, 17))
    b[0] = table.matrix[0] > 0.5  # the prototypical AUs of "Happily surprised"
    frame = compound_scores(b, list(table.labels))
    assert list(frame.columns) == ["compound", *(f"compound_{c}" for c in COMPOUND_CLASSES)]
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), _naive_bayes(b, table.matrix), atol=1e-10)
    assert frame["compound"][0] == "Happily surprised"
    # a DataFrame with other columns and differently spelled AUs; a NaN row stays NaN
    named = pd.DataFrame(b[:, :5], columns=["AU1", "AU2", "AU4", "AU5", "AU6"]).assign(input="x")
    named.iloc[2, 0] = np.nan
    subset = compound_scores(named)
    expected = _naive_bayes(b[:, :5], table.matrix[:, :5])
    np.testing.assert_allclose(np.delete(subset.iloc[:, 1:].to_numpy(), 2, 0), np.delete(expected, 2, 0))
    assert subset.iloc[2].isna().all()
    with pytest.raises(DistmtlError, match="AU labels"):
        compound_scores(b, ["x"] * 17)


class ProfilePredictor:
    """The real predictor, with each image's AU probabilities replaced by a compound class's
    (clipped) AU profile: zero-shot scoring then picks that class."""

    def __init__(self, predictor, shown: dict[str, str]):
        self.real, self.shown = predictor, shown
        self.tasks, self.task_columns = predictor.tasks, predictor.task_columns
        self.compound_task = predictor.compound_task

    def predict(self, paths, **kwargs):
        from distmtl.inference.compound import compound_table

        frame = self.real.predict(paths, **kwargs)
        table = compound_table()
        columns = self.task_columns[self.compound_task()]["values"]
        rows = [table.classes.index(self.shown[str(p)]) for p in paths]
        frame[columns] = np.clip(table.matrix[rows], 0.05, 0.95)
        return frame


def test_evaluate_compound_scores_the_class_set_of_the_data(predictor, tiny_run, tmp_path):
    from distmtl.inference.compound import evaluate_compound

    truth = [COMPOUND_CLASSES[i % 4] for i in range(6)] + [COMPOUND_CLASSES[0]] * 2  # 4 classes
    paths = [str(tiny_run.root / "img" / p.name) for p in tiny_run.images[:8]]
    # right on the first 6, wrong on the last two (both class 0): 6/8 overall
    shown = dict(zip(paths, truth[:6] + [COMPOUND_CLASSES[3]] * 2))
    rows = [{"image": f"img/{Path(p).name}", "compound": t} for p, t in zip(paths, truth)]
    path = tiny_run.root / "compound_eval.csv"
    pd.DataFrame(rows + [{"image": "img/000.png", "compound": ""}]).to_csv(path, index=False)
    result = evaluate_compound(ProfilePredictor(predictor, shown), path)
    assert result["classes"] == COMPOUND_CLASSES[:4] and result["chance"] == pytest.approx(1 / 4)
    assert result["accuracy"] == 0.75 and result["n"] == 8
    # class 0: 2 of 4 right; classes 1-3: all right -> mean per class (0.5 + 3) / 4
    assert result["per_class"][COMPOUND_CLASSES[0]] == 0.5
    assert result["mean_class_accuracy"] == pytest.approx(0.875)
    every = evaluate_compound(ProfilePredictor(predictor, shown), path, classes="table")
    assert len(every["classes"]) == 13 and every["chance"] == pytest.approx(1 / 13)
    real = evaluate_compound(predictor, path)
    assert 0.0 <= real["accuracy"] <= 1.0 and real["n"] == 8 and real["n_errors"] == 0
    pd.DataFrame([{"image": "img/000.png", "compound": "Happy-ish"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DistmtlError, match="Happy-ish"):
        evaluate_compound(predictor, tmp_path / "bad.csv")
    with pytest.raises(DistmtlError, match="not among the 2 classes"):
        evaluate_compound(predictor, path, classes=COMPOUND_CLASSES[:2])


def test_rafdb_compound_protocol_on_a_fixture_tree(predictor, tmp_path):
    import fixtures.loaders_expr as fx

    from distmtl.data.loaders import get_loader
    from distmtl.inference.compound import evaluate_compound
    from distmtl.tasks import RAFDB_COMPOUND_11

    root = fx.make_rafdb_compound(tmp_path).root
    frame = get_loader("rafdb").load(root, "all", subset="compound").frame
    truth = list(frame["compound"])
    assert truth.count("Happily surprised") == 2 and len(set(truth)) == 5
    first_hs = truth.index("Happily surprised")
    shown = {p: ("Sadly angry" if i == first_hs else t) for i, (p, t) in enumerate(zip(frame["image"], truth))}
    result = evaluate_compound(ProfilePredictor(predictor, shown), frame, classes=RAFDB_COMPOUND_11)
    assert result["classes"] == list(RAFDB_COMPOUND_11) and result["chance"] == pytest.approx(1 / 11)
    assert result["accuracy"] == pytest.approx(5 / 6) and result["n"] == 6
    assert result["per_class"]["Happily surprised"] == 0.5
    assert result["mean_class_accuracy"] == pytest.approx((0.5 + 4) / 5)
    by_data = evaluate_compound(ProfilePredictor(predictor, shown), frame)  # the 5 classes present
    assert len(by_data["classes"]) == 5


def test_compound_command_on_rafdb(tiny_run, tmp_path, capsys):
    import fixtures.loaders_expr as fx

    from distmtl.cli import main

    root = fx.make_rafdb_compound(tmp_path).root
    out = tmp_path / "compound.json"
    assert main(["compound", "--model", str(tiny_run.model), "--rafdb", str(root), "--classes", "rafdb11",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert "mean per-class accuracy" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["classes"]) == 11 and result["n"] == 3  # the test partition
    assert main(["compound", "--model", str(tiny_run.model)]) == 2
    assert "--data CSV or --rafdb ROOT" in capsys.readouterr().err
