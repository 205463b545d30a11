"""Face verification: pairs of samples scored by the cosine similarity of their embeddings.

- :func:`verification_metrics`: ROC AUC, LFW-protocol accuracy and TAR at a FAR on given pairs.
- :func:`verification_pairs`: balanced same/different pairs drawn from identity groups (one id per
  person, -1 for unknown), laid out in folds as LFW's ``pairs.txt`` is: fold ``f`` holds its same
  pairs, then as many different pairs. Drawing is without replacement over all possible pairs,
  so a pair never repeats and never joins a sample with itself.
- :func:`identity_verification`: both, under the metric names an identity task reports.
- :func:`read_pairs_file`, :func:`write_pairs_file`, :class:`PairResolver`: LFW's pair list format.
  First line ``<folds> <pairs per fold>`` (each fold: that many same pairs, then that many
  different pairs) or a single count ``N`` (N same, then N different; scored in 10 folds of the
  file order); then ``name idx1 idx2`` (same person) or ``name1 idx1 name2 idx2`` lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc

from distmtl.errors import DistmtlError

DEFAULT_PAIRS = 3000
DEFAULT_FOLDS = 10


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising pair accuracy (``same`` predicted when score >= threshold)."""
    values = np.unique(scores)
    midpoints = (values[1:] + values[:-1]) / 2
    candidates = np.concatenate(([values[0] - 1.0], midpoints, [values[-1] + 1.0]))
    pos, neg = np.sort(scores[same]), np.sort(scores[~same])
    correct = (len(pos) - np.searchsorted(pos, candidates, "left")) + np.searchsorted(
        neg, candidates, "left"
    )
    return float(candidates[int(np.argmax(correct))])


def verification_metrics(
    embeddings_a: Tensor,
    embeddings_b: Tensor,
    same: Sequence[bool] | np.ndarray | Tensor,
    n_folds: int = 10,
    seed: int | None = 0,
    far: float = 1e-3,
) -> dict[str, Any]:
    """Face-verification metrics on pairs, scored by cosine similarity.

    ``accuracy`` follows the LFW protocol: the pairs are split into ``n_folds`` folds (after a
    permutation drawn from ``seed``; ``seed=None`` keeps the given order, as for LFW's own
    fold-ordered pair list), a threshold is chosen on the other folds and the accuracy measured on
    the held-out fold; mean and sample std (ddof=1) over folds. ``tar_at_far_1e-3`` is the
    highest true-accept rate at a false-accept rate of at most ``far``.
    """
    a = embeddings_a.detach().double().cpu()
    b = embeddings_b.detach().double().cpu()
    labels = torch.as_tensor(np.asarray(same, dtype=bool)).flatten()
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] != labels.numel():
        raise DistmtlError(
            f"verification_metrics: embeddings {tuple(a.shape)} and {tuple(b.shape)} with "
            f"{labels.numel()} pair labels do not match"
        )
    n = labels.numel()
    if n_folds < 2:
        raise DistmtlError(f"verification_metrics: n_folds must be at least 2, got {n_folds}")
    if n < n_folds:
        raise DistmtlError(f"verification_metrics: {n} pairs is fewer than {n_folds} folds")
    scores = F.cosine_similarity(a, b, dim=1, eps=1e-12)
    both = bool(labels.any()) and bool((~labels).any())
    out: dict[str, Any] = {"n_pairs": n, "n_same": int(labels.sum())}
    out["roc_auc"] = float(binary_auroc(scores, labels.long())) if both else None
    tar_key = f"tar_at_far_{far:.0e}".replace("e-0", "e-")  # far=1e-3 -> "tar_at_far_1e-3"
    out[tar_key] = None
    if both:
        fpr, tpr, _ = binary_roc(scores, labels.long())
        out[tar_key] = float(tpr[fpr <= far].max())

    s, y = scores.numpy(), labels.numpy()
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, n_folds)
    accuracies, thresholds = [], []
    for i, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != i])
        threshold = _best_threshold(s[train], y[train])
        accuracies.append(float(((s[test] >= threshold) == y[test]).mean()))
        thresholds.append(threshold)
    out["accuracy"] = float(np.mean(accuracies))
    out["accuracy_std"] = float(np.std(accuracies, ddof=1)) if n_folds > 1 else 0.0
    out["threshold"] = float(np.mean(thresholds))
    return out



def _triangle_pairs(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k-th pair ``(i, j)``, ``i < j``, in the order (0,1), (0,2), (1,2), (0,3), ..."""
    j = np.floor((1 + np.sqrt(1 + 8 * k.astype(np.float64))) / 2).astype(np.int64)
    j -= (j * (j - 1) // 2) > k  # float rounding, either way
    j += ((j + 1) * j // 2) <= k
    return k - j * (j - 1) // 2, j


def verification_pairs(
    groups: Sequence[int] | np.ndarray | Tensor,
    n_pairs: int = DEFAULT_PAIRS,
    seed: int = 0,
    n_folds: int = DEFAULT_FOLDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(idx_a, idx_b, same)``: balanced same/different pairs of samples with ``groups >= 0``.

    Up to ``n_pairs // 2`` pairs of each kind, fewer when the data has fewer; the count per kind
    is a multiple of the folds (``min(n_folds, count)``), so scoring the pairs in their order with
    ``min(n_folds, len(same) // 2)`` folds gives every fold equally many of both kinds.
    Deterministic for a given ``seed``; ``idx_a < idx_b`` in every pair.
    """
    groups = np.asarray(groups.cpu() if isinstance(groups, Tensor) else groups).astype(np.int64).ravel()
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 4:
        raise DistmtlError(f"verification pairs: n_pairs must be an integer >= 4, got {n_pairs!r}")
    valid = np.flatnonzero(groups >= 0)
    order = valid[np.argsort(groups[valid], kind="stable")]  # sample indices, grouped
    _, starts, sizes = np.unique(groups[order], return_index=True, return_counts=True)
    same_counts = sizes * (sizes - 1) // 2
    total_same = int(same_counts.sum())
    total_diff = len(order) * (len(order) - 1) // 2 - total_same
    if total_same == 0:
        raise DistmtlError(f"verification pairs: no identity has two or more samples ({len(order)} "
                           f"samples, {len(sizes)} identities), so no same-identity pair exists")
    if total_diff == 0:
        raise DistmtlError(f"verification pairs: all {len(order)} samples have one identity, so no "
                           f"different-identity pair exists")
    n_each = min(n_pairs // 2, total_same, total_diff)
    folds = min(n_folds, n_each)
    if folds < 2:
        raise DistmtlError(f"verification pairs: only {n_each} same-identity pair can be drawn; at "
                           f"least 2 are needed to choose a threshold on held-out pairs")
    n_each -= n_each % folds
    rng = np.random.default_rng(seed)

    pick = rng.choice(total_same, n_each, replace=False)
    cum = np.cumsum(same_counts)
    group = np.searchsorted(cum, pick, side="right")
    i, j = _triangle_pairs(pick - (cum[group] - same_counts[group]))
    same_a, same_b = order[starts[group] + i], order[starts[group] + j]

    # different pairs: sample at grouped position p with any sample in a later group
    ends = np.repeat(starts + sizes, sizes)
    partners = len(order) - ends
    cum = np.cumsum(partners)
    pick = rng.choice(total_diff, n_each, replace=False)
    p = np.searchsorted(cum, pick, side="right")
    q = ends[p] + pick - (cum[p] - partners[p])
    diff_a, diff_b = order[p], order[q]

    blocks = [(np.array_split(x, folds)) for x in (same_a, same_b, diff_a, diff_b)]
    idx_a = np.concatenate([np.concatenate([blocks[0][f], blocks[2][f]]) for f in range(folds)])
    idx_b = np.concatenate([np.concatenate([blocks[1][f], blocks[3][f]]) for f in range(folds)])
    same = np.concatenate([np.repeat([True, False], n_each // folds) for _ in range(folds)])
    return np.minimum(idx_a, idx_b), np.maximum(idx_a, idx_b), same


def pair_folds(n_pairs: int, n_folds: int = DEFAULT_FOLDS) -> int:
    """Folds for :func:`verification_pairs`' output of ``n_pairs`` pairs."""
    return min(n_folds, n_pairs // 2)


def verification_summary(embeddings: Tensor, idx_a, idx_b, same, n_folds: int) -> dict[str, Any]:
    """Verification metrics of pairs scored in their given order, under an identity task's names."""
    embeddings = torch.as_tensor(embeddings)
    a, b = torch.as_tensor(np.asarray(idx_a)), torch.as_tensor(np.asarray(idx_b))
    out = verification_metrics(embeddings[a], embeddings[b], same, n_folds=n_folds, seed=None)
    return {"verification_accuracy": out["accuracy"],
            "verification_accuracy_std": out["accuracy_std"],
            "verification_roc_auc": out["roc_auc"],
            "verification_tar_at_far_1e-3": out["tar_at_far_1e-3"],
            "verification_threshold": out["threshold"],
            "verification_pairs": out["n_pairs"]}


def identity_verification(embeddings: Tensor, groups, *, n_pairs: int = DEFAULT_PAIRS,
                          seed: int = 0) -> tuple[dict[str, Any], tuple]:
    """Metrics on pairs generated from ``groups``, and the pairs ``(idx_a, idx_b, same)``."""
    pairs = verification_pairs(groups, n_pairs, seed)
    return verification_summary(embeddings, *pairs, n_folds=pair_folds(len(pairs[2]))), pairs


@dataclass(frozen=True)
class PairLine:
    line: int
    name_a: str
    index_a: int
    name_b: str
    index_b: int

    @property
    def same(self) -> bool:
        return self.name_a == self.name_b


def read_pairs_file(path: str | Path) -> tuple[int, list[PairLine]]:
    """``(folds, pairs)`` of a pair list in LFW's format (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DistmtlError(f"{path}: pairs file not found")
    numbered = [(n, text.split()) for n, text in enumerate(path.read_text().splitlines(), 1)
                if text.strip()]
    if not numbered:
        raise DistmtlError(f"{path}: the pairs file is empty")
    head_line, head = numbered[0]
    if not 1 <= len(head) <= 2 or not all(h.isdigit() and int(h) > 0 for h in head):
        raise DistmtlError(f"{path}: line {head_line}: expected '<folds> <pairs per fold>' or "
                           f"'<pairs>', got '{' '.join(head)}'")
    folds = int(head[0]) if len(head) == 2 else DEFAULT_FOLDS
    expected = 2 * math.prod(int(h) for h in head)
    if folds < 2:
        raise DistmtlError(f"{path}: line {head_line}: {folds} fold; the LFW protocol chooses each "
                           f"fold's threshold on the other folds, so it needs at least 2")
    pairs = []
    for n, fields in numbered[1:]:
        if len(fields) == 3:
            fields = [fields[0], fields[1], fields[0], fields[2]]
        elif len(fields) != 4:
            raise DistmtlError(f"{path}: line {n}: expected 'name idx1 idx2' or 'name1 idx1 name2 "
                               f"idx2', got '{' '.join(fields)}'")
        for index in (fields[1], fields[3]):
            if not index.isdigit() or int(index) < 1:
                raise DistmtlError(f"{path}: line {n}: image index '{index}' is not a positive integer")
        pairs.append(PairLine(n, fields[0], int(fields[1]), fields[2], int(fields[3])))
    if len(pairs) != expected:
        raise DistmtlError(f"{path}: line {head_line} announces {expected} pairs, the file has "
                           f"{len(pairs)}")
    return folds, pairs


class PairResolver:
    """``(name, index)`` <-> a CSV row: the image whose file stem is ``<name>_<index:04d>`` (LFW's
    naming, e.g. ``Aaron_Peirsol/Aaron_Peirsol_0001.jpg``), else the ``index``-th (1-based) row of
    identity ``name`` in CSV order."""

    def __init__(self, images: Sequence[str], identities: Sequence[str | None], where: str):
        self.where = where
        self.stems = [Path(str(image)).stem for image in images]
        self.identities = list(identities)
        self.by_stem: dict[str, int] = {}
        for row, stem in enumerate(self.stems):
            self.by_stem.setdefault(stem, row)
        self.by_identity: dict[str, list[int]] = {}
        for row, name in enumerate(self.identities):
            if name is not None:
                self.by_identity.setdefault(name, []).append(row)

    def row(self, name: str, index: int) -> int | None:
        stem_row = self.by_stem.get(f"{name}_{index:04d}")
        if stem_row is not None:
            return stem_row
        rows = self.by_identity.get(name, [])
        return rows[index - 1] if index <= len(rows) else None

    def resolve(self, path: str | Path, pairs: list[PairLine]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(idx_a, idx_b, same)`` of the pairs of pairs file ``path``; a one-line error otherwise."""
        rows_a, rows_b = [], []
        for pair in pairs:
            for name, index, out in ((pair.name_a, pair.index_a, rows_a), (pair.name_b, pair.index_b, rows_b)):
                row = self.row(name, index)
                if row is None:
                    have = len(self.by_identity.get(name, []))
                    raise DistmtlError(f"{path}: line {pair.line}: '{name} {index}' matches no row of "
                                       f"{self.where} (no image '{name}_{index:04d}', and identity "
                                       f"'{name}' has {have} row{'s' if have != 1 else ''})")
                out.append(row)
        return np.array(rows_a), np.array(rows_b), np.array([p.same for p in pairs], dtype=bool)

    def reference(self, row: int) -> tuple[str, int]:
        """The ``(name, index)`` that :meth:`row` maps back to ``row``."""
        name = self.identities[row]
        if name is None or not name or any(c.isspace() for c in name):
            raise DistmtlError(f"{self.where}: line {row + 2} has identity {name!r}, which a pairs "
                               f"file cannot name")
        suffix = self.stems[row][len(name) + 1:]
        if self.stems[row].startswith(name + "_") and suffix.isdigit():
            index = int(suffix)
        else:
            index = self.by_identity[name].index(row) + 1
        if self.row(name, index) != row:
            raise DistmtlError(f"{self.where}: line {row + 2} ('{name}', image {self.stems[row]}) "
                               f"cannot be named unambiguously in a pairs file")
        return name, index


def write_pairs_file(path: str | Path, idx_a, idx_b, same, folds: int, resolver: PairResolver) -> None:
    """Write pairs laid out as :func:`verification_pairs` returns them, in LFW's format."""
    from distmtl.io import atomic_write_text

    if len(same) % (2 * folds):
        raise DistmtlError(f"{path}: {len(same)} pairs do not split into {folds} balanced folds")
    lines = [f"{folds}\t{len(same) // (2 * folds)}"]
    for a, b, is_same in zip(idx_a, idx_b, same):
        (name_a, index_a), (name_b, index_b) = resolver.reference(int(a)), resolver.reference(int(b))
        if bool(is_same) != (name_a == name_b):
            raise DistmtlError(f"{path}: lines {int(a) + 2} and {int(b) + 2} of the data are marked "
                               f"{'same' if is_same else 'different'} but have identities "
                               f"'{name_a}' and '{name_b}'")
        lines.append(f"{name_a}\t{index_a}\t{index_b}" if is_same
                     else f"{name_a}\t{index_a}\t{name_b}\t{index_b}")
    atomic_write_text(path, "\n".join(lines) + "\n")
