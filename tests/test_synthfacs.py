"""SynthFACS: label generator, AU rendering, determinism and the written dataset."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import distmtl
from distmtl.data.synthfacs import (
    AU_EFFECTS, COLUMNS, COMPOUND_EXPRESSIONS, COMPOUND_GENERATOR_TABLE, DU2014_BASIC,
    DU2014_COMPOUND, GENERATOR_TABLE, NO_NUISANCE, PRESETS, Nuisance, du2014_matrix, generate,
    make_identity, render_face, sample_image, sample_labels, sample_nuisance)
from distmtl.data.synthfacs.generator import perturbed_matrix
from distmtl.errors import DistmtlError
from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS, RAFDB_COMPOUND_11

LABELS_DIR = Path(distmtl.__file__).parent / "relatedness" / "tables"


# ---------------------------------------------------------------- generator tables


def test_generator_table_is_close_to_but_not_du2014():
    assert GENERATOR_TABLE.classes == BASIC_EXPRESSIONS
    assert GENERATOR_TABLE.aus == AUS_17
    du = du2014_matrix(DU2014_BASIC, BASIC_EXPRESSIONS)
    g = GENERATOR_TABLE.probs
    assert g.shape == (7, 17)
    assert not np.array_equal(g, du)
    assert np.abs(g - du).max() <= 0.15
    assert np.all(g[du == 1] >= 0.85) and np.all(g[du == 1] <= 0.95)
    observational = (du > 0) & (du < 1)
    assert np.abs(g - du)[observational].max() <= 0.1 + 1e-9
    assert np.all((g[du == 0] >= 0.03) & (g[du == 0] <= 0.06))
    assert np.all(g[0] <= 0.06)  # Neutral: background only
    # a constant of the generator: recomputing it gives the same numbers
    np.testing.assert_array_equal(perturbed_matrix(DU2014_BASIC, BASIC_EXPRESSIONS), g)


def test_compound_table_follows_du2014_compound_rows():
    assert len(COMPOUND_EXPRESSIONS) == 13
    assert COMPOUND_GENERATOR_TABLE.classes == COMPOUND_EXPRESSIONS
    du = du2014_matrix(DU2014_COMPOUND, COMPOUND_EXPRESSIONS)
    g = COMPOUND_GENERATOR_TABLE.probs
    assert g.shape == (13, 17)
    assert np.all(g[du == 1] >= 0.85)
    assert np.all(g[du == 0] <= 0.06)
    assert 0 < np.abs(g - du).max() <= 0.15


@pytest.mark.parametrize("name, table", [("du2014.csv", DU2014_BASIC),
                                         ("du2014_compound.csv", DU2014_COMPOUND)])
def test_embedded_du2014_matches_the_packaged_csv(name, table):
    path = LABELS_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0][1:]) == AUS_17
    classes = [r[0] for r in rows[1:]]
    assert set(classes) == set(table)
    expected = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(du2014_matrix(table, classes), expected)


def test_empirical_au_rates_match_the_generator_table():
    rng = np.random.default_rng(123)
    n = 20_000
    for k, name in enumerate(BASIC_EXPRESSIONS):
        labels = sample_labels(rng, n, GENERATOR_TABLE, expression=k)
        assert np.all(labels.expression == k)
        rates = labels.active.mean(axis=0)
        assert np.abs(rates - GENERATOR_TABLE.probs[k]).max() < 0.02, name
        on = labels.intensity[labels.active]
        assert on.min() >= 0.4 and on.max() <= 1.0
        assert np.all(labels.intensity[~labels.active] == 0)
        assert np.all(np.abs(labels.va) <= 1.0)


def test_expressions_are_uniform_and_va_follows_the_class():
    labels = sample_labels(np.random.default_rng(5), 14_000)
    counts = np.bincount(labels.expression, minlength=7)
    assert np.all(np.abs(counts / 14_000 - 1 / 7) < 0.015)
    mean_va = {c: labels.va[labels.expression == k].mean(axis=0)
               for k, c in enumerate(BASIC_EXPRESSIONS)}
    assert mean_va["Happiness"][0] > 0.4 and mean_va["Sadness"][0] < -0.3
    assert mean_va["Anger"][1] > 0.35 and mean_va["Sadness"][1] < -0.15
    assert np.abs(mean_va["Neutral"]).max() < 0.05


# ---------------------------------------------------------------- rendering


def _identities():
    """A few identities covering glasses, beards and every hair style."""
    found, styles = [], set()
    for i in range(200):
        ident = make_identity(0, i)
        new = (ident.hair_style not in styles
               or (ident.glasses and not any(f.glasses for f in found))
               or (ident.beard and not any(f.beard for f in found)))
        if new:
            found.append(ident)
            styles.add(ident.hair_style)
    pool = [make_identity(0, i) for i in range(200)]
    found += [min(pool, key=lambda f: sum(f.skin)), max(pool, key=lambda f: sum(f.skin))]
    assert {f.hair_style for f in found} == {"short", "long", "bald", "fringe"}
    assert any(f.glasses for f in found) and any(f.beard for f in found)
    return found


def _box_mask(region, size, margin=1):
    x0, y0, x1, y1 = region
    mask = np.zeros((size, size), dtype=bool)
    c0 = max(0, int(np.floor((x0 + 1) / 2 * size)) - margin)
    c1 = int(np.ceil((x1 + 1) / 2 * size)) + margin
    r0 = max(0, int(np.floor((y0 + 1) / 2 * size)) - margin)
    r1 = int(np.ceil((y1 + 1) / 2 * size)) + margin
    mask[r0:r1, c0:c1] = True
    return mask


@pytest.mark.parametrize("au", AUS_17)
def test_each_au_changes_its_documented_region_only(au):
    size = 64
    mask = _box_mask(AU_EFFECTS[au].region, size)
    for ident in _identities():
        neutral = render_face(ident, None, size=size).astype(int)
        full = np.abs(render_face(ident, {au: 1.0}, size=size).astype(int) - neutral).max(axis=2)
        half = np.abs(render_face(ident, {au: 0.5}, size=size).astype(int) - neutral).max(axis=2)
        assert not (full[~mask] > 8).any(), f"{au} changes pixels outside its region ({ident.name})"
        assert (full[mask] > 12).sum() >= 8, f"{au} barely visible on {ident.name}"
        assert 0 < half.sum() < full.sum(), f"{au} not graded on {ident.name}"


def test_render_face_api():
    ident = make_identity(0, 3)
    vec = np.zeros(17)
    vec[AUS_17.index("AU12")] = 0.8
    image = render_face(ident, vec)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, render_face(ident, {"AU12": 0.8}, NO_NUISANCE))
    assert render_face(ident, None, size=96).shape == (96, 96, 3)
    with pytest.raises(DistmtlError, match="AU99"):
        render_face(ident, {"AU99": 1.0})
    with pytest.raises(DistmtlError):
        render_face(ident, np.zeros(5))
    with pytest.raises(DistmtlError):
        render_face(ident, None, size=8)


def test_nuisance_strength():
    rng = np.random.default_rng(0)
    assert sample_nuisance(rng, 0.0) == NO_NUISANCE
    with pytest.raises(DistmtlError):
        sample_nuisance(rng, -1.0)
    ident = make_identity(0, 1)
    clean = render_face(ident, None)
    moved = render_face(ident, None, Nuisance(angle=10.0, shift=(0.05, 0.0), scale=1.1))
    noisy = render_face(ident, None, Nuisance(noise=6.0, noise_seed=3, blur=0.5,
                                              light=(0.2, 0.0)))
    assert np.abs(clean.astype(int) - moved).mean() > 3
    assert np.abs(clean.astype(int) - noisy).mean() > 3
    strong = [sample_nuisance(rng, 2.0) for _ in range(200)]
    weak = [sample_nuisance(rng, 0.5) for _ in range(200)]
    assert np.mean([abs(n.angle) for n in strong]) > 2 * np.mean([abs(n.angle) for n in weak])


def test_identity_is_a_fixed_draw():
    a, b = make_identity(7, 11), make_identity(7, 11)
    assert a == b and a.name == "id0011"
    assert make_identity(8, 11) != a
    flags = [(make_identity(0, i).glasses, make_identity(0, i).beard) for i in range(300)]
    glasses, beard = np.mean(flags, axis=0)
    assert 0.15 < glasses < 0.35 and 0.1 < beard < 0.3


def test_sample_image_is_deterministic():
    first, rec1 = sample_image(3, "val", 17, identities=(10, 20))
    again, rec2 = sample_image(3, "val", 17, identities=(10, 20))
    other, _ = sample_image(4, "val", 17, identities=(10, 20))
    assert first.tobytes() == again.tobytes() and rec1 == rec2
    assert first.tobytes() != other.tobytes()
    assert 10 <= int(rec1["identity"][2:]) < 20


# ---------------------------------------------------------------- the written dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthfacs") / "tiny"
    paths = generate(out, **PRESETS["tiny"], seed=1, workers=1, progress=False)
    return out, paths


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_presets_are_generate_arguments():
    assert {"tiny", "demo", "full"} <= set(PRESETS)
    params = inspect.signature(generate).parameters
    for preset in PRESETS.values():
        assert set(preset) <= set(params)
    demo = PRESETS["demo"]
    assert (demo["n_expr"], demo["n_au"], demo["n_va"], demo["n_val"], demo["n_test"]) == (
        3000, 3000, 1000, 1000, 1000)


def test_generate_writes_the_documented_files(tiny):
    out, paths = tiny
    for key in ("expr_train", "au_train", "va_train", "train_all", "oracle_expr_au",
                "oracle_expr_va", "oracle_au_va", "val", "test", "compound_test", "au_intensity",
                "generator_table", "compound_generator_table", "contact_sheet", "manifest"):
        assert paths[key].is_file(), key
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["seed"] == 1 and manifest["size"] == 64
    assert manifest["counts"]["expr_train"] == PRESETS["tiny"]["n_expr"]
    sheet = Image.open(paths["contact_sheet"])
    assert sheet.size[1] > 7 * 64 and sheet.mode == "RGB"
    table = _read(paths["generator_table"])
    assert [r["class"] for r in table] == list(BASIC_EXPRESSIONS)
    got = np.array([[float(r[a]) for a in AUS_17] for r in table])
    np.testing.assert_allclose(got, GENERATOR_TABLE.probs)


def test_csvs_have_the_documented_columns_and_labels(tiny):
    out, paths = tiny
    tiny_sizes = PRESETS["tiny"]
    rows = {k: _read(paths[k]) for k in ("expr_train", "au_train", "va_train", "train_all",
                                         "val", "test", "compound_test")}
    for key, table in rows.items():
        with open(paths[key], newline="") as f:
            assert tuple(next(csv.reader(f))) == COLUMNS, key
        for r in table:
            assert (paths[key].parent / r["image"]).is_file()
            assert r["subject"] == r["identity"]
            assert r["glasses"] in ("0", "1") and r["beard"] in ("0", "1")
    assert len(rows["expr_train"]) == tiny_sizes["n_expr"]
    assert len(rows["train_all"]) == tiny_sizes["n_expr"] + tiny_sizes["n_au"] + tiny_sizes["n_va"]
    for r in rows["expr_train"]:
        assert r["expression"] in BASIC_EXPRESSIONS
        assert all(r[a] == "" for a in AUS_17) and r["valence"] == r["arousal"] == ""
    for r in rows["au_train"]:
        assert r["expression"] == "" and r["valence"] == ""
        assert all(r[a] in ("0", "1") for a in AUS_17)
    for r in rows["va_train"]:
        assert r["expression"] == "" and all(r[a] == "" for a in AUS_17)
        assert -1 <= float(r["valence"]) <= 1 and -1 <= float(r["arousal"]) <= 1
    for key in ("train_all", "val", "test"):
        for r in rows[key]:
            assert r["expression"] in BASIC_EXPRESSIONS
            assert all(r[a] in ("0", "1") for a in AUS_17) and r["valence"] != ""
    assert {r["expression"] for r in rows["compound_test"]} <= set(COMPOUND_EXPRESSIONS)
    eleven = _read(paths["compound_test_11"])  # RAF-DB's 11-class view of the same split
    assert eleven == [r for r in rows["compound_test"] if r["expression"] in RAFDB_COMPOUND_11]
    assert eleven and len(eleven) < len(rows["compound_test"])
    assert {r["split"] for r in rows["train_all"]} == {"train"}
    assert {r["split"] for r in rows["val"]} == {"val"}
    # the oracle holds the same images (and hidden labels) as the sources
    pair = _read(paths["oracle_expr_au"])
    assert [r["image"] for r in pair] == [r["image"] for r in rows["expr_train"] + rows["au_train"]]
    assert all(r["expression"] and r["AU12"] and r["valence"] for r in pair)
    oracle = {r["image"]: r for r in rows["train_all"]}
    for r in rows["au_train"]:
        assert all(oracle[r["image"]][a] == r[a] for a in AUS_17)
    intensity = {r["image"]: r for r in _read(paths["au_intensity"])}
    for r in rows["val"]:
        assert all((float(intensity[r["image"]][a]) > 0) == (r[a] == "1") for a in AUS_17)


def test_sources_and_identities_are_disjoint(tiny):
    out, paths = tiny
    images = {k: {r["image"] for r in _read(paths[k])} for k in ("expr_train", "au_train",
                                                                 "va_train", "val", "test")}
    keys = list(images)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not images[a] & images[b], (a, b)
    train_ids = {r["identity"] for r in _read(paths["train_all"])}
    heldout = set()
    for key in ("val", "test", "compound_test"):
        heldout |= {r["identity"] for r in _read(paths[key])}
    assert train_ids and heldout and not train_ids & heldout


def test_same_bytes_with_two_workers(tiny, tmp_path):
    out, paths = tiny
    other = generate(tmp_path / "again", **PRESETS["tiny"], seed=1, workers=2, progress=False)
    for key in ("expr_train", "train_all", "val", "compound_test", "au_intensity"):
        assert other[key].read_bytes() == paths[key].read_bytes(), key
    first = sorted((out / "images").rglob("*.png"))
    second = sorted((tmp_path / "again" / "images").rglob("*.png"))
    again = tmp_path / "again"
    assert [p.relative_to(out) for p in first] == [p.relative_to(again) for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    assert other["contact_sheet"].read_bytes() == paths["contact_sheet"].read_bytes()


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(DistmtlError, match="n_identities"):
        generate(tmp_path / "a", n_identities=1, progress=False)
    with pytest.raises(DistmtlError, match="n_expr"):
        generate(tmp_path / "b", n_expr=-1, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DistmtlError, match="not empty"):
        generate(foreign, **PRESETS["tiny"], progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_regenerating_replaces_an_older_dataset(tmp_path):
    small = dict(n_expr=6, n_au=6, n_va=3, n_val=3, n_test=3, n_identities=6, progress=False)
    custom = (("Smug", "Startled"), np.eye(2, 17) * 0.9 + 0.05)
    first = generate(tmp_path / "d", **small, n_compound=8, compound_table=custom)
    assert {r["expression"] for r in _read(first["compound_test"])} <= {"Smug", "Startled"}
    assert [r["class"] for r in _read(first["compound_generator_table"])] == ["Smug", "Startled"]
    second = generate(tmp_path / "d", **{**small, "n_expr": 2}, n_compound=0)
    assert "compound_test" not in second and not first["compound_test"].exists()
    assert len(list((tmp_path / "d" / "images" / "expr_train").iterdir())) == 2
    assert not (tmp_path / "d" / "images" / "compound_test").exists()
