"""Few-shot compound expressions: adapting a trained multi-task model to new classes from k images each.

``distmtl fewshot --model DIR --data compound.csv --shots 1 5 10 --seeds 5`` runs, for each number
of shots k and each episode seed, one episode: k labelled images per class are drawn as the
support set, every other image is the query set, and each method is scored on the query set:

- ``zero-shot``: the AU-profile scores of Du et al.'s compound table from the model's predicted AUs
  (:mod:`distmtl.inference.compound`, over the classes of the data); it ignores the support set.
- ``linear probe``: multinomial logistic regression (scikit-learn) on the frozen shared features
  (the backbone's pooled output), standardised on the support set.
- ``zero-shot head, fine-tuned``: the zero-shot scorer is a linear layer on the predicted AU
  probabilities ``b`` (``log s_k = log pi_k + sum_j b_j log(R~kj / (1 - R~kj)) + log(1 - R~kj)``);
  that layer, initialised there, is trained on the support set with cross-entropy and an L2 pull
  towards its initialisation (``--head-l2``), the network frozen.
- ``from scratch``: the same architecture with random weights and a new K-class head, trained end
  to end on the support images only (``--scratch-steps`` full-batch AdamW steps).

Each method reports query accuracy and mean per-class accuracy; the summary is mean +- std over the
episode seeds. The choices of solver, steps and regularisation are this project's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from distmtl.errors import DistmtlError

METHODS = ("zero-shot", "linear probe", "zero-shot head, fine-tuned", "from scratch")


def load_images(paths: Sequence[str], preprocessing) -> torch.Tensor:
    """The preprocessed images ``[N, C, S, S]`` (the evaluation transform); a bad file is one error."""
    from distmtl.data.transforms import eval_transform, load_image

    transform = eval_transform(preprocessing)
    tensors = []
    for path in paths:
        try:
            tensors.append(transform(load_image(path, preprocessing.channels)))
        except DistmtlError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the file, not a deep traceback
            raise DistmtlError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return torch.stack(tensors)


@torch.no_grad()
def shared_outputs(net, images: torch.Tensor, au_task: str, batch_size: int = 128):
    """``(features [N, F], AU probabilities [N, J])`` of a frozen network."""
    net.eval()
    features, aus = [], []
    for start in range(0, len(images), batch_size):
        outputs, feats = net(images[start:start + batch_size])
        features.append(net.pooled(feats).float())
        aus.append(torch.sigmoid(outputs[au_task].float()))
    return torch.cat(features), torch.cat(aus)


def zero_shot_layer(table, au_labels: Sequence[str], eps: float = 0.05):
    """``(W [K, J], b [K], model AU indices)``: the zero-shot scorer as a linear layer on AU probabilities."""
    from distmtl.inference.compound import matching_labels

    pairs = matching_labels(au_labels, table)
    ours, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
    r = torch.as_tensor(table.matrix[:, theirs], dtype=torch.float32).clamp(eps, 1 - eps)
    weight = torch.log(r) - torch.log1p(-r)
    bias = torch.log(torch.as_tensor(table.prior, dtype=torch.float32)) + torch.log1p(-r).sum(1)
    return weight, bias, ours


def episode(labels: np.ndarray, classes: Sequence[str], shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Support and query indices: ``shots`` images per class drawn with ``seed``, the rest query."""
    rng = np.random.default_rng(seed)
    support = []
    for k, name in enumerate(classes):
        members = np.flatnonzero(labels == k)
        if len(members) <= shots:
            raise DistmtlError(f"fewshot: class '{name}' has {len(members)} images; {shots} shots need "
                               f"at least {shots + 1} (one left to test on)")
        support.extend(rng.choice(members, shots, replace=False).tolist())
    support = np.sort(np.array(support))
    query = np.setdiff1d(np.arange(len(labels)), support)
    return support, query


def scores(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, float]:
    correct = predicted == truth
    per_class = [correct[truth == k].mean() for k in range(num_classes) if (truth == k).any()]
    return {"accuracy": float(correct.mean()), "mean_class_accuracy": float(np.mean(per_class))}


def linear_probe(features: torch.Tensor, labels: np.ndarray, support, query, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(features[support].numpy(), labels[support])
    return probe.predict(features[query].numpy())


def fine_tuned_head(aus: torch.Tensor, labels: np.ndarray, support, query, init, *, steps: int = 200,
                    lr: float = 0.05, l2: float = 0.01) -> np.ndarray:
    weight0, bias0, columns = init
    x = aus[:, columns]
    weight, bias = weight0.clone().requires_grad_(True), bias0.clone().requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    target = torch.as_tensor(labels[support])
    for _ in range(steps):
        opt.zero_grad()
        logits = x[support] @ weight.T + bias
        loss = F.cross_entropy(logits, target) + l2 * ((weight - weight0) ** 2).sum() / len(weight0)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (x[query] @ weight.T + bias).argmax(1).numpy()


def from_scratch(model_config: dict, classes: Sequence[str], images: torch.Tensor, labels: np.ndarray,
                 support, query, seed: int, *, steps: int = 100, lr: float = 0.003) -> np.ndarray:
    from distmtl.inference.export import build_net
    from distmtl.tasks import Task

    torch.manual_seed(seed)
    task = Task("compound", "multiclass", tuple(classes))
    net = build_net(model_config, {"compound": task})
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    target = torch.as_tensor(labels[support])
    x = images[support]
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        outputs, _ = net(x)
        F.cross_entropy(outputs["compound"], target).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        predicted = [net(images[query][i:i + 128])[0]["compound"].argmax(1) for i in range(0, len(query), 128)]
    return torch.cat(predicted).numpy()


def run_fewshot(model_dir, data, *, shots: Sequence[int] = (1, 5, 10), seeds: int = 5, column: str | None = None,
                scratch_steps: int = 100, head_steps: int = 200, head_l2: float = 0.01,
                methods: Sequence[str] = METHODS, progress=print) -> pd.DataFrame:
    """Every (method, shots, seed) episode score as rows of a DataFrame (see the module docstring)."""
    from distmtl.inference.compound import read_compound_data, restricted_table
    from distmtl.inference.predictor import Predictor

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DistmtlError(f"fewshot: unknown method '{unknown[0]}'; known: {', '.join(METHODS)}")
    if not shots or any(int(k) < 1 for k in shots):
        raise DistmtlError(f"--shots: expected positive numbers of images per class, got {list(shots)}")
    if seeds < 1:
        raise DistmtlError(f"--seeds: expected at least 1 episode seed, got {seeds}")
    predictor = Predictor.from_pretrained(model_dir, device="cpu")
    paths, truth, column = read_compound_data(data, column)
    table = restricted_table(sorted(set(truth)))  # the classes of the data, in the table's order
    classes = list(table.classes)
    labels = np.array([classes.index(t) for t in truth])
    au_task = predictor.compound_task()
    images = load_images(paths, predictor.preprocessing)
    features, aus = shared_outputs(predictor.net, images, au_task)
    init = zero_shot_layer(table, predictor.tasks[au_task].labels)
    zero = (aus[:, init[2]] @ init[0].T + init[1]).argmax(1).numpy()

    rows, started = [], time.monotonic()
    episodes = [(k, s) for k in shots for s in range(seeds)]
    for done, (k, seed) in enumerate(episodes, start=1):
        support, query = episode(labels, classes, int(k), seed)
        truth_q = labels[query]
        predictions = {}
        if "zero-shot" in methods:
            predictions["zero-shot"] = zero[query]
        if "linear probe" in methods:
            predictions["linear probe"] = linear_probe(features, labels, support, query, seed)
        if "zero-shot head, fine-tuned" in methods:
            predictions["zero-shot head, fine-tuned"] = fine_tuned_head(
                aus, labels, support, query, init, steps=head_steps, l2=head_l2)
        if "from scratch" in methods:
            predictions["from scratch"] = from_scratch(predictor.config, classes, images, labels, support,
                                                       query, seed, steps=scratch_steps)
        for method, predicted in predictions.items():
            rows.append({"method": method, "shots": int(k), "seed": seed, "n_support": len(support),
                         "n_query": len(query), **scores(predicted, truth_q, len(classes))})
        if progress:
            elapsed = time.monotonic() - started
            left = elapsed / done * (len(episodes) - done)
            progress(f"episode {done}/{len(episodes)} (shots {k}, seed {seed}): "
                     f"{elapsed:.0f} s elapsed, about {left:.0f} s left")
    frame = pd.DataFrame(rows)
    frame.attrs["classes"] = classes
    return frame


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of accuracy and mean per-class accuracy, per method and shots."""
    grouped = frame.groupby(["method", "shots"], sort=False)
    out = grouped[["accuracy", "mean_class_accuracy"]].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["seeds"] = grouped.size()
    return out.reset_index()


def markdown_table(summary: pd.DataFrame) -> str:
    shots = sorted(summary["shots"].unique())
    lines = ["| method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for method in dict.fromkeys(summary["method"]):
        cells = []
        for k in shots:
            row = summary[(summary["method"] == method) & (summary["shots"] == k)]
            if row.empty:
                cells.append("")
                continue
            mean, std = row["mean_class_accuracy_mean"].iloc[0], row["mean_class_accuracy_std"].iloc[0]
            cells.append(f"{mean:.3f} ± {0.0 if math.isnan(std) else std:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_summary(summary: pd.DataFrame, path, title: str = "few-shot compound expressions") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for method in dict.fromkeys(summary["method"]):
        part = summary[summary["method"] == method]
        ax.errorbar(part["shots"], part["mean_class_accuracy_mean"],
                    yerr=part["mean_class_accuracy_std"].fillna(0), marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xticks(sorted(summary["shots"].unique()), [str(k) for k in sorted(summary["shots"].unique())])
    ax.set_xlabel("labelled images per class (shots)")
    ax.set_ylabel("mean per-class accuracy (query)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    figure.savefig(Path(path), dpi=100)
