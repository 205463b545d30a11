"""Config errors fail before training with a message naming the key."""

import pytest
import yaml

from distmtl.config import apply_override, load_config, resolve
from distmtl.errors import DistmtlError
from distmtl.training.experiment import build_experiment
from toydata import raw_config, write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=20, n_au=20, n_eval=10)


def test_defaults_are_filled_and_overrides_parse_yaml(files):
    raw = raw_config(files)
    apply_override(raw, "data.batch_size=8")
    apply_override(raw, "relatedness.0.dm_a_to_b.weight=0.5")
    config = resolve(raw)
    assert config["data"]["batch_size"] == 8
    assert config["relatedness"][0]["dm_a_to_b"]["weight"] == 0.5
    assert config["relatedness"][0]["dm_b_to_a"]["form"] == "ce"
    assert config["weighting"]["name"] == "initial"


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["data"].update(batchsize=4), "data.batchsize: unknown config key (did you mean: batch_size"),
    (lambda r: r["train"].update(max_steps="many"), "train.max_steps: expected an integer"),
    (lambda r: r["model"].update(pretrained="yes"), "model.pretrained: expected true or false"),
    (lambda r: r["relatedness"][0]["dm_a_to_b"].update(wieght=1), "relatedness[0].dm_a_to_b.wieght"),
    (lambda r: r["data"]["sources"][0].update(cvs="x"), "data.sources[0].cvs: unknown key"),
])
def test_config_errors_name_the_key(files, mutate, key):
    raw = raw_config(files)
    mutate(raw)
    with pytest.raises(DistmtlError) as err:
        resolve(raw)
    assert key in str(err.value)


def test_task_no_source_annotates(files):
    raw = raw_config(files)
    raw["tasks"]["va"] = {"kind": "regression", "labels": ["valence", "arousal"]}
    with pytest.raises(DistmtlError, match=r"tasks\.va: no training source annotates this task"):
        build_experiment(resolve(raw))


def test_edge_naming_unknown_task(files):
    raw = raw_config(files)
    raw["relatedness"][0]["tasks"] = ["expression", "aus"]
    with pytest.raises(DistmtlError, match=r"relatedness\[0\]\.tasks: unknown task 'aus' \(did you mean: au\?\)"):
        build_experiment(resolve(raw))


def test_edge_table_with_label_the_task_lacks(files, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text(files["table"].read_text().replace("AU25", "AU26"))
    raw = raw_config(files)
    raw["relatedness"][0]["table"] = str(table)
    with pytest.raises(DistmtlError, match="AU26"):
        build_experiment(resolve(raw))


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntasks:\n  a: {kind: multiclass\n  b: 1\n")
    with pytest.raises(DistmtlError, match=r"bad\.yaml:.*line \d+"):
        load_config(path)


def test_config_file_round_trip(files, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config(files)))
    config = load_config(path, ["seed=3"])
    assert config["seed"] == 3 and config["_config_path"] == str(path)
