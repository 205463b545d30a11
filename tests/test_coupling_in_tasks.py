"""``weighting.coupling``: coupling terms inside their task's loss (``task``) or after the weighting."""

import pytest
import torch

from distmtl.config import resolve
from distmtl.errors import DistmtlError
from distmtl.training.module import MultiTaskModule
from test_shield_heads import EDGE, TASKS, batch


def module(coupling: str | None, weighting: str = "equal", **options) -> MultiTaskModule:
    spec = {"name": weighting, "options": options}
    if coupling is not None:
        spec["coupling"] = coupling
    config = resolve({"tasks": TASKS, "data": {"sources": [{"csv": "unused.csv"}], "image_size": 16},
                      "weighting": spec})
    torch.manual_seed(0)
    m = MultiTaskModule(config, TASKS, [EDGE])
    m.train()
    return m


def parts(m: MultiTaskModule):
    total, logged = m.compute_losses(batch())
    value = {k: float(v) for k, v in logged.items()}
    to_au = value["term/coann:expression->au"] + value["term/dm:expression->au"]
    to_expr = value["term/coann:au->expression"] + value["term/dm:au->expression"]
    return float(total.detach()), value["loss/expression"], value["loss/au"], to_expr, to_au


def test_terms_in_their_task_are_weighted_with_it():
    total, expr, au, to_expr, to_au = parts(module("task", weights={"au": 3.0}))
    assert total == pytest.approx((expr + to_expr) + 3.0 * (au + to_au), rel=1e-5)


def test_terms_after_the_weighting_are_not_weighted():
    total, expr, au, to_expr, to_au = parts(module("after", weights={"au": 3.0}))
    assert total == pytest.approx(expr + 3.0 * au + to_expr + to_au, rel=1e-5)


def test_a_balancing_strategy_sees_each_task_with_its_terms():
    m = module("task", "uncertainty")
    with torch.no_grad():
        m.weighting.log_vars.copy_(torch.tensor([0.5, -1.0]))
    seen = {}
    real = m.weighting.forward

    def spy(losses, **kwargs):
        seen.update({k: float(v) for k, v in losses.items()})
        return real(losses, **kwargs)

    m.weighting.forward = spy
    _, expr, au, to_expr, to_au = parts(m)
    assert seen == pytest.approx({"expression": expr + to_expr, "au": au + to_au}, rel=1e-5)


def test_rows_without_jacobian_descent_is_a_one_line_error():
    from distmtl.training.experiment import check_model_and_weighting

    config = resolve({"tasks": TASKS, "data": {"sources": [{"csv": "unused.csv"}]},
                      "weighting": {"name": "uncertainty", "coupling": "rows"}})
    with pytest.raises(DistmtlError, match="weighting.coupling: 'rows' needs name: jd"):
        check_model_and_weighting(config)
    config["weighting"] = {"name": "jd", "aggregator": "upgrad", "coupling": "after", "options": {}}
    with pytest.raises(DistmtlError, match="weighting.coupling: expected task or rows"):
        check_model_and_weighting(config)
