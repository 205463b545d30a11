"""Resuming mid-epoch or at an epoch's end, with dropout and stochastic depth, ends with the
uninterrupted run's weights, tensor by tensor, with and without DataLoader workers."""

from __future__ import annotations

import pytest
import torch

from distmtl.config import resolve
from distmtl.training.experiment import build_experiment
from toydata import raw_config, write_dataset

MAX_STEPS = 10  # epochs of 4 batches
# (DataLoader workers, kill after step, checkpoint every): resume from step 6, mid-epoch 1, or from
# step 4, the end of epoch 0 (a checkpoint saved before the loop moved on to epoch 1)
CASES = [(0, 7, 3), (2, 7, 3), (2, 5, 4)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=16, n_au=16, n_eval=8)


def config(files, workers: int, every: int) -> dict:
    raw = raw_config(files, max_steps=MAX_STEPS, val_every_steps=5, checkpoint_every_steps=every)
    raw["data"].update(oracle=None, test=None, num_workers=workers, batch_size=8, image_size=16)
    raw["model"].update(drop_rate=0.2, backbone_kwargs={"drop_path_rate": 0.2})
    raw["trainer"]["log_every_n_steps"] = 1
    return resolve(raw)


class Killed(Exception):
    pass


def weights(run_dir):
    from distmtl.training.runner import load_checkpoint_dict

    state = load_checkpoint_dict(run_dir / "checkpoints" / "last.ckpt")
    return state["global_step"], state["state_dict"]


def train_killed_and_resumed(files, out, workers, kill_after, every, monkeypatch) -> None:
    import lightning as L

    import distmtl.training.runner as runner

    class KillAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == kill_after:
                raise Killed

    make = runner.make_trainer

    def dying_trainer(*args, **kwargs):
        trainer = make(*args, **kwargs)
        trainer.callbacks.append(KillAt())
        return trainer

    with monkeypatch.context() as patch:
        patch.setattr(runner, "make_trainer", dying_trainer)
        with pytest.raises(Killed):
            runner.train_experiment(build_experiment(config(files, workers, every)), out, progress=False)
    step, _ = weights(out)
    assert step == kill_after // every * every
    runner.train_experiment(build_experiment(config(files, workers, every)), out, resume=True, progress=False)


def assert_equal_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{what}: {len(differing)} tensors differ, e.g. {differing[:3]}: max |delta| " \
                          f"{max(float((a[k].float() - b[k].float()).abs().max()) for k in differing):.3g}"


@pytest.mark.slow
def test_resume_mid_epoch_with_dropout_and_drop_path_is_exact(files, tmp_path, monkeypatch):
    from distmtl.training.runner import train_experiment

    whole = {}
    for workers, kill_after, every in CASES:
        name = f"w{workers}k{kill_after}"
        train_experiment(build_experiment(config(files, workers, every)), tmp_path / f"whole{name}", progress=False)
        train_killed_and_resumed(files, tmp_path / f"killed{name}", workers, kill_after, every, monkeypatch)
        (step_a, a), (step_b, b) = weights(tmp_path / f"whole{name}"), weights(tmp_path / f"killed{name}")
        assert step_a == step_b == MAX_STEPS
        assert_equal_tensors(a, b, f"num_workers {workers}, killed after step {kill_after}: resumed vs uninterrupted")
        whole[(workers, every)] = a
    assert_equal_tensors(whole[(0, 3)], whole[(2, 3)], "uninterrupted, num_workers 0 vs 2")
