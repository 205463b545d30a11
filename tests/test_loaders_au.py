"""Named loaders for DISFA, BP4D, EmotioNet, Aff-Wild2, CUB-200-2011 and Fashion-MNIST, on fixture
trees in the real layouts (tests/fixtures/loaders_au.py), plus the real Fashion-MNIST files when
Debian's dataset-fashion-mnist package is installed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fixtures.loaders_au import (
    AFFWILD_MTL,
    BP4D_PARTS,
    CUB_CLASSES,
    CUB_CONTINUOUS,
    CUB_IMAGES,
    DISFA_PARTS,
    SN001_AU1,
    cub_label,
    write_affwild2,
    write_bp4d,
    write_cub,
    write_disfa,
    write_emotionet,
    write_fashion_mnist,
)

from distmtl.data.loaders import affwild2, bp4d, cub200, disfa, emotionet, fashion_mnist
from distmtl.errors import DistmtlError
from distmtl.tasks import AUS_17


def error(func, *args, **kwargs) -> str:
    with pytest.raises(DistmtlError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def row(frame, image_suffix: str):
    match = frame[frame["image"].str.endswith(image_suffix)]
    assert len(match) == 1, image_suffix
    return match.iloc[0]


# ---------------------------------------------------------------- DISFA
@pytest.fixture(scope="module")
def disfa_root(tmp_path_factory) -> Path:
    return write_disfa(tmp_path_factory.mktemp("disfa"))


def test_disfa_intensity_threshold_default(disfa_root):
    frame = disfa.load(disfa_root, split="all").frame
    assert list(frame.columns[1:18]) == list(AUS_17)
    sn001 = frame[frame["subject"] == "SN001"]["AU01"].tolist()
    assert SN001_AU1 == (1, 0, 3, 5, 2)
    assert sn001 == [0.0, 0.0, 1.0, 1.0, 1.0]  # 1 -> 0, 3 -> 1, 2 -> 1 (>= 2)
    first = row(frame, "img/SN001/0.png")  # frame 1 -> 0-based image index 0
    assert Path(first["image"]).is_file()
    for uncoded in ("AU07", "AU10", "AU14", "AU23", "AU24"):
        assert frame[uncoded].isna().all()
    assert (frame["subject"] == "SN010").sum() == 4  # one frame short, like the real SN010


def test_disfa_threshold_option(disfa_root):
    strict = disfa.load(disfa_root, split="all", threshold=3).frame
    loose = disfa.load(disfa_root, split="all", threshold=1).frame
    assert strict[strict["subject"] == "SN001"]["AU01"].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert loose[loose["subject"] == "SN001"]["AU01"].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert "threshold" in error(disfa.load, disfa_root, threshold=0)


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_disfa_folds_are_subject_disjoint(disfa_root, fold):
    train = disfa.load(disfa_root, split="train", fold=fold).frame
    test = disfa.load(disfa_root, split="test", fold=fold).frame
    assert set(test["subject"]) == set(DISFA_PARTS[fold])
    assert not set(train["subject"]) & set(test["subject"])
    assert set(train["subject"]) | set(test["subject"]) == {s for p in DISFA_PARTS.values() for s in p}
    assert (test["fold"] == fold).all() and (train["fold"] != fold).all()
    assert (test["split"] == "test").all() and (train["split"] == "train").all()


def test_disfa_aus_option(disfa_root):
    frame = disfa.load(disfa_root, split="all", aus="eval8").frame
    assert frame["AU05"].isna().all() and frame["AU01"].notna().all()
    assert "AU07" in error(disfa.load, disfa_root, aus=["AU07"])


def test_disfa_malformed_line(tmp_path):
    root = write_disfa(tmp_path, images=False)
    path = root / "ActionUnit_Labels" / "SN003" / "SN003_au2.txt"
    lines = path.read_text().splitlines()
    lines[2] = "3,7"
    path.write_text("\n".join(lines) + "\n")
    message = error(disfa.load, root, split="all")
    assert str(path) in message and "line 3" in message and "3,7" in message
    loaded = disfa.load(root, split="all", skip_malformed=True)
    assert loaded.skipped == 1 and loaded.notes
    assert math.isnan(row(loaded.frame, "img/SN003/2.png")["AU02"])


def test_disfa_check(disfa_root, tmp_path):
    result = disfa.check(disfa_root)
    assert result.ok, result.format()
    assert result.counts[("all", "subjects")] == (6, 27)
    assert result.counts[("part1", "(all)")] == (9, 8 * 4845 + 4844)
    root = write_disfa(tmp_path / "broken")
    missing = root / "ActionUnit_Labels" / "SN004" / "SN004_au12.txt"
    missing.unlink()
    broken = disfa.check(root)
    assert not broken.ok and str(missing) in broken.problems[0]


# ---------------------------------------------------------------- BP4D
@pytest.fixture(scope="module")
def bp4d_root(tmp_path_factory) -> Path:
    return write_bp4d(tmp_path_factory.mktemp("bp4d"))


def test_bp4d_labels(bp4d_root):
    frame = bp4d.load(bp4d_root, split="all").frame
    unknown = row(frame, "img/F001/T1/101.jpg")
    assert math.isnan(unknown["AU01"])  # 9 = unknown -> masked
    assert unknown["AU02"] == 1.0 and unknown["AU04"] == 1.0  # (101 + au) % 2
    coded = row(frame, "img/F001/T1/100.jpg")
    assert coded["AU01"] == 1.0 and coded["AU02"] == 0.0
    # AU05 has values in the CSV but is outside the FERA 2015 set: all NaN, like AU25 (uncoded).
    assert frame["AU05"].isna().all() and frame["AU25"].isna().all()
    assert "AU11" not in frame.columns and "AU27" not in frame.columns
    assert Path(coded["image"]).is_file()


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_bp4d_folds_are_subject_disjoint(bp4d_root, fold):
    train = bp4d.load(bp4d_root, split="train", fold=fold).frame
    test = bp4d.load(bp4d_root, split="test", fold=fold).frame
    assert set(test["subject"]) == set(BP4D_PARTS[fold])
    assert not set(train["subject"]) & set(test["subject"])
    assert len(train) + len(test) == len(bp4d.load(bp4d_root, split="all").frame)


def test_bp4d_malformed_value(tmp_path):
    root = write_bp4d(tmp_path, images=False)
    path = root / "AUCoding" / "AU_OCC" / "M007_T2.csv"
    lines = path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[1] = "5"  # the AU1 column of frame 102
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    message = error(bp4d.load, root, split="all")
    assert str(path) in message and "line 4" in message
    assert bp4d.load(root, split="all", skip_malformed=True).skipped == 1


def test_bp4d_check(bp4d_root):
    result = bp4d.check(bp4d_root)
    assert result.ok, result.format()
    assert result.counts[("all", "sequences")] == (12, 328)


# ---------------------------------------------------------------- EmotioNet
@pytest.fixture(scope="module")
def emotionet_root(tmp_path_factory) -> Path:
    return write_emotionet(tmp_path_factory.mktemp("emotionet"))


def test_emotionet_labels(emotionet_root):
    loaded = emotionet.load(emotionet_root)
    frame = loaded.frame
    first = row(frame, "images/000001.jpg")
    assert first["AU01"] == 1.0 and first["AU12"] == 1.0 and first["AU02"] == 0.0
    assert math.isnan(first["AU04"])  # 999 = not coded
    assert math.isnan(row(frame, "images/000003.jpg")["AU05"])
    assert frame["AU07"].isna().all() and frame["AU23"].isna().all()  # not in the table
    assert len(frame) == 5  # image 6 has no coded AU
    assert any("AU43" in note for note in loaded.notes)
    assert any("no coded AU" in note for note in loaded.notes)
    assert Path(first["image"]).is_file()


def test_emotionet_val_fraction(emotionet_root):
    train = emotionet.load(emotionet_root, split="train", val_fraction=0.5).frame
    val = emotionet.load(emotionet_root, split="val", val_fraction=0.5).frame
    assert len(train) + len(val) == 5 and not set(train["image"]) & set(val["image"])
    assert "val_fraction" in error(emotionet.load, emotionet_root, split="val")


def test_emotionet_malformed_value(tmp_path):
    root = write_emotionet(tmp_path, images=False)
    path = root / "EmotioNet_FACS_aws_2020_24600.csv"
    lines = path.read_text().splitlines()
    fields = lines[2].split(",")
    fields[2] = "2"  # 'AU 1' of image 2
    lines[2] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    message = error(emotionet.load, root)
    assert str(path) in message and "line 3" in message
    assert emotionet.load(root, skip_malformed=True).skipped == 1


def test_emotionet_check(emotionet_root):
    result = emotionet.check(emotionet_root)
    assert result.ok, result.format()
    assert result.counts[("all", "(all)")] == (6, 24600)


# ---------------------------------------------------------------- Aff-Wild2
@pytest.fixture(scope="module")
def affwild_root(tmp_path_factory) -> Path:
    return write_affwild2(tmp_path_factory.mktemp("affwild2"))


def test_affwild2_per_video_labels(affwild_root):
    loaded = affwild2.load(affwild_root)
    frame = loaded.frame
    f1 = row(frame, "1-30-1280x720/00001.jpg")
    assert f1["expression"] == "Neutral" and f1["AU01"] == 1.0 and f1["valence"] == 0.5
    f2 = row(frame, "1-30-1280x720/00002.jpg")
    assert f2["expression"] == "Happiness"  # index 4
    assert math.isnan(f2["valence"]) and math.isnan(f2["arousal"])  # -5
    f3 = row(frame, "1-30-1280x720/00003.jpg")
    assert f3["expression"] is None or f3["expression"] != f3["expression"]  # -1 -> missing
    assert all(math.isnan(f3[name]) for name in AUS_17)  # AU -1 -> masked
    assert f3["valence"] == pytest.approx(0.1)
    f4 = row(frame, "1-30-1280x720/00004.jpg")  # 7 = Other: dropped by default, AU/VA kept
    assert f4["expression"] is None or f4["expression"] != f4["expression"]
    assert f4["AU02"] == 1.0
    assert frame["AU05"].isna().all() and frame["AU17"].isna().all()
    assert any("'Other' of 1 frame" in note for note in loaded.notes)
    # the second frame of 10-60-1280x720_right has VA -5 only: no label left, dropped
    assert not frame["image"].str.endswith("10-60-1280x720_right/00002.jpg").any()
    assert set(frame["subject"]) == {"1-30-1280x720", "10-60-1280x720_left", "10-60-1280x720_right"}


def test_affwild2_other_kept(affwild_root):
    frame = affwild2.load(affwild_root, other="keep", tasks=["expression"]).frame
    assert row(frame, "1-30-1280x720/00004.jpg")["expression"] == "Other"
    assert list(frame.columns) == ["image", "expression", "subject", "split"]
    assert len(frame) == 8  # the -1 frame has no label


def test_affwild2_tasks_and_splits(affwild_root):
    va = affwild2.load(affwild_root, tasks="va").frame
    assert list(va.columns) == ["image", "valence", "arousal", "subject", "split"]
    test = affwild2.load(affwild_root, split="test")
    assert set(test.frame["split"]) == {"val"} and "not public" in test.notes[0]
    assert len(affwild2.load(affwild_root, split="all").frame) == 13
    with_images = affwild2.load(affwild_root, require_images=True).frame
    assert not with_images["image"].str.endswith("1-30-1280x720/00005.jpg").any()
    assert "expression" in error(affwild2.load, affwild_root, tasks=["expr"])


def test_affwild2_mtl_file(affwild_root):
    loaded = affwild2.load(affwild_root, source="mtl")
    frame = loaded.frame
    first = row(frame, "1-30-1280x720/00001.jpg")
    assert first["expression"] == "Happiness" and first["AU01"] == 1.0 and first["AU02"] == 0.0
    assert first["valence"] == 0.5 and first["subject"] == "1-30-1280x720"
    # the all-missing row (-5, -5, -1, -1 x 12) is dropped; the Other row keeps its AUs
    assert len(frame) == len(AFFWILD_MTL["train"]) - 1
    other = row(frame, "10-60-1280x720_left/00004.jpg")
    assert other["expression"] is None or other["expression"] != other["expression"]
    assert other["AU26"] == 0.0


def test_affwild2_malformed_line(tmp_path):
    root = write_affwild2(tmp_path, images=False)
    path = root / "6th_ABAW_Annotations" / "VA_Estimation_Challenge" / "Train_Set" / "1-30-1280x720.txt"
    lines = path.read_text().splitlines()
    lines[3] = "1.7,0.2"
    path.write_text("\n".join(lines) + "\n")
    message = error(affwild2.load, root, tasks=["va"])
    assert str(path) in message and "line 4" in message and "1.7,0.2" in message
    assert affwild2.load(root, tasks=["va"], skip_malformed=True).skipped == 1


def test_affwild2_check(affwild_root, tmp_path):
    result = affwild2.check(affwild_root)
    assert result.ok, result.format()
    assert result.counts[("train", "Happiness")] == (1, None)
    assert result.counts[("mtl-train", "(all)")] == (3, 142333)
    empty = affwild2.check(tmp_path)
    assert not empty.ok and "EXPR_Set" in empty.problems[0]
    no_images = affwild2.check(write_affwild2(tmp_path / "no_images", images=False))
    assert not no_images.ok and "cropped_aligned" in no_images.problems[0]


# ---------------------------------------------------------------- CUB-200-2011
@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    return write_cub(tmp_path_factory.mktemp("cub"))


def test_cub_species_attributes_and_malformed_line(cub_root):
    loaded = cub200.load(cub_root, split="all")
    frame = loaded.frame
    assert loaded.skipped == 1 and "skipped 1 malformed" in loaded.notes[0]
    assert "3 2 0 3 0 0 5.4320" in loaded.notes[0]
    assert set(frame["species"]) == {"Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"}
    first = row(frame, "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg")
    assert first["split"] == "test" and Path(first["image"]).is_file()
    assert first["has_bill_shape::dagger"] == float(cub_label(1, 2)[0])
    assert math.isnan(frame.loc[2, "has_bill_shape::dagger"])  # image 3's malformed line
    assert (frame["split"] == "train").sum() == sum(t for _, t, _ in CUB_IMAGES.values())
    # the same tree, pointed at CUB_200_2011/ itself (attributes.txt is beside it)
    assert len(cub200.load(cub_root / "CUB_200_2011", split="test").frame) == 3


def test_cub_certainty(cub_root):
    base = cub_root / "CUB_200_2011"
    rows = {image_id: k for k, image_id in enumerate(sorted(CUB_IMAGES))}
    present, certainty = cub200.read_attribute_labels(
        base / "attributes" / "image_attribute_labels.txt", rows, 6)
    assert certainty[0, 0] == cub_label(1, 1)[1] and certainty[4, 5] == cub_label(5, 6)[1]
    assert certainty[2, 1] == 0 and math.isnan(present[2, 1])
    strict = cub200.load(cub_root, split="all", min_certainty=3).frame
    names = strict.columns[2:8]
    for i in sorted(CUB_IMAGES):
        for j, name in enumerate(names, start=1):
            if (i, j) != (3, 2):
                value, cert = cub_label(i, j)
                expected = value if cert >= 3 else None
                got = strict.loc[i - 1, name]
                assert (math.isnan(got) and expected is None) or got == expected


def test_cub_malformed_attributes_raise_when_asked(cub_root):
    message = error(cub200.load, cub_root, skip_malformed_attributes=False)
    assert "image_attribute_labels.txt" in message and "line 14" in message
    assert "3 2 0 3 0 0 5.4320" in message


def test_cub_class_attribute_relatedness(cub_root):
    matrix, classes, attributes = cub200.class_attribute_matrix(cub_root)
    assert matrix.shape == (len(CUB_CLASSES), 6)
    assert np.allclose(matrix, np.array(CUB_CONTINUOUS) / 100)
    assert classes[0] == "Black_footed_Albatross" and attributes[1] == "has_bill_shape::dagger"
    rel = cub200.relatedness(cub_root)
    assert rel.matrix.shape == (3, 6) and rel.matrix[0, 2] == 1.0
    assert tuple(rel.classes) == tuple(classes)


def test_cub_check(cub_root, tmp_path):
    result = cub200.check(cub_root)
    assert result.ok, result.format()
    assert result.counts[("all", "attribute lines skipped")] == (1, None)
    assert result.counts[("train", "(all)")] == (3, 5994)
    root = write_cub(tmp_path, images=False)
    (root / "CUB_200_2011" / "train_test_split.txt").unlink()
    broken = cub200.check(root)
    assert not broken.ok and "train_test_split.txt" in broken.problems[0]


# ---------------------------------------------------------------- Fashion-MNIST
@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), n_train=2000, n_test=10)


def test_fashion_idx_parsing(fashion_root, tmp_path):
    loaded = fashion_mnist.load(fashion_root, split="test")
    assert loaded.images.shape == (10, 28, 28) and loaded.images.dtype == np.uint8
    assert loaded.frame.loc[0, "category"] == "Ankle boot"  # label 9
    assert loaded.frame.loc[1, "category"] == "T-shirt/top"
    assert list(loaded.frame["image"]) == list(range(10))
    raw = write_fashion_mnist(tmp_path, n_train=3, n_test=3, gz=False)
    assert fashion_mnist.load(raw, split="test").frame["category"].tolist()[0] == "Ankle boot"
    both = fashion_mnist.load(fashion_root, split="all", max_per_split=4)
    assert both.frame["split"].tolist() == ["train"] * 4 + ["test"] * 4
    assert both.images.shape[0] == 8 and both.frame["image"].tolist() == list(range(8))


def test_fashion_attribute_noise(fashion_root):
    table, names = fashion_mnist.attribute_table()
    assert table.shape == (10, len(names)) and 10 <= len(names) <= 14
    for noise in (0.05, 0.2):
        frame = fashion_mnist.load(fashion_root, noise=noise, seed=3).frame
        labels = frame["category"].map(fashion_mnist.CLASSES.index).to_numpy()
        p, values = table[labels], frame[names].to_numpy()
        certain = (p == 0) | (p == 1)
        assert certain.sum() > 10000
        assert abs((values[certain] != p[certain]).mean() - noise) < 0.015
    # deterministic per image index, whatever the subset
    full = fashion_mnist.load(fashion_root, seed=7).frame
    head = fashion_mnist.load(fashion_root, seed=7, max_per_split=50).frame
    assert full[names].iloc[:50].equals(head[names])
    other_seed = fashion_mnist.load(fashion_root, seed=8, max_per_split=50).frame
    assert not other_seed[names].equals(head[names])


def test_fashion_relatedness_table():
    rel = fashion_mnist.relatedness()
    assert tuple(rel.classes) == fashion_mnist.CLASSES
    assert rel.matrix[fashion_mnist.CLASSES.index("Ankle boot"), rel.labels.index("footwear")] == 1.0
    assert fashion_mnist.TASKS["attributes"]["labels"] == list(rel.labels)


def test_fashion_missing_files(tmp_path):
    message = error(fashion_mnist.load, tmp_path)
    assert "train-images-idx3-ubyte" in message and "apt-get install dataset-fashion-mnist" in message
    result = fashion_mnist.check(tmp_path)
    assert not result.ok and "train-images-idx3-ubyte" in result.problems[0]


def test_fashion_check(fashion_root):
    result = fashion_mnist.check(fashion_root)
    assert result.ok, result.format()
    assert result.counts[("test", "Ankle boot")] == (1, 1000)


@pytest.mark.skipif(not (fashion_mnist.DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed "
                           "(apt-get install dataset-fashion-mnist)")
def test_fashion_real_data():
    loaded = fashion_mnist.load(split="test")
    assert loaded.images.shape == (10000, 28, 28)
    assert loaded.frame["category"].value_counts().to_dict() == dict.fromkeys(fashion_mnist.CLASSES, 1000)
    assert loaded.frame.loc[0, "category"] == "Ankle boot"


# ---------------------------------------------------------------- wrong roots
@pytest.mark.parametrize("module, expected", [
    (disfa, "ActionUnit_Labels/SN001/SN001_au1.txt"),
    (bp4d, "AUCoding/AU_OCC/F001_T1.csv"),
    (emotionet, "EmotioNet_FACS_aws_2020_24600.csv"),
    (affwild2, "EXPR_Set/Train_Set"),
    (cub200, "images.txt"),
    (fashion_mnist, "train-images-idx3-ubyte"),
])
def test_wrong_root_names_the_file(tmp_path, module, expected):
    message = error(module.load, tmp_path)
    assert str(tmp_path / expected) in message
    result = module.check(tmp_path)
    assert not result.ok and expected in result.problems[0]
