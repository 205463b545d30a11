"""Augmentation: one warp per image or per batch, each sample's draw fixed by (seed, epoch, sample)."""

import math
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from distmtl.config import resolve
from distmtl.data.augment import ASPECT, N_PARAMS, DecodeResize, FusedAugment, augment_batch
from distmtl.data.transforms import Augmentation, Preprocessing
from distmtl.errors import DistmtlError
from distmtl.training.experiment import build_experiment
from distmtl.training.runner import datamodule_from_experiment, make_trainer, module_from_experiment
from toydata import raw_config, write_dataset

FLAGSHIP = Augmentation(flip=True, crop_scale=(0.8, 1.0), rotation=10, color_jitter=0.2)
NONE = Augmentation(flip=True, crop_scale=(1.0, 1.0), rotation=0.0, color_jitter=0.0)
UNIT_ASPECT = -math.log(ASPECT[0]) / (math.log(ASPECT[1]) - math.log(ASPECT[0]))  # ratio exactly 1


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy"), n_expr=24, n_au=24, n_eval=8)


def smooth_image(size=48):
    y, x = np.mgrid[0:size, 0:size] / size
    return np.stack([255 * x, 255 * y, 128 + 100 * np.sin(6 * x)], -1).astype(np.uint8)


def params(flip: float):
    p = torch.full((1, N_PARAMS), 0.5)
    p[0, 1], p[0, 4] = UNIT_ASPECT, flip
    return p


def test_batched_warp_without_augmentation_is_the_normalised_image_and_flip_is_exact():
    array = smooth_image()
    images = torch.from_numpy(array).permute(2, 0, 1)[None]
    pre = Preprocessing(size=48)
    expected = (images.float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(augment_batch(images, params(0.9), NONE, pre), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(augment_batch(images, params(0.1), NONE, pre), expected.flip(-1), atol=1e-4, rtol=0)


def test_worker_and_device_paths_draw_the_same_augmentation():
    image = Image.fromarray(smooth_image(64))
    pre = Preprocessing(size=32)
    for seed in range(5):
        torch.manual_seed(seed)
        fused = FusedAugment(pre, FLAGSHIP)(image)
        torch.manual_seed(seed)
        item = DecodeResize(Preprocessing(size=64))(image)
        batched = augment_batch(item["image"][None], item["aug"][None], FLAGSHIP, pre)[0]
        assert (fused - batched).abs().mean() < 0.03  # same geometry and colour; resampling differs
        torch.manual_seed(seed + 100)
        other = FusedAugment(pre, FLAGSHIP)(image)
        assert (fused - other).abs().mean() > 0.03


def epoch_batches(files, workers, augment_on, start_batch=0):
    raw = raw_config(files)
    raw["data"].update(num_workers=workers, augment_on=augment_on, epoch_batches=4)
    raw["data"]["augment"] = {"flip": True, "crop_scale": [0.8, 1.0], "rotation": 10.0, "color_jitter": 0.2}
    exp = build_experiment(resolve(raw), with_eval=False)
    dm = datamodule_from_experiment(exp)
    dm.sampler.set_epoch(1)
    dm.sampler.start_batch = start_batch
    batches = list(dm.train_dataloader())
    module = module_from_experiment(exp)
    return [module.on_after_batch_transfer(b, 0)["image"] for b in batches]


@pytest.mark.parametrize("augment_on", ["device", "workers"])
def test_augmentation_is_the_same_for_any_worker_count_and_after_resuming(files, augment_on):
    alone = epoch_batches(files, 0, augment_on)
    pooled = epoch_batches(files, 2, augment_on)
    resumed = epoch_batches(files, 2, augment_on, start_batch=2)
    assert len(alone) == len(pooled) == 4 and len(resumed) == 2
    for a, b in zip(alone, pooled):
        assert torch.equal(a, b)
    for a, b in zip(alone[2:], resumed):
        assert torch.equal(a, b)
    assert not torch.equal(alone[0], alone[1])


def test_device_path_trains_through_on_after_batch_transfer(files, tmp_path):
    raw = raw_config(files, max_steps=2, val_every_steps=2)
    raw["data"].update(augment_on="device", val=None, test=None, oracle=None)
    exp = build_experiment(resolve(raw), with_eval=False)
    dm = datamodule_from_experiment(exp)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["aug"].shape == (16, N_PARAMS)
    module = module_from_experiment(exp)
    trainer = make_trainer(exp.config, tmp_path, progress=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2


def test_augment_on_is_validated(files):
    raw = raw_config(files)
    raw["data"]["augment_on"] = "gpu"
    with pytest.raises(DistmtlError, match="data.augment_on: expected one of auto, device, workers"):
        resolve(raw)


class _TrapModule(types.ModuleType):
    """A ``cv2`` that fails on any use: the warp must not depend on what else is installed."""

    def __getattr__(self, name):
        raise AssertionError(f"augmentation used cv2.{name}")


def test_the_warp_is_the_same_whatever_else_is_installed(monkeypatch):
    image = Image.fromarray(smooth_image(64))
    pre = Preprocessing(size=32)
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    torch.manual_seed(3)
    without = FusedAugment(pre, FLAGSHIP)(image)
    monkeypatch.setitem(sys.modules, "cv2", _TrapModule("cv2"))
    torch.manual_seed(3)
    beside = FusedAugment(pre, FLAGSHIP)(image)
    assert torch.equal(without, beside)


def test_device_path_decode_errors_name_the_file(tmp_path):
    from distmtl.data.transforms import decode_tensor

    broken = tmp_path / "cut.jpg"
    Image.fromarray(smooth_image(32)).save(broken, quality=90)
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DistmtlError, match=r"cut\.jpg: cannot decode image") as err:
        decode_tensor(str(broken), 3, str(broken))
    assert "\n" not in str(err.value)
    with pytest.raises(DistmtlError, match="missing.png: image file not found"):
        decode_tensor(str(tmp_path / "missing.png"), 3, str(tmp_path / "missing.png"))
    good = tmp_path / "ok.png"
    Image.fromarray(smooth_image(32)).save(good)
    assert torch.equal(decode_tensor(str(good), 3, "ok"), torch.from_numpy(smooth_image(32)).permute(2, 0, 1))
    assert decode_tensor(good.read_bytes(), 1, "ok").shape == (1, 32, 32)
