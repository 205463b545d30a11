"""SynthFACS rasteriser: display list + nuisance -> RGB uint8 image.

The face is drawn with Pillow at ``supersample`` times the output resolution (geometry is
transformed point by point, so rotation/scale/translation cost no resampling), then reduced
with a box filter (an exact ``supersample`` x ``supersample`` average), blurred, lit and noised
in numpy. With ``Nuisance()`` (all defaults) the face is upright, centred, unblurred and clean.

Nuisance at strength ``s`` (``sample_nuisance``; 0 = none, 1 = the default, larger = stronger):

- in-plane rotation ``N(0, 7 deg) * s`` (clipped to 20 s), translation ``N(0, 0.04) * s`` of the
  half side per axis, scale ``exp(N(0, 0.06) * s)``;
- lighting: a linear gradient of amplitude ``U(0, 0.3) * s`` in a random direction, brightness
  ``exp(N(0, 0.08) s)``, contrast ``exp(N(0, 0.1) s)``, per-channel gain ``exp(N(0, 0.03) s)``;
- Gaussian blur of standard deviation ``U(0, 0.6) * s`` output pixels on half of the images;
- Gaussian pixel noise of standard deviation ``U(0, 6) * s`` grey levels;
- an occluding patch (a random flat-coloured rectangle of 12-28 % of the side) with
  probability ``min(1, 0.08 s)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from distmtl.data.synthfacs.faces import Identity
from distmtl.data.synthfacs.geometry import face_ops
from distmtl.errors import DistmtlError

DEFAULT_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Nuisance:
    """Imaging conditions of one picture (the defaults are the identity: no nuisance)."""

    angle: float = 0.0  # degrees, counter-clockwise on screen
    shift: tuple[float, float] = (0.0, 0.0)  # in half image sides
    scale: float = 1.0
    light: tuple[float, float] = (0.0, 0.0)  # gradient per half side, x and y
    brightness: float = 1.0
    contrast: float = 1.0
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.0  # Gaussian radius in output pixels
    noise: float = 0.0  # standard deviation in grey levels
    noise_seed: int = 0
    occluder: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in [-1, 1]
    occluder_color: tuple[int, int, int] = (128, 128, 128)

    @property
    def photometric(self) -> bool:
        return (self.light != (0.0, 0.0) or self.brightness != 1.0 or self.contrast != 1.0
                or self.gain != (1.0, 1.0, 1.0) or self.noise > 0)


NO_NUISANCE = Nuisance()


def sample_nuisance(rng: np.random.Generator, strength: float = 1.0) -> Nuisance:
    """Draw imaging conditions at ``strength`` (0 returns ``NO_NUISANCE`` and draws nothing)."""
    s = float(strength)
    if s < 0:
        raise DistmtlError(f"nuisance strength must be >= 0, got {strength}")
    if s == 0:
        return NO_NUISANCE
    n = rng.normal(size=9).tolist()
    u = rng.random(8).tolist()
    angle = _clip(7.0 * n[0] * s, 20 * s)
    shift = (_clip(0.04 * n[1] * s, 0.1 * s), _clip(0.04 * n[2] * s, 0.1 * s))
    scale = math.exp(_clip(0.06 * n[3] * s, 0.15 * s))
    amp, direction = 0.3 * u[0] * s, 2 * math.pi * u[1]
    occluder, occ_color = None, (128, 128, 128)
    if u[4] < min(1.0, 0.08 * s):
        occ = rng.random(7).tolist()
        w, h = 0.24 + 0.32 * occ[0], 0.24 + 0.32 * occ[1]
        x0, y0 = -1.0 + (2.0 - w) * occ[2], -1.0 + (2.0 - h) * occ[3]
        occluder = (x0, y0, x0 + w, y0 + h)
        occ_color = tuple(int(40 + 200 * v) for v in occ[4:7])
    return Nuisance(
        angle=angle, shift=shift, scale=scale,
        light=(amp * math.cos(direction), amp * math.sin(direction)),
        brightness=math.exp(0.08 * n[4] * s), contrast=math.exp(0.1 * n[5] * s),
        gain=tuple(math.exp(0.03 * v * s) for v in n[6:9]),
        blur=0.6 * u[2] * s if u[3] < 0.5 else 0.0,
        noise=6.0 * u[5] * s,
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        occluder=occluder, occluder_color=occ_color,
    )


def _clip(value: float, bound: float) -> float:
    return min(bound, max(-bound, value))


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c)


def _affine(canvas: int, nuisance: Nuisance) -> tuple[np.ndarray, np.ndarray, float]:
    half = canvas / 2.0
    k = half * nuisance.scale
    if nuisance.angle:
        t = np.deg2rad(nuisance.angle)
        c, s = np.cos(t), np.sin(t)
        mat = k * np.array([[c, s], [-s, c]])  # y points down: positive angle = counter-clockwise
    else:
        mat = k * np.eye(2)
    off = half * (1.0 + np.asarray(nuisance.shift, dtype=np.float64))
    return mat, off, k


def rasterize(ops, background, size: int, nuisance: Nuisance = NO_NUISANCE,
              supersample: int = DEFAULT_SUPERSAMPLE) -> Image.Image:
    """Draw a display list (face coordinates) at ``size * supersample`` and reduce to ``size``."""
    canvas = size * supersample
    img = Image.new("RGB", (canvas, canvas), tuple(background))
    draw = ImageDraw.Draw(img)
    mat, off, k = _affine(canvas, nuisance)
    # one transform for all points, then slice each operation's coordinates
    flat = (np.concatenate([op[1] for op in ops]) @ mat.T + off).ravel().tolist()
    start = 0
    for op in ops:
        stop = start + 2 * len(op[1])
        xy = flat[start:stop]
        start = stop
        if op[0] == "P":
            draw.polygon(xy, fill=op[2])
        else:
            width = max(1, int(op[3] * k + 0.5))
            draw.line(xy, fill=op[2], width=width, joint="curve" if width > 2 else None)
    if nuisance.occluder is not None:
        x0, y0, x1, y1 = ((v + 1.0) * canvas / 2.0 for v in nuisance.occluder)
        draw.rectangle((x0, y0, x1, y1), fill=nuisance.occluder_color)
    if supersample > 1:
        img = img.reduce(supersample)
    return img


@lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of N(0, 1) noise from which each image takes a seeded crop."""
    side = max(256, 2 * size)
    return np.random.default_rng(0x5EED).standard_normal((side, side, 3), dtype=np.float32)


def _gaussian_blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edges replicated) of a float32 [H, W, C] array."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    for axis in (0, 1):
        n = arr.shape[axis]
        first = arr.take([0] * radius, axis=axis)
        last = arr.take([n - 1] * radius, axis=axis)
        pad = np.concatenate([first, arr, last], axis=axis)
        pad = pad if axis == 0 else pad.swapaxes(0, 1)
        out = taps[0] * pad[0:n]
        for i in range(1, len(taps)):
            out += taps[i] * pad[i:i + n]
        arr = out if axis == 0 else out.swapaxes(0, 1)
    return arr


def finish(img: Image.Image, nuisance: Nuisance = NO_NUISANCE) -> np.ndarray:
    """Blur, light and noise a rendered image; returns uint8 [H, W, 3]."""
    if nuisance.blur <= 0.05 and not nuisance.photometric:
        return np.asarray(img, dtype=np.uint8).copy()
    arr = np.asarray(img, dtype=np.float32)
    size = arr.shape[0]
    if nuisance.blur > 0.05:
        arr = _gaussian_blur(arr, nuisance.blur)
    if nuisance.photometric:
        gx, gy = _grid(size)
        gain = nuisance.brightness * (1.0 + nuisance.light[0] * gx + nuisance.light[1] * gy)
        scale = gain[..., None] * np.asarray(nuisance.gain, dtype=np.float32)
        arr = (arr * nuisance.contrast + 128.0 * (1.0 - nuisance.contrast)) * scale
    if nuisance.noise > 0:
        bank = _noise_bank(size)
        span = bank.shape[0] - size
        oy, ox = (nuisance.noise_seed // span) % span, nuisance.noise_seed % span
        arr += nuisance.noise * bank[oy:oy + size, ox:ox + size]
    arr += 0.5
    return arr.clip(0, 255).astype(np.uint8)


def render_face(identity: Identity, au=None, nuisance: Nuisance | None = None, *, size: int = 64,
                supersample: int = DEFAULT_SUPERSAMPLE) -> np.ndarray:
    """Render one face from explicit parameters -> uint8 array [size, size, 3].

    ``au`` is a length-17 intensity vector in ``AUS_17`` order or a ``{"AU12": 0.8}`` dict
    (missing AUs are 0); ``nuisance`` defaults to none.
    """
    if int(size) < 16:
        raise DistmtlError(f"image size must be at least 16, got {size}")
    if int(supersample) < 1:
        raise DistmtlError(f"supersample must be >= 1, got {supersample}")
    nuisance = NO_NUISANCE if nuisance is None else nuisance
    ops = face_ops(identity, au)
    img = rasterize(ops, identity.background, int(size), nuisance, int(supersample))
    return finish(img, nuisance)
