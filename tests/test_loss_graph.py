"""The relatedness graph: its terms, their weights, and its configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distmtl.errors import DistmtlError
from distmtl.losses import (
    CoannotationConfig,
    EdgeConfig,
    MatchingConfig,
    NaiveBayesTable,
    RelatednessEdge,
    RelatednessGraph,
    coannotation_a_to_b_hard,
    coannotation_a_to_b_soft,
    coannotation_b_to_a_hard,
    coannotation_b_to_a_soft,
    dm_a_to_b,
    dm_b_to_a,
)

F64 = torch.float64
R = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.25], [0.0, 0.0, 0.0]], dtype=F64)
PRIOR = torch.tensor([0.5, 0.3, 0.2], dtype=F64)


def batch():
    """Four samples: 0 labelled for expr, 1 for both, 2 for some AUs, 3 for nothing."""
    outputs = {
        "expr": torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1], [0.0, 0.5, 0.0],
                              [-1.0, 0.0, 2.0]], dtype=F64),
        "au": torch.tensor([[0.5, -0.5, 0.0], [1.0, 1.0, -1.0], [0.1, -2.0, 0.3],
                            [0.0, 0.0, 0.0]], dtype=F64),
    }
    targets = {
        "expr": torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=F64),
        "au": torch.tensor([[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=F64),
    }
    masks = {
        "expr": torch.tensor([True, True, False, False]),
        "au": torch.tensor([[False, False, False], [True, True, True], [True, True, False],
                            [False, False, False]]),
    }
    return outputs, targets, masks


def full_config(**overrides) -> EdgeConfig:
    spec = {
        "coannotation": {"enabled": True, "weight": 0.5, "temperature": 2.0},
        "dm_a_to_b": {"enabled": True, "weight": 2.0, "form": "bce"},
        "dm_b_to_a": {"enabled": True, "weight": 3.0, "form": "kl"},
        "eps": 0.1,
    }
    spec.update(overrides)
    return EdgeConfig.from_dict(spec, "relatedness[0]")


def close(a, b):
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12, abs=1e-12)


def test_edge_returns_all_enabled_terms_weighted():
    outputs, targets, masks = batch()
    edge = RelatednessEdge("expr", "au", R, PRIOR, full_config(), key="relatedness[0]")
    terms = edge(outputs, targets, masks)
    assert list(terms) == ["coann:expr->au", "coann:au->expr", "dm:expr->au", "dm:au->expr"]
    assert edge.term_names() == list(terms)

    za, zb = outputs["expr"], outputs["au"]
    ya, yb, ma, mb = targets["expr"], targets["au"], masks["expr"], masks["au"]
    table = NaiveBayesTable.from_relatedness(R, PRIOR, eps=0.1)
    close(terms["coann:expr->au"], 0.5 * coannotation_a_to_b_soft(zb, ya, ma, mb, R))
    close(terms["coann:au->expr"],
          0.5 * coannotation_b_to_a_soft(za, yb, mb, ma, table, temperature=2.0))
    close(terms["dm:expr->au"], 2.0 * dm_a_to_b(za, zb, R, "bce"))
    close(terms["dm:au->expr"], 3.0 * dm_b_to_a(za, zb, table, "kl"))


def test_edge_hand_value_of_a_weighted_term():
    outputs, targets, masks = batch()
    config = EdgeConfig(coannotation=CoannotationConfig(enabled=True, weight=0.5, b_to_a=False))
    edge = RelatednessEdge("expr", "au", R, PRIOR, config)
    # Sample 0 (class 0, no AU labels): targets R[0] = (1, .5, 0) on all three AUs.
    # Sample 1 is annotated for every AU; samples 2 and 3 have no expression label.
    z = outputs["au"][0].tolist()
    bce = lambda x, y: -(y * math.log(1 / (1 + math.exp(-x)))
                         + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
    expected = 0.5 * (bce(z[0], 1.0) + bce(z[1], 0.5) + bce(z[2], 0.0)) / 3
    terms = edge(outputs, targets, masks)
    assert list(terms) == ["coann:expr->au"]
    assert terms["coann:expr->au"].item() == pytest.approx(expected, rel=1e-12)


def test_only_enabled_terms_and_dm_scale():
    outputs, targets, masks = batch()
    assert RelatednessEdge("expr", "au", R)(outputs, targets, masks) == {}

    config = EdgeConfig(
        coannotation=CoannotationConfig(enabled=True, a_to_b=False, weight=0.5),
        dm_a_to_b=MatchingConfig(enabled=True, weight=2.0),
    )
    edge = RelatednessEdge("expr", "au", R, PRIOR, config)
    full = edge(outputs, targets, masks)
    assert list(full) == ["coann:au->expr", "dm:expr->au"]
    scaled = edge(outputs, targets, masks, dm_scale=0.25)
    close(scaled["coann:au->expr"], full["coann:au->expr"])  # co-annotation is not ramped
    close(scaled["dm:expr->au"], 0.25 * full["dm:expr->au"])
    close(full["dm:expr->au"], 2.0 * dm_a_to_b(outputs["expr"], outputs["au"], R, "kl"))


def test_hard_variant_and_only_unlabelled():
    outputs, targets, masks = batch()
    za, zb = outputs["expr"], outputs["au"]
    ya, yb, ma, mb = targets["expr"], targets["au"], masks["expr"], masks["au"]
    config = EdgeConfig(
        coannotation=CoannotationConfig(enabled=True, variant="hard"),
        dm_a_to_b=MatchingConfig(enabled=True, weight=1.0, form="kl", only_unlabelled=True),
        dm_b_to_a=MatchingConfig(enabled=True, weight=1.0, form="ce", only_unlabelled=True),
    )
    terms = RelatednessEdge("expr", "au", R, PRIOR, config)(outputs, targets, masks)
    close(terms["coann:expr->au"], coannotation_a_to_b_hard(zb, ya, ma, mb, R))
    close(terms["coann:au->expr"], coannotation_b_to_a_hard(za, yb, mb, ma, R))
    table = NaiveBayesTable.from_relatedness(R, PRIOR)
    # A -> B: samples with no AU annotated (0 and 3); B -> A: samples without expression (2, 3).
    close(terms["dm:expr->au"],
          dm_a_to_b(za, zb, R, "kl", sample_mask=torch.tensor([True, False, False, True])))
    close(terms["dm:au->expr"],
          dm_b_to_a(za, zb, table, "ce", sample_mask=torch.tensor([False, False, True, True])))


def test_graph_merges_edges_and_rejects_duplicates():
    outputs, targets, masks = batch()
    outputs["attr"] = torch.tensor([[0.3, -0.3]] * 4, dtype=F64)
    r_attr = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=F64)
    e1 = RelatednessEdge("expr", "au", R, PRIOR, full_config())
    e2 = RelatednessEdge("expr", "attr", r_attr, None,
                         EdgeConfig(dm_b_to_a=MatchingConfig(enabled=True, weight=1.0, form="ce")))
    graph = RelatednessGraph([e1, e2])
    terms = graph(outputs, targets, masks, dm_scale=0.5)
    assert list(terms) == graph.term_names() == [
        "coann:expr->au", "coann:au->expr", "dm:expr->au", "dm:au->expr", "dm:attr->expr"
    ]
    for name, value in e1(outputs, targets, masks, dm_scale=0.5).items():
        close(terms[name], value)
    # 'attr' has no targets in the batch: unannotated everywhere, which DM does not need.
    table = NaiveBayesTable.from_relatedness(r_attr)
    close(terms["dm:attr->expr"], 0.5 * dm_b_to_a(outputs["expr"], outputs["attr"], table, "ce"))

    with pytest.raises(DistmtlError, match="already linked"):
        RelatednessGraph([e1, RelatednessEdge("au", "expr", R.T.contiguous())])
    with pytest.raises(DistmtlError, match="no output for task 'attr'"):
        e2({"expr": outputs["expr"]}, targets, masks)


def test_graph_stop_gradient_leaves_the_target_head_untouched():
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    head_a, head_b = nn.Linear(4, 3), nn.Linear(4, 3)
    edge = RelatednessEdge("expr", "au", R.float(), None,
                           EdgeConfig(dm_a_to_b=MatchingConfig(enabled=True, form="kl")))
    za, zb = head_a(x), head_b(x)
    terms = edge({"expr": za, "au": zb}, {}, {})
    (sum(terms.values()) + 0.0 * (za.sum() + zb.sum())).backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in head_a.parameters())
    assert any(p.grad.abs().sum() > 0 for p in head_b.parameters())


def test_edge_buffers_follow_the_module():
    edge = RelatednessEdge("expr", "au", R.float(), PRIOR.float(), EdgeConfig(eps=0.1))
    assert set(edge.state_dict()) == {"R", "log_r_tilde", "log_1m_r_tilde", "log_prior"}
    assert torch.allclose(edge.log_r_tilde.exp(), R.float().clamp(0.1, 0.9))
    assert torch.allclose(edge.log_prior.exp(), PRIOR.float())
    edge = edge.to(F64)
    assert edge.R.dtype == F64 and edge.log_prior.dtype == F64
    assert "expr->au" in repr(edge)


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"dm_a_to_b": {"form": "klx"}},
         "relatedness[0].dm_a_to_b.form: unknown form 'klx' (did you mean: kl?)"),
        ({"dm_b_to_a": {"form": "paper"}},
         "relatedness[0].dm_b_to_a.form: unknown form 'paper'; expected one of ce, kl"),
        ({"coannotation": {"variant": "sotf"}},
         "relatedness[0].coannotation.variant: unknown variant 'sotf' (did you mean: soft?)"),
        ({"coannotation": {"weight": -1}},
         "relatedness[0].coannotation.weight: expected a number in [0, inf), got -1"),
        ({"coannotation": {"temperature": 0}},
         "relatedness[0].coannotation.temperature: expected a number in (0, inf), got 0"),
        ({"dm_a_to_b": {"stop_gradient": "yes"}},
         "relatedness[0].dm_a_to_b.stop_gradient: expected true or false, got 'yes'"),
        ({"eps": 0.7}, "relatedness[0].eps: expected a number in (0, 0.5), got 0.7"),
        ({"dm_a_to_b": {"from": "kl"}},
         ("relatedness[0].dm_a_to_b: unknown key 'from' (did you mean: form?); expected one of "
          "enabled, weight, form, stop_gradient, only_unlabelled")),
        ({"dm_atob": {}},
         ("relatedness[0]: unknown key 'dm_atob' (did you mean: dm_a_to_b, dm_b_to_a?); expected "
          "one of coannotation, dm_a_to_b, dm_b_to_a, eps")),
    ],
)
def test_bad_config_values_give_a_one_line_error(spec, message):
    with pytest.raises(DistmtlError) as info:
        EdgeConfig.from_dict(spec, "relatedness[0]")
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_edge_validates_its_config_and_matrix():
    config = EdgeConfig(dm_a_to_b=MatchingConfig(form="klx"))
    with pytest.raises(DistmtlError) as info:
        RelatednessEdge("expr", "au", R, PRIOR, config, key="relatedness[0]")
    expected = "relatedness[0].dm_a_to_b.form: unknown form 'klx' (did you mean: kl?)"
    assert str(info.value) == expected
    with pytest.raises(DistmtlError, match=r"relatedness\[1\]: the matrix must hold probabilities"):
        RelatednessEdge("expr", "au", R * 2, key="relatedness[1]")
    with pytest.raises(DistmtlError, match="prior: expected positive"):
        RelatednessEdge("expr", "au", R, torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(DistmtlError, match=r"prior: expected shape \(3,\)"):
        RelatednessEdge("expr", "au", R, torch.tensor([0.5, 0.5]))
    with pytest.raises(DistmtlError, match="two different tasks"):
        RelatednessEdge("expr", "expr", R)
    outputs, targets, masks = batch()
    outputs["au"] = outputs["au"][:, :2]
    with pytest.raises(DistmtlError, match=r"output of task 'au' must be \[batch, 3\]"):
        RelatednessEdge("expr", "au", R)(outputs, targets, masks)


def test_default_config_forms():
    config = EdgeConfig.from_dict({"dm_b_to_a": {"enabled": True}})
    assert config.dm_a_to_b.form == "kl" and config.dm_b_to_a.form == "ce"  # one default, as in YAML
    assert EdgeConfig().dm_b_to_a.form == "ce" and EdgeConfig().eps == 0.05
    assert config.dm_b_to_a.stop_gradient is True and config.coannotation.enabled is False


def test_hard_coannotation_warns_when_the_threshold_finds_no_entry(caplog):
    import logging

    estimated = torch.tensor([[0.96, 0.5, 0.02], [0.03, 0.93, 0.25], [0.01, 0.02, 0.04]])
    spec = {"coannotation": {"variant": "hard"}}
    with caplog.at_level(logging.WARNING, logger="distmtl.losses.graph"):
        RelatednessEdge("expr", "au", estimated, config=EdgeConfig.from_dict(spec), key="relatedness[0]")
    assert "none of the table's 9 entries >= threshold 1" in caplog.text
    caplog.clear()
    spec = {"coannotation": {"variant": "hard", "threshold": 0.9}}
    with caplog.at_level(logging.WARNING, logger="distmtl.losses.graph"):
        edge = RelatednessEdge("expr", "au", estimated, config=EdgeConfig.from_dict(spec))
    assert caplog.text == ""
    outputs, targets, masks = batch()
    assert set(edge(outputs, targets, masks)) == {"coann:expr->au", "coann:au->expr"}
    with pytest.raises(DistmtlError, match=r"coannotation.hard_targets: unknown hard targets 'ful'"):
        EdgeConfig.from_dict({"coannotation": {"hard_targets": "ful"}})
    with pytest.raises(DistmtlError, match=r"coannotation.threshold: expected a number in \(0, 1\]"):
        EdgeConfig.from_dict({"coannotation": {"threshold": 0}})
