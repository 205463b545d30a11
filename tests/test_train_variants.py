"""What `distmtl train` trains: coupling terms an edge names are on; `--variant` runs compare's
variants; the oracle gets the multi-task label count per task and step, on fully labelled rows."""

import csv
from pathlib import Path

import pytest
import torch
import yaml

from distmtl.cli import main
from distmtl.config import resolve
from distmtl.errors import DistmtlError
from distmtl.study.compare import run_compare
from distmtl.training.experiment import build_experiment
from distmtl.training.runner import datamodule_from_experiment, module_from_experiment, variant_plan
from distmtl.training.variants import variant_runs
from toydata import raw_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=48, n_au=48, n_eval=24)


def demo_like(files, **train) -> dict:
    """The toy data with the shipped demo config's relatedness edge, verbatim but for its table."""
    raw = raw_config(files, **train)
    edges = yaml.safe_load((ROOT / "configs" / "synthfacs_demo.yaml").read_text())["relatedness"]
    for edge in edges:
        edge["table"] = str(files["table"])
        edge["tasks"] = ["expression", "au"]
    raw["relatedness"] = edges
    return raw


def test_named_terms_are_on_unless_disabled():
    base = {"tasks": {"e": {"kind": "multiclass", "labels": ["a", "b"]},
                      "u": {"kind": "multilabel", "labels": ["x"]}},
            "data": {"sources": [{"csv": "unused.csv"}]}}
    edge = {"tasks": ["e", "u"], "table": "t.csv", "coannotation": {"weight": 0.5},
            "dm_a_to_b": {"weight": 1.0, "enabled": False}}
    config = resolve({**base, "relatedness": [edge]})
    terms = config["relatedness"][0]
    assert terms["coannotation"]["enabled"] is True  # named with a weight: on
    assert terms["dm_a_to_b"]["enabled"] is False  # named, but disabled
    assert terms["dm_b_to_a"]["enabled"] is False  # not named: off
    with pytest.raises(DistmtlError, match=r"relatedness\[0\].coannotation.enabled: expected true or false"):
        resolve({**base, "relatedness": [{**edge, "coannotation": {"enabled": "yes"}}]})


def test_every_shipped_edge_term_with_a_weight_trains():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for i, edge in enumerate(raw.get("relatedness") or []):
            for term in ("coannotation", "dm_a_to_b", "dm_b_to_a"):
                given = edge.get(term)
                if isinstance(given, dict) and "weight" in given and given.get("enabled") is not False:
                    resolved = resolve(raw)["relatedness"][i][term]
                    assert resolved["enabled"] is True, (path.name, i, term)


def logged_columns(run: Path) -> list[str]:
    with open(run / "logs" / "metrics.csv", newline="") as handle:
        return next(csv.reader(handle))


@pytest.mark.slow
def test_train_logs_coupling_terms_and_variant_mtl_does_not(files, tmp_path, capsys):
    config = tmp_path / "demo_like.yaml"
    config.write_text(yaml.safe_dump(demo_like(files)))
    short = ["train.max_steps=3", "train.val_every_steps=3", "trainer.log_every_n_steps=1"]
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "as_written"), *short]) == 0
    columns = logged_columns(tmp_path / "as_written")
    assert any(c.startswith("term/coann:") for c in columns), columns
    assert any(c.startswith("term/dm:") for c in columns), columns
    assert main(["train", "--config", str(config), "--variant", "mtl", "--out", str(tmp_path / "mtl"),
                 *short]) == 0
    columns = logged_columns(tmp_path / "mtl")
    assert "loss/expression" in columns and not any(c.startswith("term/") for c in columns), columns


def test_dry_run_lists_active_terms_and_variant_names(files, tmp_path, capsys):
    config = tmp_path / "demo_like.yaml"
    config.write_text(yaml.safe_dump(demo_like(files)))
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "term/coann:expression->au" in out and "term/dm:expression->au" in out and "kl" in out
    assert main(["train", "--config", str(config), "--dry-run", "--variant", "coann"]) == 0
    out = capsys.readouterr().out
    assert "term/coann:au->expression" in out and "term/dm:" not in out
    assert main(["train", "--config", str(config), "--dry-run", "--variant", "orcale"]) == 2
    assert "did you mean: oracle" in capsys.readouterr().err


def first_batch_masks(exp, module) -> dict[str, torch.Tensor]:
    batch = next(iter(datamodule_from_experiment(exp).train_dataloader()))
    return module.label_budget(batch["masks"])


@pytest.mark.parametrize("sampling", ["equal", [1, 3]])
def test_oracle_labels_per_task_and_step_equal_multi_task(files, sampling):
    raw = raw_config(files)
    raw["data"]["sampling"] = sampling
    base = build_experiment(resolve(raw), with_oracle=True)
    (_, mtl, _), = variant_runs(base, "mtl")
    (_, oracle, _), = variant_runs(base, "oracle")
    assert oracle.config["data"]["batch_size"] == mtl.config["data"]["batch_size"]
    torch.manual_seed(0)
    mtl_masks = first_batch_masks(mtl, module_from_experiment(mtl))
    oracle_masks = first_batch_masks(oracle, module_from_experiment(oracle))
    for task in ("expression", "au"):
        per_sample = lambda m: int(m.reshape(m.shape[0], -1).any(dim=1).sum())
        assert per_sample(oracle_masks[task]) == per_sample(mtl_masks[task]), task
    assert per_sample(oracle_masks["expression"]) == (8 if sampling == "equal" else 4)
    # the samples kept for the scarcer task also carry the other task's labels
    both = oracle_masks["expression"] & oracle_masks["au"].any(dim=1)
    assert int(both.sum()) == min(per_sample(oracle_masks[t]) for t in ("expression", "au"))


def test_oracle_with_sampling_weights_is_checked_and_trainable(files):
    raw = raw_config(files)
    raw["data"]["sampling"] = [1, 3]  # two weights: they apply to the two sources, not the oracle
    (_, oracle, _), = variant_plan(resolve(raw), "oracle")
    assert oracle.config["data"]["sampling"] == "equal"
    assert oracle.config["train"]["label_share"] == {"expression": 0.25, "au": 0.75}


def test_oracle_needs_every_task_on_every_row_before_anything_trains(files, tmp_path):
    raw = raw_config(files)
    partial = files["expr"].with_name("oracle_expression_only.csv")
    partial.write_text(files["expr"].read_text())  # expression labels only
    raw["data"]["oracle"] = str(partial)
    with pytest.raises(DistmtlError) as info:
        run_compare(resolve(raw), tmp_path, seeds=1, variants=["mtl", "oracle"], progress=False)
    message = str(info.value)
    assert "\n" not in message and f"data.oracle: {partial}: row 1 (line 2)" in message
    assert "'au'" in message and "48 of 48 rows" in message
    assert not (tmp_path / "runs").exists()


def test_a_variant_that_turns_on_a_disabled_term_says_so(caplog):
    import logging

    from distmtl.training.experiment import Edge
    from distmtl.training.variants import coupled_edges

    options = {"coannotation": {"enabled": True}, "dm_a_to_b": {"enabled": False}, "dm_b_to_a": {"enabled": True}}
    edge = Edge("expression", "au", None, options)
    with caplog.at_level(logging.WARNING, logger="distmtl.training.variants"):
        (both,) = coupled_edges([edge], True, True, "coann+dm")
        (coann,) = coupled_edges([edge], True, False, "coann")
    assert both.options["dm_a_to_b"]["enabled"] is True
    assert coann.options["dm_a_to_b"]["enabled"] is False and coann.options["dm_b_to_a"]["enabled"] is False
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["relatedness[0].dm_a_to_b is off in the config, but variant 'coann+dm' trains it; "
                      "to leave it out, set its weight to 0"]
