"""Inference with an exported model folder (see :mod:`distmtl.inference.export`).

>>> predictor = Predictor.from_pretrained("model_dir")            # doctest: +SKIP
>>> frame = predictor.predict("faces/", batch_size=64)             # doctest: +SKIP

Inputs: a path to an image file, a folder (its image files, sorted by name, not recursive), a PIL
image, a numpy array (one image, ``HxWxC`` RGB or ``HxW`` grey, uint8; or a batch ``NxHxWxC``), a
torch tensor (``uint8``: raw images ``[N, C, H, W]`` or ``[C, H, W]`` that get the model's
preprocessing; floating point: an already preprocessed batch ``[N, C, size, size]`` fed as is),
or a list mixing these. Inputs are assumed to be face crops; ``detect=True`` crops the largest
face first (OpenCV Haar cascade, ``pip install "opencv-python-headless<5"``; preprocessed float
tensors are used as they are).

Output columns (:meth:`Predictor.columns`), one row per input, in this order:

1. ``input``: the path as given (for files of a folder: the folder joined with the file name),
   else ``array:<i>``, ``image:<i>`` or ``tensor:<i>`` (``i``: position among all inputs).
2. ``detect=True`` only: ``face_detected`` (1 or 0; empty when the input was unreadable) and
   ``face_x``, ``face_y``, ``face_w``, ``face_h``, the largest face's box in input pixels. Without
   a face the prediction columns are empty.
3. per task, in the model's task order:

   - multiclass task ``expression`` with classes ``C1..CK``: ``expression`` (the predicted class
     name, argmax), then ``expression_C1`` ... ``expression_CK`` (softmax probabilities);
   - multilabel task with labels ``AU01..AU26``: ``AU01`` ... ``AU26`` (sigmoid probabilities),
     then ``AU01_c`` ... ``AU26_c`` (1 when the probability is greater than the label's threshold
     from the model config, else 0). ``_c`` is a presence decision as in OpenFace; no ``_r``
     column is written since these are probabilities, not intensities;
   - regression task with dimensions ``valence, arousal``: ``valence``, ``arousal``;
   - identity task: no column.

   When a bare label or dimension name would repeat an earlier column (two tasks sharing a label,
   a label named like a task or like ``input``), every column of that task gets a ``<task>_``
   prefix instead (``au2_AU01``, ``au2_AU01_c``).
4. ``compound=True`` only: ``compound`` (the predicted compound expression) then
   ``compound_<Class>`` for the 13 classes of Du et al.'s table, zero-shot probabilities from the
   AU probabilities (:mod:`distmtl.inference.compound`).
5. ``error``: empty, or the one-line reason the input could not be used (its other columns are
   then empty); with ``strict=True`` such an input raises :class:`DistmtlError` instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from distmtl.data.transforms import Preprocessing, array_to_image, eval_transform, image_from_pil, load_image
from distmtl.errors import DistmtlError
from distmtl.tasks import Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FACE_COLUMNS = ("face_detected", "face_x", "face_y", "face_w", "face_h")
OPENCV_HINT = 'pip install "opencv-python-headless<5"'


@dataclass
class Item:
    """One input: its ``input`` column value and what to decode (path, array, PIL image, tensor)."""

    name: str
    payload: Any


def gather_inputs(inputs) -> list[Item]:
    """Flatten paths, folders, arrays, images, tensors and lists of them into :class:`Item`s."""
    items: list[Item] = []

    def add(x, top: bool) -> None:
        if isinstance(x, (str, Path)):
            path = Path(x)
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not files:
                    raise DistmtlError(f"{path}: folder has no image files "
                                       f"({', '.join(s[1:] for s in IMAGE_SUFFIXES[:4])}, ...)")
                items.extend(Item(str(path / f.name), f) for f in files)
            else:
                items.append(Item(str(x), path))
        elif isinstance(x, Image.Image):
            items.append(Item(f"image:{len(items)}", x))
        elif isinstance(x, torch.Tensor):
            batch = x if x.dim() == 4 else x.unsqueeze(0) if x.dim() in (2, 3) else None
            if batch is None:
                raise DistmtlError(f"tensor input: expected [N, C, H, W] or [C, H, W], got {tuple(x.shape)}")
            for t in batch.detach().cpu():
                payload = t if t.is_floating_point() else t.permute(1, 2, 0).numpy() if t.dim() == 3 else t.numpy()
                items.append(Item(f"tensor:{len(items)}", payload))
        elif isinstance(x, np.ndarray):
            for a in (x if x.ndim == 4 else [x]):
                items.append(Item(f"array:{len(items)}", a))
        elif top and isinstance(x, Iterable):
            for element in x:
                add(element, False)
        else:
            raise DistmtlError(f"unsupported input of type {type(x).__name__} (expected a path, folder, "
                               "PIL image, numpy array or torch tensor)")

    add(inputs, True)
    if not items:
        raise DistmtlError("no inputs given")
    return items


class FaceDetector:
    """The largest frontal face by OpenCV's bundled Haar cascade; crops a square enlarged by ``margin``."""

    def __init__(self, margin: float = 0.2, min_size: int = 24):
        try:
            import cv2
        except ImportError:
            raise DistmtlError(f"face detection needs OpenCV, which is not installed: {OPENCV_HINT}") from None
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if folder is None:
            raise DistmtlError(f"this OpenCV ({cv2.__version__}) ships no Haar cascades: {OPENCV_HINT}")
        self.margin, self.min_size = margin, min_size
        self.cascade = cv2.CascadeClassifier(str(Path(folder) / "haarcascade_frontalface_default.xml"))
        if self.cascade.empty():
            raise DistmtlError(f"{folder}: cannot load haarcascade_frontalface_default.xml")

    def detect(self, image: Image.Image) -> tuple[int, int, int, int] | None:
        gray = np.asarray(image.convert("L"))
        faces = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(self.min_size, self.min_size))
        if len(faces) == 0:
            return None
        x, y, w, h = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
        return x, y, w, h

    def crop(self, image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
        x, y, w, h = box
        side = max(w, h) * (1 + 2 * self.margin)
        cx, cy = x + w / 2, y + h / 2
        left, top = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
        return image.crop((left, top, min(image.width, int(round(cx + side / 2))),
                           min(image.height, int(round(cy + side / 2)))))


class InputDataset(Dataset):
    """Decodes and preprocesses inputs; item ``i``: ``(i, tensor or None, error, face box info)``."""

    def __init__(self, items: Sequence[Item], pre: Preprocessing, detect: bool = False):
        self.items, self.pre, self.detect = list(items), pre, detect
        self.transform = eval_transform(pre)  # the training-time evaluation transform
        self._detector: FaceDetector | None = None

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, item: Item) -> Image.Image:
        payload = item.payload
        if isinstance(payload, Path):
            return load_image(payload, self.pre.channels)
        if isinstance(payload, Image.Image):
            return image_from_pil(payload, self.pre.channels, item.name)
        return array_to_image(payload, self.pre.channels)

    def load(self, i: int):
        item = self.items[i]
        if isinstance(item.payload, torch.Tensor):
            expected = (self.pre.channels, self.pre.size, self.pre.size)
            if tuple(item.payload.shape) != expected:
                raise DistmtlError(f"{item.name}: a float tensor is taken as preprocessed and must have "
                                   f"shape {expected}, got {tuple(item.payload.shape)}")
            return item.payload.float(), None
        image = self.decode(item)
        face = None
        if self.detect:
            if self._detector is None:
                self._detector = FaceDetector()
            box = self._detector.detect(image.convert("RGB"))
            if box is None:
                return None, (0, None)
            face, image = (1, box), self._detector.crop(image, box)
        return self.transform(image), face

    def __getitem__(self, i: int):
        try:
            tensor, face = self.load(i)
            return i, tensor, "", face
        except DistmtlError as exc:
            message = str(exc)
            name = self.items[i].name
            return i, None, message if name in message else f"{name}: {message}", None
        except Exception as exc:  # noqa: BLE001 - one bad input must not end a long run
            return i, None, f"{self.items[i].name}: {type(exc).__name__}: {' '.join(str(exc).split())}", None


@dataclass
class BatchResult:
    """Raw results of one batch: outputs per task for the rows in ``valid``."""

    names: list[str]
    errors: list[str]
    faces: list
    valid: np.ndarray
    outputs: dict[str, np.ndarray]


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DistmtlError(f"device: unknown device '{device}' (auto, cpu, cuda, cuda:0, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DistmtlError(f"device: '{device}' requested but CUDA is not available (use auto or cpu)")
    return dev


class Predictor:
    """A network plus everything needed to run it: tasks, preprocessing, thresholds."""

    def __init__(self, net: torch.nn.Module, tasks: dict[str, Task], preprocessing: Preprocessing,
                 thresholds: dict[str, Sequence[float]] | None = None, config: dict | None = None,
                 device: str | torch.device = "cpu", config_sha256: str | None = None):
        self.tasks, self.preprocessing = dict(tasks), preprocessing
        self.config, self.config_sha256 = dict(config or {}), config_sha256
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        given = thresholds or {}
        self.thresholds = {t: np.asarray(given.get(t, [0.5] * task.num_outputs), dtype=np.float32)
                           for t, task in self.tasks.items() if task.kind == "multilabel"}
        self.task_columns = self._name_columns()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "auto") -> Predictor:
        """Load a folder written by ``distmtl export`` (nothing is unpickled)."""
        from distmtl.inference.export import (CONFIG_NAME, build_net, file_sha256, load_weights,
                                    preprocessing_from_model_config, read_model_config,
                                    tasks_from_config)

        config = read_model_config(model_dir)
        tasks = tasks_from_config(config)
        net = build_net(config, tasks)
        load_weights(net, model_dir)
        thresholds = {t: [float(config["thresholds"].get(t, {}).get(label, 0.5)) for label in task.labels]
                      for t, task in tasks.items() if task.kind == "multilabel"}
        return cls(net, tasks, preprocessing_from_model_config(config), thresholds, config, device,
                   config_sha256=file_sha256(Path(model_dir) / CONFIG_NAME))

    # ----- columns
    def _name_columns(self) -> dict[str, dict[str, list[str]]]:
        used = {"input", "error", *FACE_COLUMNS}
        out = {}
        for name, task in self.tasks.items():
            if task.kind == "multiclass":
                cols = {"pred": [name], "values": [f"{name}_{c}" for c in task.labels]}
            elif task.kind in ("multilabel", "regression"):
                bare = list(task.labels)
                prefix = "" if not (set(bare) & used or set(bare) & set(self.tasks)) else f"{name}_"
                cols = {"values": [prefix + lab for lab in bare]}
                if task.kind == "multilabel":
                    cols["decisions"] = [f"{prefix}{lab}_c" for lab in bare]
            else:
                continue
            flat = [c for group in cols.values() for c in group]
            if set(flat) & used:
                raise DistmtlError(f"task '{name}': output column '{sorted(set(flat) & used)[0]}' "
                                   "repeats another task's column")
            used.update(flat)
            out[name] = cols
        return out

    def columns(self, compound: bool = False, detect: bool = False) -> list[str]:
        """The output columns in order (see the module docstring)."""
        cols = ["input", *(FACE_COLUMNS if detect else ())]
        for groups in self.task_columns.values():
            cols += [c for group in groups.values() for c in group]
        if compound:
            from distmtl.inference.compound import compound_columns

            self.compound_task()  # a model without AUs has no compound columns
            clash = sorted(set(compound_columns()) & set(cols))
            if clash:
                raise DistmtlError(f"compound: column '{clash[0]}' is already a column of the model's tasks")
            cols += compound_columns()
        return cols + ["error"]

    # ----- running
    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Probabilities (multiclass, multilabel) or values (regression) per task for a batch."""
        outputs, _ = self.net(batch.to(self.device, non_blocking=True))
        result = {}
        for name, task in self.tasks.items():
            if task.kind == "multiclass":
                result[name] = torch.softmax(outputs[name].float(), dim=1)
            elif task.kind == "multilabel":
                result[name] = torch.sigmoid(outputs[name].float())
            elif task.kind == "regression":
                result[name] = outputs[name].float()
        return {k: v.cpu().numpy() for k, v in result.items()}

    def run(self, inputs, batch_size: int = 32, num_workers: int = 0, *, strict: bool = False,
            detect: bool = False) -> Iterator[BatchResult]:
        """Raw results batch by batch (used by :meth:`predict` and :meth:`iter_predict`)."""
        given_items = isinstance(inputs, list) and inputs and all(isinstance(i, Item) for i in inputs)
        items = inputs if given_items else gather_inputs(inputs)
        if batch_size < 1:
            raise DistmtlError(f"batch_size: must be at least 1, got {batch_size}")
        if detect:
            FaceDetector()  # fail once, early, when OpenCV is missing
        dataset = InputDataset(items, self.preprocessing, detect=detect)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            collate_fn=list, shuffle=False)
        for batch in loader:
            errors = [error for _, _, error, _ in batch]
            if strict and any(errors):
                raise DistmtlError(next(e for e in errors if e))
            valid = np.array([t is not None for _, t, _, _ in batch])
            outputs = self.forward(torch.stack([t for _, t, _, _ in batch if t is not None])) \
                if valid.any() else {}
            yield BatchResult([items[i].name for i, *_ in batch],
                              errors, [face for *_, face in batch], valid, outputs)

    def frame(self, results: Sequence[BatchResult], compound: bool = False,
              detect: bool = False) -> pd.DataFrame:
        """Batch results as a DataFrame with exactly :meth:`columns`."""
        n = sum(len(r.names) for r in results)
        valid = np.concatenate([r.valid for r in results]) if results else np.zeros(0, bool)
        data: dict[str, Any] = {"input": [name for r in results for name in r.names]}
        probs: dict[str, np.ndarray] = {}
        if detect:
            faces = [face for r in results for face in r.faces]
            data["face_detected"] = pd.array([None if f is None else f[0] for f in faces], dtype="Int64")
            for k, col in enumerate(FACE_COLUMNS[1:]):
                data[col] = pd.array([None if f is None or f[1] is None else f[1][k] for f in faces],
                                     dtype="Int64")
        for name, groups in self.task_columns.items():
            task = self.tasks[name]
            values = np.full((n, task.num_outputs), np.nan, dtype=np.float32)
            if valid.any():
                values[valid] = np.concatenate([r.outputs[name] for r in results if r.valid.any()])
            if task.kind == "multiclass":
                labels = np.array(task.labels, dtype=object)
                data[name] = np.where(valid, labels[np.nan_to_num(values).argmax(axis=1)], None)
            for j, col in enumerate(groups["values"]):
                data[col] = values[:, j]
            if task.kind == "multilabel":
                decided = (values > self.thresholds[name][None, :]).astype(np.int64)
                for j, col in enumerate(groups["decisions"]):
                    data[col] = pd.arrays.IntegerArray(decided[:, j], ~valid)
            probs[name] = values
        frame = pd.DataFrame(data)
        if compound:
            from distmtl.inference.compound import compound_scores

            au = self.compound_task()
            scores = compound_scores(probs[au], self.tasks[au].labels)
            frame = pd.concat([frame, scores.set_index(frame.index)], axis=1)
        frame["error"] = [e for r in results for e in r.errors]
        return frame[self.columns(compound, detect)]

    def compound_task(self) -> str:
        """The multilabel task whose labels cover most of the compound table's AUs."""
        from distmtl.inference.compound import matching_labels

        best, count = None, 0
        for name, task in self.tasks.items():
            if task.kind == "multilabel" and len(matching_labels(task.labels)) > count:
                best, count = name, len(matching_labels(task.labels))
        if best is None:
            raise DistmtlError("compound: the model has no multilabel task with the compound table's AUs")
        return best

    def iter_predict(self, inputs, batch_size: int = 32, num_workers: int = 0, *, strict: bool = False,
                     compound: bool = False, detect: bool = False) -> Iterator[pd.DataFrame]:
        """One DataFrame per finished batch (for streaming to a file)."""
        self.columns(compound, detect)
        for result in self.run(inputs, batch_size, num_workers, strict=strict, detect=detect):
            yield self.frame([result], compound=compound, detect=detect)

    def predict(self, inputs, batch_size: int = 32, num_workers: int = 0, *, strict: bool = False,
                compound: bool = False, detect: bool = False) -> pd.DataFrame:
        """One row per input with the columns of :meth:`columns` (see the module docstring)."""
        self.columns(compound, detect)
        results = list(self.run(inputs, batch_size, num_workers, strict=strict, detect=detect))
        return self.frame(results, compound=compound, detect=detect)

    def describe(self) -> dict[str, Any]:
        """Label orders and thresholds (what a prediction file's sidecar records)."""
        return {"tasks": {t: {"kind": task.kind, "labels": list(task.labels)} for t, task in self.tasks.items()},
                "thresholds": {t: dict(zip(self.tasks[t].labels, map(float, v)))
                               for t, v in self.thresholds.items()},
                "preprocessing": self.preprocessing.to_dict(), "config_sha256": self.config_sha256}

