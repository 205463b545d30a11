"""Command-line conveniences: --version, help, choices, argument checks, output formats, public names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest

import distmtl
from distmtl.cli import build_parser, main
from test_predict import shared_tiny_run  # tests/ is on sys.path under pytest's default import mode

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"distmtl {distmtl.__version__}"
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == distmtl.__version__


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    for command in ("train", "evaluate", "compare", "export", "predict", "data", "datasets", "relatedness"):
        assert re.search(rf"^\s+{command}\s", text, re.MULTILINE), command


def test_preset_lists_its_choices(capsys):
    from distmtl.data.synthfacs import PRESETS

    with pytest.raises(SystemExit) as stop:
        main(["data", "synth", "--out", "x", "--preset", "demoo"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'demoo'" in err and all(name in err for name in PRESETS)


def test_compare_seeds_zero_is_an_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("tasks: {t: {kind: multiclass, labels: [a, b]}}\ndata: {sources: [x.csv]}\n")
    assert main(["compare", "--config", str(config), "--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--seeds: expected a number of seeds >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_compare_seeds_zero_in_the_config_is_an_error():
    from distmtl.config import resolve
    from distmtl.errors import DistmtlError
    from distmtl.study.compare import run_compare

    config = resolve({"tasks": {"t": {"kind": "multiclass", "labels": ["a", "b"]}},
                      "data": {"sources": ["x.csv"]}, "compare": {"seeds": 0}})
    with pytest.raises(DistmtlError, match=r"compare.seeds: expected a number of seeds >= 1, got 0"):
        run_compare(config, "unused")


def test_public_names_import_from_the_top():
    from distmtl import (DistmtlError, MultiTaskNet, Predictor, Relatedness, Task,  # noqa: F401
                         build_experiment, create_weighting, evaluate_checkpoint, export_model,
                         load_config, run_compare, train_experiment, train_from_config)

    for name in distmtl.__all__:
        assert getattr(distmtl, name) is not None, name


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return shared_tiny_run(tmp_path_factory)


def test_predict_writes_parquet_with_the_csv_columns(tiny_run, tmp_path):
    csv_out, parquet_out = tmp_path / "p.csv", tmp_path / "p.parquet"
    images = [str(p) for p in tiny_run.images[:3]]
    assert main(["predict", *images, "--model", str(tiny_run.model), "-o", str(csv_out), "--quiet"]) == 0
    assert main(["predict", *images, "--model", str(tiny_run.model), "-o", str(parquet_out), "--quiet"]) == 0
    assert parquet_out.read_bytes()[:4] == b"PAR1"
    table, text = pd.read_parquet(parquet_out), pd.read_csv(csv_out, keep_default_na=False)
    assert list(table.columns) == list(text.columns) and len(table) == 3
    assert list(table["expression"]) == list(text["expression"])
    assert (tmp_path / "p.json").exists()


@pytest.mark.parametrize("name", ["p.xlsx", "p"])
def test_predict_rejects_an_unknown_output_extension(tiny_run, tmp_path, capsys, name):
    out = tmp_path / name
    assert main(["predict", str(tiny_run.images[0]), "--model", str(tiny_run.model), "-o", str(out)]) == 2
    assert "unknown output format" in capsys.readouterr().err
    assert not out.exists()
