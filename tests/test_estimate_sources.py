"""``table: {estimate: <source>}`` reads training sources only, every source has its own name, and
the estimated table is written into the run folder."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from distmtl.cli import main
from distmtl.config import resolve
from distmtl.errors import DistmtlError
from distmtl.relatedness.table import Relatedness
from distmtl.training.experiment import build_experiment
from toydata import raw_config, write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=40, n_au=40, n_eval=30)


def estimated_config(files, estimate, **train):
    raw = raw_config(files, **train)
    # a third training source annotated for both tasks, named explicitly
    raw["data"]["sources"].append({"name": "both", "csv": str(files["val"])})
    raw["data"]["val"] = str(files["test"])
    raw["data"]["test"] = {"name": "held_out", "csv": str(files["test"])}
    raw["relatedness"][0]["table"] = {"estimate": estimate}
    return raw


def one_line_error(raw, tmp_path, capsys) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("split, key", [("held_out", "data.test"), ("test", "data.val"), ("all", "data.oracle")])
def test_estimating_from_an_evaluation_split_is_a_one_line_error(files, tmp_path, capsys, split, key):
    err = one_line_error(estimated_config(files, split), tmp_path, capsys)
    assert "relatedness[0].table.estimate" in err and f"'{split}' is {key}" in err
    assert "training sources only (expr, au, both)" in err
    with pytest.raises(DistmtlError, match=key):  # the library raises it too, before reading data
        build_experiment(resolve(estimated_config(files, split)), with_eval=False)


def test_estimating_from_an_unknown_source_names_the_training_sources(files):
    with pytest.raises(DistmtlError, match=r"unknown training source 'bothh' \(did you mean: both\?\)"):
        build_experiment(resolve(estimated_config(files, "bothh")))


@pytest.mark.parametrize("where, spec, first", [
    ("data.sources[1]", {"name": "expr", "csv": "au"}, "data.sources[0]"),  # named like the first
    ("data.test", {"name": "both", "csv": "test"}, "data.sources[2]"),  # an eval split named like a source
])
def test_two_sources_with_one_name_are_a_one_line_error_naming_both(files, tmp_path, capsys, where, spec, first):
    raw = estimated_config(files, "both")
    spec = dict(spec, csv=str(files[spec["csv"]]))
    if where == "data.test":
        raw["data"]["test"] = spec
    else:
        raw["data"]["sources"][1] = spec
    err = one_line_error(raw, tmp_path, capsys)
    name = spec["name"]
    assert f"{where}: source name '{name}' is also the name of {first}" in err


def test_default_names_collide_like_two_loaders_of_one_dataset(files, tmp_path, capsys):
    raw = estimated_config(files, "both")
    raw["data"]["sources"][1] = str(files["expr"])  # the same file stem: both named 'expr'
    err = one_line_error(raw, tmp_path, capsys)
    assert "data.sources[1]: source name 'expr' is also the name of data.sources[0]" in err


def test_the_table_comes_from_the_training_source_and_is_written_into_the_run(files, tmp_path):
    from distmtl.training.runner import train_experiment

    exp = build_experiment(resolve(estimated_config(files, "both", max_steps=2, val_every_steps=2)))
    both = next(s for s in exp.train_sources if s.name == "both")
    expected = Relatedness.estimate(both.targets["expression"].argmax(1), both.targets["au"],
                                    both.masks["au"], exp.tasks["expression"].labels, exp.tasks["au"].labels)
    np.testing.assert_allclose(exp.edges[0].relatedness.matrix, expected.matrix)
    train_experiment(exp, tmp_path / "run", progress=False)
    written = Relatedness.from_csv(tmp_path / "run" / "relatedness_estimated_expression_au.csv")
    np.testing.assert_allclose(written.matrix, expected.matrix, atol=1e-6)
    np.testing.assert_allclose(written.prior, expected.prior, atol=1e-6)
    png = tmp_path / "run" / "relatedness_estimated_expression_au.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_one_file_as_both_val_and_test_is_one_source_not_a_clash(files):
    raw = estimated_config(files, "both")
    raw["data"]["val"] = raw["data"]["test"] = str(files["test"])
    exp = build_experiment(resolve(raw))
    assert {"val", "test"} <= set(exp.eval_sources)
