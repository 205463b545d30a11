"""``relatedness[i].balance``: coupling towards a task scaled by how often its images are drawn."""

from __future__ import annotations

import pytest
import torch

from distmtl.config import resolve
from distmtl.training.balance import draws_ratio, term_scales
from toydata import raw_config, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("sizes, labelled, weights, expected", [
    ([300, 3000], [0, 3000], [0.5, 0.5], 0.1),       # few images lack the task, drawn 10x as often
    ([300, 3000], [300, 0], [0.5, 0.5], 1.0),        # many lack it, each drawn less often
    ([3000, 3000], [0, 3000], [0.5, 0.5], 1.0),      # balanced sources
    ([300, 3000], [0, 3000], [300 / 3300, 3000 / 3300], 1.0),  # proportional sampling
    # two labelled sources of different sizes: f_T = (1/3 + 1/3) / 900 per image, f_notT = 1/300
    ([100, 100, 800], [0, 100, 800], [1 / 3, 1 / 3, 1 / 3], (2 / 3 / 900) / (1 / 300)),
    ([100, 100], [100, 100], [0.5, 0.5], 1.0),       # nothing lacks the task
])
def test_draws_ratio_by_hand(sizes, labelled, weights, expected):
    assert draws_ratio(sizes, labelled, weights) == pytest.approx(min(1.0, expected))


def test_only_the_direction_towards_the_oversampled_task_is_scaled():
    sources = [{"size": 300, "annotated": {"expression": 300, "au": 0}},
               {"size": 3000, "annotated": {"expression": 0, "au": 3000}}]
    edge = {"task_a": "expression", "task_b": "au", "options": {}}
    assert term_scales([edge], sources, [0.5, 0.5]) == {"coann:expression->au": 0.1, "dm:expression->au": 0.1}
    assert term_scales([{**edge, "options": {"balance": False}}], sources, [0.5, 0.5]) == {}


def _module(tmp_path, balance: bool):
    from distmtl.training.experiment import build_experiment
    from distmtl.training.runner import module_from_experiment

    files = write_dataset(tmp_path / "data", n_expr=20, n_au=80, n_eval=8)
    raw = raw_config(files)
    raw["relatedness"][0]["balance"] = balance
    return module_from_experiment(build_experiment(resolve(raw)))


def test_the_module_scales_the_terms_of_the_oversampled_direction(tmp_path):
    scaled, plain = _module(tmp_path / "on", True), _module(tmp_path / "off", False)
    assert scaled.term_scales == {"coann:expression->au": 0.25, "dm:expression->au": 0.25}
    assert plain.term_scales == {}
    torch.manual_seed(0)
    outputs = {"expression": torch.randn(8, 3), "au": torch.randn(8, 3)}
    half = torch.arange(8) < 4
    targets = {"expression": torch.randint(0, 3, (8,)), "au": (torch.rand(8, 3) > 0.5).float()}
    masks = {"expression": half, "au": (~half)[:, None].expand(8, 3)}
    a = scaled.coupling_terms(outputs, None, targets, masks, {})
    b = plain.coupling_terms(outputs, None, targets, masks, {})
    assert set(a) == set(b) and len(a) == 4
    for name in a:
        factor = 0.25 if name.endswith("->au") else 1.0
        assert torch.allclose(a[name], factor * b[name]), name


def test_dry_run_lists_the_scale_beside_the_term(tmp_path):
    from distmtl.training.experiment import build_experiment
    from distmtl.training.variants import loss_terms

    files = write_dataset(tmp_path / "data", n_expr=20, n_au=80, n_eval=8)
    forms = {t["name"]: t["form"] for t in loss_terms(build_experiment(resolve(raw_config(files))))}
    assert forms["term/coann:expression->au"].endswith("x0.25 (balance)")
    assert forms["term/dm:expression->au"].endswith("x0.25 (balance)")
    assert "balance" not in forms["term/coann:au->expression"] + forms["term/dm:au->expression"]


def _edge(lift: bool, weight: float = 0.1) -> dict:
    return {"task_a": "expression", "task_b": "au",
            "options": {"lift_scarce": lift, "dm_a_to_b": {"weight": weight}, "dm_b_to_a": {"weight": weight}}}


SCARCE_EXPRESSIONS = [{"size": 300, "annotated": {"expression": 300, "au": 0}},
                      {"size": 3000, "annotated": {"expression": 0, "au": 3000}}]


def test_lift_scarce_raises_only_dm_towards_the_task_with_few_labels():
    # expression images drawn 10x as often as the AU images that lack expressions: DM towards the
    # expressions goes from 0.1 to 0.1 x 10 = 1; co-annotation and the other direction as before
    assert term_scales([_edge(True)], SCARCE_EXPRESSIONS, [0.5, 0.5]) == {
        "coann:expression->au": 0.1, "dm:expression->au": 0.1, "dm:au->expression": 10.0}
    assert term_scales([_edge(False)], SCARCE_EXPRESSIONS, [0.5, 0.5]) == {
        "coann:expression->au": 0.1, "dm:expression->au": 0.1}


@pytest.mark.parametrize("weight, expected", [(0.3, 1 / 0.3), (0.05, 10.0), (1.0, None), (0.0, None)])
def test_lift_scarce_never_takes_a_term_above_weight_one(weight, expected):
    scales = term_scales([_edge(True, weight)], SCARCE_EXPRESSIONS, [0.5, 0.5])
    assert scales.get("dm:au->expression") == (None if expected is None else pytest.approx(expected, rel=1e-5))
    if expected is not None:
        assert weight * scales["dm:au->expression"] <= 1.0 + 1e-6


def test_lift_scarce_changes_nothing_for_balanced_sources():
    balanced = [{"size": 3000, "annotated": {"expression": 3000, "au": 0}},
                {"size": 3000, "annotated": {"expression": 0, "au": 3000}}]
    assert term_scales([_edge(True)], balanced, [0.5, 0.5]) == {}


def test_the_module_lifts_the_dm_term_towards_the_scarce_task(tmp_path):
    from distmtl.training.experiment import build_experiment
    from distmtl.training.runner import module_from_experiment

    files = write_dataset(tmp_path / "data", n_expr=20, n_au=80, n_eval=8)
    raw = raw_config(files)
    raw["relatedness"][0]["lift_scarce"] = True
    module = module_from_experiment(build_experiment(resolve(raw)))
    # 20 expression images drawn as often as 80 AU images: each 4x as often, so DM towards the
    # expressions is multiplied by 4 (0.1 -> 0.4)
    assert module.term_scales["dm:au->expression"] == pytest.approx(4.0)
    assert "coann:au->expression" not in module.term_scales
