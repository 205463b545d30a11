"""Faces in an image: one small interface over detector backends.

A backend is one module under :mod:`distmtl.faces.backends`, registered by name in
``BACKENDS``; it defines ``NAME``, ``INSTALL`` (the one-line install hint), ``DEFAULT_MIN_SCORE``
and ``create(**options)`` returning an object with ``detect(rgb) -> list[Face]`` on an
``HxWx3`` uint8 RGB array. Backends load lazily, so ``import distmtl.faces`` needs none of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from distmtl.errors import DistmtlError, close_matches

BACKENDS = {
    "dlib": "distmtl.faces.backends.dlib_hog",
    "insightface": "distmtl.faces.backends.insightface_scrfd",
}
DEFAULT_BACKEND = "dlib"
MODES = ("align", "box", "none")  # see distmtl.faces.align.FacePreprocessing
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""The 5 landmarks, in ArcFace order; "left" is the image's left (the subject's right)."""


@dataclass
class Face:
    """One detected face: ``score`` (backend units, higher is surer), ``box`` ``(x, y, w, h)`` in
    image pixels, ``landmarks`` a ``5x2`` array ``(x, y)`` in :data:`LANDMARK_NAMES` order, or None."""

    score: float
    box: tuple[float, float, float, float]
    landmarks: np.ndarray | None = None
    face_id: int | None = field(default=None, compare=False)

    def __post_init__(self):
        self.score = float(self.score)
        self.box = tuple(float(v) for v in self.box)
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float64).reshape(5, 2)


def five_from_68(points) -> np.ndarray:
    """The 5 ArcFace landmarks from the 68-point (iBUG 300-W) scheme: the centres of the two eye
    contours (points 36-41, 42-47), the nose tip (30), the mouth corners (48, 54)."""
    pts = np.asarray(points, dtype=np.float64).reshape(68, 2)
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def backend_module(name: str):
    """The module of backend ``name`` (one-line error for an unknown name)."""
    if name not in BACKENDS:
        raise DistmtlError(f"face backend: unknown backend '{name}'{close_matches(name, BACKENDS)} "
                           f"(known: {', '.join(BACKENDS)})")
    return importlib.import_module(BACKENDS[name])


class Detector:
    """A backend plus the score threshold; ``detect(image)`` gives every face, best score first."""

    def __init__(self, backend: str = DEFAULT_BACKEND, min_score: float | None = None, **options):
        module = backend_module(backend)
        self.name = backend
        self.min_score = module.DEFAULT_MIN_SCORE if min_score is None else float(min_score)
        self.impl = _create(backend, tuple(sorted(options.items())))

    def detect(self, image) -> list[Face]:
        rgb = as_rgb(image)
        faces = [f for f in self.impl.detect(rgb) if f.score >= self.min_score]
        return sorted(faces, key=lambda f: -f.score)


@lru_cache(maxsize=4)
def _create(backend: str, options: tuple):
    """One model load per backend and options in a process (dlib's landmark model takes seconds)."""
    return backend_module(backend).create(**dict(options))


def as_rgb(image) -> np.ndarray:
    """A PIL image or an ``HxW`` / ``HxWx3`` / ``HxWx4`` uint8 array as a contiguous RGB array."""
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DistmtlError(f"face detection needs a uint8 image, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DistmtlError(f"face detection needs an HxW or HxWx3 image, got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array[:, :, :3])


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0
