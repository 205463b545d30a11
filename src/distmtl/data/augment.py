"""Training augmentation as parameters drawn per sample, applied as one warp and one colour step.

Every training sample draws ``N_PARAMS`` uniform numbers from the generator its dataset seeded with
(seed, epoch, sample), so what a sample looks like depends on nothing else: not the worker count,
not the prefetching, not where the run was resumed. The numbers then drive one of two equivalent
paths:

- ``device`` (a GPU run): workers only decode and resize to ``size`` x ``size`` uint8
  (:class:`DecodeResize`); :func:`augment_batch` turns the whole batch into model inputs on the
  training device: one ``affine_grid``/``grid_sample`` for the random resized crop, flip and
  rotation, then brightness, contrast and saturation and the normalisation, all batched.
- ``workers`` (a CPU run, where the device is the training core): :class:`FusedAugment` does the
  same per image in the worker, cheaply: one PIL affine warp from the decoded image straight to
  the output size (crop + flip + rotation in one resampling), a 256-entry lookup table for
  brightness and contrast, a blend for saturation.

The colour steps run in a fixed order (brightness, contrast, saturation); the crop's aspect ratio
is drawn log-uniformly in [0.95, 1.05], as the previous chain of transforms drew it. Areas outside
the rotated crop are black (0), as a rotation's fill was.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distmtl.data.transforms import Augmentation, Preprocessing

AUGMENT_ON = ("auto", "device", "workers")  # the data.augment_on choices
N_PARAMS = 9  # crop area, aspect, centre x, centre y; flip; angle; brightness, contrast, saturation
ASPECT = (0.95, 1.05)
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L") and torchvision use


def draw_params() -> torch.Tensor:
    """One sample's augmentation numbers, from torch's default (per-sample seeded) generator."""
    return torch.rand(N_PARAMS)


def affine_theta(params, aug: Augmentation) -> np.ndarray:
    """``[B, 2, 3]`` float64 maps from output to input coordinates (normalised to [-1, 1], as
    ``affine_grid`` takes them), from ``[B, N_PARAMS]`` numbers (a tensor or an array)."""
    p = np.asarray(params, dtype=np.float64).reshape(-1, N_PARAMS)
    lo, hi = (float(v) for v in aug.crop_scale)
    area = lo + (hi - lo) * p[:, 0]
    ratio = np.exp(math.log(ASPECT[0]) + (math.log(ASPECT[1]) - math.log(ASPECT[0])) * p[:, 1])
    w = np.minimum(np.sqrt(area * ratio), 1.0)  # half-extent of the crop, as a fraction of the side
    h = np.minimum(np.sqrt(area / ratio), 1.0)
    cx = (1 - w) * (2 * p[:, 2] - 1)
    cy = (1 - h) * (2 * p[:, 3] - 1)
    flip = np.where(p[:, 4] < 0.5, -1.0, 1.0) if aug.flip else np.ones_like(w)
    angle = np.deg2rad(float(aug.rotation) * (2 * p[:, 5] - 1))
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([w * flip * cos, -w * flip * sin, cx], 1),
                     np.stack([h * sin, h * cos, cy], 1)], 1)


def colour_factors(params, aug: Augmentation) -> np.ndarray:
    """``[B, 3]`` brightness, contrast and saturation factors in [1 - j, 1 + j]."""
    p = np.asarray(params, dtype=np.float64).reshape(-1, N_PARAMS)
    return 1 + float(aug.color_jitter) * (2 * p[:, 6:9] - 1)


def augment_batch(images: torch.Tensor, params: torch.Tensor, aug: Augmentation, pre: Preprocessing) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` (any H, W) to normalised float ``[B, C, size, size]`` on ``images``' device."""
    x = images.float().div_(255)
    b, c = x.shape[:2]
    theta = torch.from_numpy(affine_theta(params.cpu(), aug)).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [b, c, pre.size, pre.size], align_corners=False)
    mode = "bicubic" if pre.interpolation == "bicubic" else "bilinear"
    x = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if mode == "bicubic":
        x = x.clamp_(0, 1)
    if aug.color_jitter:
        factors = torch.from_numpy(colour_factors(params.cpu(), aug)).to(device=x.device, dtype=x.dtype)
        x = (x * factors[:, 0, None, None, None]).clamp_(0, 1)
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factors[:, 1, None, None, None] + mean).clamp_(0, 1)
        if c == 3:
            gray = _gray(x)
            x = ((x - gray) * factors[:, 2, None, None, None] + gray).clamp_(0, 1)
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std


def to_model_input(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` to normalised float, no augmentation."""
    x = images.float().div_(255)
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b)[:, None]


def as_uint8_tensor(image: Image.Image) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(image))  # a writable copy
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def pil_resample(interpolation: str) -> int:
    """Pillow's resampling filter for ``data.interpolation`` (timm's names)."""
    return getattr(Image.Resampling, interpolation.upper())


class DecodeResize:
    """Worker side of the ``device`` path: the decoded image resized to size x size, uint8, and the
    sample's augmentation numbers (applied later by :func:`augment_batch`)."""

    def __init__(self, pre: Preprocessing):
        self.pre = pre

    def __call__(self, image) -> dict:
        s = self.pre.size
        if isinstance(image, torch.Tensor):  # decoded by torchvision.io, or cached pixels
            tensor = image
            if tuple(tensor.shape[1:]) != (s, s):
                from torchvision.transforms.v2.functional import resize

                tensor = resize(tensor, [s, s], interpolation=self.pre.mode, antialias=True)
        else:
            if image.size != (s, s):
                image = image.resize((s, s), pil_resample(self.pre.interpolation), reducing_gap=2.0)
            tensor = as_uint8_tensor(image)
        return {"image": tensor, "aug": draw_params()}


class FusedAugment:
    """Worker side of the ``workers`` path: one Pillow affine warp + numpy lookup tables per image.

    One backend in every environment, on purpose: an OpenCV path (taken whenever ``cv2`` happened
    to be importable) drew the same geometry but rounded differently, and the same commit, seed and
    data trained to different models in two environments. The price is speed at larger sizes: at
    32 px both warp in about 0.1 ms an image; at 224 px one worker core delivers 264 images/s
    against 486 with OpenCV, decode included (BENCHMARKS.md, "The data path at scale").
    """

    def __init__(self, pre: Preprocessing, aug: Augmentation):
        self.pre, self.aug = pre, aug
        self.scale = (1 / (255 * np.asarray(pre.std, dtype=np.float32))).reshape(-1, 1, 1)
        self.shift = (np.asarray(pre.mean, dtype=np.float32) / np.asarray(pre.std, dtype=np.float32)).reshape(-1, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):  # cached pixels
            array = image.permute(1, 2, 0).numpy()
            image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        params = draw_params().numpy()
        s = self.pre.size
        reduce = min(image.size) // (2 * s)
        if reduce >= 2:  # a box reduction first, so the bilinear warp never skips source pixels
            image = image.reduce(reduce)
        width, height = image.size
        t = affine_theta(params, self.aug)[0]
        # output pixel centre (x + 0.5) in [0, s) -> normalised -> input pixel coordinates
        a, b = width / s * t[0, 0], width / s * t[0, 1]
        c = width / 2 * (t[0, 2] + 1 - t[0, 0] - t[0, 1])
        d, e = height / s * t[1, 0], height / s * t[1, 1]
        f = height / 2 * (t[1, 2] + 1 - t[1, 0] - t[1, 1])
        bicubic = self.pre.interpolation == "bicubic"  # an affine warp offers these two
        array = np.asarray(image.transform((s, s), Image.AFFINE, (a, b, c, d, e, f),
                                           resample=Image.BICUBIC if bicubic else Image.BILINEAR, fillcolor=0))
        if array.ndim == 2:
            array = array[:, :, None]
        if self.aug.color_jitter:
            array = self._colour(np.ascontiguousarray(array), colour_factors(params, self.aug)[0])
        x = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
        return x.mul_(torch.from_numpy(self.scale)).sub_(torch.from_numpy(self.shift))

    def _colour(self, array: np.ndarray, factors: np.ndarray) -> np.ndarray:
        """Brightness, then contrast around the mean gray level, then saturation; as augment_batch."""
        bright, contrast, saturation = (float(v) for v in factors)
        levels = np.arange(256, dtype=np.float64)
        array = np.clip(levels * bright, 0, 255).round().astype(np.uint8)[array]
        gray = self._gray(array)
        mean = float(gray.mean())
        array = np.clip((levels - mean) * contrast + mean, 0, 255).round().astype(np.uint8)[array]
        if array.shape[2] == 3 and saturation != 1.0:
            gray = np.repeat(self._gray(array)[:, :, None], 3, axis=2)
            mixed = gray.astype(np.float32) + (array.astype(np.float32) - gray) * saturation
            array = np.clip(mixed, 0, 255).round().astype(np.uint8)
        return array

    def _gray(self, array: np.ndarray) -> np.ndarray:
        if array.shape[2] == 1:
            return array[:, :, 0]
        return (array @ np.asarray(GRAY, dtype=np.float32)).round().astype(np.uint8)
