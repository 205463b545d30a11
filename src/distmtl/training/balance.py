"""How much a coupling term may weigh: a pseudo-labelled image counts no more than a labelled one.

A coupling term towards task T (co-annotation or distribution matching in the direction that
supervises T) acts on the images that lack T's labels. When those come from a small source that
the sampler draws as often as a large labelled one (``data.sampling: equal``), each of them is
seen many times more often than a truly labelled image of T, and the network fits its
table-derived target, the same for every image of a class, over the varied true labels of the
large source. ``relatedness[i].balance`` (default on) scales the terms towards T by

    min(1, f_T / f_notT),   f_X = expected draws per step of one image in X,

with ``f_T`` over the images labelled for T and ``f_notT`` over the images that lack it, from
the sources' sizes, label counts and sampling ratios. Balanced sources give 1 (the papers'
terms unchanged); 300 images without T beside 3,000 with it, sampled equally, give 0.1.

The other way round, ``relatedness[i].lift_scarce`` (default off) raises the distribution-matching
term towards a task whose labelled images are the few, oversampled ones (``f_T / f_notT > 1``):
its weight ``lambda`` becomes ``min(max(lambda, 1), lambda * f_T / f_notT)``, so the many images
that lack T's labels are matched towards T about as strongly, per image and over training, as
T's own labelled images are supervised, and never above weight 1. Co-annotation (weight 1) is
left as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from distmtl.config.loading import MATCHING_DEFAULTS
from distmtl.data.sampler import source_weights


def draws_ratio(sizes: Sequence[int], labelled: Sequence[int], weights: Sequence[float], *,
                cap: bool = True) -> float:
    """``min(1, f_T / f_notT)`` for one task (``f_T / f_notT`` with ``cap=False``): ``sizes[s]``
    images in source ``s``, ``labelled[s]`` of them labelled for the task, ``weights[s]`` the
    source's share of each batch."""
    rate = [w / n if n else 0.0 for w, n in zip(weights, sizes)]  # draws of one image per batch slot
    with_t = sum(labelled)
    without_t = sum(n - k for n, k in zip(sizes, labelled))
    if with_t == 0 or without_t == 0:
        return 1.0
    f_t = sum(r * k for r, k in zip(rate, labelled)) / with_t
    f_not = sum(r * (n - k) for r, n, k in zip(rate, sizes, labelled)) / without_t
    if f_not <= 0:
        return 1.0
    return min(1.0, f_t / f_not) if cap else f_t / f_not


def term_scales(edges: Sequence[Mapping], sources: Sequence[Mapping], sampling: Any) -> dict[str, float]:
    """``{term name: scale}`` for the coupling terms of ``edges`` whose ``balance`` (down) or
    ``lift_scarce`` (up, distribution matching only) is on.

    ``sources``: ``[{size, annotated: {task: count}}]`` (the run's data summary); ``sampling``:
    ``data.sampling``, which gives each source's share of a batch."""
    if not edges or not sources:
        return {}
    sizes = [int(s["size"]) for s in sources]
    weights = list(source_weights(sizes, sampling or "equal"))
    scales = {}
    for edge in edges:
        options = edge.get("options", {})
        down, up = options.get("balance", True), options.get("lift_scarce", False)
        a, b = edge["task_a"], edge["task_b"]
        for target, other, direction in ((b, a, "dm_a_to_b"), (a, b, "dm_b_to_a")):
            ratio = draws_ratio(sizes, [int(s["annotated"].get(target, 0)) for s in sources], weights,
                                cap=False)
            if down and ratio < 1.0:
                scales[f"coann:{other}->{target}"] = scales[f"dm:{other}->{target}"] = round(float(ratio), 6)
            if up and ratio > 1.0:
                weight = float((options.get(direction) or {}).get("weight", MATCHING_DEFAULTS["weight"]))
                if 0.0 < weight < 1.0:
                    scales[f"dm:{other}->{target}"] = round(float(min(ratio, 1.0 / weight)), 6)
    return scales
