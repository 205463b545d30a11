"""``distmtl relatedness estimate / compare / show``: tables from a config's source, from a model,
and their differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from distmtl.cli import main
from distmtl.relatedness.table import Relatedness
from test_predict import shared_tiny_run  # tests/ is on sys.path under pytest's default import mode
from toydata import AUS, CLASSES, raw_config, write_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    files = write_dataset(root, n_expr=12, n_au=12, n_eval=6)
    config = raw_config(files)
    config["data"]["sources"].append({"name": "both", "csv": str(files["all"])})
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return files, path


def _table(path, classes, labels, matrix, prior=None):
    Relatedness(np.asarray(matrix, float), classes, labels, prior=prior).to_csv(path)
    return path


def test_estimate_from_a_training_source_is_the_smoothed_count(toy, tmp_path, capsys):
    files, config = toy
    out = tmp_path / "est.csv"
    assert main(["relatedness", "estimate", "--config", str(config), "--source", "both",
                 "-o", str(out), "--png", str(tmp_path / "est.png")]) == 0
    assert "expression x au" in capsys.readouterr().out
    table = Relatedness.from_csv(out)
    frame = pd.read_csv(files["all"])
    for k, name in enumerate(CLASSES):
        rows = frame[frame["expression"] == name]
        for j, au in enumerate(AUS):
            expected = (rows[au].sum() + 1) / (len(rows) + 2)  # alpha = 1
            assert table.matrix[k, j] == pytest.approx(expected)
        assert table.prior[k] == pytest.approx((len(rows) + 1) / (len(frame) + len(CLASSES)))
    assert (tmp_path / "est.png").stat().st_size > 1000


def test_estimate_refuses_evaluation_splits_and_unknown_sources(toy, tmp_path, capsys):
    _, config = toy
    assert main(["relatedness", "estimate", "--config", str(config), "--source", "test",
                 "-o", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "data.test" in err and "only training sources" in err and err.count("\n") == 1
    assert main(["relatedness", "estimate", "--config", str(config), "--source", "bothh",
                 "-o", str(tmp_path / "x.csv")]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_compare_prints_cell_differences_and_draws_three_panels(tmp_path, capsys):
    a = _table(tmp_path / "a.csv", ["x", "y"], ["L1", "L2"], [[0.1, 0.9], [0.5, 0.5]])
    b = _table(tmp_path / "b.csv", ["y", "x"], ["L2", "L1"], [[0.4, 0.5], [0.9, 0.3]])  # other order
    png, diff = tmp_path / "cmp.png", tmp_path / "diff.csv"
    assert main(["relatedness", "compare", str(a), str(b), "--png", str(png), "--csv", str(diff)]) == 0
    out = capsys.readouterr().out
    # a - b aligned: [[0.1-0.3, 0.9-0.9], [0.5-0.5, 0.5-0.4]] -> mean |d| = 0.3 / 4
    assert "mean |diff| 0.075" in out and "max |diff| 0.200" in out
    cells = pd.read_csv(diff, index_col=0)
    assert cells.loc["x", "L1"] == pytest.approx(-0.2) and cells.loc["y", "L2"] == pytest.approx(0.1)
    assert png.stat().st_size > 1000


def test_compare_needs_the_same_cells_unless_common(tmp_path, capsys):
    a = _table(tmp_path / "a.csv", ["x", "y"], ["L1", "L2"], [[0.1, 0.9], [0.5, 0.5]])
    b = _table(tmp_path / "b.csv", ["x", "z"], ["L1"], [[0.3], [0.7]])
    assert main(["relatedness", "compare", str(a), str(b)]) == 2
    assert "--common" in capsys.readouterr().err
    assert main(["relatedness", "compare", str(a), str(b), "--common"]) == 0
    out = capsys.readouterr().out
    assert "left out of 'a': classes y; labels L2" in out and "left out of 'b': classes z" in out
    assert "mean |diff| 0.200" in out


def test_show_reads_any_csv_and_prints_a_non_uniform_prior(tmp_path, capsys):
    path = _table(tmp_path / "t.csv", ["x", "y"], ["L1"], [[0.25], [0.5]], prior=[0.2, 0.8])
    assert main(["relatedness", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0.25" in out and "prior: x 0.200, y 0.800" in out


def test_learned_table_from_a_model_is_the_mean_label_probability_per_predicted_class(
        tmp_path_factory, tmp_path, capsys):
    from distmtl.inference.predictor import Predictor

    run = shared_tiny_run(tmp_path_factory)
    out = tmp_path / "learned.csv"
    assert main(["relatedness", "estimate", "--from-model", str(run.model), "--data", str(run.csv),
                 "-o", str(out)]) == 0
    assert "learned by" in capsys.readouterr().out
    learned = Relatedness.from_csv(out)
    frame = Predictor.from_pretrained(run.model, device="cpu").predict(
        [str(run.csv.parent / p) for p in pd.read_csv(run.csv)["image"]])
    for k, name in enumerate(learned.classes):
        rows = frame[frame["expression"] == name]
        assert learned.prior[k] == pytest.approx(len(rows) / len(frame))
        if len(rows):
            np.testing.assert_allclose(learned.matrix[k], rows[list(learned.labels)].mean().to_numpy(),
                                       atol=1e-6)
        else:
            assert not learned.matrix[k].any()
    # the learned table compares with the prior the same way
    assert main(["relatedness", "compare", str(out), "du2014", "--png", str(tmp_path / "c.png")]) == 0
    assert "mean |diff|" in capsys.readouterr().out
