"""Prediction rows per (input, frame, face): detection, alignment, video frames and face ids.

Used by :class:`distmtl.inference.predictor.Predictor` when face detection is on. Each input
(image file, video file, array, PIL image) gives one row per face it holds (a video: per face of
every processed frame); an input with no face gives one row with empty face and task columns,
and an unreadable one one row with its ``error``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from distmtl.data.transforms import Preprocessing, array_to_image, eval_transform, load_image
from distmtl.errors import DistmtlError
from distmtl.faces.align import FaceCropper, FacePreprocessing
from distmtl.faces.detect import Face
from distmtl.faces.track import IouTracker
from distmtl.faces.video import is_video, read_frames

FACE_COLUMNS = ("frame", "timestamp", "face_id", "FaceRectX", "FaceRectY", "FaceRectWidth",
                "FaceRectHeight", "FaceScore", *(f"x_{k}" for k in range(5)), *(f"y_{k}" for k in range(5)))
INTEGER_FACE_COLUMNS = ("frame", "face_id")


@dataclass
class FaceRow:
    """One output row before the network runs: where it comes from, its face, its input tensor."""

    name: str
    frame: int | None = None
    timestamp: float | None = None
    face: Face | None = None
    tensor: torch.Tensor | None = None
    error: str = ""

    def face_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {"frame": self.frame, "timestamp": self.timestamp}
        if self.face is None:
            return values
        x, y, w, h = self.face.box
        values.update(face_id=self.face.face_id, FaceRectX=x, FaceRectY=y, FaceRectWidth=w, FaceRectHeight=h,
                      FaceScore=self.face.score)
        if self.face.landmarks is not None:
            for k, (px, py) in enumerate(self.face.landmarks):
                values[f"x_{k}"], values[f"y_{k}"] = float(px), float(py)
        return values


def _decode(payload, name: str) -> np.ndarray:
    if isinstance(payload, Path):
        return np.asarray(load_image(payload, 3))
    if isinstance(payload, Image.Image):
        return np.asarray(payload.convert("RGB"))
    if isinstance(payload, torch.Tensor):
        raise DistmtlError(f"{name}: a float tensor is already preprocessed; face detection needs images")
    return np.asarray(array_to_image(payload, 3))


class FaceRows:
    """Turns inputs into :class:`FaceRow` s with the model's face preprocessing."""

    def __init__(self, faces: FacePreprocessing, pre: Preprocessing, every: int = 1):
        if every < 1:
            raise DistmtlError(f"every: must be at least 1 (every N-th video frame), got {every}")
        self.cropper = FaceCropper(faces)
        self.cropper.detector  # noqa: B018 - load the backend now: a missing one is one early line
        self.pre, self.every = pre, every
        self.transform = eval_transform(pre)

    def _rows(self, name: str, frame: int | None, timestamp: float | None, rgb: np.ndarray,
              tracker: IouTracker | None) -> list[FaceRow]:
        found = self.cropper.faces(rgb)
        faces = [f for f, _ in found]
        if tracker is not None:
            tracker.update(faces)
        else:
            for k, face in enumerate(faces):
                face.face_id = k
        if not found:
            return [FaceRow(name, frame, timestamp)]
        mode = "L" if self.pre.channels == 1 else "RGB"
        return [FaceRow(name, frame, timestamp, face, self.transform(Image.fromarray(crop).convert(mode)))
                for face, crop in found]

    def rows(self, items: Sequence) -> Iterator[FaceRow]:
        for item in items:
            name, payload = item.name, item.payload
            try:
                if isinstance(payload, Path) and is_video(payload):
                    tracker = IouTracker()
                    produced = False
                    for index, seconds, rgb in read_frames(payload, self.every):
                        produced = True
                        yield from self._rows(name, index, seconds, rgb, tracker)
                    if not produced:
                        yield FaceRow(name, error=f"{name}: video has no frames")
                else:
                    yield from self._rows(name, None, None, _decode(payload, name), None)
            except DistmtlError as exc:
                message = str(exc)
                yield FaceRow(name, error=message if name in message else f"{name}: {message}")
            except Exception as exc:  # noqa: BLE001 - one bad input must not end a long run
                yield FaceRow(name, error=f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())}")


def batches(rows: Iterator[FaceRow], size: int) -> Iterator[list[FaceRow]]:
    batch: list[FaceRow] = []
    for row in rows:
        batch.append(row)
        if sum(r.tensor is not None for r in batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
