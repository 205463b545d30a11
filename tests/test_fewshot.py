"""``distmtl fewshot``: episodes, the four methods, the zero-shot head as a linear layer, the summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from distmtl.errors import DistmtlError
from test_predict import COMPOUND_CLASSES, shared_tiny_run  # tests/ is on sys.path under pytest


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def compound_csv(tmp_path_factory):
    run = shared_tiny_run(tmp_path_factory)
    classes = COMPOUND_CLASSES[:3]
    rows = [{"image": f"img/{p.name}", "compound": classes[i % 3]} for i, p in enumerate(run.images[:24])]
    path = run.root / "fewshot.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return run, path


def test_episodes_draw_k_per_class_and_keep_the_rest_for_query():
    from distmtl.inference.fewshot import episode

    labels = np.array([0, 1, 2] * 4)
    support, query = episode(labels, ["a", "b", "c"], 2, seed=3)
    assert sorted(np.bincount(labels[support]).tolist()) == [2, 2, 2]
    assert set(support) | set(query) == set(range(12)) and not set(support) & set(query)
    assert (episode(labels, ["a", "b", "c"], 2, seed=3)[0] == support).all()  # seeded
    with pytest.raises(DistmtlError, match="class 'a' has 4 images; 4 shots need at least 5"):
        episode(labels, ["a", "b", "c"], 4, seed=0)


def test_zero_shot_layer_is_the_zero_shot_scorer():
    from distmtl.inference.compound import compound_probs, restricted_table
    from distmtl.inference.fewshot import zero_shot_layer
    from distmtl.tasks import AUS_17

    table = restricted_table(COMPOUND_CLASSES[:5])
    b = torch.rand(20, len(AUS_17), generator=torch.Generator().manual_seed(0))
    weight, bias, columns = zero_shot_layer(table, AUS_17)
    logits = b[:, columns] @ weight.T + bias
    expected = compound_probs(b.numpy(), AUS_17, table=table)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), expected, atol=1e-5)


def test_fewshot_command_writes_the_table(compound_csv, tmp_path, capsys):
    from distmtl.cli import main

    run, path = compound_csv
    out = tmp_path / "fs"
    assert main(["fewshot", "--model", str(run.model), "--data", str(path), "--shots", "1", "2",
                 "--seeds", "2", "--scratch-steps", "3", "--head-steps", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "about" in printed and "left" in printed  # progress with the remaining time
    episodes = pd.read_csv(out / "episodes.csv")
    assert len(episodes) == 4 * 2 * 2  # methods x shots x seeds
    assert set(episodes["method"]) == {"zero-shot", "linear probe", "zero-shot head, fine-tuned", "from scratch"}
    assert (episodes["n_support"] == episodes["shots"] * 3).all()
    assert episodes["accuracy"].between(0, 1).all()
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["seeds"] == 2).all() and len(summary) == 8
    assert "| zero-shot |" in (out / "summary.md").read_text() and (out / "fewshot.png").stat().st_size > 1000
    assert main(["fewshot", "--model", str(run.model), "--data", str(path), "--shots", "8", "--seeds", "1",
                 "--methods", "zero-shot", "--out", str(out)]) == 2
    assert "8 shots need at least 9" in capsys.readouterr().err
