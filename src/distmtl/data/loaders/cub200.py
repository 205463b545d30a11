"""CUB-200-2011: 11,788 bird images, 200 species, 312 binary attributes with annotator certainty.

Layout (``root`` is ``CUB_200_2011/`` or the folder the archive was unpacked in)::

    images.txt                  "<image_id> <path under images/>"
    image_class_labels.txt      "<image_id> <class_id 1..200>"
    train_test_split.txt        "<image_id> <1 train | 0 test>"
    classes.txt                 "<class_id> 001.Black_footed_Albatross"
    attributes/attributes.txt   "<attribute_id> has_bill_shape::curved_(up_or_down)" (some copies
                                keep it at the top level, the archive beside CUB_200_2011/)
    attributes/image_attribute_labels.txt
                                "<image_id> <attribute_id> <is_present> <certainty_id> <time>"
    attributes/certainties.txt  1 not visible, 2 guessing, 3 probably, 4 definitely
    attributes/class_attribute_labels_continuous.txt   200 rows x 312 percentages

Tasks: ``species`` (multiclass; class names are classes.txt's without the number prefix, e.g.
``Black_footed_Albatross``) and ``attributes`` (multilabel; the 312 names of attributes.txt). Both
label lists come from the files: see :func:`task_specs`.

The attribute file has a few malformed lines (extra fields); they are skipped and counted by
default (``skip_malformed_attributes``), leaving those (image, attribute) labels NaN. Certainty is
parsed (:func:`read_attribute_labels`); ``min_certainty`` masks labels given with less (e.g. 2
drops the "not visible" ones). :func:`relatedness` gives the class-attribute matrix (the
continuous percentages / 100).
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
    missing_files,
    report,
)
from distmtl.data.loaders.base import CheckReport, LoadedSource, require_file
from distmtl.errors import DistmtlError

NAME = "cub200"
DESCRIPTION = "CUB-200-2011: 11,788 bird images, 200 species, 312 attributes with certainty"
TASKS = {
    # The class and attribute names come from classes.txt / attributes.txt (task_specs(root)).
    "species": {"kind": "multiclass", "labels": None},
    "attributes": {"kind": "multilabel", "labels": None},
}
SPLITS = ("train", "test")
SPLIT_CODES = {"1": "train", "0": "test"}
CERTAINTIES = {1: "not visible", 2: "guessing", 3: "probably", 4: "definitely"}

ATTRIBUTE_LABELS = Path("attributes") / "image_attribute_labels.txt"
CLASS_ATTRIBUTES = Path("attributes") / "class_attribute_labels_continuous.txt"

PUBLISHED_COUNTS: dict[tuple[str, str], int | None] = {
    ("train", TOTAL): 5994,
    ("test", TOTAL): 5794,
    ("all", TOTAL): 11788,
    ("all", "species"): 200,
    ("all", "attributes"): 312,
}


def _base(root: Path) -> Path:
    """The folder holding images.txt: ``root`` itself or ``root/CUB_200_2011``."""
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        return root / "CUB_200_2011"
    return root


def _attribute_names_file(base: Path) -> Path:
    candidates = (base / "attributes" / "attributes.txt", base / "attributes.txt",
                  base.parent / "attributes.txt")
    for path in candidates:
        if path.is_file():
            return path
    raise DistmtlError(f"{NAME}: expected file not found: {candidates[0]} (nor {candidates[1]}, "
                       f"{candidates[2]}; is --root the dataset folder?)")


def _read_pairs(path: Path, malformed: Malformed) -> dict[int, str]:
    """``<id> <text>`` lines as {id: text}."""
    out: dict[int, str] = {}
    with open(require_file(path, NAME), encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            key, _, value = text.partition(" ")
            if not key.isdigit() or not value.strip():
                malformed(path, lineno, text, "expected '<id> <value>'")
                continue
            out[int(key)] = value.strip()
    return out


def _species_name(entry: str) -> str:
    number, dot, name = entry.partition(".")
    return name if dot and number.isdigit() and name else entry


def _names(base: Path, malformed: Malformed) -> tuple[list[str], list[str]]:
    classes = _read_pairs(base / "classes.txt", malformed)
    attributes = _read_pairs(_attribute_names_file(base), malformed)
    for what, table in (("classes.txt", classes), ("attributes.txt", attributes)):
        if sorted(table) != list(range(1, len(table) + 1)):
            raise DistmtlError(f"{NAME}: {what}: ids are not 1..{len(table)}")
    return ([_species_name(classes[k]) for k in sorted(classes)],
            [attributes[k] for k in sorted(attributes)])


def task_specs(root: str | os.PathLike) -> dict[str, dict]:
    """TASKS with the species and attribute names read from ``root``."""
    classes, attributes = _names(_base(absolute_root(root)), Malformed(NAME, skip=False))
    return {"species": {"kind": "multiclass", "labels": classes},
            "attributes": {"kind": "multilabel", "labels": attributes}}


def _lines(path: Path, wanted: set[int]) -> dict[int, str]:
    """The text of the lines numbered in ``wanted`` (for error messages)."""
    found: dict[int, str] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            if lineno in wanted:
                found[lineno] = line.strip()
                if len(found) == len(wanted):
                    break
    return found


def read_attribute_labels(path: str | os.PathLike, image_row: dict[int, int], n_attributes: int,
                          malformed: Malformed | None = None) -> tuple[np.ndarray, np.ndarray]:
    """is_present [images, attributes] (1.0 / 0.0, NaN where no valid line) and certainty_id
    (1-4, 0 where no valid line) from ``image_attribute_labels.txt``.

    ``image_row`` maps image ids to rows. Malformed lines (wrong field count, values out of range,
    unknown ids) go to ``malformed`` with their line number (default: skipped and counted).
    """
    path = Path(path)
    malformed = malformed if malformed is not None else Malformed(NAME, skip=True)
    present = np.full((len(image_row), n_attributes), np.nan, dtype=np.float32)
    certainty = np.zeros((len(image_row), n_attributes), dtype=np.int8)
    try:  # fast path: one row per line (blank lines kept so that row i is line i + 1)
        table = pd.read_csv(require_file(path, NAME), sep=" ", header=None, names=range(7),
                            dtype=np.float32, skip_blank_lines=False).to_numpy()
    except (ValueError, pd.errors.ParserError):  # a token that is not a number, or > 7 fields
        table = None
    if table is None:
        rows = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                try:
                    rows.append([float(f) for f in fields[:5]] + [np.nan] * (5 - len(fields[:5]))
                                + ([0.0, 0.0] if len(fields) > 5 else [np.nan, np.nan]))
                except ValueError:
                    rows.append([-1.0] * 5 + [np.nan, np.nan])
        table = np.array(rows, dtype=np.float32).reshape(len(rows), 7)
    id_to_row = np.full(max(image_row, default=0) + 2, -1, dtype=np.int64)
    id_to_row[list(image_row)] = list(image_row.values())
    values = np.nan_to_num(table[:, :5], nan=-1.0).astype(np.float64)
    ids = values[:, :4].astype(np.int64)
    blank = np.isnan(table).all(axis=1)
    good = (~np.isnan(table[:, :5]).any(axis=1) & np.isnan(table[:, 5:]).all(axis=1)
            & (values[:, :4] == ids).all(axis=1)
            & (ids[:, 0] >= 1) & (ids[:, 0] < len(id_to_row))
            & (ids[:, 1] >= 1) & (ids[:, 1] <= n_attributes)
            & np.isin(ids[:, 2], (0, 1)) & np.isin(ids[:, 3], list(CERTAINTIES)))
    good[good] &= id_to_row[ids[good, 0]] >= 0
    bad = np.flatnonzero(~good & ~blank)
    if len(bad):
        texts = _lines(path, set((bad[:100] + 1).tolist()))
        for i in bad:
            malformed(path, int(i) + 1, texts.get(int(i) + 1, "..."),
                      "expected '<image_id> <attribute_id> <0|1> <certainty 1-4> <time>'")
    rows, columns = id_to_row[ids[good, 0]], ids[good, 1] - 1
    present[rows, columns] = ids[good, 2]
    certainty[rows, columns] = ids[good, 3]
    return present, certainty


def _frame(root: Path, attributes: bool, min_certainty: int, malformed: Malformed,
           attribute_malformed: Malformed) -> pd.DataFrame:
    base = _base(root)
    images = _read_pairs(base / "images.txt", malformed)
    labels = _read_pairs(base / "image_class_labels.txt", malformed)
    splits = _read_pairs(base / "train_test_split.txt", malformed)
    classes, attribute_names = _names(base, malformed)
    ids = sorted(images)
    for what, table in (("image_class_labels.txt", labels), ("train_test_split.txt", splits)):
        absent = [i for i in ids if i not in table]
        if absent:
            raise DistmtlError(f"{NAME}: {base / what}: no line for image id {absent[0]}"
                               f"{f' (and {len(absent) - 1} more)' if len(absent) > 1 else ''}")
    species, split = [], []
    for i in ids:
        code, flag = labels[i], splits[i]
        if not code.isdigit() or not 1 <= int(code) <= len(classes):
            raise DistmtlError(f"{NAME}: {base / 'image_class_labels.txt'}: image {i}: class id "
                               f"{code!r} is not in 1..{len(classes)}")
        if flag not in SPLIT_CODES:
            raise DistmtlError(f"{NAME}: {base / 'train_test_split.txt'}: image {i}: "
                               f"{flag!r} is not 1 (train) or 0 (test)")
        species.append(classes[int(code) - 1])
        split.append(SPLIT_CODES[flag])
    prefix = os.path.join(base, "images", "")
    frame = pd.DataFrame({"image": [prefix + images[i] for i in ids], "species": species})
    if attributes:
        row = {image_id: k for k, image_id in enumerate(ids)}
        present, certainty = read_attribute_labels(base / ATTRIBUTE_LABELS, row,
                                                   len(attribute_names), attribute_malformed)
        present[certainty < min_certainty] = np.nan
        frame = pd.concat([frame, pd.DataFrame(present, columns=attribute_names)], axis=1)
    frame["split"] = split
    return frame


def load(
    root: str | os.PathLike,
    split: str = "train",
    *,
    attributes: bool = True,
    min_certainty: int = 1,
    skip_malformed: bool = False,
    skip_malformed_attributes: bool = True,
) -> LoadedSource:
    """CUB images of ``split`` ("train", "test" or "all") with species and 312 attribute labels.

    ``min_certainty`` (1-4): attribute labels given with a lower certainty are NaN.
    ``skip_malformed`` applies to the id lists, ``skip_malformed_attributes`` to the attribute file.
    """
    check_split(NAME, split, SPLITS)
    if min_certainty not in CERTAINTIES:
        raise DistmtlError(f"{NAME}: min_certainty must be 1-4 ({CERTAINTIES}), not {min_certainty!r}")
    malformed = Malformed(NAME, skip_malformed)
    attribute_malformed = Malformed(NAME, skip_malformed_attributes)
    frame = _frame(absolute_root(root), attributes, min_certainty, malformed, attribute_malformed)
    if split != "all":
        frame = frame[frame["split"] == split].reset_index(drop=True)
    notes = malformed.notes()
    if attribute_malformed.count:
        notes.append(f"{NAME}: skipped {attribute_malformed.count} malformed line(s) of "
                     f"{ATTRIBUTE_LABELS} (their labels are NaN); first: {attribute_malformed.first}")
    return LoadedSource(NAME, frame, skipped=malformed.count + attribute_malformed.count,
                        notes=notes)


def class_attribute_matrix(root: str | os.PathLike) -> tuple[np.ndarray, list[str], list[str]]:
    """class_attribute_labels_continuous.txt / 100 as [species, attributes], with the names."""
    base = _base(absolute_root(root))
    classes, attribute_names = _names(base, Malformed(NAME, skip=False))
    path = require_file(base / CLASS_ATTRIBUTES, NAME)
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                values = [float(v) for v in line.split()]
            except ValueError:
                values = []
            if len(values) != len(attribute_names) or not all(0 <= v <= 100.5 for v in values):
                raise DistmtlError(f"{NAME}: {path}, line {lineno}: expected {len(attribute_names)} "
                                   f"percentages in [0, 100]: {line.strip()[:60]!r}")
            rows.append(values)
    if len(rows) != len(classes):
        raise DistmtlError(f"{NAME}: {path}: {len(rows)} rows, expected one per class "
                           f"({len(classes)})")
    return np.clip(np.array(rows) / 100.0, 0.0, 1.0), classes, attribute_names


def relatedness(root: str | os.PathLike, **_options):
    """The species -> attribute relatedness R[k, j] = fraction of class k's images with j."""
    from distmtl.relatedness.table import Relatedness

    matrix, classes, attribute_names = class_attribute_matrix(root)
    source = _base(absolute_root(root)) / CLASS_ATTRIBUTES
    return Relatedness(matrix, classes, attribute_names, name="cub200_class_attributes",
                       source=str(source))


def check(root: str | os.PathLike) -> CheckReport:
    """Id lists, attribute labels and class-attribute matrix parse; images exist; split counts."""
    root = absolute_root(root)
    malformed = Malformed(NAME, skip=True)
    attribute_malformed = Malformed(NAME, skip=True)
    try:
        frame = _frame(root, True, 1, malformed, attribute_malformed)
        classes, attribute_names = _names(_base(root), malformed)
        class_attribute_matrix(root)
    except DistmtlError as exc:
        return report(NAME, root, [str(exc)])
    problems = [malformed.first] if malformed.first else []
    problems += missing_files(frame["image"])
    counts = {(s, TOTAL): (int((frame["split"] == s).sum()), PUBLISHED_COUNTS[(s, TOTAL)])
              for s in SPLITS}
    counts[("all", TOTAL)] = (len(frame), PUBLISHED_COUNTS[("all", TOTAL)])
    counts[("all", "species")] = (len(classes), PUBLISHED_COUNTS[("all", "species")])
    counts[("all", "attributes")] = (len(attribute_names), PUBLISHED_COUNTS[("all", "attributes")])
    counts[("all", "attribute lines skipped")] = (attribute_malformed.count, None)
    return report(NAME, root, problems, counts)
