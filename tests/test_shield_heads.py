"""``train.shield_heads``: coupling terms train the shared backbone, never a task's head."""

import pytest
import torch

from distmtl.config import resolve
from distmtl.training.module import MultiTaskModule

CLASSES = ["Neutral", "Happiness", "Surprise"]
AUS = ["AU01", "AU12", "AU25"]
TASKS = {"expression": {"kind": "multiclass", "labels": CLASSES}, "au": {"kind": "multilabel", "labels": AUS}}
EDGE = {"task_a": "expression", "task_b": "au", "classes": CLASSES, "labels": AUS,
        "matrix": [[0.1, 0.1, 0.1], [0.1, 0.9, 0.2], [0.9, 0.1, 0.9]], "prior": [1 / 3] * 3,
        "options": {"coannotation": {"variant": "soft", "weight": 1.0},
                    "dm_a_to_b": {"weight": 1.0, "form": "kl"}, "dm_b_to_a": {"weight": 1.0, "form": "ce"}}}


def module(shield: bool) -> MultiTaskModule:
    config = resolve({"tasks": TASKS, "data": {"sources": [{"csv": "unused.csv"}], "image_size": 16},
                      "train": {"shield_heads": shield}})
    torch.manual_seed(0)
    m = MultiTaskModule(config, TASKS, [EDGE])
    m.train()
    return m


def batch(n: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, len(CLASSES), (n,), generator=g)
    half = torch.arange(n) < n // 2  # first half expression-only, second half AU-only
    return {"image": torch.randn(n, 3, 16, 16, generator=g),
            "targets": {"expression": torch.nn.functional.one_hot(classes, len(CLASSES)).float(),
                        "au": (torch.rand(n, len(AUS), generator=g) < 0.5).float()},
            "masks": {"expression": half, "au": (~half)[:, None].expand(n, len(AUS)).clone()}}


def coupling_grads(m: MultiTaskModule) -> tuple[float, float]:
    """(|grad| of the heads, |grad| of the backbone) from the coupling terms alone."""
    b = batch()
    outputs, features = m.net(b["image"])
    terms = m.coupling_terms(outputs, features, b["targets"], b["masks"], {})
    assert set(terms) == {"coann:expression->au", "coann:au->expression", "dm:expression->au", "dm:au->expression"}
    m.zero_grad()
    sum(terms.values()).backward()
    norm = lambda ps: sum(float(p.grad.abs().sum()) for p in ps if p.grad is not None)  # noqa: E731
    return norm(m.net.heads.parameters()), norm(m.net.backbone.parameters())


def test_shielded_coupling_leaves_heads_alone_and_trains_the_backbone():
    heads, backbone = coupling_grads(module(shield=True))
    assert heads == 0.0
    assert backbone > 0.0


def test_unshielded_coupling_trains_the_heads():
    heads, backbone = coupling_grads(module(shield=False))
    assert heads > 0.0 and backbone > 0.0


def test_shielded_terms_have_the_same_values():
    b = batch()
    values = []
    for shield in (False, True):
        m = module(shield)
        outputs, features = m.net(b["image"])
        terms = m.coupling_terms(outputs, features, b["targets"], b["masks"], {})
        values.append({k: float(v.detach()) for k, v in terms.items()})
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_task_losses_still_train_the_heads_when_shielded():
    m = module(shield=True)
    total, _ = m.compute_losses(batch())
    m.zero_grad()
    total.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.net.heads.parameters())


def annealed(step: int, schedule: str = "anneal") -> dict[str, float]:
    from unittest import mock

    config = resolve({"tasks": TASKS, "data": {"sources": [{"csv": "unused.csv"}], "image_size": 16},
                      "train": {"coupling_schedule": schedule, "max_steps": 100}})
    torch.manual_seed(0)
    m = MultiTaskModule(config, TASKS, [EDGE])
    b = batch()
    with mock.patch.object(MultiTaskModule, "global_step", new_callable=mock.PropertyMock, return_value=step):
        outputs, features = m.net(b["image"])
        terms = m.coupling_terms(outputs, features, b["targets"], b["masks"], {})
        return {k: float(v.detach()) for k, v in terms.items()}


def test_annealed_coupling_falls_from_full_weight_to_zero():
    full = annealed(0, "constant")
    assert annealed(0) == pytest.approx(full)
    assert annealed(50) == pytest.approx({k: 0.5 * v for k, v in full.items()})
    assert annealed(100) == pytest.approx({k: 0.0 for k in full}, abs=1e-12)
    assert annealed(100, "constant") == pytest.approx(full)
