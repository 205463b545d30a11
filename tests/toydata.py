"""A small learnable image dataset in the generic CSV format, written at test time.

Each of 3 expression classes has its own colour; each of 3 AUs lights its own block, and AUs follow
the class through a known table, so both tasks and their relatedness are learnable in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Neutral", "Happiness", "Surprise")
AUS = ("AU01", "AU12", "AU25")
TABLE = np.array([[0.05, 0.05, 0.05], [0.1, 0.95, 0.6], [0.9, 0.1, 0.95]])
COLOURS = np.array([[90, 90, 90], [200, 120, 60], [60, 120, 200]])


def make_image(rng, k, aus, size=32):
    img = np.clip(COLOURS[k] + rng.normal(0, 25, (size, size, 3)), 0, 255)
    for j, on in enumerate(aus):
        if on:
            img[4 + 9 * j: 11 + 9 * j, 4:28] = 255
    return img.astype(np.uint8)


def write_dataset(root: Path, n_expr=120, n_au=120, n_eval=60, seed=0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    header = "image,expression," + ",".join(AUS)
    files = {}
    all_rows = []
    for split, n, with_expr, with_au in [("expr", n_expr, True, False), ("au", n_au, False, True),
                                         ("val", n_eval, True, True), ("test", n_eval, True, True)]:
        rows = [header]
        for i in range(n):
            k = int(rng.integers(len(CLASSES)))
            aus = (rng.random(len(AUS)) < TABLE[k]).astype(int)
            rel = f"img/{split}_{i}.png"
            Image.fromarray(make_image(rng, k, aus)).save(root / rel)
            full = ",".join([rel, CLASSES[k], *map(str, aus)])
            if split in ("expr", "au"):
                all_rows.append(full)
            rows.append(",".join([rel, CLASSES[k] if with_expr else "",
                                  *(map(str, aus) if with_au else [""] * len(AUS))]))
        files[split] = root / f"{split}.csv"
        files[split].write_text("\n".join(rows) + "\n")
    files["all"] = root / "all.csv"
    files["all"].write_text("\n".join([header, *all_rows]) + "\n")
    table = root / "table.csv"
    table.write_text("class," + ",".join(AUS) + "\n" + "\n".join(
        f"{c}," + ",".join(f"{v:.2f}" for v in TABLE[k]) for k, c in enumerate(CLASSES)) + "\n")
    files["table"] = table
    return files


def raw_config(files: dict[str, Path], **train) -> dict:
    return {
        "name": "toy",
        "tasks": {"expression": {"kind": "multiclass", "labels": list(CLASSES)},
                  "au": {"kind": "multilabel", "labels": list(AUS)}},
        "data": {"sources": [{"csv": str(files["expr"])}, {"csv": str(files["au"])}],
                 "val": str(files["val"]), "test": str(files["test"]), "oracle": str(files["all"]),
                 "image_size": 32, "batch_size": 16, "num_workers": 0},
        "relatedness": [{"tasks": ["expression", "au"], "table": str(files["table"]),
                         "coannotation": {"enabled": True}, "dm_a_to_b": {"enabled": True},
                         "dm_b_to_a": {"enabled": True}}],
        "model": {"backbone": "test_resnet"},
        "optim": {"lr": 0.003, "warmup_steps": 5},
        "train": {"max_steps": 30, "val_every_steps": 15, "checkpoint_every_steps": 15, **train},
        "trainer": {"enable_progress_bar": False},
    }
