"""The bad-input catalogue: every user mistake gives ONE line naming what is wrong, or a counted skip.

Each case asserts that the message has no line break and names the file, line, column, key or value
at fault. The last tests run ``python -m distmtl.cli`` to check that such an error reaches the user
as ``error: <one line>`` on stderr with exit status 2 and no traceback, also when it is raised in a
DataLoader worker process.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from distmtl.config import load_config, resolve
from distmtl.data.csvformat import encode, read_csv_source
from distmtl.errors import DistmtlError
from distmtl.training.experiment import build_experiment
from distmtl.tasks import Task
from toydata import AUS, CLASSES, make_image, raw_config, write_dataset

TASKS = {
    "expression": Task("expression", "multiclass", CLASSES),
    "au": Task("au", "multilabel", AUS),
    "va": Task("va", "regression", ("valence", "arousal")),
}


def one_line(err, *names) -> str:
    """The message of ``err`` (a pytest ExceptionInfo or an exception): one line naming ``names``."""
    message = str(getattr(err, "value", err))
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message, message
    for name in names:
        assert str(name) in message, f"{name!r} not in: {message}"
    return message


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=16, n_au=16, n_eval=8)


@pytest.fixture(scope="module")
def checkpoint(files, tmp_path_factory):
    """A checkpoint of the toy tasks (expression, au) after 2 steps."""
    from distmtl.training.runner import train_experiment

    raw = raw_config(files, max_steps=2, val_every_steps=2)
    raw["data"].update(num_workers=0, oracle=None, test=None)
    results = train_experiment(build_experiment(resolve(raw)), tmp_path_factory.mktemp("run"), progress=False)
    return Path(results["checkpoint"])


def rgb(path: Path, fmt: str | None = None, seed: int = 0) -> Path:
    Image.fromarray(make_image(np.random.default_rng(seed), 1, (1, 0, 1))).save(path, format=fmt)
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(make_image(np.random.default_rng(1), 2, (0, 1, 1))).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def csv_with(tmp_path: Path, image: str, label: str = "Happiness") -> Path:
    """A CSV of two rows: a good image on line 2 and ``image`` on line 3."""
    rgb(tmp_path / "good.png")
    path = tmp_path / "data.csv"
    path.write_text(f"image,expression\ngood.png,Neutral\n{image},{label}\n")
    return path


def bad_images(tmp_path: Path) -> dict[str, Path]:
    """One file of each undecodable kind, each with an image extension."""
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("these are my notes, not a photo\n")
    return {"zero": zero, "truncated": truncated_jpeg(tmp_path / "cut.jpg"), "text": text}


# ---------------------------------------------------------------------------------- images


def test_missing_image_is_caught_up_front(tmp_path):
    path = csv_with(tmp_path, "img/missing.png")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)
    one_line(err, path, "line 3", "column 'image'", "'img/missing.png'", "not found")


def test_zero_byte_image_is_caught_up_front_and_at_decode(tmp_path):
    from distmtl.data.transforms import load_image

    zero = bad_images(tmp_path)["zero"]
    path = csv_with(tmp_path, zero.name)
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)  # the default check (exists) already sees an empty file
    one_line(err, path, "line 3", "'zero.png'", "0 bytes")
    with pytest.raises(DistmtlError) as err:
        load_image(zero, 3)
    one_line(err, zero, "0 bytes")


def test_truncated_jpeg_fails_at_decode_naming_the_file_or_up_front_with_decode_check(tmp_path):
    from distmtl.data.transforms import load_image

    cut = bad_images(tmp_path)["truncated"]
    with pytest.raises(DistmtlError) as err:
        load_image(cut, 3)
    one_line(err, cut, "cannot decode image", "truncated")
    path = csv_with(tmp_path, cut.name)
    assert len(read_csv_source(path, TASKS).frame) == 2  # the file exists: the cheap check passes
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS, check_images="decode")
    one_line(err, path, "line 3", "'cut.jpg'", "truncated")


def test_non_image_file_with_image_extension(tmp_path):
    from distmtl.data.transforms import load_image

    text = bad_images(tmp_path)["text"]
    with pytest.raises(DistmtlError) as err:
        load_image(text, 3)
    one_line(err, text, "not an image file")
    path = csv_with(tmp_path, text.name)
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS, check_images="decode")
    one_line(err, path, "line 3", "'notes.jpg'", "not an image file")


def test_grayscale_image_is_converted_to_rgb(tmp_path):
    from distmtl.data.sources import SourceDataset
    from distmtl.data.transforms import Preprocessing, eval_transform, load_image

    gray = tmp_path / "gray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24), dtype=np.uint8), "L").save(gray)
    image = load_image(gray, 3)
    assert image.mode == "RGB" and np.asarray(image).shape == (20, 24, 3)
    path = csv_with(tmp_path, gray.name)
    source = encode(read_csv_source(path, TASKS, check_images="decode"), TASKS)
    pre = Preprocessing(size=16, channels=3)
    item = SourceDataset(source, eval_transform(pre), 3)[1]
    assert tuple(item["image"].shape) == (3, 16, 16)


def test_undecodable_images_skipped_and_counted_when_asked(tmp_path, caplog):
    bad = bad_images(tmp_path)
    rgb(tmp_path / "good.png")
    path = tmp_path / "data.csv"
    path.write_text("image,expression\ngood.png,Neutral\n" + "".join(f"{p.name},Surprise\n" for p in bad.values()))
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS, check_images="decode")
    one_line(err, path, "3 bad rows", "line 3", "'zero.png'", "line 4", "'cut.jpg'", "line 5", "'notes.jpg'")
    with caplog.at_level(logging.WARNING, logger="distmtl"):
        loaded = read_csv_source(path, TASKS, check_images="decode", skip_bad_rows=True)
    assert loaded.skipped == 3 and len(loaded.frame) == 1
    assert loaded.frame["image"].iloc[0].endswith("good.png")
    assert any("skipped 3 bad rows" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_decode_check_from_config_and_bad_check_value(files, tmp_path):
    cut = truncated_jpeg(tmp_path / "cut.jpg")
    csv = tmp_path / "expr.csv"
    csv.write_text(f"image,expression\n{files['expr'].parent / 'img' / 'expr_0.png'},Neutral\n{cut},Happiness\n")
    raw = raw_config(files)
    raw["data"]["sources"][0] = {"csv": str(csv)}
    raw["data"]["check_images"] = "decode"
    with pytest.raises(DistmtlError) as err:
        build_experiment(resolve(raw))
    one_line(err, csv, "line 3", str(cut), "truncated")
    raw["data"]["check_images"] = "decoded"
    with pytest.raises(DistmtlError) as err:
        resolve(raw)
    one_line(err, "data.check_images", "'decoded'", "did you mean: decode")


# ---------------------------------------------------------------------------------- CSV labels


def test_unknown_class_name(tmp_path):
    path = csv_with(tmp_path, "good.png", label="Hapiness")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)
    one_line(err, path, "line 3", "column 'expression'", "value 'Hapiness'", "did you mean: Happiness")


def test_binary_label_2(tmp_path):
    rgb(tmp_path / "a.png")
    path = tmp_path / "au.csv"
    path.write_text("image,AU01,AU12\na.png,1,0\na.png,0,2\n")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)
    one_line(err, path, "line 3", "column 'AU12'", "value '2'", "expected 1, 0, -1 or empty")


def test_regression_value_abc(tmp_path):
    rgb(tmp_path / "a.png")
    path = tmp_path / "va.csv"
    path.write_text("image,valence,arousal\na.png,0.5,0.1\na.png,abc,0.2\n")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)
    one_line(err, path, "line 3", "column 'valence'", "value 'abc'", "not a finite number")


def test_csv_without_image_column(tmp_path):
    path = tmp_path / "noimage.csv"
    path.write_text("img,expression\na.png,Happiness\n")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)
    one_line(err, path, "no 'image' column", "img, expression", "did you mean: img")


def test_empty_csv(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(empty, TASKS)
    one_line(err, empty, "empty", "'image' column")
    header_only = tmp_path / "header.csv"
    header_only.write_text("image,expression\n")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(header_only, TASKS)
    one_line(err, header_only, "no rows")


# ---------------------------------------------------------------------------------- config and sources


def test_source_annotating_no_configured_task(files, tmp_path):
    rgb(tmp_path / "a.png")
    csv = tmp_path / "colours.csv"
    csv.write_text("image,colour,valence\na.png,red,0.3\n")
    raw = raw_config(files)
    raw["data"]["sources"].append({"csv": str(csv)})
    with pytest.raises(DistmtlError) as err:
        build_experiment(resolve(raw))
    one_line(err, csv, "annotates none of the configured tasks", "expression, au", "colour, valence")


def test_task_no_source_annotates(files):
    raw = raw_config(files)
    raw["tasks"]["va"] = {"kind": "regression", "labels": ["valence", "arousal"]}
    with pytest.raises(DistmtlError) as err:
        build_experiment(resolve(raw))
    one_line(err, "tasks.va", "no training source annotates", "expr", "au")


def relatedness_error(files, tmp_path, old: str, new: str):
    table = tmp_path / "table.csv"
    text = files["table"].read_text()
    assert old in text
    table.write_text(text.replace(old, new, 1))
    raw = raw_config(files)
    raw["relatedness"][0]["table"] = str(table)
    with pytest.raises(DistmtlError) as err:
        build_experiment(resolve(raw))
    return table, err


def test_relatedness_label_the_task_lacks(files, tmp_path):
    table, err = relatedness_error(files, tmp_path, "AU25", "AU26")
    one_line(err, "relatedness[0].table", table, "label 'AU26'", "task 'au'", "did you mean: AU25")


def test_relatedness_value_1_3(files, tmp_path):
    table, err = relatedness_error(files, tmp_path, "0.95", "1.3")
    one_line(err, "relatedness[0].table", table, "line 3", "class 'Happiness'", "label 'AU12'", "1.3",
             "outside [0, 1]")


def test_relatedness_nan(files, tmp_path):
    table, err = relatedness_error(files, tmp_path, "0.90", "nan")
    one_line(err, "relatedness[0].table", table, "line 4", "class 'Surprise'", "label 'AU01'", "NaN")


def test_unknown_backbone_lists_close_matches(files):
    from distmtl.models import create_backbone

    raw = raw_config(files)
    raw["model"]["backbone"] = "resnet_18"
    with pytest.raises(DistmtlError) as err:
        build_experiment(resolve(raw))  # before any data is read, so --dry-run catches it too
    message = one_line(err, "model.backbone", "'resnet_18'", "did you mean:", "resnet18")
    assert len(message) < 300
    with pytest.raises(DistmtlError) as err:
        create_backbone("resnet_18", 3)
    one_line(err, "model.backbone", "'resnet_18'", "resnet18")


def test_unknown_weighting_name(files):
    from distmtl.weighting import create_weighting

    raw = raw_config(files)
    raw["weighting"] = {"name": "uncertainity"}
    with pytest.raises(DistmtlError) as err:
        build_experiment(resolve(raw))
    one_line(err, "weighting.name", "'uncertainity'", "did you mean: uncertainty", "known: dwa")
    with pytest.raises(DistmtlError) as err:
        create_weighting("uncertainity", ["expression", "au"])
    one_line(err, "'uncertainity'", "uncertainty")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntasks:\n  expression: {kind: multiclass, labels: [a, b]\n  au: 1\n")
    with pytest.raises(DistmtlError) as err:
        load_config(path)
    one_line(err, path, "line 4", "YAML syntax error")


def test_unknown_config_key_lists_close_matches(files, tmp_path):
    raw = raw_config(files)
    raw["train"]["max_step"] = 5
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DistmtlError) as err:
        load_config(path)
    one_line(err, "train.max_step", "unknown config key", "did you mean: max_steps")


# ---------------------------------------------------------------------------------- checkpoints, predict


def test_checkpoint_of_other_tasks_passed_to_evaluate(checkpoint, tmp_path):
    from distmtl.training.evaluate import evaluate_checkpoint

    rgb(tmp_path / "a.png")
    data = tmp_path / "va.csv"
    data.write_text("image,valence,arousal\na.png,0.1,0.2\n")
    with pytest.raises(DistmtlError) as err:
        evaluate_checkpoint(checkpoint, data, num_workers=0)
    one_line(err, data, checkpoint, "expression (multiclass)", "au (multilabel: AU01, AU12, AU25)",
             "valence, arousal")


def test_predict_on_an_empty_folder(checkpoint, tmp_path):
    from distmtl.training.experiment import preprocessing_from_config
    from distmtl.inference.predictor import Predictor
    from distmtl.training.runner import load_module

    module = load_module(checkpoint)
    predictor = Predictor(module.net, module.tasks, preprocessing_from_config(module.config))
    folder = tmp_path / "faces"
    folder.mkdir()
    (folder / "README.txt").write_text("no images here\n")
    with pytest.raises(DistmtlError) as err:
        predictor.predict(folder)
    one_line(err, folder, "no image files")


def test_decode_error_in_a_dataloader_worker_stays_one_line(tmp_path):
    from torch.utils.data import DataLoader

    from distmtl.cli import _one_line
    from distmtl.data.sources import SourceDataset
    from distmtl.data.transforms import Preprocessing, eval_transform

    cut = truncated_jpeg(tmp_path / "cut.jpg")
    path = csv_with(tmp_path, cut.name)
    source = encode(read_csv_source(path, TASKS), TASKS)
    pre = Preprocessing(size=16)
    loader = DataLoader(SourceDataset(source, eval_transform(pre), 3), batch_size=2, num_workers=2)
    with pytest.raises(DistmtlError) as err:
        next(iter(loader))
    assert str(cut) in str(err.value)
    message = _one_line(err.value)
    one_line(message, cut, "truncated")
    assert message.startswith(str(cut)) and "Original Traceback" not in message


# ---------------------------------------------------------------------------------- the CLI


def start_cli(*args, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "distmtl.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module", autouse=True)
def cli_runs(files, tmp_path_factory):
    """Both ``python -m distmtl.cli`` runs, started before the first case of this file.

    Most of their time is importing torch and lightning; autouse starts them early so that it
    overlaps the in-process cases. Their tests at the end of the file only collect the results.
    """
    root = tmp_path_factory.mktemp("cli")
    raw = raw_config(files)
    raw["data"]["batchsize"] = 8
    (root / "bad.yaml").write_text(yaml.safe_dump(raw))

    cut = truncated_jpeg(root / "cut.jpg")
    (root / "expr.csv").write_text("image,expression\ncut.jpg,Happiness\n")  # the only image of its source
    raw = raw_config(files, max_steps=2, val_every_steps=2)
    raw["data"]["sources"][0] = {"csv": str(root / "expr.csv")}
    raw["data"].update(num_workers=2, oracle=None, test=None)
    (root / "train.yaml").write_text(yaml.safe_dump(raw))

    runs = {"dry_run": start_cli("train", "--config", root / "bad.yaml", "--dry-run", cwd=root),
            "train": start_cli("train", "--config", root / "train.yaml", "--out", root / "run", cwd=root),
            "cut": cut}
    yield runs
    for proc in (runs["dry_run"], runs["train"]):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cli_error(returncode: int, stderr: str, *names) -> str:
    """``error: <one line>`` is the last line of stderr, with status 2 and no traceback."""
    assert returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return one_line(errors[0], *names)


def test_cli_unknown_config_key_dry_run(cli_runs):
    proc = cli_runs["dry_run"]
    _, stderr = proc.communicate(timeout=300)
    cli_error(proc.returncode, stderr, "data.batchsize", "unknown config key", "did you mean: batch_size")


def test_cli_corrupt_image_in_training_dataloader_worker(cli_runs):
    proc = cli_runs["train"]
    _, stderr = proc.communicate(timeout=300)
    message = cli_error(proc.returncode, stderr, cli_runs["cut"], "cannot decode image", "truncated")
    assert "DataLoader worker" not in message and "Original Traceback" not in message


def test_cli_main_corrupt_image_in_evaluate_dataloader_worker(checkpoint, tmp_path, capsys):
    """``distmtl evaluate`` in this process (main() as the console script runs it), 2 workers."""
    from distmtl.cli import main

    bad = bad_images(tmp_path)
    data = tmp_path / "eval.csv"
    data.write_text("image,expression\n" + f"{bad['text'].name},Surprise\n" * 3)
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    saved = [(logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names]
    try:
        code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data),
                     "--num-workers", "2", "--batch-size", "1"])
    finally:
        for n, (level, propagate) in zip(names, saved):
            logging.getLogger(n).setLevel(level)
            logging.getLogger(n).propagate = propagate
    message = cli_error(code, capsys.readouterr().err, bad["text"], "not an image file")
    assert "DataLoader worker" not in message
