"""RetinaFace / SCRFD through insightface (``buffalo_l`` by default), for machines that can fetch
its models once (insightface puts them under ``~/.insightface/models/<pack>/``).

The models are never downloaded from here: when the pack is not on disk the backend stops with
a one-line error saying where to put it. Scores are detection probabilities in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distmtl.errors import DistmtlError
from distmtl.faces.detect import Face

NAME = "insightface"
INSTALL = "pip install insightface onnxruntime"
DEFAULT_MIN_SCORE = 0.5


def model_root() -> Path:
    return Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface")) / "models"


class InsightFace:
    def __init__(self, pack: str = "buffalo_l", det_size: int = 640):
        try:
            from insightface.model_zoo import get_model
        except ImportError:
            raise DistmtlError(f"face backend 'insightface': insightface is not installed: {INSTALL}") from None
        folder = model_root() / pack
        onnx = sorted(folder.glob("det_*.onnx")) if folder.is_dir() else []
        if not onnx:
            raise DistmtlError(f"face backend 'insightface': no detector model in {folder} (det_*.onnx); "
                               f"fetch the '{pack}' pack once on a machine with network access, e.g. "
                               f"python -c \"import insightface; insightface.app.FaceAnalysis(name='{pack}')\"")
        self.model = get_model(str(onnx[0]), providers=["CPUExecutionProvider"])
        self.model.prepare(ctx_id=-1, input_size=(det_size, det_size))

    def detect(self, rgb: np.ndarray) -> list[Face]:
        bboxes, kpss = self.model.detect(np.ascontiguousarray(rgb[:, :, ::-1]))  # insightface takes BGR
        faces = []
        for k, (x1, y1, x2, y2, score) in enumerate(bboxes):
            landmarks = None if kpss is None else kpss[k]
            faces.append(Face(score, (x1, y1, x2 - x1, y2 - y1), landmarks))
        return faces


def create(pack: str = "buffalo_l", det_size: int = 640, **_ignored) -> InsightFace:
    return InsightFace(pack=pack, det_size=det_size)
