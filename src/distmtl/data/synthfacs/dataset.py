"""Writing SynthFACS to disk: PNG images plus CSVs in the generic format.

Layout of ``out_dir`` (``generate`` returns these paths by key):

- ``images/<split>/<index>.png`` for the splits ``expr_train``, ``au_train``, ``va_train``
  (three disjoint training sources), ``val``, ``test`` and, when requested, ``compound_test``;
- ``expr_train.csv`` (expression only), ``au_train.csv`` (AUs only), ``va_train.csv`` (valence
  and arousal only): one row per image, the columns ``image`` (relative to the CSV),
  ``expression`` (class name), ``AU01`` ... ``AU26`` (1/0), ``valence``, ``arousal``, then
  ``identity``, ``subject`` (= identity), ``glasses``, ``beard`` (1/0), ``split`` (``train``,
  ``val``, ``test``) and ``source`` (the image folder); a label a source does not annotate is an
  empty cell;
- ``train_all.csv``: the union of the three training sources with every label (the oracle);
  ``oracle_expr_au.csv``, ``oracle_expr_va.csv``, ``oracle_au_va.csv``: the same for two of the
  sources (the oracle of a two-task study: the same images as its two sources);
- ``val.csv``, ``test.csv``, ``compound_test.csv``: every label (compound class names in the
  ``expression`` column of the latter); ``compound_test_11.csv``: the rows of ``compound_test.csv``
  in RAF-DB's 11 compound classes (no Fearfully disgusted, no Awed), the RAF-DB compound protocol's
  view (written when the compound table has those classes);
- ``au_intensity.csv``: the AU intensities (0 = inactive) of every image;
- ``generator_table.csv`` / ``compound_generator_table.csv``: p(AU | class) used to draw the labels
  (relatedness-CSV layout); ``contact_sheet.png``; ``synthfacs.json`` (the manifest).

Identities ``0 .. n_train_ids - 1`` are used for training, the rest (``heldout_fraction``) for
val, test and compound_test, so no test identity is seen in training. Every image is a pure
function of ``(seed, split, index)``: the bytes do not depend on order or on ``workers``.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from distmtl.data.synthfacs.contact_sheet import contact_sheet
from distmtl.data.synthfacs.faces import make_identity, split_identities
from distmtl.data.synthfacs.generator import (
    COMPOUND_GENERATOR_TABLE, GENERATOR_TABLE, INTENSITY_RANGE, PERTURBATION_SEED, VA_NOISE,
    ExpressionTable, sample_labels)
from distmtl.data.synthfacs.render import DEFAULT_SUPERSAMPLE, render_face, sample_nuisance
from distmtl.errors import DistmtlError
from distmtl.tasks import AUS_17, RAFDB_COMPOUND_11

SYNTHFACS_VERSION = "1.0"
SPLIT_CODES = {"expr_train": 1, "au_train": 2, "va_train": 3, "val": 4, "test": 5,
               "compound_test": 6}
TRAIN_SPLITS = ("expr_train", "au_train", "va_train")
COLUMNS = ("image", "expression") + AUS_17 + (
    "valence", "arousal", "identity", "subject", "glasses", "beard", "split", "source")
# which label groups each training source keeps
_KEEP = {"expr_train": ("expression",), "au_train": ("au",), "va_train": ("va",)}

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_expr=120, n_au=120, n_va=60, n_val=60, n_test=60, n_compound=26,
                 n_identities=40),
    "demo": dict(n_expr=3000, n_au=3000, n_va=1000, n_val=1000, n_test=1000, n_compound=1300,
                 n_identities=300),
    "full": dict(n_expr=20000, n_au=20000, n_va=10000, n_val=5000, n_test=5000,
                 n_compound=6500, n_identities=1000),
}
_CHUNK = 64
_OUTPUT_FILES = tuple(f"{s}.csv" for s in SPLIT_CODES) + (
    "train_all.csv", "compound_test_11.csv", "oracle_expr_au.csv", "oracle_expr_va.csv", "oracle_au_va.csv",
    "au_intensity.csv", "generator_table.csv", "compound_generator_table.csv",
    "contact_sheet.png")


@dataclass(frozen=True)
class _Context:
    out_dir: str
    seed: int
    size: int
    nuisance: float
    train_ids: tuple[int, int]  # [start, stop)
    heldout_ids: tuple[int, int]
    supersample: int = DEFAULT_SUPERSAMPLE
    compound: ExpressionTable = COMPOUND_GENERATOR_TABLE


def sample_image(seed: int, split: str, index: int, *, size: int = 64, nuisance: float = 1.0,
                 identities: tuple[int, int] = (0, 240),
                 table: ExpressionTable = GENERATOR_TABLE,
                 supersample: int = DEFAULT_SUPERSAMPLE) -> tuple[np.ndarray, dict]:
    """Draw and render image ``index`` of ``split``: (uint8 [size, size, 3], its labels).

    ``identities`` is the [start, stop) range of identity indices the image draws from (the
    default is the demo preset's training identities). One generator seeded with
    ``(seed, split code, index)`` draws, in this order, the identity, the labels and the
    nuisance, so an image does not depend on any other.
    """
    rng = np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])
    ident_index = int(identities[0] + rng.integers(0, identities[1] - identities[0]))
    labels = sample_labels(rng, 1, table)
    nuis = sample_nuisance(rng, nuisance)
    ident = make_identity(seed, ident_index)
    image = render_face(ident, labels.intensity[0], nuis, size=size, supersample=supersample)
    record = {
        "expression": table.classes[int(labels.expression[0])],
        "active": labels.active[0].astype(int).tolist(),
        "intensity": labels.intensity[0].tolist(),
        "va": labels.va[0].tolist(),
        "identity": ident.name,
        "glasses": int(ident.glasses),
        "beard": int(ident.beard),
    }
    return image, record


_CTX: _Context | None = None


def _init_worker(ctx: _Context) -> None:
    global _CTX
    _CTX = ctx


def _render_chunk(job: tuple[str, int, int]) -> list[dict]:
    split, start, stop = job
    ctx = _CTX
    table = ctx.compound if split == "compound_test" else GENERATOR_TABLE
    ids = ctx.train_ids if split in TRAIN_SPLITS else ctx.heldout_ids
    folder = Path(ctx.out_dir) / "images" / split
    records = []
    for index in range(start, stop):
        image, record = sample_image(ctx.seed, split, index, size=ctx.size, nuisance=ctx.nuisance,
                                     identities=ids, table=table, supersample=ctx.supersample)
        name = f"{index:06d}.png"
        Image.fromarray(image).save(folder / name, format="PNG", compress_level=1)
        record["image"] = f"images/{split}/{name}"
        record["source"] = split
        records.append(record)
    return records


def _row(record: dict, keep: tuple[str, ...] = ("expression", "au", "va")) -> list:
    split = "train" if record["source"] in TRAIN_SPLITS else record["source"].replace(
        "compound_", "")
    aus = record["active"] if "au" in keep else [""] * len(AUS_17)
    va = [f"{v:.4f}" for v in record["va"]] if "va" in keep else ["", ""]
    return ([record["image"], record["expression"] if "expression" in keep else ""] + aus + va
            + [record["identity"], record["identity"], record["glasses"], record["beard"], split,
               record["source"]])


def _write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _check_args(counts: dict[str, int], size: int, n_identities: int, nuisance: float,
                workers: int, heldout_fraction: float) -> None:
    for key, value in counts.items():
        if int(value) != value or value < 0:
            raise DistmtlError(f"synthfacs: {key} must be a non-negative integer, got {value}")
    if int(size) < 16:
        raise DistmtlError(f"synthfacs: size must be at least 16 pixels, got {size}")
    if int(n_identities) < 2:
        raise DistmtlError(f"synthfacs: n_identities must be at least 2 (training and held-out "
                           f"identities are disjoint), got {n_identities}")
    if not 0.0 < heldout_fraction < 1.0:
        raise DistmtlError(
            f"synthfacs: heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    if nuisance < 0:
        raise DistmtlError(f"synthfacs: nuisance must be >= 0, got {nuisance}")
    if int(workers) < 1:
        raise DistmtlError(f"synthfacs: workers must be >= 1, got {workers}")


def _prepare(out: Path, splits) -> None:
    if out.exists() and not out.is_dir():
        raise DistmtlError(f"synthfacs: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "synthfacs.json").is_file():
        raise DistmtlError(f"synthfacs: {out} is not empty and holds no SynthFACS dataset; "
                           f"choose an empty or new directory")
    # a re-generation replaces everything an older one wrote (the manifest last)
    for split in SPLIT_CODES:
        folder = out / "images" / split
        if folder.is_dir():
            shutil.rmtree(folder)
    for name in _OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    for split in splits:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)


def generate(out_dir, *, n_expr: int = 3000, n_au: int = 3000, n_va: int = 1000,
             n_val: int = 1000, n_test: int = 1000, n_compound: int = 1300, seed: int = 0,
             size: int = 64, n_identities: int = 300, nuisance: float = 1.0,
             heldout_fraction: float = 0.2, workers: int = 1, progress: bool = True,
             supersample: int = DEFAULT_SUPERSAMPLE,
             compound_table=None) -> dict[str, Path]:
    """Write a SynthFACS dataset to ``out_dir``; returns the written paths by key.

    The defaults are the ``demo`` preset; ``generate(out, **PRESETS["tiny"], seed=1)`` writes
    another preset. ``nuisance`` scales every imaging nuisance (0 = clean, centred faces).
    ``compound_table`` (an ``ExpressionTable`` or a ``(class names, K x 17 matrix)`` pair)
    replaces the Du et al. compound table the ``compound_test`` split is drawn from.
    """
    counts = {"expr_train": n_expr, "au_train": n_au, "va_train": n_va, "val": n_val,
              "test": n_test, "compound_test": n_compound}
    _check_args({f"n_{k}": v for k, v in counts.items()}, size, n_identities, nuisance,
                workers, heldout_fraction)
    counts = {k: int(v) for k, v in counts.items()}
    if compound_table is None:
        compound_table = COMPOUND_GENERATOR_TABLE
    elif not isinstance(compound_table, ExpressionTable):
        classes, probs = compound_table
        compound_table = ExpressionTable.from_matrix(classes, probs)
    train_ids, heldout_ids = split_identities(n_identities, heldout_fraction)
    ctx = _Context(str(Path(out_dir)), int(seed), int(size), float(nuisance),
                   (train_ids.start, train_ids.stop), (heldout_ids.start, heldout_ids.stop),
                   int(supersample), compound_table)
    out = Path(out_dir)
    splits = [s for s, n in counts.items() if n > 0]
    _prepare(out, splits)

    jobs = [(s, a, min(a + _CHUNK, counts[s])) for s in splits for a in range(0, counts[s], _CHUNK)]
    records: dict[str, list[dict]] = {s: [] for s in splits}
    from tqdm import tqdm

    bar = tqdm(total=sum(counts.values()), desc="SynthFACS", unit="img", disable=not progress)
    try:
        if int(workers) == 1:
            _init_worker(ctx)
            results = map(_render_chunk, jobs)
            for job, chunk in zip(jobs, results):
                records[job[0]].extend(chunk)
                bar.update(len(chunk))
        else:
            mp = multiprocessing.get_context("spawn")
            with mp.Pool(int(workers), initializer=_init_worker, initargs=(ctx,)) as pool:
                for job, chunk in zip(jobs, pool.imap(_render_chunk, jobs)):
                    records[job[0]].extend(chunk)
                    bar.update(len(chunk))
    finally:
        bar.close()

    paths: dict[str, Path] = {}
    for split in TRAIN_SPLITS:
        paths[split] = _write_csv(out / f"{split}.csv", COLUMNS,
                                  (_row(r, _KEEP[split]) for r in records.get(split, [])))
    paths["train_all"] = _write_csv(out / "train_all.csv", COLUMNS,
                                    (_row(r) for s in TRAIN_SPLITS for r in records.get(s, [])))
    for pair in (("expr", "au"), ("expr", "va"), ("au", "va")):
        name = "oracle_" + "_".join(pair)
        paths[name] = _write_csv(out / f"{name}.csv", COLUMNS, (
            _row(r) for s in pair for r in records.get(f"{s}_train", [])))
    for split in ("val", "test", "compound_test"):
        if split == "compound_test" and not counts[split]:
            continue
        paths[split] = _write_csv(out / f"{split}.csv", COLUMNS,
                                  (_row(r) for r in records.get(split, [])))
    if counts["compound_test"] and set(RAFDB_COMPOUND_11) <= set(compound_table.classes):
        paths["compound_test_11"] = _write_csv(out / "compound_test_11.csv", COLUMNS, (
            _row(r) for r in records["compound_test"] if r["expression"] in RAFDB_COMPOUND_11))
    paths["au_intensity"] = _write_csv(
        out / "au_intensity.csv", ("image",) + AUS_17,
        ([r["image"]] + [f"{v:.3f}" for v in r["intensity"]] for s in splits for r in records[s]))
    paths["generator_table"] = out / "generator_table.csv"
    GENERATOR_TABLE.to_csv(paths["generator_table"])
    if counts["compound_test"]:
        paths["compound_generator_table"] = out / "compound_generator_table.csv"
        compound_table.to_csv(paths["compound_generator_table"])
    paths["contact_sheet"] = out / "contact_sheet.png"
    contact_sheet(paths["contact_sheet"], seed=seed, size=size, nuisance=nuisance,
                  identities=list(train_ids)[:8], supersample=supersample)
    paths["manifest"] = out / "synthfacs.json"
    manifest = {
        "name": "SynthFACS",
        "version": SYNTHFACS_VERSION,
        "seed": int(seed),
        "size": int(size),
        "nuisance": float(nuisance),
        "supersample": int(supersample),
        "counts": counts,
        "identities": {"total": int(n_identities), "train": [train_ids.start, train_ids.stop],
                       "heldout": [heldout_ids.start, heldout_ids.stop]},
        "expressions": list(GENERATOR_TABLE.classes),
        "compound_expressions": list(compound_table.classes) if counts["compound_test"] else [],
        "aus": list(AUS_17),
        "generator": {"perturbation_seed": PERTURBATION_SEED,
                      "intensity_range": list(INTENSITY_RANGE), "va_noise": VA_NOISE},
        "files": {k: p.name for k, p in paths.items() if k != "manifest"},
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=2) + "\n")
    paths["images"] = out / "images"
    return paths


def generate_preset(out_dir, preset: str = "demo", **overrides) -> dict[str, Path]:
    """``generate`` with the sizes of a named preset (``overrides`` win)."""
    if preset not in PRESETS:
        from distmtl.errors import close_matches

        raise DistmtlError(f"synthfacs: unknown preset '{preset}'{close_matches(preset, PRESETS)}"
                           f"; known: {', '.join(PRESETS)}")
    return generate(out_dir, **{**PRESETS[preset], **overrides})
