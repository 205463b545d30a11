"""data.val carved from a training source, disjoint by subject (GroupShuffleSplit)."""

from __future__ import annotations

import pytest

from distmtl.errors import DistmtlError
from fixtures.loaders_au import DISFA_PARTS, write_disfa

SUBJECTS = [s for part in DISFA_PARTS.values() for s in part]


def _config(root, val):
    from distmtl.config import resolve

    return resolve({
        "name": "carve",
        "tasks": {"au": {"kind": "multilabel", "labels": "au17"}},
        "data": {"sources": [{"loader": "disfa", "root": str(root), "split": "all"}], "val": val,
                 "image_size": 16, "num_workers": 0},
    })


def test_validation_subjects_are_not_training_subjects(tmp_path):
    from distmtl.data.loaders import get_loader
    from distmtl.data.splits import carve
    from distmtl.training.experiment import build_experiment

    write_disfa(tmp_path)
    loaded = get_loader("disfa").load(tmp_path, "all")
    train, val = carve(loaded, {"from": "disfa", "fraction": 0.34, "by": "subject"}, "data.val")
    assert set(train.frame["subject"]).isdisjoint(val.frame["subject"])
    assert set(train.frame["subject"]) | set(val.frame["subject"]) == set(SUBJECTS)
    assert len(train.frame) + len(val.frame) == len(loaded.frame)
    assert 1 <= val.frame["subject"].nunique() <= 3
    again = carve(loaded, {"from": "disfa", "fraction": 0.34, "by": "subject"}, "data.val")[1]
    assert again.frame["image"].tolist() == val.frame["image"].tolist()  # seeded: the same split

    exp = build_experiment(_config(tmp_path, {"from": "disfa", "fraction": 0.34, "by": "subject"}))
    assert exp.eval_sources["val"].name == "disfa_val"
    assert len(exp.train_sources[0].images) == len(train.frame)
    assert sorted(exp.eval_sources["val"].images) == sorted(val.frame["image"])


@pytest.mark.parametrize("val, message", [
    ({"from": "disfa", "fraction": 1.5}, "data.val.fraction"),
    ({"from": "disfa", "fracton": 0.1}, "data.val.fracton: unknown key"),
    ({"from": "disfb"}, "data.val.from: unknown training source 'disfb'.*did you mean: disfa"),
    ({"from": "disfa", "by": "identity"}, "data.val.by: training source 'disfa' has no column 'identity'"),
])
def test_bad_carve_specs_are_one_line(tmp_path, val, message):
    from distmtl.training.experiment import build_experiment

    write_disfa(tmp_path)
    with pytest.raises(DistmtlError, match=message):
        build_experiment(_config(tmp_path, val))
