"""Zero-shot compound expressions from predicted AU probabilities (as in FaceBehaviorNet).

The relatedness table ``du2014_compound`` (Du, Tao & Martinez 2014) gives, for each of 13 compound
expressions ``k``, ``R[k, j] = p(AU_j | k)``. With ``R~ = clip(R, eps, 1 - eps)`` and the predicted
AU probabilities ``b`` as soft labels, each class is scored by the expected log-likelihood of its
AU profile plus the log prior (uniform for this table):

    log s_k = log pi_k + sum_j [ b_j log R~[k, j] + (1 - b_j) log(1 - R~[k, j]) ] + const

and ``s`` is normalised over the classes: the naive-Bayes posterior of the B -> A direction in
the methods (:func:`distmtl.losses.b_to_a_posterior` with ``label_mask=None``). Only the AUs that
both the table and the model have enter the sum (AU names are matched by number: ``AU1`` and
``AU01`` are the same AU); AUs the model does not predict are treated as unobserved.

Columns: ``compound`` (the class with the highest score) then ``compound_<Class>`` per table
class in table order (``compound_Happily surprised``, ...). Rows whose AU probabilities are NaN
(unreadable inputs) get NaN / empty.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from distmtl.errors import DistmtlError, close_matches

DEFAULT_TABLE = "du2014_compound"
DEFAULT_EPS = 0.05
PREFIX = "compound"
_AU = re.compile(r"^au[_ ]?0*(\d+)$", re.IGNORECASE)


def compound_table(table=DEFAULT_TABLE):
    """The relatedness table of compound classes x AUs (a built-in name, a CSV path, or a table)."""
    from distmtl.relatedness.table import Relatedness

    return _builtin(table) if isinstance(table, str) else Relatedness.load(table)


@functools.lru_cache(maxsize=8)
def _builtin(name: str):
    from distmtl.relatedness.table import Relatedness

    return Relatedness.load(name)


def compound_columns(table=DEFAULT_TABLE) -> list[str]:
    """``compound`` then ``compound_<Class>`` in table order."""
    return [PREFIX, *(f"{PREFIX}_{c}" for c in compound_table(table).classes)]


def _au_key(label: str) -> str:
    match = _AU.match(str(label).strip())
    return f"AU{int(match.group(1))}" if match else str(label).strip()


def matching_labels(au_labels: Sequence[str], table=DEFAULT_TABLE) -> list[tuple[int, int]]:
    """``(model label index, table label index)`` pairs of the AUs both have."""
    keys = {_au_key(label): j for j, label in enumerate(compound_table(table).labels)}
    return [(i, keys[_au_key(label)]) for i, label in enumerate(au_labels) if _au_key(label) in keys]


def compound_probs(au_probs, au_labels: Sequence[str], *, table=DEFAULT_TABLE,
                   eps: float = DEFAULT_EPS) -> np.ndarray:
    """Compound-class probabilities ``[N, K]`` from AU probabilities ``[N, J]`` (rows with NaN: NaN)."""
    from distmtl.losses import b_to_a_posterior, clip_relatedness

    rel = compound_table(table)
    values = np.asarray(au_probs, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(au_labels):
        raise DistmtlError(f"compound: AU probabilities of shape {values.shape} do not match "
                           f"{len(au_labels)} AU labels")
    pairs = matching_labels(au_labels, table)
    if not pairs:
        raise DistmtlError(f"compound: none of the AU labels ({', '.join(map(str, au_labels[:5]))}, ...) "
                           f"is in the table's ({', '.join(rel.labels[:5])}, ...)")
    ours, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
    ok = np.isfinite(values[:, ours]).all(axis=1)
    out = np.full((len(values), len(rel.classes)), np.nan)
    if ok.any():
        r_tilde = clip_relatedness(torch.as_tensor(rel.matrix[:, theirs], dtype=torch.float64), eps)
        b = torch.as_tensor(values[ok][:, ours]).clamp(0.0, 1.0)
        log_prior = torch.as_tensor(rel.prior, dtype=torch.float64).log()
        out[ok] = b_to_a_posterior(b, None, r_tilde, log_prior).numpy()
    return out


def compound_scores(au_probs, au_labels: Sequence[str] | None = None, *, table=DEFAULT_TABLE,
                    eps: float = DEFAULT_EPS) -> pd.DataFrame:
    """Zero-shot compound expressions: ``compound`` (predicted class) and ``compound_<Class>`` columns.

    ``au_probs``: a DataFrame (its columns named like AUs are used, e.g. a prediction frame) or an
    array ``[N, J]`` with ``au_labels`` naming its columns.
    """
    if isinstance(au_probs, pd.DataFrame):
        if au_labels is None:
            au_labels = [c for c in au_probs.columns if _AU.match(str(c))]
        missing = [c for c in au_labels if c not in au_probs.columns]
        if missing:
            raise DistmtlError(f"compound: no column '{missing[0]}'{close_matches(missing[0], au_probs.columns)}")
        index, values = au_probs.index, au_probs[list(au_labels)].to_numpy(dtype=np.float64)
    else:
        if au_labels is None:
            raise DistmtlError("compound: au_labels are required with an array of AU probabilities")
        values = np.asarray(au_probs, dtype=np.float64)
        index = None
    rel = compound_table(table)
    probs = compound_probs(values, list(au_labels), table=table, eps=eps)
    classes = np.array(rel.classes, dtype=object)
    ok = np.isfinite(probs).all(axis=1)
    frame = pd.DataFrame(probs, columns=compound_columns(table)[1:], index=index)
    frame.insert(0, PREFIX, np.where(ok, classes[np.nan_to_num(probs).argmax(axis=1)], None))
    return frame


def restricted_table(classes: Sequence[str], table=DEFAULT_TABLE):
    """The compound table with only ``classes`` (in the table's order); the prior is renormalised."""
    from distmtl.relatedness.table import Relatedness

    rel = compound_table(table)
    unknown = [c for c in classes if c not in rel.classes]
    if unknown:
        raise DistmtlError(f"compound: class '{unknown[0]}' is not in the compound table"
                           f"{close_matches(unknown[0], rel.classes)}")
    rows = [k for k, c in enumerate(rel.classes) if c in set(classes)]
    if len(rows) < 2:
        raise DistmtlError(f"compound: {len(rows)} class(es) to choose from; zero-shot scoring needs at least 2")
    return Relatedness(rel.matrix[rows], [rel.classes[k] for k in rows], rel.labels,
                       prior=rel.prior[rows], name=rel.name, source=rel.source)


def read_compound_data(data, column: str | None = None) -> tuple[list[str], np.ndarray, str]:
    """``(image paths, true classes, column)`` from a CSV (paths relative to it) or a DataFrame
    with ``image`` (absolute paths, as a dataset loader's frame) and a class column.

    ``column`` defaults to ``compound`` when there is one, else ``expression`` (SynthFACS's
    compound split keeps its classes there). Rows with an empty class are left out.
    """
    if isinstance(data, pd.DataFrame):
        frame, where, base = data.copy(), "data", None
        for name in {"image", column or PREFIX, "expression"} & set(frame.columns):
            frame[name] = frame[name].fillna("").astype(str)
    else:
        where = base = Path(data)
        if not where.is_file():
            raise DistmtlError(f"{where}: CSV file not found")
        frame = pd.read_csv(where, dtype=str, keep_default_na=False, skipinitialspace=True)
        base = where.parent
    if column is None:
        column = PREFIX if PREFIX in frame.columns or "expression" not in frame.columns else "expression"
    for needed in ("image", column):
        if needed not in frame.columns:
            raise DistmtlError(f"{where}: no '{needed}' column{close_matches(needed, frame.columns)}")
    frame = frame[frame[column].str.strip() != ""]
    if frame.empty:
        raise DistmtlError(f"{where}: no row has a '{column}' class")
    paths = [str(base / p.strip()) if base is not None else p for p in frame["image"]]
    return paths, frame[column].str.strip().to_numpy(), column


def evaluate_compound(predictor, data, *, column: str | None = None, classes="data",
                      table=DEFAULT_TABLE, batch_size: int = 64, num_workers: int = 0) -> dict:
    """Zero-shot compound-expression accuracy on labelled images.

    ``data``: a CSV with ``image`` and a class column, or a loader's DataFrame (e.g. RAF-DB's
    compound subset: ``rafdb.load(root, "test", subset="compound").frame``). ``classes`` is the
    class set the model chooses from: ``"data"`` (default: the classes that occur in the data,
    so RAF-DB's 11 or Du et al.'s 13), ``"table"`` (every row of the table) or a list.

    Returns ``accuracy`` (overall, over the readable images), ``mean_class_accuracy`` (the mean of
    the per-class accuracies: the RAF-DB compound protocol's figure), ``per_class``, ``classes``
    (the class set scored), ``chance`` (1 / number of classes), ``majority`` (the most frequent
    class's share), ``n`` (images scored) and ``n_errors`` (unreadable images).
    """
    paths, truth, column = read_compound_data(data, column)
    rel = compound_table(table)
    unknown = sorted(set(truth) - set(rel.classes))
    if unknown:
        raise DistmtlError(f"{data if not isinstance(data, pd.DataFrame) else 'data'}: column "
                           f"'{column}' has class '{unknown[0]}' that the compound table "
                           f"lacks{close_matches(unknown[0], rel.classes)}")
    if isinstance(classes, str) and classes in ("data", "table"):
        chosen = [c for c in rel.classes if c in set(truth)] if classes == "data" else list(rel.classes)
    elif isinstance(classes, str):
        raise DistmtlError(f"compound: classes must be 'data', 'table' or a list of classes, got '{classes}'")
    else:
        chosen = list(classes)
        outside = sorted(set(truth) - set(chosen))
        if outside:
            raise DistmtlError(f"compound: the data has class '{outside[0]}', which is not among "
                               f"the {len(chosen)} classes to choose from")
    subset = restricted_table(chosen, table)
    au = predictor.compound_task()
    preds = predictor.predict(paths, batch_size=batch_size, num_workers=num_workers)
    probs = preds[predictor.task_columns[au]["values"]].to_numpy(dtype=np.float64)
    scores = compound_scores(probs, predictor.tasks[au].labels, table=subset)
    ok = (preds["error"] == "").to_numpy() & scores[PREFIX].notna().to_numpy()
    predicted, truth_ok = scores[PREFIX].to_numpy()[ok], truth[ok]
    correct = predicted == truth_ok
    per_class = {c: float(correct[truth_ok == c].mean()) for c in subset.classes if (truth_ok == c).any()}
    counts = pd.Series(truth_ok).value_counts()
    return {"accuracy": float(correct.mean()) if ok.any() else float("nan"),
            "mean_class_accuracy": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
            "per_class": per_class, "classes": list(subset.classes),
            "chance": 1.0 / len(subset.classes),
            "majority": float(counts.iloc[0] / ok.sum()) if ok.any() else float("nan"),
            "n": int(ok.sum()), "n_errors": int((~ok).sum())}
