"""Inference with an exported model folder (see :mod:`distmtl.inference.export`).

>>> predictor = Predictor.from_pretrained("model_dir")            # doctest: +SKIP
>>> frame = predictor.predict("faces/", batch_size=64)             # doctest: +SKIP

Inputs: a path to an image or video file, a folder (its image and video files, sorted by name;
``gather_inputs(..., recursive=True)`` also searches sub-folders), a PIL image, a numpy array (one
image, ``HxWxC`` RGB or ``HxW`` grey, uint8; or a batch ``NxHxWxC``), a torch tensor (``uint8``:
raw images ``[N, C, H, W]`` or ``[C, H, W]`` that get the model's preprocessing; floating point: an
already preprocessed batch ``[N, C, size, size]`` fed as is), or a list mixing these.

Faces: the model folder records the face preprocessing its training images went through
(``faces``, :class:`distmtl.faces.FacePreprocessing`). When it is ``align`` or ``box``, predict
detects every face (``distmtl.faces`` backends), crops it the same way and predicts on each
crop; ``detect=False`` takes the inputs as crops already (and warns, once, with a count, when
they do not look like the training crops); ``detect=True`` detects and aligns even for a model
that records no face preprocessing. Videos are read frame by frame (``every``: every N-th).

Output columns (:meth:`Predictor.columns`), in this order:

1. ``input``: the path as given (for files of a folder: the folder joined with the relative path),
   else ``array:<i>``, ``image:<i>`` or ``tensor:<i>`` (``i``: position among all inputs).
2. with face detection only, one row per (input, frame, face): ``frame`` (video frame index from
   0; empty for images), ``timestamp`` (seconds; empty for images), ``face_id`` (images: 0, 1, ...
   best score first; videos: the IoU track, stable across frames), ``FaceRectX``, ``FaceRectY``,
   ``FaceRectWidth``, ``FaceRectHeight``, ``FaceScore``, ``x_0..x_4``, ``y_0..y_4`` (left eye,
   right eye, nose tip, left and right mouth corner, in input pixels). An input or frame without
   a face gives one row with these and the task columns empty.
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
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from distmtl.data.transforms import Preprocessing, array_to_image, eval_finish, eval_resize, image_from_pil, load_image
from distmtl.errors import DistmtlError
from distmtl.faces.align import FacePreprocessing, crop_mismatch
from distmtl.faces.video import VIDEO_SUFFIXES
from distmtl.inference.face_rows import FACE_COLUMNS, INTEGER_FACE_COLUMNS, FaceRows, batches
from distmtl.tasks import Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
log = logging.getLogger(__name__)


@dataclass
class Item:
    """One input: its ``input`` column value and what to decode (path, array, PIL image, tensor)."""

    name: str
    payload: Any


def gather_inputs(inputs, recursive: bool = False, videos: bool = True) -> list[Item]:
    """Flatten paths, folders, arrays, images, tensors and lists of them into :class:`Item`s.

    A folder gives its image (and, with ``videos``, video) files sorted by name; ``recursive``
    also those of its sub-folders, sorted by relative path.
    """
    items: list[Item] = []
    suffixes = IMAGE_SUFFIXES + (VIDEO_SUFFIXES if videos else ())

    def add(x, top: bool) -> None:
        if isinstance(x, (str, Path)):
            path = Path(x)
            if path.is_dir():
                found = path.rglob("*") if recursive else path.iterdir()
                files = sorted((p for p in found if p.is_file() and p.suffix.lower() in suffixes),
                               key=lambda p: p.relative_to(path).as_posix())
                if not files:
                    raise DistmtlError(f"{path}: folder has no image files "
                                       f"({', '.join(s[1:] for s in IMAGE_SUFFIXES[:4])}, ...)"
                                       + ("" if recursive else "; --recursive searches its sub-folders"))
                items.extend(Item(str(path / f.relative_to(path)), f) for f in files)
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


class InputDataset(Dataset):
    """Decodes and preprocesses face crops; item ``i``: ``(i, tensor or None, error, mismatch)``.

    ``expected``: the face preprocessing the model was trained with; an input that does not look
    like one of its crops gets a ``mismatch`` note (the run warns once, with a count).
    """

    def __init__(self, items: Sequence[Item], pre: Preprocessing, expected: FacePreprocessing | None = None):
        self.items, self.pre, self.expected = list(items), pre, expected
        # the training-time evaluation transform, split: workers decode and resize to uint8, the
        # float conversion and normalisation run once per batch (Predictor.run)
        self.transform = eval_resize(pre)

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
        mismatch = None if self.expected is None else crop_mismatch((image.height, image.width), self.expected)
        return self.transform(image), mismatch and f"{item.name}: {mismatch}"

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
    """Raw results of one batch: outputs per task for the rows in ``valid``; ``faces``: per row, the
    face columns' values (face layout) or None."""

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
                 device: str | torch.device = "cpu", config_sha256: str | None = None,
                 faces: FacePreprocessing | None = None):
        self.tasks, self.preprocessing = dict(tasks), preprocessing
        self.faces = faces or FacePreprocessing(mode="none")  # what the training images went through
        self.config, self.config_sha256 = dict(config or {}), config_sha256
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        given = thresholds or {}
        self.thresholds = {t: np.asarray(given.get(t, [0.5] * task.num_outputs), dtype=np.float32)
                           for t, task in self.tasks.items() if task.kind == "multilabel"}
        self.task_columns = self._name_columns()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "auto", *, revision: str | None = None,
                        cache_dir: str | Path | None = None) -> Predictor:
        """Load a folder written by ``distmtl export``, or a Hub repo ``org/name`` holding one
        (downloaded through the Hugging Face cache, at ``revision`` when given; ``HF_HUB_OFFLINE=1``
        reads the cache only). Nothing is unpickled."""
        from distmtl.inference.hub import resolve_model_dir

        model_dir = resolve_model_dir(model_dir, revision=revision, cache_dir=cache_dir)
        from distmtl.inference.export import (CONFIG_NAME, build_net, file_sha256, load_weights,
                                    preprocessing_from_model_config, read_model_config,
                                    tasks_from_config)

        config = read_model_config(model_dir)
        tasks = tasks_from_config(config)
        net = build_net(config, tasks)
        load_weights(net, model_dir, expected_sha256=(config.get("weights") or {}).get("sha256"))
        thresholds = {t: [float(config["thresholds"].get(t, {}).get(label, 0.5)) for label in task.labels]
                      for t, task in tasks.items() if task.kind == "multilabel"}
        faces = FacePreprocessing.from_dict(config.get("faces"), f"{Path(model_dir) / CONFIG_NAME}: faces")
        return cls(net, tasks, preprocessing_from_model_config(config), thresholds, config, device,
                   config_sha256=file_sha256(Path(model_dir) / CONFIG_NAME), faces=faces)

    def face_preprocessing(self, detect: bool | None = None, backend: str | None = None,
                           min_face_score: float | None = None) -> FacePreprocessing:
        """What predict does to its inputs: the model's own face preprocessing (``detect=None``),
        that or the default alignment when the model records none (``True``), or nothing (``False``)."""
        if detect is False:
            return FacePreprocessing(mode="none")
        faces = self.faces if self.faces.mode != "none" or detect is None else FacePreprocessing()
        if faces.mode == "none":
            return faces
        changes = {k: v for k, v in (("backend", backend), ("min_face_score", min_face_score)) if v is not None}
        return replace(faces, **changes)

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
    def model_batch(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Decoded, resized uint8 images (and any already preprocessed float tensors) as one model
        input batch; the uint8 ones are converted and normalised together, on the model's device."""
        finish = eval_finish(self.preprocessing)
        if all(t.dtype == torch.uint8 for t in tensors):
            return finish(torch.stack(tensors).to(self.device, non_blocking=True))
        return torch.stack([finish(t[None])[0] if t.dtype == torch.uint8 else t for t in tensors])

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
            detect: bool | None = None, backend: str | None = None, min_face_score: float | None = None,
            every: int = 1) -> Iterator[BatchResult]:
        """Raw results batch by batch (used by :meth:`predict` and :meth:`iter_predict`)."""
        given_items = isinstance(inputs, list) and inputs and all(isinstance(i, Item) for i in inputs)
        items = inputs if given_items else gather_inputs(inputs)
        if batch_size < 1:
            raise DistmtlError(f"batch_size: must be at least 1, got {batch_size}")
        faces = self.face_preprocessing(detect, backend, min_face_score)
        if faces.mode != "none":
            yield from self._run_faces(items, faces, batch_size, strict, every)
            return
        expected = self.faces if self.faces.mode != "none" else None
        dataset = InputDataset(items, self.preprocessing, expected)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            collate_fn=list, shuffle=False)
        mismatched, first = 0, None
        for batch in loader:
            errors = [error for _, _, error, _ in batch]
            if strict and any(errors):
                raise DistmtlError(next(e for e in errors if e))
            notes = [note for *_, note in batch if note]
            mismatched, first = mismatched + len(notes), first or (notes[0] if notes else None)
            valid = np.array([t is not None for _, t, _, _ in batch])
            outputs = self.forward(self.model_batch([t for _, t, _, _ in batch if t is not None])) \
                if valid.any() else {}
            yield BatchResult([items[i].name for i, *_ in batch], errors, [None] * len(batch), valid, outputs)
        if mismatched:
            log.warning(f"warning: {mismatched} input(s) do not look like the {self.faces.mode} face crops "
                        f"this model was trained on (e.g. {first}); without --no-detect, predict detects "
                        "and crops the faces itself")

    def _run_faces(self, items, faces: FacePreprocessing, batch_size: int, strict: bool,
                   every: int) -> Iterator[BatchResult]:
        for batch in batches(FaceRows(faces, self.preprocessing, every).rows(items), batch_size):
            errors = [row.error for row in batch]
            if strict and any(errors):
                raise DistmtlError(next(e for e in errors if e))
            valid = np.array([row.tensor is not None for row in batch])
            outputs = self.forward(torch.stack([r.tensor for r in batch if r.tensor is not None])) \
                if valid.any() else {}
            yield BatchResult([row.name for row in batch], errors, [row.face_values() for row in batch],
                              valid, outputs)

    def frame(self, results: Sequence[BatchResult], compound: bool = False,
              detect: bool = False) -> pd.DataFrame:
        """Batch results as a DataFrame with exactly :meth:`columns`."""
        n = sum(len(r.names) for r in results)
        valid = np.concatenate([r.valid for r in results]) if results else np.zeros(0, bool)
        data: dict[str, Any] = {"input": [name for r in results for name in r.names]}
        probs: dict[str, np.ndarray] = {}
        if detect:
            faces = [face or {} for r in results for face in r.faces]
            for col in FACE_COLUMNS:
                values = [f.get(col) for f in faces]
                data[col] = pd.array(values, dtype="Int64") if col in INTEGER_FACE_COLUMNS else \
                    np.array([np.nan if v is None else v for v in values], dtype=np.float64)
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
                     compound: bool = False, detect: bool | None = None, **face_options) -> Iterator[pd.DataFrame]:
        """One DataFrame per finished batch (for streaming to a file); ``face_options``: ``backend``,
        ``min_face_score``, ``every`` (see :meth:`run`)."""
        layout = self.face_preprocessing(detect).mode != "none"
        self.columns(compound, layout)
        for result in self.run(inputs, batch_size, num_workers, strict=strict, detect=detect, **face_options):
            yield self.frame([result], compound=compound, detect=layout)

    def predict(self, inputs, batch_size: int = 32, num_workers: int = 0, *, strict: bool = False,
                compound: bool = False, detect: bool | None = None, **face_options) -> pd.DataFrame:
        """One row per input, or per (input, frame, face) when faces are detected, with the columns
        of :meth:`columns` (see the module docstring)."""
        layout = self.face_preprocessing(detect).mode != "none"
        self.columns(compound, layout)
        results = list(self.run(inputs, batch_size, num_workers, strict=strict, detect=detect, **face_options))
        return self.frame(results, compound=compound, detect=layout)

    def describe(self) -> dict[str, Any]:
        """Label orders and thresholds (what a prediction file's sidecar records)."""
        return {"tasks": {t: {"kind": task.kind, "labels": list(task.labels)} for t, task in self.tasks.items()},
                "thresholds": {t: dict(zip(self.tasks[t].labels, map(float, v)))
                               for t, v in self.thresholds.items()},
                "preprocessing": self.preprocessing.to_dict(), "faces": self.faces.to_dict(),
                "config_sha256": self.config_sha256}

