"""CelebA: 40 binary face attributes and identities.

Layout (flat, as torchvision expects, or as distributed: ``Anno/`` for the attribute and identity
lists, ``Eval/`` for the partition, ``Img/`` for the image folders)::

    list_attr_celeba.txt      line 1: image count (202599); line 2: the 40 attribute names;
                              then "000001.jpg -1  1  1 -1 ..." (whitespace-aligned, -1 / 1)
    identity_CelebA.txt       "000001.jpg 2880"
    list_eval_partition.txt   "000001.jpg 0"   (0 train, 1 valid, 2 test)
    img_align_celeba/000001.jpg                (or ``image_dir="img_celeba"``, the in-the-wild set)

Attributes map -1 -> 0.0 and 1 -> 1.0 (as torchvision does), one float column per attribute named
as in the file; identities become the string column ``identity``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.loaders._common import (
    TOTAL,
    Malformed,
    absolute_root,
    check_split,
    first_existing,
    missing_files,
    report,
)
from distmtl.data.loaders.base import CheckReport, LoadedSource, require_file
from distmtl.errors import DistmtlError

NAME = "celeba"
DESCRIPTION = "CelebA: 202,599 celebrity faces, 40 binary attributes, 10,177 identities"
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
TASKS = {
    # The identities come from the data (10,177 in the full release).
    "identity": {"kind": "identity", "labels": None},
    "attributes": {"kind": "multilabel", "labels": list(ATTRIBUTES)},
}
SPLITS = ("train", "val", "test")

ATTR_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
PARTITION_FILE = "list_eval_partition.txt"
SUBDIRS = {ATTR_FILE: "Anno", IDENTITY_FILE: "Anno", PARTITION_FILE: "Eval"}
ATTR_VALUES = {"-1": 0.0, "1": 1.0}
PARTITION_TO_SPLIT = {"0": "train", "1": "val", "2": "test"}

PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("train", TOTAL): 162770,
    ("val", TOTAL): 19867,
    ("test", TOTAL): 19962,
    ("all", TOTAL): 202599,
    ("all", "(identities)"): 10177,
}


def _find(root: Path, name: str) -> Path:
    found = first_existing((root / name, root / SUBDIRS[name] / name))
    return found or require_file(root / name, NAME)


def _read_attributes(path: Path, malformed: Malformed):
    """(declared count, data lines, names, image names, [n, k] float32 values)."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if len(lines) < 2:
        raise DistmtlError(f"{NAME}: {path}: expected a count line and an attribute-name line")
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise DistmtlError(f"{NAME}: {path}, line 1: expected the image count, "
                           f"got {lines[0].strip()[:40]!r}") from None
    names = lines[1].split()
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown or len(set(names)) != len(names):
        raise DistmtlError(f"{NAME}: {path}, line 2: unknown or repeated attribute "
                           f"{(unknown or names)[0]!r}")
    images, values = [], []
    listed = 0
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        listed += 1
        if len(fields) != len(names) + 1:
            malformed(path, lineno, line, f"expected an image name and {len(names)} values")
            continue
        if not ATTR_VALUES.keys() >= set(fields[1:]):
            bad = next(v for v in fields[1:] if v not in ATTR_VALUES)
            malformed(path, lineno, bad, "attribute value is not -1 or 1")
            continue
        images.append(fields[0])
        values.append(fields[1:])
    text = np.asarray(values, dtype=str).reshape(len(values), len(names))
    array = np.full(text.shape, np.nan, dtype=np.float32)
    for native, value in ATTR_VALUES.items():
        array[text == native] = value
    return declared, listed, names, images, array


def _read_pairs(path: Path, valid, malformed: Malformed, what: str) -> dict[str, str]:
    """``<image> <value>`` lines -> {image: value}; ``valid(value)`` tells well-formed values."""
    out = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not valid(fields[1]):
                malformed(path, lineno, line.strip(), f"expected '<image> <{what}>'")
                continue
            out[fields[0]] = fields[1]
    return out


def _read(root: Path, image_dir: str, malformed: Malformed) -> tuple[pd.DataFrame, str | None]:
    """The frame over all splits, and a problem line when line 1's count disagrees."""
    attr_path, id_path, part_path = (_find(root, n) for n in (ATTR_FILE, IDENTITY_FILE,
                                                               PARTITION_FILE))
    declared, listed, names, images, values = _read_attributes(attr_path, malformed)
    identity = _read_pairs(id_path, str.isdigit, malformed, "identity")
    partition = _read_pairs(part_path, PARTITION_TO_SPLIT.__contains__, malformed, "0|1|2")
    folder = first_existing((root / image_dir, root / "Img" / image_dir)) or root / image_dir
    keep, splits = [], []
    for i, image in enumerate(images):
        if image not in partition:
            malformed(part_path, None, image, "no partition entry for this image")
            continue
        keep.append(i)
        splits.append(PARTITION_TO_SPLIT[partition[image]])
    frame = pd.DataFrame({
        "image": [os.path.join(folder, images[i]) for i in keep],
        "identity": pd.array([identity.get(images[i]) for i in keep], dtype="string"),
    })
    columns = pd.DataFrame(values[keep], columns=names)[[a for a in ATTRIBUTES if a in names]]
    frame = pd.concat([frame, columns], axis=1)
    frame["split"] = splits
    mismatch = None
    if declared != listed:
        mismatch = (f"{NAME}: {attr_path}, line 1 declares {declared} images "
                    f"but {listed} are listed")
    return frame, mismatch


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    image_dir: str = "img_align_celeba",
    skip_malformed: bool = False,
) -> LoadedSource:
    """CelebA; the official partition 0/1/2 gives splits train/val/test."""
    check_split(NAME, split, SPLITS)
    malformed = Malformed(NAME, skip_malformed)
    frame, mismatch = _read(absolute_root(root), image_dir, malformed)
    notes = malformed.notes() + ([mismatch] if mismatch else [])
    if split != "all":
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return LoadedSource(NAME, frame, skipped=malformed.count, notes=notes)


def check(root: str | os.PathLike) -> CheckReport:
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    try:
        frame, mismatch = _read(root, "img_align_celeba", malformed)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [p for p in (malformed.first, mismatch) if p]
    problems += missing_files(frame["image"])
    counts = {}
    for split in SPLITS:
        counts[(split, TOTAL)] = (int((frame["split"] == split).sum()),
                                  PUBLISHED_COUNTS[(split, TOTAL)])
    counts[("all", TOTAL)] = (len(frame), PUBLISHED_COUNTS[("all", TOTAL)])
    counts[("all", "(identities)")] = (int(frame["identity"].nunique()),
                                       PUBLISHED_COUNTS[("all", "(identities)")])
    for attribute in ATTRIBUTES:
        if attribute in frame.columns:
            counts[("all", f"{attribute} = 1")] = (int((frame[attribute] == 1).sum()), None)
    return report(NAME, root, problems, counts)
