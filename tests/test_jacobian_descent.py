"""Jacobian descent (``weighting: {name: jd}``): aggregators, rows, training, resume, AMP, DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from distmtl.errors import DistmtlError
from distmtl.training.jacobian import objective_rows, supervised_task
from distmtl.weighting import WEIGHTINGS, create_weighting
from toydata import raw_config, write_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


def _conflicting_jacobian():
    """Per-task gradients of two losses of one shared parameter vector that pull apart."""
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    losses = [(w * torch.tensor([-4.0, 1.0, 1.0])).sum(), (w * torch.tensor([6.0, 1.0, 1.0])).sum()]
    rows = [torch.autograd.grad(loss, w)[0] for loss in losses]
    return torch.stack(rows)


def test_upgrad_update_conflicts_with_no_task():
    jd = create_weighting("jd", ["a", "b"], aggregator="upgrad")
    jacobian = _conflicting_jacobian()
    mean = jacobian.mean(0)
    assert (jacobian @ mean).min() < 0  # the plain average would increase one task's loss
    update = jd.aggregator_for(["a", "b"])(jacobian)
    assert (jacobian @ update >= -1e-6).all()  # UPGrad's defining property
    assert update.norm() > 0


def test_pcgrad_matches_the_hand_projection():
    jd = create_weighting("jd", ["a", "b"], aggregator="pcgrad")
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1 . g2 = -1 < 0
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # each onto the normal plane of the other
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    torch.testing.assert_close(jd.aggregator_for(["a", "b"])(torch.stack([g1, g2])), p1 + p2)
    torch.testing.assert_close(p1 + p2, torch.tensor([0.5, 1.5]))


def test_every_installed_aggregator_is_registered_and_checked():
    from distmtl.weighting.jd import AGGREGATORS, check_jd_spec

    assert "jd" in WEIGHTINGS
    for name in ("upgrad", "mgda", "pcgrad", "cagrad", "nashmtl", "imtlg", "alignedmtl", "dualproj"):
        assert name in AGGREGATORS
    assert check_jd_spec("cagrad", "task", {"c": 0.2})["c"] == 0.2
    with pytest.raises(DistmtlError, match="unknown aggregator 'upgrd'.*did you mean: upgrad"):
        check_jd_spec("upgrd", "task", {})
    with pytest.raises(DistmtlError, match="options.c: not an option of aggregator 'upgrad'"):
        check_jd_spec("upgrad", "task", {"c": 0.2})
    with pytest.raises(DistmtlError, match="options.n_byzantine: required"):
        check_jd_spec("krum", "task", {})
    with pytest.raises(DistmtlError, match="coupling: expected task or rows"):
        check_jd_spec("mgda", "both", {})


def test_rows_absent_tasks_and_coupling_modes():
    one = torch.tensor(1.0)
    losses = {"expression": one}  # au has no label in this batch
    terms = {"coann:expression->au": 2 * one, "dm:au->expression": 3 * one}
    assert supervised_task("coann:expression->au") == "au"
    by_task = objective_rows(losses, terms, ["expression", "au", "va"], "task")
    assert list(by_task) == ["expression", "au"]  # va: no label, no term -> no row
    assert float(by_task["expression"]) == 4.0 and float(by_task["au"]) == 2.0
    own = objective_rows(losses, terms, ["expression", "au", "va"], "rows", {"coann:expression->au"})
    assert list(own) == ["expression", "coann:expression->au"]  # a zero term gets no row


def _config(tmp_path: Path, **weighting) -> dict:
    files = write_dataset(tmp_path / "data", n_expr=24, n_au=24, n_eval=12)
    config = raw_config(files, max_steps=6, val_every_steps=6, checkpoint_every_steps=3)
    config["data"]["batch_size"] = 4
    config["weighting"] = {"name": "jd", **weighting}
    return config


def test_training_with_an_absent_task_steps_on_the_present_rows(tmp_path, monkeypatch):
    from distmtl.config import resolve
    from distmtl.weighting.jd import JacobianDescent
    from distmtl.training.runner import train_from_config

    config = _config(tmp_path, aggregator="upgrad")
    config["relatedness"] = []  # no coupling term: a batch without AU labels has one row
    config["data"]["sampling"] = [0.9, 0.1]  # most batches of 4 hold no AU-labelled image
    seen = []
    record = JacobianDescent.record
    monkeypatch.setattr(JacobianDescent, "record",
                        lambda self, rows, w: (seen.append(list(rows)), record(self, rows, w)))
    results = train_from_config(resolve(config), tmp_path / "run", progress=False)
    assert results["steps"] == 6 and len(seen) == 6
    assert ["expression"] in seen and ["expression", "au"] in seen
    assert 0 <= results["val"]["expression"]["accuracy"] <= 1


def test_resume_continues_the_uninterrupted_run(tmp_path, monkeypatch):
    import shutil

    import distmtl.training.runner as runner
    from distmtl.config import resolve

    save = runner.AtomicCheckpointIO.save_checkpoint

    def keep_step_3(self, checkpoint, path, storage_options=None):  # the run's last.ckpt at step 3
        save(self, checkpoint, path, storage_options)
        if checkpoint["global_step"] == 3 and Path(path).name == "last.ckpt":
            shutil.copy(path, tmp_path / "step3.ckpt")

    monkeypatch.setattr(runner.AtomicCheckpointIO, "save_checkpoint", keep_step_3)
    config = resolve(_config(tmp_path, aggregator="gradvac", coupling="rows"))  # stateful; terms as rows
    runner.train_from_config(config, tmp_path / "full", progress=False)
    (tmp_path / "part" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "step3.ckpt", tmp_path / "part" / "checkpoints" / "last.ckpt")  # as if killed
    runner.train_from_config(config, tmp_path / "part", resume=True, progress=False)
    a = runner.load_module(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = runner.load_module(tmp_path / "part" / "checkpoints" / "last.ckpt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    state = torch.load(tmp_path / "step3.ckpt", weights_only=True)["state_dict"]["weighting._extra_state"]
    assert any("_phi_t" in key for rows in state["instances"].values() for key in rows)  # GradVac's state


def test_mixed_precision_trains(tmp_path):
    from distmtl.config import resolve
    from distmtl.training.runner import load_module, module_from_experiment, train_from_config
    from distmtl.training.experiment import build_experiment

    config = _config(tmp_path, aggregator="mgda")
    config["trainer"]["precision"] = "bf16-mixed"  # (on the CPU Lightning runs 16-mixed as bf16-mixed)
    config["trainer"]["gradient_clip_val"] = 1.0
    config["train"]["max_steps"] = 3
    resolved = resolve(config)
    torch.manual_seed(int(resolved["seed"]))
    results = train_from_config(resolved, tmp_path / "run", progress=False)
    assert results["steps"] == 3 and results["nan_skipped"] == 0
    trained = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt").state_dict()
    import lightning as L

    L.seed_everything(int(resolved["seed"]), verbose=False)  # the run's initial weights
    initial = module_from_experiment(build_experiment(resolved)).state_dict()
    weight = "net.backbone.conv1.0.weight"
    assert torch.isfinite(trained[weight]).all() and not torch.equal(trained[weight], initial[weight])


def test_dry_run_names_a_bad_aggregator(tmp_path, capsys):
    from distmtl.cli import main

    config = _config(tmp_path, aggregator="pcgrad")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    assert main(["train", "--config", str(path), "--dry-run", "weighting.aggregator=pcgard"]) == 2
    assert "did you mean: pcgrad" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--dry-run", "weighting.name=equal"]) == 2
    assert "only with weighting.name: jd" in capsys.readouterr().err
    assert main(["weighting", "list"]) == 0
    out = capsys.readouterr().out
    assert "upgrad" in out and "cagrad" in out and "dynamic" in out


def _ddp_rank(rank: int, world: int, init: str, out: str) -> None:
    """One process: its own Jacobian and head gradient, averaged, then aggregated."""
    import torch.distributed as dist
    from types import SimpleNamespace

    from torchjd.aggregation import UPGrad
    from torchjd.autojac import jac_to_grad

    from distmtl.training.jacobian import agreed_presence, average_over_processes

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    module = SimpleNamespace(trainer=SimpleNamespace(world_size=world))
    shared = torch.nn.Parameter(torch.zeros(3))
    head = torch.nn.Parameter(torch.zeros(2))
    shared.jac = torch.tensor([[1.0, 0.0, 2.0], [-3.0, 1.0, 0.0]]) * (rank + 1) + rank
    head.grad = None if rank == 0 else torch.tensor([2.0, 4.0])  # absent task on rank 0
    present = agreed_presence(module, torch.tensor([1.0, float(rank)]))
    average_over_processes(module, [shared], [head])
    jac_to_grad([shared], UPGrad())
    torch.save({"grad": shared.grad, "head": head.grad, "present": present}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_every_rank_aggregates_the_averaged_jacobian(tmp_path):
    import torch.multiprocessing as mp
    from torchjd.aggregation import UPGrad

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_ddp_rank, args=(2, init, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    base = torch.tensor([[1.0, 0.0, 2.0], [-3.0, 1.0, 0.0]])
    expected = UPGrad()((base * 1 + 0 + base * 2 + 1) / 2)
    torch.testing.assert_close(r0["grad"], r1["grad"], rtol=0, atol=0)  # bit-identical on both ranks
    torch.testing.assert_close(r0["grad"], expected)
    torch.testing.assert_close(r0["head"], torch.tensor([1.0, 2.0]))  # rank 0 contributed zeros
    assert r0["present"].tolist() == [1.0, 1.0] == r1["present"].tolist()



def _one_step(scale: float | None, tmp_path) -> dict:
    """One jacobian_step of a real module on a real batch, the Trainer replaced by what the step uses;
    with ``scale``, a GradScaler that unscales, checks and steps as Lightning's AMP plugin does."""
    from types import SimpleNamespace

    from distmtl.config import resolve
    from distmtl.training.experiment import build_experiment
    from distmtl.training.jacobian import jacobian_step
    from distmtl.training.runner import datamodule_from_experiment, module_from_experiment

    config = resolve(_config(tmp_path, aggregator="upgrad"))
    torch.manual_seed(0)
    exp = build_experiment(config)
    module = module_from_experiment(exp)
    batch = next(iter(datamodule_from_experiment(exp).train_dataloader()))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None

    def step():
        if scaler is None:
            return optimizer.step()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()

    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), world_size=1, global_step=0)
    module.optimizers = lambda: SimpleNamespace(zero_grad=optimizer.zero_grad, step=step)
    module.lr_schedulers = lambda: None
    module.log = module.log_dict = lambda *a, **k: None
    before = {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    jacobian_step(module, batch)
    return {k: module.state_dict()[k] - v for k, v in before.items() if v.is_floating_point()}


def test_loss_scale_goes_in_and_comes_out(tmp_path):
    plain = _one_step(None, tmp_path / "a")
    scaled = _one_step(2.0 ** 12, tmp_path / "b")  # 16-mixed's scaler path (Lightning's CPU runs bf16)
    assert any(d.abs().max() > 0 for d in plain.values())
    for name, delta in plain.items():
        torch.testing.assert_close(scaled[name], delta, rtol=1e-4, atol=1e-6, msg=name)
