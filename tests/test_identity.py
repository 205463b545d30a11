"""The identity task end to end: classes from the data, heads, identity groups in batches,
``distmtl evaluate`` with drawn and LFW-format pairs, identity -> attribute edges (pair drawing
and the pair-file format alone: test_verification.py)."""

import csv
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from distmtl.cli import main
from distmtl.config import resolve
from distmtl.data.csvformat import cache_images, encode, read_csv_source
from distmtl.data.sources import MultiSourceDataset, SourceDataset
from distmtl.data.transforms import Preprocessing, eval_transform
from distmtl.errors import DistmtlError
from distmtl.training.evaluate import collect_outputs
from distmtl.training.experiment import build_experiment
from distmtl.models import ArcMarginHead, MultiTaskNet
from distmtl.training.runner import datamodule_from_experiment, load_module, module_from_experiment, train_experiment
from distmtl.tasks import Task
from distmtl.evaluation.verification import (
    verification_metrics,
)

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_IDS = [f"Train_{i}" for i in range(6)]
HELD_OUT = ["Ann_Lee", "Bob_Ray", "Cy_Zed", "Di_Fox"]


def attributes(name: str) -> tuple[int, int]:
    """glasses, beard: fixed per person."""
    i = (TRAIN_IDS + HELD_OUT).index(name)
    return i % 2, (i // 2) % 2


def write_faces(root: Path, seed: int = 0) -> dict[str, Path]:
    """Six training people (10 images each); val: four held-out people (6 each); test: the four
    held-out people (5 each) then two training people. Files follow LFW's naming
    (``<name>/<name>_<k:04d>.png``) except Cy_Zed's; the test CSV lists Ann_Lee's files from
    number 5 down to 1, so LFW naming and row order disagree for her."""
    rng = np.random.default_rng(seed)
    colours = {n: rng.integers(60, 196, 3) for n in TRAIN_IDS + HELD_OUT}

    def image(name):
        pixels = np.clip(colours[name] + rng.normal(0, 60, (32, 32, 3)), 0, 255)
        glasses, beard = attributes(name)
        if glasses:
            pixels[2:8] = 255
        if beard:
            pixels[24:30] = 0
        return pixels.astype(np.uint8)

    files = {}
    for split, names, n in [("train", TRAIN_IDS, 10), ("val", HELD_OUT, 6), ("test", HELD_OUT + TRAIN_IDS[:2], 5)]:
        rows = ["image,identity,glasses,beard"]
        for name in names:
            numbers = range(n, 0, -1) if (split, name) == ("test", "Ann_Lee") else range(1, n + 1)
            for k in numbers:
                rel = f"{split}/cz/x{k}.png" if name == "Cy_Zed" else f"{split}/{name}/{name}_{k:04d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image(name)).save(root / rel)
                rows.append(f"{rel},{name},{','.join(map(str, attributes(name)))}")
        files[split] = root / f"{split}.csv"
        files[split].write_text("\n".join(rows) + "\n")
    return files


def identity_config(files, identity=None, **train) -> dict:
    return {
        "name": "faces",
        "tasks": {"identity": identity or {"kind": "identity"},
                  "attrs": {"kind": "multilabel", "labels": ["glasses", "beard"]}},
        "data": {"sources": [{"name": "faces", "csv": str(files["train"])}], "val": str(files["val"]),
                 "test": str(files["test"]), "image_size": 32, "batch_size": 16, "num_workers": 0},
        "model": {"backbone": "test_resnet"},
        "optim": {"lr": 0.003, "warmup_steps": 2},
        "train": {"max_steps": 6, "val_every_steps": 3, "checkpoint_every_steps": 3, **train},
        "trainer": {"enable_progress_bar": False},
    }


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_faces(tmp_path_factory.mktemp("faces"))


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    exp = build_experiment(resolve(identity_config(faces)))
    out = tmp_path_factory.mktemp("identity_run")
    return exp, out, train_experiment(exp, out, progress=False)


# ----------------------------------------------------------------------------- classes from the data


@pytest.mark.slow
def test_identity_classes_come_from_the_training_data_and_checkpoints_keep_them(trained, faces):
    exp, out, results = trained
    expected = tuple(sorted({r["identity"] for r in csv_rows(faces["train"])}))
    assert expected == tuple(TRAIN_IDS)
    assert exp.tasks["identity"].labels == expected
    module = load_module(out / "checkpoints" / "best.ckpt")
    assert module.tasks["identity"].labels == expected
    assert module.net.heads["identity"].weight.shape[0] == len(TRAIN_IDS)
    val = results["val"]["identity"]
    assert val["accuracy"] is None and val["n"] == 0  # val people are all held out
    # 4 people x 6 images: 4 * C(6, 2) = 60 same pairs, C(24, 2) - 60 = 216 different ones
    assert val["verification_pairs"] == 120
    assert 0.0 <= val["verification_accuracy"] <= 1.0
    test = results["test"]["identity"]
    assert test["n"] == 10 and test["accuracy"] is not None


@pytest.mark.parametrize("spec", [{"kind": "identity"}, {"kind": "identity", "labels": "from_data"}])
def test_no_labels_or_from_data_resolve_to_the_sorted_training_identities(faces, spec):
    exp = build_experiment(resolve(identity_config(faces, spec)), with_eval=False)
    assert exp.tasks["identity"].labels == tuple(TRAIN_IDS)
    source = exp.train_sources[0]
    assert source.masks["identity"].all()
    names = [r["identity"] for r in csv_rows(faces["train"])]
    np.testing.assert_array_equal(source.targets["identity"], [TRAIN_IDS.index(n) for n in names])


def test_explicit_identity_labels_keep_working(faces):
    exp = build_experiment(resolve(identity_config(faces, {"kind": "identity", "labels": ["Train_3", "Train_1"]})),
                           with_eval=False)
    source = exp.train_sources[0]
    names = np.array([r["identity"] for r in csv_rows(faces["train"])])
    np.testing.assert_array_equal(source.masks["identity"], np.isin(names, ["Train_3", "Train_1"]))
    assert set(source.targets["identity"][names == "Train_1"]) == {1}
    assert len(set(source.groups["identity"])) == 6  # groups cover the other people too


def test_identity_label_errors(faces):
    raw = identity_config(faces)
    raw["tasks"]["expr"] = {"kind": "multiclass"}
    with pytest.raises(DistmtlError, match=r"^tasks\.expr\.labels: missing$"):
        build_experiment(resolve(raw))
    raw["tasks"]["expr"] = {"kind": "multiclass", "labels": "from_data"}
    with pytest.raises(DistmtlError, match=r"tasks\.expr\.labels: 'from_data' is for identity tasks only"):
        build_experiment(resolve(raw))
    raw = identity_config(faces)
    raw["data"]["sources"][0]["rename"] = {"identity": "person"}
    with pytest.raises(DistmtlError, match=r"tasks\.identity\.labels: .*no training source has an identity"):
        build_experiment(resolve(raw))


def test_a_split_without_same_identity_pairs_fails_before_training(faces, tmp_path):
    rows = csv_rows(faces["val"])
    single = tmp_path / "single.csv"
    single.write_text("image,identity\n" + "".join(
        f"{faces['val'].parent / r['image']},{r['identity']}\n" for r in rows[::6]))  # one image per person
    raw = identity_config(faces)
    raw["data"]["val"] = str(single)
    with pytest.raises(DistmtlError, match=r"data\.val \('single'\), task 'identity': .*no identity has two"):
        build_experiment(resolve(raw))


# ----------------------------------------------------------------------------- heads


def test_identity_head_option():
    tasks = {"a": Task("a", "identity", ("p", "q", "r")),
             "b": Task("b", "identity", ("p", "q"), options={"head": "softmax"})}
    net = MultiTaskNet(tasks)
    assert isinstance(net.heads["a"], ArcMarginHead)
    assert isinstance(net.heads["b"], torch.nn.Linear) and net.heads["b"].out_features == 2
    with pytest.raises(DistmtlError, match=r"^tasks\.c\.options\.head: unknown identity head 'softmx' "
                                           r"\(did you mean: softmax\?\)"):
        Task("c", "identity", ("p",), options={"head": "softmx"})


def test_arc_margin_head_margin_zero_is_scaled_cosine_softmax():
    torch.manual_seed(0)
    head = ArcMarginHead(4, 3, scale=10.0, margin=0.0)
    x = torch.randn(5, 4)
    target = torch.tensor([0, 2, 1, 1, 0])
    w = head.weight.detach().numpy()
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    cosine = xn @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    logits = head(x, target)
    np.testing.assert_allclose(logits.detach().numpy(), 10.0 * cosine, rtol=1e-5, atol=1e-5)
    z = 10.0 * cosine
    expected_ce = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(5), target.numpy()])
    assert float(F.cross_entropy(logits, target).detach()) == pytest.approx(expected_ce, rel=1e-5)

    margin = ArcMarginHead(4, 3, scale=10.0, margin=0.3)
    margin.weight.data.copy_(head.weight.data)
    out = margin(x, target).detach().numpy()
    expected = 10.0 * cosine
    rows = np.arange(5)
    expected[rows, target.numpy()] = 10.0 * np.cos(np.arccos(cosine[rows, target.numpy()]) + 0.3)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    margin.eval()  # no margin at evaluation
    np.testing.assert_allclose(margin(x, target).detach().numpy(), 10.0 * cosine, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- groups in batches


def test_groups_in_items_and_batches_across_sources(faces, tmp_path):
    tasks = {"identity": Task("identity", "identity", ("Train_0",)),
             "attrs": Task("attrs", "multilabel", ("glasses", "beard"))}
    test_rows = csv_rows(faces["test"])
    with_missing = tmp_path / "ids.csv"
    with_missing.write_text("image,identity,glasses\n" + "".join(
        f"{faces['test'].parent / r['image']},{'' if i == 2 else r['identity']},1\n"
        for i, r in enumerate(test_rows[:8])))
    no_ids = tmp_path / "attrs.csv"
    no_ids.write_text("image,glasses,beard\n" + "".join(
        f"{faces['train'].parent / r['image']},{r['glasses']},{r['beard']}\n" for r in csv_rows(faces["train"])[:3]))
    first = encode(read_csv_source(with_missing, tasks), tasks)
    second = encode(read_csv_source(no_ids, tasks), tasks)

    names = [r["identity"] for r in test_rows[:8]]  # Ann_Lee x5, Bob_Ray x3; row 2 left empty
    groups = first.groups["identity"]
    assert groups.dtype == np.int64 and groups[2] == -1
    for i, j in itertools.combinations([k for k in range(8) if k != 2], 2):
        assert (groups[i] == groups[j]) == (names[i] == names[j])
    assert (second.groups["identity"] == -1).all()
    np.testing.assert_array_equal(cache_images(first, 32, 3).groups["identity"], groups)

    pre = Preprocessing(size=32)
    datasets = [SourceDataset(s, eval_transform(pre), 3) for s in (first, second)]
    assert datasets[0][0]["groups"] == {"identity": groups[0]}
    batch = next(iter(DataLoader(MultiSourceDataset(datasets), batch_size=11)))
    assert batch["groups"]["identity"].tolist() == groups.tolist() + [-1, -1, -1]

    from distmtl.study.compare import restrict

    only_attrs = SourceDataset(restrict(first, ["attrs"]), eval_transform(pre), 3)
    assert only_attrs[0]["groups"] == {}
    assert next(iter(DataLoader(only_attrs, batch_size=4)))["groups"] == {}
    kept = SourceDataset(restrict(first, ["identity"]), eval_transform(pre), 3)
    assert kept[1]["groups"] == {"identity": groups[1]}


# ----------------------------------------------------------------------------- distmtl evaluate


@pytest.mark.slow
def test_evaluate_saved_pairs_name_the_right_rows_and_score_the_same(trained, faces, tmp_path):
    _, out, _ = trained
    ckpt = out / "checkpoints" / "best.ckpt"
    pairs, first, second = tmp_path / "pairs.txt", tmp_path / "drawn.json", tmp_path / "read.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(faces["test"]), "--num-workers", "0",
                 "--n-pairs", "40", "--pairs-seed", "3", "--save-pairs", str(pairs), "--out", str(first)]) == 0
    drawn = json.loads(first.read_text())["identity"]
    assert drawn["verification_pairs"] == 40
    lines = [line.split("\t") for line in pairs.read_text().splitlines()]
    assert lines[0] == ["10", "2"] and len(lines) == 41
    rows = csv_rows(faces["test"])
    for fields in lines[1:]:
        if len(fields) == 3:
            fields = [fields[0], fields[1], fields[0], fields[2]]
        for name, index in ((fields[0], int(fields[1])), (fields[2], int(fields[3]))):
            stem = f"{name}_{index:04d}"
            by_stem = [r for r in rows if Path(r["image"]).stem == stem]
            row = by_stem[0] if by_stem else [r for r in rows if r["identity"] == name][index - 1]
            assert row["identity"] == name
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(faces["test"]), "--num-workers", "0",
                 "--pairs", str(pairs), "--out", str(second)]) == 0
    read = json.loads(second.read_text())["identity"]
    for key in ("verification_accuracy", "verification_roc_auc", "verification_pairs", "accuracy"):
        assert read[key] == drawn[key]


@pytest.mark.slow
def test_evaluate_with_an_lfw_pairs_file(trained, faces, tmp_path):
    _, out, _ = trained
    ckpt = out / "checkpoints" / "best.ckpt"
    result = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(faces["test"]), "--num-workers", "0",
                 "--pairs", str(FIXTURES / "lfw_pairs.txt"), "--out", str(result)]) == 0
    metrics = json.loads(result.read_text())["identity"]
    # rows: Ann_Lee k -> 5 - k (her files are listed from _0005 down), Bob_Ray k -> 4 + k,
    # Cy_Zed k -> 9 + k (no LFW file names: k-th row of the person), Di_Fox k -> 14 + k
    a = [4, 11, 3, 10, 6, 15, 7, 0]
    b = [2, 13, 5, 19, 9, 18, 14, 16]
    same = np.array([True, True, False, False, True, True, False, False])
    module = load_module(ckpt)
    exp = build_experiment(resolve(identity_config(faces)))
    embeddings = collect_outputs(module, datamodule_from_experiment(exp).eval_dataloader("test"))["identity"][3]
    scores = (embeddings[a] * embeddings[b]).sum(1).numpy()
    assert metrics["verification_pairs"] == 8
    assert metrics["verification_roc_auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-6)
    expected = verification_metrics(embeddings[a], embeddings[b], same, n_folds=2, seed=None)
    assert metrics["verification_accuracy"] == pytest.approx(expected["accuracy"])
    # thresholds are midpoints of the pair scores: another row would move them
    assert metrics["verification_threshold"] == pytest.approx(expected["threshold"], abs=1e-9)



@pytest.mark.slow
@pytest.mark.parametrize("line, message", [
    ("Ann_Lee\t1\tBob_Ray\t9", r"bad\.txt: line 4: 'Bob_Ray 9' matches no row of .*test\.csv \(no image "
                               r"'Bob_Ray_0009', and identity 'Bob_Ray' has 5 rows\)"),
    ("Nobody\t1\t2", r"bad\.txt: line 4: 'Nobody 1' matches no row .*identity 'Nobody' has 0 rows"),
    ("Ann_Lee\t1", r"bad\.txt: line 4: expected 'name idx1 idx2' or 'name1 idx1 name2 idx2', got 'Ann_Lee 1'"),
    ("Ann_Lee\t0\t2", r"bad\.txt: line 4: image index '0' is not a positive integer"),
])
def test_evaluate_reports_a_bad_pairs_line(trained, faces, tmp_path, capsys, line, message):
    _, out, _ = trained
    lines = (FIXTURES / "lfw_pairs.txt").read_text().splitlines()
    lines[3] = line
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    code = main(["evaluate", "--checkpoint", str(out / "checkpoints" / "best.ckpt"), "--data", str(faces["test"]),
                 "--num-workers", "0", "--pairs", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(message, err), err



# ----------------------------------------------------------------------------- identity -> attributes


def edge_config(faces, table, **train):
    raw = identity_config(faces, **train)
    raw["relatedness"] = [{"tasks": ["identity", "attrs"], "table": table, "coannotation": {"enabled": True},
                           "dm_a_to_b": {"enabled": True}, "dm_b_to_a": {"enabled": True}}]
    return raw


@pytest.mark.slow
def test_identity_to_attribute_edge_estimated_from_data_trains(faces, tmp_path):
    exp = build_experiment(resolve(edge_config(faces, {"estimate": "faces"}, max_steps=4, val_every_steps=4)))
    rel = exp.edges[0].relatedness
    assert rel.classes == tuple(TRAIN_IDS) and rel.labels == ("glasses", "beard")
    # 10 images per person, attributes fixed per person, alpha 1: (n_pos + 1) / (10 + 2)
    expected = np.array([[(10 * v + 1) / 12 for v in attributes(name)] for name in TRAIN_IDS])
    np.testing.assert_allclose(rel.matrix, expected)

    module = module_from_experiment(exp)
    batch = next(iter(datamodule_from_experiment(exp).train_dataloader()))
    total, logged = module.compute_losses(batch)
    assert torch.isfinite(total)
    for name in ("coann:identity->attrs", "coann:attrs->identity", "dm:identity->attrs", "dm:attrs->identity"):
        assert torch.isfinite(logged[f"term/{name}"])
    assert float(logged["term/dm:identity->attrs"]) > 0
    results = train_experiment(exp, tmp_path / "run", progress=False)  # on_nan: stop
    assert results["steps"] == 4 and results["nan_skipped"] == 0


def test_identity_edge_tables(faces, tmp_path):
    for table in ("du2014", {"loader": "cub200", "root": str(tmp_path)}):
        with pytest.raises(DistmtlError, match=r"relatedness\[0\]\.table: 'identity' is an identity task: "
                                               r"expected \{estimate: <source name>\} or a CSV"):
            build_experiment(resolve(edge_config(faces, table)), with_eval=False)
    path = tmp_path / "table.csv"
    values = np.round(np.linspace(0.1, 0.9, 12).reshape(6, 2), 2)
    path.write_text("class,glasses,beard\n" + "".join(
        f"{name},{v[0]},{v[1]}\n" for name, v in zip(TRAIN_IDS[::-1], values[::-1])))
    exp = build_experiment(resolve(edge_config(faces, str(path))), with_eval=False)
    np.testing.assert_allclose(exp.edges[0].relatedness.matrix, values)
