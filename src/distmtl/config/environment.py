"""Parts of config handling that look outside the YAML: file-relative paths, Lightning's Trainer
arguments, the loggers. Kept apart from ``loading.py`` (same package) so that each stays small."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

from distmtl.errors import DistmtlError, close_matches

# Trainer arguments distmtl sets itself, and the key that controls each (None: not configurable).
RESERVED_TRAINER_ARGS = {
    "max_steps": "train.max_steps", "max_epochs": "train.max_steps", "min_steps": "train.max_steps",
    "val_check_interval": "train.val_every_steps", "check_val_every_n_epoch": "train.val_every_steps",
    "deterministic": "train.deterministic", "logger": "train.loggers", "callbacks": None,
    "default_root_dir": "output.dir (or --out)", "plugins": None, "num_sanity_val_steps": None,
    "use_distributed_sampler": None, "enable_checkpointing": "train.checkpoint_every_steps",
}
LOGGERS = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name: module


def _absolute(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def _source_paths(spec: Any, base: Path) -> Any:
    if isinstance(spec, str):
        return _absolute(spec, base)
    if isinstance(spec, dict):
        return {k: _absolute(v, base) if k in ("csv", "root", "shards") else v for k, v in spec.items()}
    return spec


def _looks_like_file(table: str) -> bool:
    return table.endswith(".csv") or "/" in table or os.sep in table


def paths_relative_to(raw: dict, base: Path) -> dict:
    """Make the paths a config file gives absolute, relative to the file's folder ``base``.

    ``data.sources[].csv`` / ``root`` / ``shards``, ``data.val`` / ``test`` / ``oracle``, a relatedness table that
    is a file (``*.csv``) and its ``root``, ``model.weights`` and ``output.dir``. Loader ``options``
    are passed to the loader as given. Overrides applied afterwards stay relative to the current
    directory."""
    base = Path(base).resolve()
    data = raw.get("data")
    if isinstance(data, dict):
        if isinstance(data.get("sources"), list):
            data["sources"] = [_source_paths(s, base) for s in data["sources"]]
        for key in ("val", "test", "oracle"):
            if key in data:
                data[key] = _source_paths(data[key], base)
    edges = raw.get("relatedness")
    for edge in edges if isinstance(edges, list) else []:
        if not isinstance(edge, dict):
            continue
        table = edge.get("table")
        if isinstance(table, str) and _looks_like_file(table):
            edge["table"] = _absolute(table, base)
        elif isinstance(table, dict) and "root" in table:
            edge["table"] = dict(table, root=_absolute(table["root"], base))
    for section, key in (("model", "weights"), ("output", "dir")):
        node = raw.get(section)
        if isinstance(node, dict) and key in node:
            node[key] = _absolute(node[key], base)
    return raw


@functools.lru_cache(maxsize=1)
def trainer_parameters() -> tuple[str, ...]:
    import inspect

    from lightning.pytorch import Trainer

    return tuple(p for p in inspect.signature(Trainer.__init__).parameters if p != "self")


def check_trainer_argument(key: str) -> None:
    """A ``trainer.<key>`` outside the defaults must be a Lightning ``Trainer`` argument distmtl
    does not set itself; the error suggests the closest argument names."""
    if key in RESERVED_TRAINER_ARGS:
        where = RESERVED_TRAINER_ARGS[key]
        raise DistmtlError(f"trainer.{key}: set by distmtl" + (f" from {where}; set that instead" if where else ""))
    known = trainer_parameters()
    if key not in known:
        raise DistmtlError(f"trainer.{key}: not an argument of Lightning's Trainer"
                           f"{close_matches(key, [k for k in known if k not in RESERVED_TRAINER_ARGS])}")


def logger_specs(value: Any) -> list[tuple[str, dict]]:
    """``train.loggers`` as ``[(name, options)]``; ``csv`` is always first (the curves read it).

    Each entry is a name (``tensorboard``) or a mapping with ``name`` and the logger's keyword
    arguments (``{name: wandb, project: faces}``). A logger whose package is missing is an error."""
    if value is None:
        value = []
    if not isinstance(value, list):
        raise DistmtlError(f"train.loggers: expected a list such as [csv, tensorboard], got {value!r}")
    specs: list[tuple[str, dict]] = []
    for i, entry in enumerate(value):
        options = dict(entry) if isinstance(entry, dict) else {}
        name = options.pop("name", None) if isinstance(entry, dict) else entry
        if name not in LOGGERS:
            raise DistmtlError(f"train.loggers[{i}]: unknown logger {name!r}"
                               f"{close_matches(str(name), LOGGERS)}; known: {', '.join(LOGGERS)}")
        module = LOGGERS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise DistmtlError(f"train.loggers[{i}]: {name} is not installed (pip install {module})")
        if any(n == name for n, _ in specs):
            raise DistmtlError(f"train.loggers[{i}]: {name} is listed twice")
        specs.append((name, options))
    if not any(n == "csv" for n, _ in specs):
        specs.insert(0, ("csv", {}))
    return specs
