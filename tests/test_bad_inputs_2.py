"""The second bad-input catalogue: cases that were silently wrong or ended in a traceback.

Each case asserts a one-line message naming the file, line, column, key or value at fault (the
``one_line`` helper of the first catalogue), or a counted, logged warning where the input is only
suspicious. The table in docs/bad-inputs.md lists these cases and what each gets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from distmtl.config import load_config, resolve
from distmtl.data.csvformat import read_csv_source
from distmtl.errors import DistmtlError
from distmtl.training.experiment import build_experiment
from test_bad_inputs import TASKS, one_line, rgb
from toydata import raw_config, write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=16, n_au=16, n_eval=8)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``distmtl <argv>`` in this process; the exit status and stderr."""
    from distmtl.cli import main

    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    saved = [(logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names]
    try:
        code = main(argv)
    finally:
        for n, (level, propagate) in zip(names, saved):
            logging.getLogger(n).setLevel(level)
            logging.getLogger(n).propagate = propagate
    return code, capsys.readouterr().err


def cli_error(code: int, stderr: str, *names) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return one_line(errors[0], *names)


# ---------------------------------------------------------------------------------- CSV headers


def test_csv_header_in_other_case_is_an_error(tmp_path):
    rgb(tmp_path / "a.png")
    path = tmp_path / "au.csv"
    path.write_text("image,AU01,au12\na.png,1,1\n")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)
    one_line(err, path, "line 1", "column 'au12'", "'AU12'")


def test_duplicated_csv_header_is_an_error(tmp_path):
    rgb(tmp_path / "a.png")
    path = tmp_path / "au.csv"
    path.write_text("image,AU12,AU01,AU12\na.png,1,0,0\n")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)
    one_line(err, path, "line 1", "column 'AU12'", "twice", "columns 2 and 4")


def test_unknown_extra_columns_are_listed_in_a_warning(tmp_path, caplog):
    rgb(tmp_path / "a.png")
    path = tmp_path / "au.csv"
    path.write_text("image,AU01,AU12,AU43,notes,subject\na.png,1,0,1,blurry,s1\n")
    with caplog.at_level(logging.WARNING, logger="distmtl"):
        loaded = read_csv_source(path, TASKS)
    assert len(loaded.frame) == 1
    warned = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    one_line(warned[0], path, "2 columns", "'AU43'", "'notes'")
    assert "'subject'" not in warned[0]


# ---------------------------------------------------------------------------------- image modes


def test_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    from distmtl.data.transforms import load_image

    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    for channels in (1, 3):
        got = np.asarray(load_image(path, channels)).astype(int)
        expected = np.arange(256).reshape(16, 16)
        got = got if channels == 1 else got[..., 0]
        assert np.abs(got - expected).max() <= 1, got  # not all 255s


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa",
         "La", "I;16", "I;16L", "I;16B", "I;16N", "LAB"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pillow_mode_is_converted_or_refused(tmp_path, mode):
    from distmtl.data.transforms import image_from_pil

    base = Image.fromarray(np.full((4, 4, 3), (200, 100, 50), dtype=np.uint8), "RGB")
    try:
        img = base.convert(mode)
    except ValueError:
        img = Image.new(mode, (4, 4))
    for channels in (1, 3):
        try:
            out = image_from_pil(img, channels, "x.tif")
        except DistmtlError as exc:
            one_line(exc, "x.tif", f"mode {mode}")
            continue
        assert out.mode == ("L" if channels == 1 else "RGB")
        assert np.asarray(out).dtype == np.uint8


def test_float_image_outside_0_1_is_refused():
    from distmtl.data.transforms import image_from_pil

    img = Image.fromarray(np.full((4, 4), 300.0, dtype=np.float32), "F")
    with pytest.raises(DistmtlError) as err:
        image_from_pil(img, 3, "x.tif")
    one_line(err, "x.tif", "mode F", "300")


# ---------------------------------------------------------------------------------- config values


def config_error(files, edit, *names) -> str:
    raw = raw_config(files)
    edit(raw)
    with pytest.raises(DistmtlError) as err:
        resolve(raw)
    return one_line(err, *names)


def test_unknown_task_under_losses(files):
    config_error(files, lambda r: r.update(losses={"expresion": {"label_smoothing": 0.1}}),
                 "losses.expresion", "unknown task", "did you mean: expression")


def test_unknown_loss_option(files):
    config_error(files, lambda r: r.update(losses={"au": {"pos_weigth": "auto"}}),
                 "losses.au.pos_weigth", "did you mean: pos_weight")


def test_on_nan_typo(files):
    config_error(files, lambda r: r["train"].update(on_nan="stpo"), "train.on_nan", "'stpo'",
                 "did you mean: stop")


@pytest.mark.parametrize("key,value", [("data.batch_size", -4), ("data.batch_size", 0),
                                       ("train.max_steps", 0), ("data.image_size", 0),
                                       ("trainer.devices", 0), ("optim.lr", -0.01)])
def test_impossible_numbers(files, key, value):
    section, name = key.split(".")
    config_error(files, lambda r: r.setdefault(section, {}).update({name: value}), key, repr(value))


def test_duplicate_yaml_key_names_both_lines(files, tmp_path):
    raw = raw_config(files)
    text = yaml.safe_dump(raw, sort_keys=False) + "train: {max_steps: 5}\n"
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("train:"))
    with pytest.raises(DistmtlError) as err:
        load_config(path)
    one_line(err, path, f"line {len(text.splitlines())}", "duplicate key", "'train'", f"line {first}")


def test_negative_coannotation_weight(files):
    config_error(files, lambda r: r["relatedness"][0]["coannotation"].update(weight=-1.0),
                 "relatedness[0].coannotation.weight", "-1.0")


def test_three_sampling_weights_for_two_sources(files):
    config_error(files, lambda r: r["data"].update(sampling=[1, 1, 1]),
                 "data.sampling", "3 weights for 2 sources")


@pytest.mark.parametrize("edit,names", [
    (lambda r: r["relatedness"][0]["coannotation"].update(weight=-0.5),
     ("relatedness[0].coannotation.weight", "-0.5")),
    (lambda r: r.update(weighting={"name": "dwa", "options": {"temprature": 2.0}}),
     ("temprature", "temperature")),
    (lambda r: r["data"].update(sampling=[1, 2, 3]), ("data.sampling", "3 weights for 2 sources")),
])
def test_dry_run_catches_what_the_run_would(files, tmp_path, capsys, edit, names):
    raw = raw_config(files)
    edit(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, stderr = run_cli(["train", "--config", str(path), "--dry-run"], capsys)
    cli_error(code, stderr, *names)


def test_compare_with_pos_weight_auto_trains_its_single_task_runs(files, tmp_path):
    """The README's ``losses.au.pos_weight: auto`` in compare: the expression-only run has no 'au'."""
    from distmtl.study.compare import variant_runs
    from distmtl.training.runner import check_trainable, module_from_experiment

    raw = raw_config(files)
    raw["losses"] = {"au": {"pos_weight": "auto"}}
    base = build_experiment(resolve(raw))
    for _name, exp, _ in variant_runs(base, "single") + variant_runs(base, "mtl"):
        check_trainable(exp)
        module = module_from_experiment(exp)
        if "au" in exp.tasks:
            assert len(module.config["losses"]["au"]["pos_weight"]) == 3


def test_compare_checks_every_run_before_training(files, tmp_path, monkeypatch):
    import distmtl.study.compare as compare

    raw = raw_config(files)
    raw["weighting"] = {"name": "dwa", "options": {"temprature": 2.0}}
    trained = []
    monkeypatch.setattr(compare, "train_runs", lambda *a, **k: trained.append(a))
    with pytest.raises(DistmtlError) as err:
        compare.run_compare(resolve(raw), tmp_path / "cmp", seeds=1, variants=["single", "mtl"])
    one_line(err, "compare run 'single/expression'", "temprature")
    assert trained == []


# ---------------------------------------------------------------------------------- checkpoints and resume


@pytest.fixture(scope="module")
def run_dir(files, tmp_path_factory):
    """A finished 2-step run folder of the toy tasks."""
    from distmtl.training.runner import train_experiment

    raw = raw_config(files, max_steps=2, val_every_steps=2)
    raw["data"].update(oracle=None, test=None)
    out = tmp_path_factory.mktemp("run") / "run"
    train_experiment(build_experiment(resolve(raw)), out, progress=False)
    return out, raw


def resume_error(run_dir, tmp_path, damage) -> str:
    import shutil

    from distmtl.training.runner import train_experiment

    src, raw = run_dir
    out = tmp_path / "run"
    shutil.copytree(src, out)
    last = out / "checkpoints" / "last.ckpt"
    damage(last)
    with pytest.raises(DistmtlError) as err:
        train_experiment(build_experiment(resolve(raw)), out, resume=True, progress=False)
    return one_line(err, last)


def test_resume_from_a_truncated_checkpoint(run_dir, tmp_path):
    def truncate(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])

    assert "truncated or corrupt" in resume_error(run_dir, tmp_path, truncate)


class NotPlainData:
    """An object that a weights_only load refuses (any class outside torch's allow-list)."""


def test_resume_from_an_unsafe_checkpoint_never_relays_the_unsafe_advice(run_dir, tmp_path):
    import torch

    def poison(path):
        state = torch.load(path, weights_only=True)
        state["extra"] = NotPlainData()
        torch.save(state, path)

    message = resume_error(run_dir, tmp_path, poison)
    assert "refused" in message and "arbitrary code" in message
    assert "weights_only" not in message and "False" not in message


def test_full_disk_while_writing_a_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch

    from distmtl.training.runner import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DistmtlError) as err:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    one_line(err, path, "cannot write the checkpoint", "no space left", "previous checkpoint")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    def zip_writer_full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                           "writing file data/0: file write failed\nunexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", zip_writer_full)
    with pytest.raises(DistmtlError) as err:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    one_line(err, path, "no space left")


def test_cli_train_on_a_rank_other_than_0_exits_cleanly(files, tmp_path, capsys, monkeypatch):
    """Off rank 0 the CLI used to fail with KeyError: 'checkpoint' (train_experiment returned {})."""
    import distmtl.training.runner as runner

    monkeypatch.setattr(runner, "train_experiment", lambda *a, **k: {})
    monkeypatch.setattr(runner, "is_main_process", lambda: False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config(files)))
    code, stderr = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 0 and "Traceback" not in stderr, stderr


# ---------------------------------------------------------------------------------- model folders, predict


@pytest.fixture(scope="module")
def model_dir(run_dir, tmp_path_factory):
    from distmtl.inference.export import export_model

    out = tmp_path_factory.mktemp("model") / "model"
    export_model(run_dir[0] / "checkpoints" / "last.ckpt", out, calibrate_thresholds=False)
    return out


def test_tampered_weights_are_refused(model_dir, tmp_path):
    import shutil

    from distmtl.inference.predictor import Predictor

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x7f" * 8  # a weight changed in place: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(DistmtlError) as err:
        Predictor.from_pretrained(folder, device="cpu")
    one_line(err, weights, "SHA-256", "config.json", "changed or replaced")


def test_predict_refuses_to_replace_an_existing_file(model_dir, files, tmp_path, capsys):
    image = str(next((files["val"].parent / "img").glob("val_*.png")))
    out = tmp_path / "p.csv"
    out.write_text("my earlier predictions\n")
    code, stderr = run_cli(["predict", image, "--model", str(model_dir), "-o", str(out), "--quiet"], capsys)
    cli_error(code, stderr, out, "exists", "--overwrite")
    assert out.read_text() == "my earlier predictions\n"
    code, stderr = run_cli(["predict", image, "--model", str(model_dir), "-o", str(out), "--quiet",
                            "--overwrite"], capsys)
    assert code == 0, stderr
    assert out.read_text().startswith("input,")


def test_predicted_csv_quotes_values_a_spreadsheet_would_run(model_dir, files, tmp_path, capsys, monkeypatch):
    import csv
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    source = next((files["val"].parent / "img").glob("val_*.png"))
    names = ["=cmd|calc!A1.png", "+1.png", "-2.png", "@sum.png", "plain.png"]
    for name in names:
        shutil.copy(source, folder / name)
    out = tmp_path / "p.csv"
    monkeypatch.chdir(folder)  # relative names: the cell starts with the name itself
    code, stderr = run_cli(["predict", "--model", str(model_dir), "-o", str(out), "--quiet", "--", *names],
                           capsys)
    assert code == 0, stderr
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    inputs = {r["input"][1:] if r["input"].startswith("'") else r["input"]: r["input"] for r in rows}
    assert set(inputs) == set(names)
    for name, value in inputs.items():
        dangerous = name[0] in "=+-@"
        assert value.startswith("'") == dangerous, value
    numbers = [float(v) for r in rows for k, v in r.items() if k.startswith("expression_")]
    assert numbers and all(0 <= v <= 1 for v in numbers)
