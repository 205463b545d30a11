"""Offline backend: dlib's HOG frontal-face detector and its 68-point shape predictor.

Both models come from packages (``dlib-bin`` ships the detector inside dlib,
``face-recognition-models`` ships ``shape_predictor_68_face_landmarks.dat``), so nothing is
downloaded at run time. The 5 landmarks are the centres of the two eye contours (points 36-41
and 42-47), the nose tip (30) and the mouth corners (48, 54). The score is the detector's SVM
margin: dlib's own threshold is 0, this backend's default 0.2 (the badge on the
astronaut photograph of scikit-image scores 0.12, her face 1.16).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from distmtl.errors import DistmtlError
from distmtl.faces.detect import Face, five_from_68

NAME = "dlib"
INSTALL = 'pip install "dlib-bin>=20" "face-recognition-models==0.3.0"'
DEFAULT_MIN_SCORE = 0.2
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def models_folder() -> Path:
    # find_spec locates the package without importing it: its __init__ imports pkg_resources,
    # which recent setuptools no longer provide
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DistmtlError(f"face backend 'dlib': the landmark model package is not installed: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibHog:
    def __init__(self, upsample: int = 1):
        try:
            import dlib
        except ImportError:
            raise DistmtlError(f"face backend 'dlib': dlib is not installed: {INSTALL}") from None
        path = models_folder() / PREDICTOR_FILE
        if not path.is_file():
            raise DistmtlError(f"face backend 'dlib': {path} is missing: {INSTALL}")
        self.upsample = int(upsample)
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rects, scores, _ = self.detector.run(rgb, self.upsample, -1.0)
        faces = []
        for rect, score in zip(rects, scores):
            shape = self.predictor(rgb, rect)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(Face(score, (rect.left(), rect.top(), rect.width(), rect.height()), five_from_68(pts)))
        return faces


def create(upsample: int = 1, **_ignored) -> DlibHog:
    return DlibHog(upsample=upsample)
