"""Experiment configuration: one YAML file, defaults, ``key.path=value`` overrides, validation.

Everything is checked before any training starts; an error names the key (``data.batch_size``)
and, for unknown keys, the closest known ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from distmtl.config.checks import check_values
from distmtl.errors import DistmtlError, close_matches

ANY = object()  # a default that accepts any value
FREE = "__free__"  # a mapping whose keys are the user's (task names, options)

# A->B defaults to the Bernoulli KL form: with a detached target it is the one form whose minimum
# is p^B = q ("paper" and "bce" are linear in p^B; see losses/distribution_matching.py).
# A coupling term an edge names is on unless it says enabled: false (None: not said).
MATCHING_DEFAULTS = {"enabled": ANY, "weight": 0.1, "form": "kl", "stop_gradient": True,
                     "only_unlabelled": False}

DEFAULTS: dict[str, Any] = {
    "name": "experiment",
    "seed": 0,
    "tasks": {FREE: ANY},
    "data": {
        "sources": ANY,  # list of {name, csv | loader, root, split, options, rename, skip_bad_rows}
        "val": ANY,
        "test": ANY,
        "oracle": ANY,  # the training images with every label (for compare's oracle variant)
        # image_size, mean, std, interpolation: the backbone's pretrained config when pretrained
        # weights are used (model.pretrained or model.weights), else DATA_FALLBACK; the YAML wins
        "image_size": ANY,
        "channels": 3,
        "mean": ANY,
        "std": ANY,
        "interpolation": ANY,
        "sampling": ANY,  # equal | proportional | sqrt | [w, ...]
        "batch_size": 64,
        "eval_batch_size": 256,
        "epoch_batches": ANY,
        "num_workers": 2,
        "pin_memory": ANY,  # auto (default: on when training on an accelerator) | true | false
        "prefetch_factor": ANY,  # batches each worker loads ahead (torch's default 2); workers > 0 only
        "persistent_workers": True,  # training workers live across epochs
        "max_repeats": ANY,  # cap on passes over any one source in the run (per source too)
        "skip_bad_rows": False,
        "check_images": ANY,  # exists (default, also true) | decode | none (also false); per source too
        "cache_images": False,  # decode every image once into RAM (small datasets only)
        "augment_on": "auto",  # auto (follows the accelerator) | device | workers
        "faces": ANY,  # training images' face preprocessing: auto (when absent) | none | {mode, size, margin, ...}
        "augment": {"flip": True, "crop_scale": [0.85, 1.0], "rotation": 0.0, "color_jitter": 0.0},
    },
    "relatedness": ANY,  # list of edges, see EDGE_DEFAULTS
    "losses": {FREE: ANY},  # per task: label_smoothing, class_weight, pos_weight, loss (ccc|mse)
    "weighting": {"name": "initial", "options": {FREE: ANY},
                  "aggregator": ANY,  # name: jd only: a TorchJD aggregator (upgrad, mgda, pcgrad, ...)
                  "coupling": ANY},  # task (in its task's loss / jd row) | after (added to the total) | rows (jd)
    "model": {"backbone": "test_resnet", "pretrained": False, "weights": ANY, "channels_last": False,
              "compile": ANY, "head": "linear", "hidden": 256,
              "drop_rate": 0.0, "backbone_kwargs": {FREE: ANY}, "task_stages": 0},
    "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001, "schedule": "cosine",
              "warmup_steps": 50},
    # until: steps (train max_steps, the equal-budget mode) | plateau (stop when the monitored
    # validation score has not improved by min_delta for patience_steps; max_steps is the cap)
    "train": {"max_steps": 1000, "val_every_steps": 250, "monitor": "val/score", "mode": "max",
              "until": "steps", "patience_steps": 750, "min_delta": 0.002, "min_steps": 0,
              "early_stopping_patience": ANY, "checkpoint_every_steps": 500, "on_nan": "stop",
              "dm_ramp_steps": 0, "shield_heads": False, "coupling_schedule": "constant",
              "deterministic": ANY,  # unset: true on the CPU only
              "loggers": ["csv", "tensorboard"],  # csv always; also wandb, mlflow when installed
              "label_share": {FREE: ANY}},  # task -> share of each batch whose labels are used
    # any other Lightning Trainer argument is passed through (environment.check_trainer_argument)
    "trainer": {"accelerator": "auto", "devices": 1, "num_nodes": 1, "strategy": "auto",
                "precision": "32-true", "accumulate_grad_batches": 1, "log_every_n_steps": 10,
                "enable_progress_bar": True, "gradient_clip_val": ANY},
    "compare": {"variants": ["single", "mtl", "coann", "dm", "coann+dm", "oracle"], "seeds": 3,
                "single_task_batch": "matched"},  # matched | full: see study.single_task_batch
    "output": {"dir": ANY},
}

EDGE_DEFAULTS: dict[str, Any] = {
    "tasks": ANY,
    "table": ANY,  # builtin name, CSV path, or {estimate: source_name, alpha: 1}
    "eps": 0.05,
    "balance": True,  # coupling towards a task weighs a pseudo-labelled image as one labelled one (training/balance.py)
    "lift_scarce": False,  # DM towards a task with few, oversampled labelled images raised (training/balance.py)
    "coannotation": {"enabled": ANY, "variant": "soft", "weight": 1.0, "a_to_b": True,
                     "b_to_a": True, "temperature": 1.0, "threshold": 1.0, "hard_targets": "positive"},
    "dm_a_to_b": dict(MATCHING_DEFAULTS),
    "dm_b_to_a": dict(MATCHING_DEFAULTS, form="ce"),
}

DATA_FALLBACK = {"image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}

SOURCE_KEYS = {"name", "csv", "loader", "root", "split", "options", "rename", "skip_bad_rows",
               "check_images", "max_repeats", "shards"}


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DistmtlError(f"{path}: config file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "duplicate key" if isinstance(exc, DuplicateKeyError) else "YAML syntax error"
        raise DistmtlError(f"{path}:{where}: {kind}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DistmtlError(f"{path}: the config must be a mapping of keys, got {type(raw).__name__}")
    from distmtl.config.environment import paths_relative_to

    paths_relative_to(raw, path.parent)  # the file's own paths; overrides stay relative to the cwd
    for item in overrides or []:
        apply_override(raw, item)
    config = resolve(raw)
    config["_config_path"] = str(path)
    return config


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKeyError(
                    None, None, f"'{key}' is given twice (first on line {seen[key] + 1}); "
                    "YAML would silently keep only the last", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def apply_override(raw: dict, item: str) -> None:
    """Apply ``a.b.c=value``; the value is parsed as YAML (numbers, booleans, lists)."""
    if "=" not in item:
        raise DistmtlError(f"override '{item}': expected key.path=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise DistmtlError(f"override '{key}': '{part}' is not a mapping")
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    else:
        node[last] = value


def resolve(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``raw`` into the defaults, checking every key and type."""
    config = _merge(DEFAULTS, raw, "")
    edges = config.get("relatedness") or []
    if not isinstance(edges, list):
        raise DistmtlError("relatedness: expected a list of edges")
    config["relatedness"] = [_resolve_terms(e, _merge(EDGE_DEFAULTS, e, f"relatedness[{i}]"), f"relatedness[{i}]")
                             for i, e in enumerate(edges)]
    sources = config["data"]["sources"]
    if not isinstance(sources, list) or not sources:
        raise DistmtlError("data.sources: expected a non-empty list of sources")
    for i, src in enumerate(sources):
        _check_source(src, f"data.sources[{i}]")
    for key in ("val", "test", "oracle"):
        spec = config["data"][key]
        if key == "val" and isinstance(spec, dict) and "from" in spec:
            from distmtl.data.splits import check_carve_spec

            check_carve_spec(spec, "data.val")
        elif spec is not None:
            _check_source(spec, f"data.{key}")
    from distmtl.data.csvformat import image_check_mode

    config["data"]["check_images"] = image_check_mode(config["data"]["check_images"], "data.check_images")
    if config["data"]["faces"] is None:
        config["data"]["faces"] = "auto"
    _check_faces(config["data"]["faces"])
    resolve_data_config(config)
    _check_loader_options(config["data"])
    if not isinstance(config["tasks"], dict) or not config["tasks"]:
        raise DistmtlError("tasks: expected a mapping of task name -> {kind, labels}")
    check_values(config)
    return config


def plateau_patience(train: dict) -> int:
    """``train.patience_steps`` as a number of validation checks (at least 1)."""
    every = min(int(train["val_every_steps"]), int(train["max_steps"]))
    return max(1, -(-int(train["patience_steps"]) // every))


def early_plateau_warning(config: dict) -> str | None:
    """A warning when ``until: plateau`` may stop on a temporary plateau: under the cosine schedule
    the learning rate is still above half its peak before half of ``max_steps``, and on SynthFACS a
    plateau counted from there stopped +both 0.06 macro-F1 short of its end-of-schedule score."""
    t, o = config["train"], config["optim"]
    if t["until"] != "plateau" or o["schedule"] != "cosine":
        return None
    start = int(t["min_steps"] or 0)
    if start >= int(t["max_steps"]) // 2:
        return None
    return (f"train.min_steps: {start}: the plateau is counted while the cosine learning rate is still "
            f"above half its peak (before step {int(t['max_steps']) // 2} of train.max_steps "
            f"{t['max_steps']}); a plateau found there is often temporary. Count it from later in the "
            f"schedule (e.g. train.min_steps={3 * int(t['max_steps']) // 4}) or use optim.schedule: constant")


def _check_faces(spec: Any) -> None:
    if isinstance(spec, str) and spec in ("auto", "none"):
        return
    if not isinstance(spec, dict):
        raise DistmtlError(f"data.faces: expected auto, none or a mapping {{mode, size, margin, backend, "
                           f"min_face_score}}, got {spec!r}")
    from distmtl.faces.align import FacePreprocessing

    FacePreprocessing.from_dict(spec, "data.faces")


def resolve_data_config(config: dict[str, Any]) -> None:
    """Fill ``data.image_size / mean / std / interpolation`` the YAML leaves unset.

    With pretrained weights (``model.pretrained`` or ``model.weights``) they come from the backbone's
    pretrained config (:func:`timm.data.resolve_data_config`), so the inputs are normalised as the
    weights were trained; otherwise from ``DATA_FALLBACK``. ``config['_data_from_backbone']`` lists
    the keys taken from the backbone."""
    data, model = config["data"], config["model"]
    unset = [k for k in DATA_FALLBACK if data.get(k) is None]
    config["_data_from_backbone"] = []
    values = DATA_FALLBACK
    if unset and (model["pretrained"] or model["weights"] is not None):
        from distmtl.models import backbone_data_config

        values = {**DATA_FALLBACK, **backbone_data_config(model["backbone"])}
        config["_data_from_backbone"] = unset
    for key in unset:
        data[key] = copy.deepcopy(values[key])
    if isinstance(data["image_size"], bool) or not isinstance(data["image_size"], int) or data["image_size"] < 1:
        raise DistmtlError(f"data.image_size: expected a positive integer, got {data['image_size']!r}")
    for key in ("mean", "std"):
        if not isinstance(data[key], list) or not data[key] or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data[key]):
            raise DistmtlError(f"data.{key}: expected a list of numbers, got {data[key]!r}")
    from distmtl.data.transforms import INTERPOLATIONS

    if data["interpolation"] not in INTERPOLATIONS:
        raise DistmtlError(f"data.interpolation: unknown mode '{data['interpolation']}'"
                           f"{close_matches(str(data['interpolation']), INTERPOLATIONS)}")


COUPLING_TERMS = ("coannotation", "dm_a_to_b", "dm_b_to_a")


def _resolve_terms(given: Any, edge: dict[str, Any], where: str) -> dict[str, Any]:
    """``enabled`` of each coupling term: as given, else on exactly when the edge names the term."""
    for term in COUPLING_TERMS:
        flag = edge[term]["enabled"]
        if flag is None:
            edge[term]["enabled"] = isinstance(given, Mapping) and isinstance(given.get(term), Mapping)
        elif not isinstance(flag, bool):
            raise DistmtlError(f"{where}.{term}.enabled: expected true or false, got {flag!r}")
    return edge


def _check_source(src: Any, where: str) -> None:
    if isinstance(src, str):
        return
    if not isinstance(src, dict):
        raise DistmtlError(f"{where}: expected a mapping with 'csv', 'loader' or 'shards'")
    for key in src:
        if key not in SOURCE_KEYS:
            raise DistmtlError(f"{where}.{key}: unknown key{close_matches(key, SOURCE_KEYS)}")
    forms = [k for k in ("csv", "loader", "shards") if k in src]
    if len(forms) != 1:
        raise DistmtlError(f"{where}: give exactly one of 'csv', 'loader' or 'shards'"
                           + (f" (got {', '.join(forms)})" if forms else ""))
    if "max_repeats" in src:
        _check_max_repeats(src["max_repeats"], f"{where}.max_repeats")
    if "check_images" in src:
        from distmtl.data.csvformat import image_check_mode

        image_check_mode(src["check_images"], f"{where}.check_images")


def _check_loader_options(data: dict) -> None:
    pin = data["pin_memory"]
    if pin is None or (isinstance(pin, str) and pin.strip().lower() == "auto"):
        data["pin_memory"] = "auto"
    elif not isinstance(pin, bool):
        raise DistmtlError(f"data.pin_memory: expected auto, true or false, got {pin!r}")
    prefetch = data["prefetch_factor"]
    if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1):
        raise DistmtlError(f"data.prefetch_factor: expected a positive integer (or null), got {prefetch!r}")
    if data["num_workers"] is not None and (data["num_workers"] < 0):
        raise DistmtlError(f"data.num_workers: expected 0 or more, got {data['num_workers']!r}")
    _check_max_repeats(data["max_repeats"], "data.max_repeats")
    from distmtl.data.augment import AUGMENT_ON

    where = str(data["augment_on"]).strip().lower()
    if where not in AUGMENT_ON:
        raise DistmtlError(f"data.augment_on: expected one of {', '.join(AUGMENT_ON)}, got {data['augment_on']!r}"
                           f"{close_matches(where, AUGMENT_ON)}")
    data["augment_on"] = where


def _check_max_repeats(value: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DistmtlError(f"{where}: expected a positive number of passes over the source (or null), "
                           f"got {value!r}")


def _merge(defaults: Mapping[str, Any], given: Any, prefix: str) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise DistmtlError(f"{prefix or 'config'}: expected a mapping, got {given!r}")
    if FREE in defaults:
        return copy.deepcopy(dict(given))
    out = materialise(defaults)
    for key, value in given.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key.startswith("_"):
            out[key] = value
            continue
        if key not in defaults and prefix == "trainer":
            from distmtl.config.environment import check_trainer_argument

            check_trainer_argument(str(key))
            out[key] = value
            continue
        if key not in defaults:
            raise DistmtlError(f"{path}: unknown config key{close_matches(key, defaults)}")
        default = defaults[key]
        if isinstance(default, dict):
            out[key] = _merge(default, value, path)
        else:
            out[key] = _check_type(default, value, path)
    return out


def materialise(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The plain defaults: ANY becomes None, free mappings become empty."""
    if FREE in defaults:
        return {}
    return {k: materialise(v) if isinstance(v, dict) else (None if v is ANY else copy.deepcopy(v))
            for k, v in defaults.items()}


def _check_type(default: Any, value: Any, path: str) -> Any:
    if default is ANY or default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise DistmtlError(f"{path}: expected true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise DistmtlError(f"{path}: expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DistmtlError(f"{path}: expected a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise DistmtlError(f"{path}: expected a string, got {value!r}")
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise DistmtlError(f"{path}: expected a list, got {value!r}")
    return value


def dump_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved config (atomically) next to the checkpoints."""
    from distmtl.io import atomic_write_text

    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    atomic_write_text(path, yaml.safe_dump(clean, sort_keys=False))
