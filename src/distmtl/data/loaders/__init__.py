"""Named dataset loaders: one module per dataset, registered here by name (imported lazily)."""

from __future__ import annotations

import importlib
from types import ModuleType

from distmtl.errors import DistmtlError, close_matches

REGISTRY: dict[str, str] = {
    "rafdb": "distmtl.data.loaders.rafdb",
    "affectnet": "distmtl.data.loaders.affectnet",
    "fer2013": "distmtl.data.loaders.fer2013",
    "ferplus": "distmtl.data.loaders.ferplus",
    "ckplus": "distmtl.data.loaders.ckplus",
    "disfa": "distmtl.data.loaders.disfa",
    "bp4d": "distmtl.data.loaders.bp4d",
    "emotionet": "distmtl.data.loaders.emotionet",
    "affwild2": "distmtl.data.loaders.affwild2",
    "celeba": "distmtl.data.loaders.celeba",
    "cub200": "distmtl.data.loaders.cub200",
    "fashion_mnist": "distmtl.data.loaders.fashion_mnist",
    "digits": "distmtl.data.loaders.digits",
}


def get_loader(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise DistmtlError(f"unknown dataset loader '{name}'{close_matches(name, REGISTRY)}; "
                           f"known: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])


def list_loaders() -> list[str]:
    return sorted(REGISTRY)
