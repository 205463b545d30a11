"""scikit-learn's handwritten digits (``sklearn.datasets.load_digits``): 1,797 8x8 grey images of
the digits 0-9, bundled with scikit-learn (no download, ``root`` is unused), with class-level
attributes.

Tasks: ``digit`` (multiclass, "0".."9") and ``attributes`` (multilabel): closed_loop, two_loops,
straight_strokes, horizontal_bar, odd, prime, defined per digit by the class-attribute table
``distmtl/relatedness/tables/digits_attributes.csv`` (p(attribute | digit): 1 / 0 where the
attribute follows from the digit, 0.5 or 0.9 where handwriting varies, e.g. a closed 4). As with
Fashion-MNIST, per-image attribute labels are drawn from the table (Bernoulli(p), then each label
flipped with probability ``noise``), seeded per (seed, split, image index). :func:`relatedness`
returns the table.

Splits (fixed, in the data's order): ``train`` images 0-1,199, ``val`` 1,200-1,499, ``test``
1,500-1,796. ``subset: [start, stop]`` and ``keep`` (``digit`` | ``attributes`` | ``both``) make
disjoint training sources exactly as in the Fashion-MNIST loader, e.g. a scarce digit source
``subset: [0, 100], keep: digit`` beside ``subset: [100, 1200], keep: attributes``. Images are
returned as an array scaled from 0..16 to 0..255.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders._common import TOTAL, report
from distmtl.data.loaders.base import CheckReport, LoadedSource
from distmtl.data.loaders.fashion_mnist import _subset, noisy_attributes, read_class_table
from distmtl.errors import DistmtlError

NAME = "digits"
NEEDS_ROOT = False  # bundled with scikit-learn
CLASSES = tuple(str(d) for d in range(10))
SPLITS = {"train": (0, 1200), "val": (1200, 1500), "test": (1500, 1797)}
KEEP = ("both", "digit", "attributes")


def _table_path(table: str | os.PathLike | None):
    if table is not None:
        return Path(table)
    return resources.files("distmtl.relatedness") / "tables" / "digits_attributes.csv"


def attribute_table(table: str | os.PathLike | None = None) -> tuple[np.ndarray, list[str]]:
    """The class-attribute table [10, A] (rows in digit order) and the attribute names."""
    return read_class_table(_table_path(table), CLASSES, NAME)


ATTRIBUTES = tuple(attribute_table()[1])
TASKS = {
    "digit": {"kind": "multiclass", "labels": list(CLASSES)},
    "attributes": {"kind": "multilabel", "labels": list(ATTRIBUTES)},
}
DESCRIPTION = (f"scikit-learn digits: 1,797 8x8 handwritten digits, 10 classes, "
               f"{len(ATTRIBUTES)} class-level attributes (simulated per image)")


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Images [1797, 8, 8] uint8 (0..255) and labels [1797]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, data.target.astype(np.int64)


def load(root: str | os.PathLike | None = None, split: str = "train", *, attributes: bool = True,
         seed: int = 0, noise: float = 0.05, table: str | os.PathLike | None = None, subset=None,
         keep: str = "both") -> LoadedSource:
    """Split ``split`` (train | val | test); ``subset`` indexes within the split."""
    if split not in SPLITS:
        raise DistmtlError(f"{NAME}: unknown split '{split}'; known: {', '.join(SPLITS)}")
    if keep not in KEEP:
        raise DistmtlError(f"{NAME}: keep must be one of {', '.join(KEEP)}, not {keep!r}")
    if keep == "attributes" and not attributes:
        raise DistmtlError(f"{NAME}: keep: attributes needs attributes: true")
    if not 0.0 <= float(noise) <= 0.5:
        raise DistmtlError(f"{NAME}: noise must be a flip probability in [0, 0.5], not {noise!r}")
    attributes = attributes and keep != "digit"
    images, labels = read_digits()
    lo, hi = SPLITS[split]
    images, labels = images[lo:hi], labels[lo:hi]
    matrix, names = attribute_table(table) if attributes else (None, [])
    # one stream per split, drawn for every image of the split in order
    values = (noisy_attributes(labels, matrix, seed=seed, split=list(SPLITS).index(split), noise=float(noise))
              if attributes else None)
    window = _subset(subset, split, NAME)
    start, stop = window if window is not None else (0, len(labels))
    stop = len(labels) if stop is None else stop
    if stop > len(labels):
        raise DistmtlError(f"{NAME}: subset [{start}, {stop}) reaches past the {len(labels)} images "
                           f"of split '{split}'")
    images, labels = images[start:stop], labels[start:stop]
    digits = [CLASSES[int(k)] for k in labels] if keep != "attributes" else [None] * len(labels)
    frame = pd.DataFrame({"image": np.arange(len(labels)), "digit": pd.Series(digits, dtype=object)})
    if attributes:
        frame = pd.concat([frame, pd.DataFrame(values[start:stop], columns=names)], axis=1)
    frame["split"] = split
    notes = [f"{NAME}: attribute labels simulated from the class-attribute table (seed {seed}, "
             f"flip probability {float(noise):g})"] if attributes else []
    return LoadedSource(NAME, frame, images=images, notes=notes)


def relatedness(root: str | os.PathLike | None = None, *, table: str | os.PathLike | None = None):
    """The digit -> attribute relatedness: the class-attribute table (``root`` is unused)."""
    from distmtl.relatedness.table import Relatedness

    matrix, names = attribute_table(table)
    return Relatedness(matrix, CLASSES, names, name="digits_attributes", source=str(_table_path(table)))


def check(root: str | os.PathLike | None = None) -> CheckReport:
    """The bundled data loads; counts per split and digit."""
    problems: list[str] = []
    counts: dict[tuple[str, str], tuple[int, int | None]] = {}
    try:
        _, labels = read_digits()
    except Exception as exc:  # noqa: BLE001 - a broken scikit-learn install
        problems.append(f"{NAME}: cannot load scikit-learn's digits: {exc}")
        labels = None
    if labels is not None:
        for split, (lo, hi) in SPLITS.items():
            found = np.bincount(labels[lo:hi], minlength=10)
            counts[(split, TOTAL)] = (hi - lo, hi - lo)
            for k, cls in enumerate(CLASSES):
                counts[(split, cls)] = (int(found[k]), None)
    return report(NAME, "scikit-learn (bundled)", problems, counts)
