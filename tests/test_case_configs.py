"""The case-study configs (configs/fashion_mnist.yaml, cub200.yaml, celeba.yaml, face_flagship.yaml)
validated by ``distmtl train --dry-run`` against fixture trees in the real on-disk layouts
(tests/fixtures/), with the dataset roots overridden on the command line; Fashion-MNIST uses the
real files when Debian's dataset-fashion-mnist package is installed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fixtures.loaders_au import (
    CUB_ATTRIBUTES,
    CUB_CLASSES,
    write_bp4d,
    write_cub,
    write_disfa,
    write_fashion_mnist,
)
from fixtures.loaders_expr import make_affectnet, make_celeba, make_rafdb

from distmtl.cli import main
from distmtl.data.loaders import celeba, fashion_mnist
from distmtl.errors import DistmtlError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def dry_run(capsys, config: str, *overrides: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["train", "--config", str(CONFIGS / config), "--dry-run", *overrides])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def raw(config: str) -> dict:
    return yaml.safe_load((CONFIGS / config).read_text())


def root_overrides(config: str, roots: dict[str, Path]) -> list[str]:
    """``<key>.root=<fixture>`` for every source (and loader table) whose root starts with a
    placeholder prefix in ``roots``; fails on a placeholder without a fixture."""
    data, out = raw(config)["data"], []

    def visit(spec, key: str) -> None:
        if isinstance(spec, dict) and spec.get("root"):
            prefix = next((p for p in roots if str(spec["root"]).startswith(p)), None)
            assert prefix is not None, f"{config}: {key}.root {spec['root']} has no fixture"
            out.append(f"{key}.root={roots[prefix]}")

    for i, spec in enumerate(data["sources"]):
        visit(spec, f"data.sources.{i}")
    for split in ("val", "test", "oracle"):
        visit(data.get(split), f"data.{split}")
    for i, edge in enumerate(raw(config).get("relatedness") or []):
        visit(edge.get("table"), f"relatedness.{i}.table")
    return out


def described(out: str) -> dict[str, str]:
    """The dry-run description as {"task <name>" | "source <name>" | "val" | ...: rest of line}."""
    lines = {}
    for line in out.splitlines():
        match = re.match(r"\s+(task \S+|source \S+|val|test|relatedness [^:]+): (.*)$", line)
        if match:
            lines[match.group(1)] = match.group(2)
    return lines


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    if fashion_mnist.DEFAULT_ROOT.is_dir():
        return fashion_mnist.DEFAULT_ROOT
    # As many images as the config's subsets reach (11,500 train, 10,000 test).
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), n_train=11500, n_test=10000)


def test_fashion_mnist_config_dry_run(capsys, fashion_root):
    overrides = root_overrides("fashion_mnist.yaml", {"/usr/share/datasets/fashion-mnist": fashion_root})
    code, out, err = dry_run(capsys, "fashion_mnist.yaml", *overrides)
    assert code == 0, err
    lines = described(out)
    assert lines["task category"] == "multiclass, 10 outputs"
    assert lines["task attributes"] == f"multilabel, {len(fashion_mnist.ATTRIBUTES)} outputs"
    # Disjoint images, disjoint annotations: 1,500 with the category only, 10,000 with attributes only.
    assert lines["source categories"] == "1500 images (category=1500)"
    assert lines["source attributes"] == "10000 images (attributes=10000)"
    assert lines["val"] == "2000 images" and lines["test"] == "5000 images"  # val: 2,000 of its half
    assert lines["relatedness category -> attributes"] == "fashion_attributes 10x14"


def test_fashion_mnist_config_sources_are_disjoint_and_oracle_covers_them(fashion_root):
    data = raw("fashion_mnist.yaml")["data"]
    windows = {}
    for spec in [*data["sources"], data["val"], data["test"], data["oracle"]]:
        start, stop = spec["options"]["subset"]
        windows[spec["name"]] = (spec["split"], start, stop)
    assert windows["categories"][0] == windows["attributes"][0] == "train"
    assert windows["categories"][2] <= windows["attributes"][1]  # disjoint training images
    assert windows["oracle"] == ("train", windows["categories"][1], windows["attributes"][2])
    assert windows["val"][0] == windows["test"][0] == "test"
    assert windows["val"][2] <= windows["test"][1]  # disjoint halves of the official test split
    # The oracle's attribute labels are the attribute source's (the draw is per image index).
    start, stop = windows["attributes"][1:]
    names = list(fashion_mnist.ATTRIBUTES)
    source = fashion_mnist.load(fashion_root, "train", subset=[start, stop], keep="attributes")
    oracle = fashion_mnist.load(fashion_root, "train", subset=[0, stop])
    assert source.frame["category"].isna().all()
    assert (source.frame[names].to_numpy() == oracle.frame[names].to_numpy()[start:]).all()
    assert (source.images == oracle.images[start:]).all()
    only = fashion_mnist.load(fashion_root, "train", subset=[0, 5], keep="category")
    assert not set(names) & set(only.frame.columns) and only.frame["category"].notna().all()


@pytest.mark.parametrize("options, expected", [
    ({"subset": [5, 2]}, "0 <= start < stop"),
    ({"subset": [0, 31]}, "reaches past the 30 images of split 'train'"),
    ({"subset": 7}, "subset must be [start, stop]"),
    ({"subset": [0, 3], "split": "all"}, "subset needs split 'train' or 'test'"),
    ({"keep": "species"}, "keep must be one of both, category, attributes"),
    ({"keep": "attributes", "attributes": False}, "keep: attributes needs attributes: true"),
])
def test_fashion_mnist_subset_and_keep_errors(tmp_path, options, expected):
    root = write_fashion_mnist(tmp_path, n_train=30, n_test=10)
    options = {"split": "train", **options}
    with pytest.raises(DistmtlError, match=re.escape(expected)):
        fashion_mnist.load(root, options.pop("split"), **options)


def test_fashion_mnist_subset_to_the_end_then_max_per_split(tmp_path):
    root = write_fashion_mnist(tmp_path, n_train=30, n_test=10)
    full = fashion_mnist.load(root, "train")
    tail = fashion_mnist.load(root, "train", subset=[25, None])
    assert list(tail.frame["image"]) == [0, 1, 2, 3, 4] and (tail.images == full.images[25:]).all()
    assert list(tail.frame["category"]) == list(full.frame["category"][25:])
    capped = fashion_mnist.load(root, "train", subset=[10, 20], max_per_split=4)
    assert (capped.images == full.images[10:14]).all()


# ---------------------------------------------------------------- CUB-200-2011

def test_cub200_config_dry_run(capsys, tmp_path):
    root = write_cub(tmp_path / "cub")
    config = raw("cub200.yaml")
    species, attributes = (config["tasks"][t]["labels"] for t in ("species", "attributes"))
    assert len(species) == len(set(species)) == 200 and len(attributes) == len(set(attributes)) == 312
    # The fixture holds the first 3 species and the first 6 attributes of the release.
    fixture_species = [c.split(".", 1)[1] for c in CUB_CLASSES]
    assert species[:3] == fixture_species and attributes[:6] == list(CUB_ATTRIBUTES)
    roots = root_overrides("cub200.yaml", {"/data/CUB_200_2011": root})
    assert "relatedness.0.table.root=" + str(root) in roots
    labels = [f"tasks.species.labels={json.dumps(species[:3])}",
              f"tasks.attributes.labels={json.dumps(attributes[:6])}"]
    code, out, err = dry_run(capsys, "cub200.yaml", *roots, *labels)
    assert code == 0, err
    lines = described(out)
    assert lines["task species"] == "multiclass, 3 outputs"
    assert lines["task attributes"] == "multilabel, 6 outputs"
    assert lines["source species"] == "3 images (species=3)"
    assert lines["source attributes"].startswith("3 images (attributes=3)")
    assert lines["test"] == "3 images" and "val" not in lines
    assert lines["relatedness species -> attributes"] == "cub200_class_attributes 3x6"
    # With the full label lists, the fixture's 3-species matrix cannot be aligned: the dry run
    # says so (the lists are checked against the dataset's own files).
    code, out, err = dry_run(capsys, "cub200.yaml", *roots)
    assert code == 2 and "relatedness[0].table" in err and "Groove_billed_Ani" in err


def test_loader_table_errors_name_the_key(capsys, tmp_path):
    root = write_cub(tmp_path / "cub", images=False)
    roots = [o for o in root_overrides("cub200.yaml", {"/data/CUB_200_2011": root})
             if not o.startswith("relatedness.")]
    for table, expected in (("{loader: cub200}", "relatedness[0].table.root: the dataset folder is required"),
                            (f"{{loader: rafdb, root: {root}}}", "loader 'rafdb' provides no relatedness"),
                            (f"{{loader: cub200, root: {root}, option: 1}}",
                             "relatedness[0].table.option: unknown key (did you mean: options")):
        code, _, err = dry_run(capsys, "cub200.yaml", *roots, f"relatedness.0.table={table}")
        assert code == 2 and expected in err, err


# ---------------------------------------------------------------- CelebA

def test_celeba_config_dry_run(capsys, tmp_path):
    root = make_celeba(tmp_path / "celeba").root
    assert raw("celeba.yaml")["tasks"]["attributes"]["labels"] == list(celeba.ATTRIBUTES)
    code, out, err = dry_run(capsys, "celeba.yaml", *root_overrides("celeba.yaml", {"/data/CelebA": root}))
    assert code == 0, err
    lines = described(out)
    assert lines["task attributes"] == "multilabel, 40 outputs"
    assert lines["source celeba"] == "3 images (attributes=3)"
    assert lines["val"] == "1 images" and lines["test"] == "2 images"


# ---------------------------------------------------------------- AffectNet + RAF-DB + DISFA + BP4D

@pytest.fixture(scope="module")
def face_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("faces")
    return {"/data/AffectNet": make_affectnet(base / "affectnet").root,
            "/data/RAF-DB": make_rafdb(base / "rafdb").root,
            "/data/DISFA": write_disfa(base / "disfa", images=False),
            "/data/BP4D": write_bp4d(base / "bp4d", images=False)}


def test_face_flagship_config_dry_run(capsys, face_roots):
    code, out, err = dry_run(capsys, "face_flagship.yaml",
                             *root_overrides("face_flagship.yaml", face_roots))
    assert code == 0, err
    lines = described(out)
    assert lines["task expression"] == "multiclass, 7 outputs"
    assert lines["task au"] == "multilabel, 17 outputs"
    assert re.fullmatch(r"\d+ images \(expression=\d+\)", lines["source affectnet"])
    assert re.fullmatch(r"\d+ images \(expression=\d+\)", lines["source rafdb"])
    assert re.fullmatch(r"\d+ images \(au=\d+\)", lines["source disfa"])
    assert re.fullmatch(r"\d+ images \(au=\d+\)", lines["source bp4d"])
    assert re.fullmatch(r"\d+ images", lines["test"])
    assert lines["relatedness expression -> au"] == "du2014 7x17"


def test_face_flagship_documented_test_overrides(capsys, face_roots):
    """The per-dataset test overrides listed in the config's header work as written."""
    text = (CONFIGS / "face_flagship.yaml").read_text()
    documented = re.findall(r"^#\s+(data\.test=\{.*\})\s*$", text, flags=re.M)
    assert {re.search(r"loader: (\w+)", d).group(1) for d in documented} == {"affectnet", "disfa", "bp4d"}
    roots = root_overrides("face_flagship.yaml", face_roots)
    for override in documented:
        for placeholder, root in face_roots.items():
            override = override.replace(f"root: {placeholder},", f"root: {root},")
        code, out, err = dry_run(capsys, "face_flagship.yaml", *roots, override)
        assert code == 0, f"{override}: {err}"
        assert re.search(r"^\s+test: \d+ images$", out, flags=re.M), out
