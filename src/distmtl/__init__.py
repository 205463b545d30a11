"""distmtl: multi-task learning of classification tasks whose training data do not share annotations.

The public names are importable from here; the heavier ones (they import torch and Lightning) load
on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from distmtl.errors import DistmtlError  # noqa: E402
from distmtl.tasks import Task  # noqa: E402

_LAZY = {
    "Relatedness": "distmtl.relatedness.table",
    "load_config": "distmtl.config",
    "run_compare": "distmtl.study.compare",
    "train_from_config": "distmtl.training.runner",
    "Predictor": "distmtl.inference.predictor",
    "export_model": "distmtl.inference.export",
    "build_experiment": "distmtl.training.experiment",
    "train_experiment": "distmtl.training.runner",
    "evaluate_checkpoint": "distmtl.training.evaluate",
    "create_weighting": "distmtl.weighting",
    "MultiTaskNet": "distmtl.models",
}

__all__ = ["DistmtlError", "Task", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'distmtl' has no attribute {name!r}")
