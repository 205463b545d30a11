"""Model folders: ``distmtl export`` writes them, :class:`distmtl.inference.predictor.Predictor` reads them.

A model folder holds

- ``model.safetensors``: the network's state dict (``MultiTaskNet``: backbone + one head per task).
  Reading it never unpickles anything (safetensors is a flat tensor format).
- ``config.json``: everything else needed to rebuild and run the network, as plain JSON:

  ``format`` (``"distmtl-model"``), ``format_version``, ``distmtl_version`` (and the torch/timm
  versions that exported it), ``name`` (the experiment), ``model`` (``backbone``, ``in_chans``,
  ``head``, ``hidden``, ``drop_rate``, ``backbone_kwargs``, ``task_stages`` (when not 0), and for
  an ``hf-hub:`` backbone ``timm_model``: the architecture and arguments it stands for, so the
  model rebuilds without the Hub), ``tasks`` (``{name: {kind, labels, range?, options?}}`` in
  output order; the label order is the column order of every output), ``preprocessing``
  (``size``, ``channels``, ``mean``, ``std``, ``interpolation``: resize to size x size with
  antialiasing, scale to [0, 1], normalise, as in training-time evaluation), ``faces`` (the face
  preprocessing of the training images, :class:`distmtl.faces.FacePreprocessing`: ``mode``
  ``align`` / ``box`` / ``none``, ``size``, ``margin``, ``backend``, ``min_face_score``; predict
  applies it before the above), ``thresholds``
  (``{multilabel task: {label: threshold}}``: a label is predicted present when its probability
  is greater than the threshold), ``calibration`` (where each task's thresholds come from),
  ``data_summary`` (the training sources and their annotation counts), ``weights`` (file name and
  SHA-256), ``onnx`` (when exported), ``source_checkpoint`` and ``created``.

- ``model.onnx`` (``--onnx``): input ``image`` (float32 ``[batch, channels, size, size]``,
  preprocessed as above; the batch axis is dynamic) and, per task in task order: multiclass and
  multilabel tasks ``<task>_logits`` and ``<task>_probs`` (softmax / sigmoid of the logits),
  regression tasks ``<task>_values`` (already mapped into the task's range), and, when the model
  has an identity task, one ``embedding`` output (L2-normalised shared features). The same JSON
  config is stored in the ONNX file's metadata under ``distmtl_config``.

Thresholds are calibrated per label to maximise F1 (:func:`distmtl.evaluation.calibrate_thresholds`)
on validation data: the ``val`` CSV given to :func:`export_model`, else the experiment's
``data.val`` when it can still be read, else they are 0.5.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import distmtl
from distmtl.data.transforms import Preprocessing
from distmtl.errors import DistmtlError
from distmtl.faces.align import PREPARED_FACES_NAME, FacePreprocessing
from distmtl.io import atomic_write, atomic_write_text
from distmtl.models import MultiTaskNet, hub_architecture
from distmtl.tasks import Task

log = logging.getLogger(__name__)

FORMAT = "distmtl-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
ONNX_EXPORTERS = ("auto", "legacy", "dynamo")
DEFAULT_THRESHOLD = 0.5


# --------------------------------------------------------------------------- reading


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of a model folder."""
    path = Path(model_dir) / CONFIG_NAME
    if not Path(model_dir).is_dir():
        raise DistmtlError(f"{model_dir}: model folder not found")
    if not path.is_file():
        raise DistmtlError(f"{path}: not found (is {model_dir} a folder written by distmtl export?)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DistmtlError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DistmtlError(f"{path}: not a distmtl model config (no \"format\": \"{FORMAT}\")")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise DistmtlError(f"{path}: format_version {config['format_version']} is newer than this "
                           f"distmtl ({distmtl.__version__}) reads ({FORMAT_VERSION}); upgrade distmtl")
    for key in ("model", "tasks", "preprocessing", "thresholds"):
        if key not in config:
            raise DistmtlError(f"{path}: missing key '{key}'")
    return config


def tasks_from_config(config: Mapping[str, Any]) -> dict[str, Task]:
    return {name: Task.from_dict(name, spec) for name, spec in config["tasks"].items()}


def preprocessing_from_model_config(config: Mapping[str, Any]) -> Preprocessing:
    p = config["preprocessing"]
    return Preprocessing(size=int(p["size"]), channels=int(p["channels"]), mean=tuple(p["mean"]),
                         std=tuple(p["std"]), interpolation=p.get("interpolation", "bilinear"))


def build_net(config: Mapping[str, Any], tasks: Mapping[str, Task] | None = None) -> MultiTaskNet:
    """The (randomly initialised) network a model config describes; never downloads weights."""
    m = config["model"]
    backbone, kwargs = m["backbone"], dict(m.get("backbone_kwargs") or {})
    if m.get("timm_model"):  # a Hub backbone: its architecture was recorded at export
        backbone, kwargs = m["timm_model"]["name"], {**m["timm_model"].get("args", {}), **kwargs}
    return MultiTaskNet(tasks or tasks_from_config(config), backbone=backbone,
                        in_chans=int(m["in_chans"]), pretrained=False, head=m["head"],
                        hidden=int(m["hidden"]), drop_rate=float(m["drop_rate"]),
                        backbone_kwargs=kwargs, task_stages=int(m.get("task_stages") or 0))


def load_weights(net: nn.Module, model_dir: str | Path, expected_sha256: str | None = None) -> None:
    """Load ``model.safetensors`` into ``net`` (safetensors only: nothing is unpickled), after
    checking its SHA-256 against ``expected_sha256`` (the one ``config.json`` records) when given."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(model_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise DistmtlError(f"{path}: weights file not found")
    if expected_sha256:
        got = file_sha256(path)
        if got != expected_sha256:
            raise DistmtlError(f"{path}: SHA-256 {got[:16]}... differs from the {expected_sha256[:16]}... "
                               f"that {CONFIG_NAME} records: the weights were changed or replaced after "
                               f"export (export the model again)")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise DistmtlError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        what = (f"missing {sorted(missing)[:3]}" if missing else "") + \
               (f" unexpected {sorted(unexpected)[:3]}" if unexpected else "")
        raise DistmtlError(f"{path}: weights do not match the network in {CONFIG_NAME} ({what.strip()})")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise DistmtlError(f"{path}: weights do not match the network "
                           f"({' '.join(str(exc).split())[:200]})") from None


# --------------------------------------------------------------------------- writing


def training_faces(config: Mapping[str, Any]) -> FacePreprocessing:
    """The face preprocessing of a run's training images (``data.faces``).

    ``auto`` reads ``faces.json``, which ``distmtl data prepare`` writes beside its CSV, from the
    folder of every CSV training source: all of them must have the same one, or none (then the
    images are taken as face crops made some other way: mode ``none``).
    """
    spec = config["data"].get("faces", "auto")
    if isinstance(spec, Mapping):
        return FacePreprocessing.from_dict(dict(spec), "data.faces")
    if spec in (None, "none"):
        return FacePreprocessing(mode="none")
    found = {}
    for src in config["data"]["sources"]:
        csv = src.get("csv") if isinstance(src, Mapping) else src
        if csv is None:
            found[str(src.get("name", src.get("loader")))] = None
            continue
        path = Path(csv).parent / PREPARED_FACES_NAME
        found[str(csv)] = json.loads(path.read_text()) if path.is_file() else None
    kinds = {json.dumps(v, sort_keys=True) for v in found.values()}
    if len(kinds) > 1:
        listed = "; ".join(f"{k}: {v['mode'] if v else 'none'}" for k, v in found.items())
        raise DistmtlError(f"data.faces: auto, but the training sources were prepared differently ({listed}); "
                           "prepare them alike or set data.faces to the preprocessing predict should apply")
    only = next(iter(found.values()), None)
    return FacePreprocessing.from_dict(only, f"{PREPARED_FACES_NAME} of the training sources") if only \
        else FacePreprocessing(mode="none")


def model_config(module, thresholds: Mapping[str, Mapping[str, float]] | None = None,
                 calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON config of a trained :class:`distmtl.training.MultiTaskModule`."""
    config, m = module.config, module.config["model"]
    tasks = module.tasks
    pre = Preprocessing(size=config["data"]["image_size"], channels=config["data"]["channels"],
                        mean=tuple(config["data"]["mean"]), std=tuple(config["data"]["std"]),
                        interpolation=config["data"].get("interpolation") or "bilinear")
    thresholds = dict(thresholds or {})
    out_thresholds = {}
    for name, task in tasks.items():
        if task.kind == "multilabel":
            given = thresholds.get(name, {})
            out_thresholds[name] = {label: float(given.get(label, DEFAULT_THRESHOLD))
                                    for label in task.labels}
    import timm

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "distmtl_version": distmtl.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "timm_version": timm.__version__,
        "name": config.get("name"),
        "model": {"backbone": m["backbone"], "in_chans": int(config["data"]["channels"]),
                  "head": m["head"], "hidden": int(m["hidden"]), "drop_rate": float(m["drop_rate"]),
                  "backbone_kwargs": dict(m.get("backbone_kwargs") or {}),
                  **({"task_stages": int(m["task_stages"])} if m.get("task_stages") else {}),
                  **({"timm_model": arch} if (arch := hub_architecture(m["backbone"])) else {})},
        "tasks": {name: task.to_dict() for name, task in tasks.items()},
        "preprocessing": pre.to_dict(),
        "faces": training_faces(config).to_dict(),
        "thresholds": out_thresholds,
        "calibration": dict(calibration or {name: {"source": None, "note": "default 0.5"}
                                            for name in out_thresholds}),
        "data_summary": module.hparams.get("data_summary"),
    }


def calibrate(module, val, *, batch_size: int = 256, num_workers: int = 0
              ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Per-label F1-maximising thresholds of the multilabel tasks on validation data.

    ``val``: a CSV path in the generic format, or None for the experiment's ``data.val`` (used
    when it can still be read; otherwise every threshold stays 0.5, with a warning).
    """
    from torch.utils.data import DataLoader

    from distmtl.data.csvformat import encode, read_csv_source
    from distmtl.data.sources import SourceDataset
    from distmtl.data.transforms import eval_transform
    from distmtl.training.evaluate import collect_outputs
    from distmtl.evaluation.metrics import DEFAULT_THRESHOLD_GRID, calibrate_thresholds
    from distmtl.training.experiment import load_source, preprocessing_from_config

    multilabel = [t for t, task in module.tasks.items() if task.kind == "multilabel"]
    default = {t: {"source": None, "note": "default 0.5 (no validation data)"} for t in multilabel}
    if not multilabel:
        return {}, {}
    if val is not None:
        source = encode(read_csv_source(val, module.tasks), module.tasks)
        where = str(val)
    else:
        spec = module.config["data"].get("val")
        if spec is None:
            return {}, default
        where = spec if isinstance(spec, str) else spec.get("csv") or spec.get("loader") or \
            f"the validation part of {spec.get('from')}"
        try:
            source = load_source(spec, module.tasks, module.config, "data.val")
        except DistmtlError as exc:
            log.warning("thresholds stay at 0.5: the experiment's data.val cannot be read (%s)", exc)
            return {}, {t: {"source": None, "note": f"default 0.5 (data.val unreadable: {exc})"}
                        for t in multilabel}
    pre = preprocessing_from_config(module.config)
    loader = DataLoader(SourceDataset(source, eval_transform(pre), pre.channels),
                        batch_size=batch_size, num_workers=num_workers)
    collected = collect_outputs(module, loader)
    thresholds, info = {}, {}
    for t in multilabel:
        outputs, targets, masks = collected[t]
        if not masks.any():
            info[t] = {"source": None, "note": f"default 0.5 ({where} annotates none of its labels)"}
            continue
        values = calibrate_thresholds(torch.sigmoid(outputs), targets, masks)
        thresholds[t] = {label: round(float(v), 6) for label, v in zip(module.tasks[t].labels, values)}
        counts = masks.sum(dim=0).tolist()
        positives = ((targets > 0.5) & masks).sum(dim=0).tolist()
        info[t] = {"source": str(where), "metric": "f1", "rule": "prob > threshold",
                   "grid": list(DEFAULT_THRESHOLD_GRID),
                   "annotated": dict(zip(module.tasks[t].labels, map(int, counts))),
                   "positives": dict(zip(module.tasks[t].labels, map(int, positives)))}
    return thresholds, info


def export_model(checkpoint: str | Path, out_dir: str | Path, *, val: str | Path | None = None,
                 calibrate_thresholds: bool = True, onnx: bool = False, onnx_exporter: str = "auto",
                 opset: int | None = None, batch_size: int = 256, num_workers: int = 0) -> dict:
    """Write ``model.safetensors`` + ``config.json`` (+ ``model.onnx``); returns the config."""
    from distmtl.training.runner import load_module

    if onnx_exporter not in ONNX_EXPORTERS:
        raise DistmtlError(f"onnx exporter: unknown '{onnx_exporter}' ({', '.join(ONNX_EXPORTERS)})")
    module = load_module(checkpoint)
    thresholds, info = (calibrate(module, val, batch_size=batch_size, num_workers=num_workers)
                        if calibrate_thresholds else ({}, None))
    return save_model_folder(module, out_dir, thresholds, info or None, onnx=onnx, onnx_exporter=onnx_exporter,
                             opset=opset, source_checkpoint=str(Path(checkpoint).resolve()))


def save_model_folder(module, out_dir: str | Path, thresholds=None, calibration=None, *, onnx: bool = False,
                      onnx_exporter: str = "auto", opset: int | None = None,
                      source_checkpoint: str | None = None) -> dict:
    """Write a model folder from an in-memory ``MultiTaskModule``; the config comes last."""
    from safetensors.torch import save_file

    config = model_config(module, thresholds, calibration)
    final = Path(out_dir)
    if final.exists() and not final.is_dir():
        raise DistmtlError(f"{final}: exists and is not a folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    # everything goes to a temporary folder beside the target, renamed into place at the end: an
    # interrupted (re-)export leaves the previous folder whole, never new weights with an old config
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in module.net.state_dict().items()}
        weights = atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        config["weights"] = {"file": WEIGHTS_NAME, "sha256": file_sha256(weights)}
        config["source_checkpoint"] = source_checkpoint
        config["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if onnx:
            config["onnx"] = export_onnx(module.net.cpu().eval(), module.tasks, config, out / ONNX_NAME,
                                         exporter=onnx_exporter, opset=opset)
        atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        for name in (WEIGHTS_NAME, CONFIG_NAME, ONNX_NAME):  # temporary files are created 0600
            if (out / name).exists():
                os.chmod(out / name, 0o644)
        os.chmod(out, 0o755)
        replace_folder(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return config


EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, ONNX_NAME)


def replace_folder(new: Path, final: Path) -> None:
    """Put the finished folder ``new`` at ``final``. Files of an existing ``final`` that export does not
    write (a README the user keeps there) move into the new folder; the old folder is removed last."""
    if not final.exists():
        os.replace(new, final)
        return
    for entry in final.iterdir():
        if entry.name not in EXPORT_FILES and not (new / entry.name).exists():
            os.replace(entry, new / entry.name)
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.replace(final, old / final.name)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- ONNX


class OnnxOutputs(nn.Module):
    """The network with one named output per task (see the module docstring for the names)."""

    def __init__(self, net: MultiTaskNet, tasks: Mapping[str, Task]):
        super().__init__()
        self.net, self.tasks = net, dict(tasks)
        self.has_identity = any(t.kind == "identity" for t in self.tasks.values())

    @property
    def output_names(self) -> list[str]:
        names = []
        for name, task in self.tasks.items():
            if task.kind in ("multiclass", "multilabel"):
                names += [f"{name}_logits", f"{name}_probs"]
            elif task.kind == "regression":
                names.append(f"{name}_values")
        return names + (["embedding"] if self.has_identity else [])

    def forward(self, image: torch.Tensor):
        outputs, features = self.net(image)
        result = []
        for name, task in self.tasks.items():
            if task.kind == "multiclass":
                result += [outputs[name], torch.softmax(outputs[name], dim=1)]
            elif task.kind == "multilabel":
                result += [outputs[name], torch.sigmoid(outputs[name])]
            elif task.kind == "regression":
                result.append(outputs[name])
        if self.has_identity:
            result.append(torch.nn.functional.normalize(features, dim=1))
        return tuple(result)


def export_onnx(net: MultiTaskNet, tasks: Mapping[str, Task], config: Mapping[str, Any],
                path: str | Path, *, exporter: str = "auto", opset: int | None = None) -> dict:
    """Write ``path`` (dynamic batch axis), check it with onnxruntime when installed; returns info."""
    try:
        import onnx
    except ImportError:
        raise DistmtlError('--onnx needs the onnx packages: pip install "distmtl[onnx]"') from None
    wrapper = OnnxOutputs(net, tasks).eval()
    pre = config["preprocessing"]
    example = torch.randn(2, int(pre["channels"]), int(pre["size"]), int(pre["size"]))
    names = wrapper.output_names

    def write(tmp: str, use: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if use == "legacy":
                torch.onnx.export(wrapper, (example,), tmp, input_names=["image"], output_names=names,
                                  dynamic_axes={n: {0: "batch"} for n in ["image", *names]},
                                  opset_version=opset or 17, dynamo=False)
            else:
                batch = torch.export.Dim("batch", min=1)
                torch.onnx.export(wrapper, (example,), tmp, input_names=["image"], output_names=names,
                                  dynamic_shapes=({0: batch},), opset_version=opset or 18,
                                  dynamo=True, verbose=False, external_data=False)
        model = onnx.load(tmp)
        entry = model.metadata_props.add()
        entry.key, entry.value = "distmtl_config", json.dumps(
            {k: v for k, v in config.items() if k not in ("onnx", "data_summary")})
        onnx.save(model, tmp)

    # auto: the TorchScript exporter (fast, opset 17) while torch still has it, else torch.export's
    attempts = ["legacy", "dynamo"] if exporter == "auto" else [exporter]
    for i, use in enumerate(attempts):
        try:
            atomic_write(path, lambda tmp, use=use: write(tmp, use))
            break
        except Exception as exc:  # noqa: BLE001 - exporter failures are many and version-specific
            if i + 1 < len(attempts):
                log.info("%s ONNX exporter failed (%s); trying %s", use, exc, attempts[i + 1])
                continue
            raise DistmtlError(f"{path}: ONNX export ({use} exporter) failed: "
                               f"{' '.join(str(exc).split())[:300]}") from None
    info: dict[str, Any] = {"file": Path(path).name, "exporter": use, "input": "image",
                            "outputs": names, "dynamic_axes": {"batch": 0}}
    info["max_abs_diff_vs_torch"] = diff = check_onnx(wrapper, path, example)
    if diff is not None and diff > 1e-4:
        log.warning("%s: onnxruntime's outputs differ from PyTorch's by up to %.2g", path, diff)
    return info


def check_onnx(wrapper: OnnxOutputs, path: str | Path, example: torch.Tensor) -> float | None:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs (None: no onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = torch.cat([example, example[:1] * 0.5])  # another batch size than the traced one
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        want = wrapper(x)
    return max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want))

