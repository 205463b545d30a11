"""``model.task_stages``: each task's own copy of the backbone's last stages over a shared trunk."""

from __future__ import annotations

import pytest
import timm
import torch

from distmtl.config import resolve
from distmtl.errors import DistmtlError
from distmtl.models import MultiTaskNet
from distmtl.tasks import Task

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = {"expression": Task("expression", "multiclass", tuple("abcdefg")),
         "au": Task("au", "multilabel", tuple(f"AU{i}" for i in range(5)))}


def test_the_split_keeps_the_backbone_function():
    torch.manual_seed(0)
    whole = timm.create_model("test_resnet", num_classes=0).eval()
    torch.manual_seed(0)
    net = MultiTaskNet(TASKS, task_stages=1).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        trunk = net.backbone(x)
        assert trunk.shape == (4, net.shared_dim, 2, 2)  # layer3's map, not pooled
        for head in net.heads.values():
            assert torch.allclose(head.branch(trunk), whole(x), atol=1e-5)


def test_each_task_loss_trains_only_its_own_branch():
    net = MultiTaskNet(TASKS, task_stages=1)
    outputs, _ = net(torch.randn(6, 3, 32, 32))
    outputs["au"].sigmoid().sum().backward()
    au_branch = [p.grad for p in net.heads["au"].parameters()]
    expression_branch = [p.grad for p in net.heads["expression"].parameters()]
    assert all(g is not None for g in au_branch) and sum(float(g.abs().sum()) for g in au_branch) > 0
    assert all(g is None for g in expression_branch)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())
    shared = {id(p) for p in net.backbone.parameters()}
    assert not shared & {id(p) for p in net.heads.parameters()}


def test_default_keeps_the_whole_backbone_shared_and_the_state_keys():
    net = MultiTaskNet(TASKS)
    assert net.shared_dim == net.num_features
    assert {k.split(".")[2] for k in net.state_dict() if k.startswith("heads.")} == {"1"}  # Dropout, Linear


@pytest.mark.parametrize("backbone", ["test_vit", "test_efficientnet"])
def test_backbones_that_do_not_split_are_refused_in_one_line(backbone):
    with pytest.raises(DistmtlError, match=f"model.task_stages: backbone '{backbone}' does not split"):
        MultiTaskNet(TASKS, backbone=backbone, task_stages=1)


def test_impossible_values_are_refused():
    with pytest.raises(DistmtlError, match="4 stages that can be given"):
        MultiTaskNet(TASKS, task_stages=5)
    with pytest.raises(DistmtlError, match="identity task"):
        MultiTaskNet({**TASKS, "id": Task("id", "identity", ("p1", "p2"))}, task_stages=1)
    for bad in (-1, 1.5, True):
        with pytest.raises(DistmtlError, match=f"model.task_stages: expected an integer.*, got {bad!r}"):
            resolve({"tasks": {"t": {"kind": "multiclass", "labels": ["a", "b"]}},
                     "data": {"sources": ["x.csv"]}, "model": {"task_stages": bad}})


def test_an_exported_model_rebuilds_with_its_branches(tmp_path):
    from distmtl.inference.export import build_net, load_weights, read_model_config, save_model_folder
    from distmtl.training.module import MultiTaskModule

    config = resolve({"tasks": {"expression": {"kind": "multiclass", "labels": "basic7"},
                                "au": {"kind": "multilabel", "labels": "au17"}},
                      "data": {"sources": ["x.csv"], "image_size": 32}, "model": {"task_stages": 2}})
    module = MultiTaskModule(config, {t: v.to_dict() for t, v in
                                      {"expression": Task.from_dict("expression", config["tasks"]["expression"]),
                                       "au": Task.from_dict("au", config["tasks"]["au"])}.items()})
    save_model_folder(module, tmp_path / "model")
    saved = read_model_config(tmp_path / "model")
    assert saved["model"]["task_stages"] == 2
    net = build_net(saved)
    load_weights(net, tmp_path / "model")
    x = torch.randn(2, 3, 32, 32)
    module.net.eval(), net.eval()
    with torch.no_grad():
        expected, got = module.net(x)[0], net(x)[0]
    assert all(torch.allclose(expected[t], got[t]) for t in expected)
