"""Plumbing of benchmarks/quality.py: its regimes resolve to the intended sources, and one tiny
digits study runs through the harness to a report with steps and plateau columns."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402
from harness import Study, run_jobs  # noqa: E402

from distmtl.config import load_config  # noqa: E402
from distmtl.training.experiment import build_experiment  # noqa: E402


def test_plateau_mode_is_the_default_and_every_regime_is_planned():
    groups = quality.plan(["regimes", "fashion", "digits"], {f"{k}_{r}": "x.csv" for k in ("expr", "au", "oracle")
                                                             for r in "bc"}, quick=False)
    names = {s.name for studies in groups.values() for s in studies}
    assert {"regime_a", "regime_b", "regime_c", "fashion_scarce_categories", "fashion_scarce_attributes",
            "digits_scarce_digits", "digits_scarce_attributes"} <= names
    regime_a = groups["regimes"][0]
    config = load_config(ROOT / regime_a.config, regime_a.overrides)
    assert config["train"]["until"] == "plateau" and config["data"]["image_size"] == 32
    steps = quality.plan(["relatedness"], {"estimated": "e.csv", "true": "t.csv"}, quick=False,
                         until="steps")["relatedness"][0]
    assert "train.until=steps" in steps.overrides and "train.max_steps=450" in steps.overrides
    paths = {f"{k}_{r}": "x.csv" for k in ("expr", "au", "oracle") for r in "bc"}
    for regime in quality.plan(["regimes"], paths, quick=False, until="steps")["regimes"]:
        assert "train.max_steps=450" in regime.overrides, regime.name  # (b) and (c) too, not only (a)


def test_digits_regimes_resolve_to_disjoint_sources_and_their_oracle():
    for study in quality.plan(["digits"], {}, quick=False)["digits"]:
        exp = build_experiment(load_config(ROOT / study.config, study.overrides + ["data.cache_images=false"]),
                               with_oracle=True)
        sizes = [len(s) for s in exp.train_sources]
        assert sorted(sizes) == [100, 1100] and len(exp.oracle) == 1200
        assert exp.config["train"]["until"] == "plateau"


@pytest.mark.slow
def test_a_tiny_digits_study_runs_through_the_harness_to_a_report(tmp_path):
    study = quality.plan(["digits"], {}, quick=False)["digits"][0]
    study = Study(study.name, study.config, ["single"],
                  study.overrides + ["train.max_steps=6", "train.val_every_steps=3", "train.patience_steps=3"],
                  study.label)
    assert run_jobs([study], tmp_path, [0], 1, []) == []
    path = quality.report(tmp_path, {"digits": [study]}, "python benchmarks/quality.py", "machine: test", [0], None)
    text = path.read_text()
    assert "## digits, scarce digits (100 + 1,100)" in text and "| variant | steps | plateau |" in text
    assert (tmp_path / study.name / "results.md").exists()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (make fashion-mnist)")
def test_fashion_regimes_resolve_to_scarce_and_plentiful_sources():
    expected = {"fashion_scarce_categories": [300, 10000], "fashion_scarce_attributes": [10000, 300]}
    for study in quality.plan(["fashion"], {}, quick=False)["fashion"]:
        exp = build_experiment(load_config(ROOT / study.config, study.overrides + ["data.cache_images=false"]),
                               with_oracle=True)
        assert [len(s) for s in exp.train_sources] == expected[study.name] and len(exp.oracle) == 10300
        assert exp.config["train"]["until"] == "plateau"


def test_every_regime_of_the_dm_study_resolves_to_the_quality_benchmarks_sources():
    import dm_study

    paths = {f"{k}_{r}": "x.csv" for k in ("expr", "au", "oracle") for r in "bc"}
    planned = {s.name: s for studies in quality.plan(["regimes", "fashion", "digits"], paths, quick=False).values()
               for s in studies}
    same_as = {"synthfacs_b": "regime_b", "synthfacs_c": "regime_c"}
    for regime in [*quality.DIGITS_REGIMES, *quality.FASHION_REGIMES, "synthfacs_b", "synthfacs_c"]:
        study = dm_study.regime_study(regime, paths)
        reference = planned[same_as.get(regime, regime)]
        assert (study.config, study.overrides) == (reference.config, reference.overrides), regime
    for name in dm_study.CANDIDATES:
        assert dm_study.variant_of(name) in ("dm", "coann+dm"), name


def test_first_seed_adds_seeds_after_an_earlier_run():
    from harness import seed_list, study_arguments

    parser = study_arguments("", "runs/x", ["a"])
    assert seed_list(parser.parse_args([])) == [0, 1, 2]
    assert seed_list(parser.parse_args(["--seeds", "2", "--first-seed", "1"])) == [1, 2]


def test_the_dm_study_writes_every_seeds_scores(tmp_path):
    import json

    import dm_study

    study = Study("r_dm", "configs/digits.yaml", ["dm"], [])
    for seed, score in ((1, 0.5), (2, 0.75)):
        run = tmp_path / "r_dm" / f"seed{seed}" / "runs" / "dm" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"val": {"digit": {"macro_f1": score}},
                                                      "test": {"digit": {"macro_f1": score / 2}}}))
    dm_study.write_seed_scores(tmp_path / "scores.csv", tmp_path, [("DM", study, "dm")])
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "candidate,split,seed,metric,value"
    assert sorted(rows[1:]) == sorted(['"DM",val,seed1,digit macro_f1,0.500000',
                                       '"DM",val,seed2,digit macro_f1,0.750000',
                                       '"DM",test,seed1,digit macro_f1,0.250000',
                                       '"DM",test,seed2,digit macro_f1,0.375000'])


def test_the_dm_study_pools_seeds_from_several_studies_and_refuses_a_seed_twice(tmp_path):
    import dm_study

    header = "candidate,split,seed,metric,value\n"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(header + '"single-task",val,seed0,digit macro_f1,0.5\n"DM",val,seed0,digit macro_f1,0.7\n')
    second.write_text(header + '"single-task",val,seed1,digit macro_f1,0.7\n"DM",val,seed1,digit macro_f1,0.6\n')
    pooled = dm_study.pooled_scores([first, second])
    assert pooled["val"]["DM"]["digit macro_f1"] == [0.7, 0.6]
    table = dm_study.score_table(pooled["val"])
    assert "| DM | 0.6500 ± 0.0707 (2) | +0.0500 |" in table
    with pytest.raises(SystemExit, match=r"first.csv: row 2: seed 'seed0' of 'single-task'"):
        dm_study.pooled_scores([second, first, first])
