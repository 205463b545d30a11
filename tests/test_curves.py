"""Training curves: the CSV log is read per step and drawn; the weights figure pools seeds."""

import pandas as pd
import pytest
from PIL import Image

from distmtl.training.curves import plot_weight_runs, read_log, write_training_curves
from distmtl.errors import DistmtlError


def write_log(run_dir, rows):
    (run_dir / "logs").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run_dir / "logs" / "metrics.csv", index=False)


def test_read_log_merges_rows_of_one_step(tmp_path):
    # Lightning writes training and validation values of one step on separate rows
    write_log(tmp_path, [{"step": 9, "loss/a": 1.0, "weight/a": 0.5, "val/score": None},
                         {"step": 9, "loss/a": None, "weight/a": None, "val/score": 0.3},
                         {"step": 19, "loss/a": 0.8, "weight/a": 0.6, "val/score": None}])
    frame = read_log(tmp_path)
    assert list(frame["step"]) == [9, 19]
    assert frame.loc[0, "loss/a"] == 1.0 and frame.loc[0, "val/score"] == 0.3
    assert pd.isna(frame.loc[1, "val/score"])


def test_write_training_curves_draws_each_group(tmp_path):
    write_log(tmp_path, [{"step": s, "loss/a": 1 / s, "loss/b": 2 / s, "weight/a": 0.4, "weight/b": 0.6}
                         for s in range(1, 30)])
    path = write_training_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    width, height = Image.open(path).size
    assert width > 2 * height  # two panels side by side: losses and weights


def test_no_log_means_no_figure_and_a_clear_error(tmp_path):
    assert write_training_curves(tmp_path) is None
    with pytest.raises(DistmtlError, match="no training log"):
        read_log(tmp_path)


def test_weight_runs_figure_needs_logs(tmp_path):
    frames = [pd.DataFrame({"step": [1, 2], "weight/a": [0.5, 0.7], "weight/b": [0.5, 0.3]}),
              pd.DataFrame({"step": [1, 2], "weight/a": [0.5, 0.6], "weight/b": [0.5, 0.4]})]
    assert plot_weight_runs({"dynamic": frames}, tmp_path / "w.png").is_file()
    with pytest.raises(DistmtlError):
        plot_weight_runs({"dynamic": []}, tmp_path / "none.png")


def test_many_weight_panels_wrap_into_rows(tmp_path):
    frame = pd.DataFrame({"step": [1, 2], "weight/a": [0.5, 0.7], "weight/b": [0.5, 0.3]})
    path = plot_weight_runs({f"strategy {i}": [frame] for i in range(12)}, tmp_path / "w.png")
    width, height = Image.open(path).size
    assert width < 2.5 * height  # 12 panels: three rows of at most five, not one 12-panel strip
