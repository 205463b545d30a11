"""Face crops: the 5-point similarity alignment to the ArcFace template, or a square crop
around a box when no landmarks are known, and the record of which one a model was trained with.

The ArcFace template (insightface's ``arcface_dst``) places the 5 landmarks of a 112x112 crop;
``size`` scales it and ``margin`` adds context: with margin ``m`` the template shrinks towards
the crop centre by ``1 + 2m`` (``m = 0.25`` shows half a face width more around the face).
The box crop keeps the aspect ratio: a square of side ``max(w, h) * (1 + 2 * margin)`` around
the box centre; whatever falls outside the image is black, as in the aligned crop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from skimage.transform import SimilarityTransform, warp

from distmtl.errors import DistmtlError
from distmtl.faces.detect import BACKENDS, DEFAULT_BACKEND, MODES, Detector, Face, as_rgb

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])
PREPARED_FACES_NAME = "faces.json"  # written by ``distmtl data prepare`` beside its CSV


@dataclass(frozen=True)
class FacePreprocessing:
    """How images become face crops; exported model folders record it as ``faces``.

    ``mode``: ``align`` (detect, 5-point alignment; a face without landmarks gets the box crop),
    ``box`` (detect, box crop) or ``none`` (the inputs are already face crops).
    """

    mode: str = "align"
    size: int = 112
    margin: float = 0.0
    backend: str = DEFAULT_BACKEND
    min_face_score: float | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise DistmtlError(f"faces.mode: must be one of {', '.join(MODES)}, got '{self.mode}'")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 8:
            raise DistmtlError(f"faces.size: must be an integer of at least 8, got {self.size!r}")
        if not isinstance(self.margin, (int, float)) or isinstance(self.margin, bool) or not 0 <= self.margin <= 2:
            raise DistmtlError(f"faces.margin: must be a number from 0 to 2, got {self.margin!r}")
        if self.backend not in BACKENDS:
            raise DistmtlError(f"faces.backend: unknown backend '{self.backend}' (known: {', '.join(BACKENDS)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "faces") -> FacePreprocessing:
        if data is None:
            return cls(mode="none")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise DistmtlError(f"{where}: unknown key '{unknown[0]}' "
                               f"(known: {', '.join(cls.__dataclass_fields__)})")
        try:
            return cls(**data)
        except DistmtlError as exc:
            text = str(exc)
            raise DistmtlError(where + text[len("faces"):] if text.startswith("faces.") else text) from None

    def detector(self) -> Detector:
        return Detector(self.backend, self.min_face_score)


def template(size: int = 112, margin: float = 0.0) -> np.ndarray:
    """The 5 landmark positions in a ``size`` x ``size`` crop with ``margin``."""
    return ((ARCFACE_112 - 56.0) / (1.0 + 2.0 * margin) + 56.0) * (size / 112.0)


def _warp(rgb: np.ndarray, tform: SimilarityTransform, size: int) -> np.ndarray:
    out = warp(rgb, tform.inverse, output_shape=(size, size), order=1, mode="constant", cval=0,
               preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def alignment_transform(landmarks, size: int = 112, margin: float = 0.0) -> SimilarityTransform:
    """The similarity transform taking image coordinates to crop coordinates (least squares)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise DistmtlError(f"alignment needs 5 finite (x, y) landmarks, got {points.tolist()}")
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(points, template(size, margin))
        ok = bool(tform)
    else:
        tform = SimilarityTransform()
        ok = tform.estimate(points, template(size, margin))
    if not ok:
        raise DistmtlError(f"alignment: landmarks {points.round(1).tolist()} do not define a transform "
                           "(all in one place?)")
    return tform


def align(image, landmarks, size: int = 112, margin: float = 0.0) -> np.ndarray:
    """The aligned ``size`` x ``size`` RGB crop of the face with these 5 landmarks."""
    return _warp(as_rgb(image), alignment_transform(landmarks, size, margin), size)


def box_transform(box, size: int = 112, margin: float = 0.0) -> SimilarityTransform:
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0 and np.isfinite([x, y, w, h]).all()):
        raise DistmtlError(f"face box must have a positive width and height, got {[x, y, w, h]}")
    side = max(w, h) * (1.0 + 2.0 * margin)
    scale = size / side
    cx, cy = x + w / 2, y + h / 2
    return SimilarityTransform(scale=scale, translation=(size / 2 - scale * cx, size / 2 - scale * cy))


def crop_box(image, box, size: int = 112, margin: float = 0.0) -> np.ndarray:
    """The square ``size`` x ``size`` crop around ``box`` ``(x, y, w, h)`` (aspect ratio kept)."""
    return _warp(as_rgb(image), box_transform(box, size, margin), size)


def crop_face(image, face: Face, pre: FacePreprocessing) -> np.ndarray:
    """The crop of one detected face as ``pre`` says (aligned when it has landmarks)."""
    if pre.mode == "align" and face.landmarks is not None:
        return align(image, face.landmarks, pre.size, pre.margin)
    return crop_box(image, face.box, pre.size, pre.margin)


class FaceCropper:
    """Every face of an image as ``(Face, crop)``; mode ``none`` gives the whole image as one face."""

    def __init__(self, pre: FacePreprocessing, detector: Detector | None = None):
        self.pre = pre
        self._detector = detector

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = self.pre.detector()
        return self._detector

    def faces(self, image) -> list[tuple[Face, np.ndarray]]:
        rgb = as_rgb(image)
        if self.pre.mode == "none":
            h, w = rgb.shape[:2]
            return [(Face(float("nan"), (0, 0, w, h)), rgb)]
        return [(face, crop_face(rgb, face, self.pre)) for face in self.detector.detect(rgb)]


def crop_mismatch(shape: tuple[int, ...], pre: FacePreprocessing) -> str | None:
    """Why an input of ``shape`` does not look like a crop made by ``pre`` (None when it does)."""
    h, w = shape[:2]
    if pre.mode == "none":
        return None
    if abs(h - w) > 0.05 * max(h, w):
        return f"{w}x{h} is not square, but the model was trained on square {pre.mode} crops"
    if not 0.5 * pre.size <= h <= 2 * pre.size:
        return f"{w}x{h} is far from the {pre.size}x{pre.size} {pre.mode} crops the model was trained on"
    return None
