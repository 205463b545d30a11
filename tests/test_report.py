import math

import numpy as np

import pandas as pd
import pytest

from distmtl.errors import DistmtlError
from distmtl.study.report import (
    VARIANTS,
    RunRecord,
    format_table,
    read_runs,
    summarise,
    variant_order,
    write_results,
)


def _records(values: dict[str, list[float]], task="expr", metric="macro_f1") -> list[RunRecord]:
    return [
        RunRecord(variant, seed, task, metric, v)
        for variant, vs in values.items()
        for seed, v in enumerate(vs)
    ]


def _row(summary: pd.DataFrame, variant: str, task: str = "expr") -> pd.Series:
    rows = summary[(summary["variant"] == variant) & (summary["task"] == task)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_mean_and_sample_std_over_seeds():
    summary = summarise(_records({"single": [0.5, 0.6, 0.7], "mtl": [0.4]}))
    single = _row(summary, "single")
    assert single["mean"] == pytest.approx(0.6)
    assert single["std"] == pytest.approx(0.1)  # ddof=1: sqrt((0.01 + 0 + 0.01) / 2)
    assert single["n_seeds"] == 3
    mtl = _row(summary, "mtl")
    assert mtl["std"] == 0.0 and mtl["n_seeds"] == 1


def test_gap_closed_constructed_case():
    summary = summarise(_records({"single": [0.5], "coann": [0.7], "oracle": [0.9]}))
    assert _row(summary, "coann")["gap_closed"] == pytest.approx(0.5)
    assert _row(summary, "single")["gap_closed"] == pytest.approx(0.0)
    assert _row(summary, "oracle")["gap_closed"] == pytest.approx(1.0)


def test_gap_closed_on_means_over_seeds():
    summary = summarise(
        _records({"single": [0.4, 0.6], "dm": [0.6, 0.8], "oracle": [0.8, 1.0]})
    )
    assert _row(summary, "dm")["gap_closed"] == pytest.approx((0.7 - 0.5) / (0.9 - 0.5))


def test_missing_oracle_or_flat_gap_gives_none():
    summary = summarise(_records({"single": [0.5], "mtl": [0.7]}))
    assert _row(summary, "mtl")["gap_closed"] is None
    flat = summarise(_records({"single": [0.5], "mtl": [0.7], "oracle": [0.5]}))
    assert _row(flat, "mtl")["gap_closed"] is None


def test_gap_closed_is_na_with_reason_when_oracle_is_within_the_spread():
    # the oracle above single-task by 0.02 with seed stds of 0.1: the ratio would read 2.0
    values = {"single": [0.4, 0.5, 0.6], "mtl": [0.5, 0.54, 0.58], "oracle": [0.42, 0.52, 0.62]}
    summary = summarise(_records(values))
    row = _row(summary, "mtl")
    assert row["gap_closed"] is None and "not above single-task by more than the spread" in row["gap_note"]
    assert "gap closed n/a" in row["verdict"]
    line = next(row for row in format_table(summary).splitlines() if "plain MTL" in row)
    assert " n/a " in line and "2.000" not in format_table(summary)
    # below single-task (lower is better here): n/a as well
    worse = summarise(_records({"single": [0.3], "mtl": [0.35], "oracle": [0.4]}, metric="mse"))
    assert _row(worse, "mtl")["gap_closed"] is None and _row(worse, "mtl")["gap_note"]
    # well above the spread: a number
    clear = summarise(_records({"single": [0.4, 0.5], "mtl": [0.6, 0.7], "oracle": [0.8, 0.9]}))
    assert _row(clear, "mtl")["gap_closed"] == pytest.approx(0.5) and _row(clear, "mtl")["gap_note"] is None


def test_negative_transfer_beyond_spread():
    # single mean 0.82 std 0.02, mtl mean 0.72 std 0.02: worse by 0.10 > 0.02
    summary = summarise(
        _records({"single": [0.80, 0.82, 0.84], "mtl": [0.70, 0.72, 0.74]})
    )
    row = _row(summary, "mtl")
    assert row["negative_transfer"] is True and row["beats_single"] is False
    assert row["verdict"].startswith("negative transfer")
    assert _row(summary, "single")["negative_transfer"] is None


def test_no_negative_transfer_within_spread():
    # worse by 0.01, within the spread 0.02
    summary = summarise(
        _records({"single": [0.80, 0.82, 0.84], "mtl": [0.79, 0.81, 0.83]})
    )
    row = _row(summary, "mtl")
    assert row["negative_transfer"] is False and row["beats_single"] is False
    assert row["verdict"].startswith("within spread")


def test_spread_is_max_of_both_stds():
    # mtl: mean 0.75, std 0.1; single: mean 0.82, std 0.02. Worse by 0.07: beyond the single-task
    # std but within the variant's, so no negative transfer under max(std_variant, std_single)
    summary = summarise(
        _records({"single": [0.80, 0.82, 0.84], "mtl": [0.65, 0.75, 0.85]})
    )
    assert _row(summary, "mtl")["negative_transfer"] is False


def test_beats_single_beyond_spread():
    summary = summarise(
        _records({"single": [0.80, 0.82, 0.84], "coann+dm": [0.90, 0.92, 0.94]})
    )
    row = _row(summary, "coann+dm")
    assert row["beats_single"] is True and row["negative_transfer"] is False
    assert row["display_name"] == "+both"


def test_single_seed_flags_any_loss_and_says_so():
    summary = summarise(_records({"single": [0.80], "dm": [0.79], "coann": [0.80]}))
    dm = _row(summary, "dm")
    assert dm["negative_transfer"] is True and "single seed" in dm["verdict"]
    assert _row(summary, "coann")["negative_transfer"] is False  # equal: not worse


def test_lower_is_better_metric_reverses_direction():
    summary = summarise(_records({"single": [0.5], "mtl": [0.3]}, metric="mse"))
    row = _row(summary, "mtl")
    assert row["beats_single"] is True and row["negative_transfer"] is False


def test_no_single_baseline():
    row = _row(summarise(_records({"mtl": [0.5, 0.6]})), "mtl")
    assert row["negative_transfer"] is None and row["verdict"] == "no single-task baseline"


def test_unknown_variants_kept_after_known_in_order_of_appearance():
    records = _records({"uw-weighting": [0.6], "mtl": [0.6], "single": [0.5], "ablate-a": [0.4]})
    summary = summarise(records)
    assert list(summary["variant"]) == ["single", "mtl", "uw-weighting", "ablate-a"]
    assert variant_order(["oracle", "x", "single"]) == ["single", "oracle", "x"]
    assert VARIANTS[0] == "single" and VARIANTS[-1] == "oracle"


def test_non_finite_runs_left_out():
    summary = summarise(_records({"single": [0.5, 0.7, math.nan], "mtl": [0.6, 0.6]}))
    single = _row(summary, "single")
    assert single["n_seeds"] == 2 and single["mean"] == pytest.approx(0.6)
    assert "non-finite" in single["verdict"]


def test_duplicate_record_rejected():
    records = _records({"single": [0.5]}) + [RunRecord("single", 0, "expr", "macro_f1", 0.6)]
    with pytest.raises(DistmtlError, match="duplicate"):
        summarise(records)


def _study() -> list[RunRecord]:
    return _records(
        {"single": [0.50, 0.52], "mtl": [0.40, 0.42], "coann": [0.70, 0.72],
         "coann+dm": [0.71, 0.73], "oracle": [0.90, 0.92], "uw": [0.6, 0.62]},
        task="expr",
    ) + _records(
        {"single": [0.30, 0.32], "mtl": [0.31, 0.33], "coann": [0.50, 0.52],
         "coann+dm": [0.40, 0.44], "oracle": [0.60, 0.62], "uw": [0.2, 0.22]},
        task="au", metric="mean_f1",
    )


def test_write_results_files(tmp_path):
    records = _study()
    paths = write_results(records, tmp_path / "out", title="Demo study",
                          extra_lines=["config: demo.yaml"])
    assert set(paths) == {"summary_csv", "runs_csv", "markdown", "plot"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "results.csv", "results.md", "results.png", "runs.csv"
    ]
    summary = pd.read_csv(paths["summary_csv"])
    assert len(summary) == 12 and {"mean", "std", "gap_closed", "verdict"} <= set(summary.columns)
    assert len(pd.read_csv(paths["runs_csv"])) == len(records)
    assert read_runs(paths["runs_csv"]) == records

    md = paths["markdown"].read_text()
    assert md.startswith("# Demo study") and "config: demo.yaml" in md
    assert "## expr" in md and "## au" in md
    for name in ("single-task", "plain MTL", "+co-annotation", "+both", "oracle", "uw"):
        assert f"| {name} |" in md
    assert "| +co-annotation | 0.7100 ± 0.0141 | 2 | - | - | 0.500 |" in md
    # +co-annotation and +both beat single-task on both tasks (au: 0.42 vs 0.31, spread 0.028);
    # uw beats it on expr only and shows negative transfer on au; plain MTL loses on expr
    summary_line = next(line for line in md.splitlines() if line.startswith("- Beat"))
    assert "+co-annotation" in summary_line and "+both" in summary_line
    assert "plain MTL" not in summary_line and "uw" not in summary_line
    negative_line = next(line for line in md.splitlines() if line.startswith("- Negative"))
    assert "plain MTL on expr (macro_f1 0.4100 vs single-task 0.5100)" in negative_line
    assert "uw on au" in negative_line
    assert "uw on expr" not in negative_line

    png = paths["plot"].read_bytes()
    assert len(png) > 1000 and png.startswith(b"\x89PNG\r\n\x1a\n")


def test_write_results_overwrites_and_rejects_empty(tmp_path):
    write_results(_study(), tmp_path)
    paths = write_results(_records({"single": [0.1], "mtl": [0.2]}), tmp_path)
    assert "plain MTL" in paths["markdown"].read_text()
    assert "| oracle |" not in paths["markdown"].read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(DistmtlError):
        write_results([], tmp_path)


def test_markdown_headings_name_the_metric_when_a_task_has_several(tmp_path):
    records = _records({"single": [0.5], "mtl": [0.6]}) + _records(
        {"single": [0.7], "mtl": [0.6]}, metric="accuracy"
    )
    md = write_results(records, tmp_path)["markdown"].read_text()
    assert "## expr (macro_f1)" in md and "## expr (accuracy)" in md


def test_format_table_lists_every_row():
    summary = summarise(_study())
    text = format_table(summary)
    lines = text.splitlines()
    assert len(lines) == 2 + len(summary)
    assert lines[0].split()[:3] == ["task", "metric", "variant"]
    assert any("+co-annotation" in line and "0.7100 ± 0.0141" in line and "0.500" in line
               for line in lines)


def test_paired_seed_comparison_counts_wins_and_differences():
    from distmtl.study.report import RunRecord, summarise

    records = [RunRecord("single", s, "t", "macro_f1", v) for s, v in enumerate([0.2, 0.5, 0.3])]
    records += [RunRecord("mtl", s, "t", "macro_f1", v) for s, v in enumerate([0.3, 0.55, 0.25])]
    row = summarise(records).set_index("variant").loc["mtl"]
    assert row["seed_wins"] == "2/3"
    diffs = np.array([0.1, 0.05, -0.05])
    assert row["paired_diff"] == pytest.approx(diffs.mean())
    assert row["paired_std"] == pytest.approx(diffs.std(ddof=1))
    assert "better in 2/3 seeds" in row["verdict"]
