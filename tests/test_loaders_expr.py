"""Named loaders for RAF-DB, AffectNet, FER2013, FER+, CK+ and CelebA on fixture trees."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from fixtures import loaders_expr as fx

from distmtl.data.loaders import get_loader
from distmtl.data.loaders.cli import check_dataset, list_datasets
from distmtl.errors import DistmtlError
from distmtl.tasks import COMPOUND_13, Task


def by_name(frame, column="expression"):
    """{image file name: value} for file-backed frames."""
    return {os.path.basename(p): v for p, v in zip(frame["image"], frame[column])}


# --- loader contract, for every loader ------------------------------------------------------------

MAKERS = {
    "rafdb": (fx.make_rafdb, {}),
    "affectnet": (fx.make_affectnet, {}),
    "fer2013": (fx.make_fer2013, {}),
    "ferplus": (fx.make_ferplus, {}),
    "ckplus": (fx.make_ckplus, {"folds": 2}),
    "celeba": (fx.make_celeba, {}),
}
LABEL_FILES = {  # the file a wrong root is reported against
    "rafdb": "list_patition_label.txt",
    "affectnet": "training.csv",
    "fer2013": "fer2013.csv",
    "ferplus": "fer2013new.csv",
    "ckplus": "Emotion",
    "celeba": "list_attr_celeba.txt",
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_module_contract(name):
    module = get_loader(name)
    assert module.DESCRIPTION and "\n" not in module.DESCRIPTION
    for task, spec in module.TASKS.items():
        if spec["labels"] is not None:
            Task.from_dict(task, spec)
    assert isinstance(module.PUBLISHED_COUNTS, dict)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_wrong_root_names_the_file(name, tmp_path):
    (tmp_path / "unrelated.txt").write_text("x")
    with pytest.raises(DistmtlError) as err:
        get_loader(name).load(tmp_path, "all")
    message = str(err.value)
    assert LABEL_FILES[name] in message and str(tmp_path) in message and "\n" not in message
    report = get_loader(name).check(tmp_path)
    assert not report.ok and LABEL_FILES[name] in report.format()


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_check_passes_on_fixture(name, tmp_path):
    maker, _ = MAKERS[name]
    report = get_loader(name).check(maker(tmp_path).root)
    print(report.format())
    assert report.ok, report.format()
    assert report.counts and "published" in report.format()
    assert any(found > 0 for found, _ in report.counts.values())


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_malformed_line_is_named_then_skipped(name, tmp_path):
    maker, options = MAKERS[name]
    fixture = maker(tmp_path, malformed=True)
    module = get_loader(name)
    with pytest.raises(DistmtlError) as err:
        module.load(fixture.root, "all", **options)
    message = str(err.value)
    assert str(fixture.label_file) in message
    assert f"line {fixture.bad_line}" in message and repr(fixture.bad_value) in message
    source = module.load(fixture.root, "all", skip_malformed=True, **options)
    assert source.skipped == 1
    assert any("malformed" in note for note in source.notes)
    report = module.check(fixture.root)
    assert not report.ok and str(fixture.label_file) in report.format()


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_unknown_split_is_an_error(name, tmp_path):
    maker, options = MAKERS[name]
    with pytest.raises(DistmtlError, match="unknown split 'tain'.*did you mean: train"):
        get_loader(name).load(maker(tmp_path).root, "tain", **options)


# --- RAF-DB ---------------------------------------------------------------------------------------

def test_rafdb_labels_and_splits(tmp_path):
    root = fx.make_rafdb(tmp_path).root
    rafdb = get_loader("rafdb")
    train = rafdb.load(root, "train").frame
    labels = by_name(train)
    assert labels["train_00002_aligned.jpg"] == "Happiness"  # native 4
    assert labels["train_00003_aligned.jpg"] == "Neutral"  # native 7
    assert labels["train_00004_aligned.jpg"] == "Surprise"  # native 1
    assert set(train["split"]) == {"train"} and len(train) == 4
    assert all(os.path.isabs(p) and os.path.exists(p) for p in train["image"])
    test = rafdb.load(root, "test", aligned=False).frame
    assert by_name(test) == {"test_0001.jpg": "Happiness", "test_0002.jpg": "Anger"}
    assert test["image"][0].endswith(os.path.join("basic", "Image", "original", "test_0001.jpg"))
    assert len(rafdb.load(root / "basic", "all").frame) == 6  # root may be basic/ itself
    with pytest.raises(DistmtlError, match="available: train, test, all"):
        rafdb.load(root, "val")


def test_rafdb_compound_subset_has_its_own_labels_and_split(tmp_path):
    fx.make_rafdb(tmp_path)
    root = fx.make_rafdb_compound(tmp_path).root  # both subsets side by side
    rafdb = get_loader("rafdb")
    train = rafdb.load(root, "train", subset="compound").frame
    assert by_name(train, "compound") == {"train_0001_aligned.jpg": "Happily surprised",  # 1
                                          "train_0002_aligned.jpg": "Disgustedly surprised",  # 11
                                          "train_0003_aligned.jpg": "Sadly disgusted"}  # 6
    assert "expression" not in train.columns
    assert all(os.path.join("compound", "Image", "aligned") in p for p in train["image"])
    assert len(rafdb.load(root / "compound", "test", subset="compound").frame) == 3  # the folder itself
    assert set(rafdb.TASKS["compound"]["labels"]) < set(COMPOUND_13)
    assert len(rafdb.TASKS["compound"]["labels"]) == 11
    with pytest.raises(DistmtlError, match="expected file not found"):
        rafdb.load(root / "basic", "train", subset="compound")  # never reads basic labels as compound
    with pytest.raises(DistmtlError, match="did you mean: compound"):
        rafdb.load(root, "train", subset="compund")
    report = rafdb.check(root)
    assert report.ok and report.counts[("compound train", "(all)")] == (3, 3162)


def test_rafdb_compound_bad_label_names_line_and_value(tmp_path):
    fixture = fx.make_rafdb_compound(tmp_path, malformed=True)
    with pytest.raises(DistmtlError, match=f"line {fixture.bad_line}: label is not one of 1..11: '12'"):
        get_loader("rafdb").load(fixture.root, "train", subset="compound")


def test_rafdb_crlf_label_file(tmp_path):
    fixture = fx.make_rafdb(tmp_path)
    fixture.label_file.write_bytes(fixture.label_file.read_bytes().replace(b"\n", b"\r\n"))
    assert len(get_loader("rafdb").load(fixture.root, "all").frame) == 6


def test_rafdb_check_names_missing_image(tmp_path):
    root = fx.make_rafdb(tmp_path).root
    missing = root / "basic" / "Image" / "aligned" / "test_0002_aligned.jpg"
    missing.unlink()
    report = get_loader("rafdb").check(root)
    assert not report.ok and str(missing) in report.format()
    assert report.counts[("train", "(all)")] == (4, 12271)
    assert report.counts[("test", "(all)")] == (2, 3068)


# --- FER2013 --------------------------------------------------------------------------------------

def test_fer2013_labels_pixels_and_usage(tmp_path):
    fer = get_loader("fer2013")
    source = fer.load(fx.make_fer2013(tmp_path).root, "train")
    frame, images = source.frame, source.images
    assert list(frame["expression"]) == ["Anger", "Happiness", "Neutral", "Fear", "Sadness"]
    assert images.shape == (5, 48, 48) and images.dtype == np.uint8
    assert list(frame["image"]) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(images[1], fx.fer_pixels(1))  # row 1: emotion 3 -> Happiness
    val = fer.load(tmp_path, "val")
    assert list(val.frame["expression"]) == ["Happiness", "Disgust"]
    np.testing.assert_array_equal(val.images[1], fx.fer_pixels(7))
    test = fer.load(tmp_path, "test")
    assert list(test.frame["expression"]) == ["Surprise"] and len(test.images) == 1


def test_fer2013_check_counts(tmp_path):
    report = get_loader("fer2013").check(fx.make_fer2013(tmp_path).root)
    assert report.counts[("train", "(all)")] == (5, 28709)
    assert report.counts[("val", "Happiness")] == (1, 895)
    assert report.counts[("test", "(all)")] == (1, 3589)


# --- FER+ -----------------------------------------------------------------------------------------

def test_ferplus_majority(tmp_path):
    source = get_loader("ferplus").load(fx.make_ferplus(tmp_path).root, "all")
    frame = source.frame
    assert list(frame["expression"]) == ["Happiness", "Surprise"]
    assert list(frame["split"]) == ["train", "test"]
    np.testing.assert_array_equal(source.images[0], fx.fer_pixels(1))  # fer0000001 <-> row 1
    np.testing.assert_array_equal(source.images[1], fx.fer_pixels(6))
    assert source.notes[0] == ("ferplus: dropped 6 of 8 rows (no image 1, no majority 2, "
                               "unknown 1, NF 1, contempt 1)")


def test_ferplus_contempt_plurality_and_splits(tmp_path):
    ferplus = get_loader("ferplus")
    root = fx.make_ferplus(tmp_path).root
    val = ferplus.load(root, "val", include_contempt=True)
    assert list(val.frame["expression"]) == ["Contempt"]
    np.testing.assert_array_equal(val.images[0], fx.fer_pixels(5))
    plural = ferplus.load(root, "train", label_mode="plurality").frame
    assert list(plural["expression"]) == ["Neutral", "Happiness"]  # the 5/5 tie is dropped
    with pytest.raises(DistmtlError, match="label_mode 'mjority'.*majority"):
        ferplus.load(root, label_mode="mjority")


def test_ferplus_soft(tmp_path):
    source = get_loader("ferplus").load(fx.make_ferplus(tmp_path).root, "all", label_mode="soft")
    frame = source.frame
    assert "expression" not in frame.columns
    columns = [c for c in frame.columns if c.startswith("expression:")]
    assert len(columns) == 7 and "expression:Contempt" not in columns
    assert len(frame) == 4  # NF, unknown, contempt-only and nameless rows dropped
    assert source.notes[0] == ("ferplus: dropped 4 of 8 rows (no image 1, unknown 1, NF 1, "
                               "contempt 1)")
    np.testing.assert_allclose(frame[columns].sum(axis=1), 1.0)
    first = frame.iloc[0]
    assert first["expression:Neutral"] == pytest.approx(0.4)
    assert first["expression:Anger"] == pytest.approx(0.3)
    assert first["expression:Sadness"] == pytest.approx(0.1)
    tie = frame.iloc[2]
    assert tie["expression:Neutral"] == tie["expression:Happiness"] == pytest.approx(0.5)


def test_ferplus_png_folders(tmp_path):
    root = fx.make_ferplus(tmp_path, folders=True).root
    source = get_loader("ferplus").load(root, "all")
    assert source.images is None
    assert by_name(source.frame) == {"fer0000001.png": "Happiness", "fer0000006.png": "Surprise"}
    assert os.path.join("data", "FER2013Test") in source.frame["image"][1]
    missing = root / "data" / "FER2013Test" / "fer0000006.png"
    missing.unlink()
    assert str(missing) in get_loader("ferplus").check(root).format()


def test_ferplus_check_names_missing_pixel_file(tmp_path):
    root = fx.make_ferplus(tmp_path).root
    (root / "fer2013.csv").unlink()
    report = get_loader("ferplus").check(root)
    assert not report.ok and str(root / "fer2013.csv") in report.format()


# --- AffectNet ------------------------------------------------------------------------------------

def test_affectnet_csv_labels_and_missing_codes(tmp_path):
    affectnet = get_loader("affectnet")
    root = fx.make_affectnet(tmp_path).root
    source = affectnet.load(root, "train")
    folders = [os.path.basename(os.path.dirname(p)) for p in source.frame["image"]]
    labels = dict(zip(folders, source.frame["expression"]))
    assert labels == {"689": "Happiness", "392": "Anger", "468": "Neutral"}  # 1, 6, 0
    assert source.notes == [
        "affectnet: dropped 4 of 7 rows (None 1, Uncertain 1, Non-face 1, Contempt 1)"
    ]
    assert source.frame["valence"][0] == pytest.approx(0.785714)
    with_contempt = affectnet.load(root, "train", include_contempt=True).frame
    assert "Contempt" in set(with_contempt["expression"]) and len(with_contempt) == 4
    test = affectnet.load(root, "test").frame  # validation.csv
    assert list(test["expression"]) == ["Surprise", "Happiness"]
    assert math.isnan(test["valence"][1]) and math.isnan(test["arousal"][1])  # -2: not annotated
    assert all(os.path.exists(p) for p in test["image"])


def test_affectnet_csv_without_header(tmp_path):
    root = fx.make_affectnet(tmp_path, header=False).root
    assert len(get_loader("affectnet").load(root, "all").frame) == 5


def test_affectnet_npy_layout(tmp_path):
    affectnet = get_loader("affectnet")
    root = fx.make_affectnet_npy(tmp_path).root
    train = affectnet.load(root, "train")
    assert by_name(train.frame) == {"0.jpg": "Happiness", "1.jpg": "Anger"}
    assert train.notes == ["affectnet: dropped 2 of 4 rows (None 1, Contempt 1)"]
    test = affectnet.load(root, "test", include_contempt=True).frame
    assert by_name(test) == {"10.jpg": "Neutral", "11.jpg": "Happiness"}
    assert math.isnan(test["valence"][0]) and test["arousal"][1] == pytest.approx(0.3)
    (root / "val_set" / "annotations" / "11_aro.npy").unlink()
    assert math.isnan(affectnet.load(root, "test").frame["arousal"][1])
    report = affectnet.check(root)
    assert report.ok and report.counts[("train", "[dropped] None")] == (1, None)


def test_affectnet_npy_malformed_value(tmp_path):
    affectnet = get_loader("affectnet")
    root = fx.make_affectnet_npy(tmp_path).root
    bad = root / "train_set" / "annotations" / "1_exp.npy"
    np.save(bad, np.array("12"))
    with pytest.raises(DistmtlError) as err:
        affectnet.load(root, "train")
    assert str(bad) in str(err.value) and "'12'" in str(err.value)
    source = affectnet.load(root, "train", skip_malformed=True)
    assert source.skipped == 1 and by_name(source.frame) == {"0.jpg": "Happiness"}


def test_affectnet_check_names_missing_image(tmp_path):
    root = fx.make_affectnet(tmp_path).root
    missing = root / "Manually_Annotated_Images" / fx.AFFECTNET_TRAIN[1][0]
    missing.unlink()
    report = get_loader("affectnet").check(root)
    assert not report.ok and str(missing) in report.format()
    assert report.counts[("train", "Happiness")] == (1, 134415)


# --- CK+ ------------------------------------------------------------------------------------------

def test_ckplus_peak_frames_and_contempt(tmp_path):
    ckplus = get_loader("ckplus")
    root = fx.make_ckplus(tmp_path).root
    source = ckplus.load(root, "all", folds=2)
    assert by_name(source.frame) == {
        "S005_001_00000005.png": "Happiness",  # native 5, peak (last) frame of 5
        "S011_001_00000003.png": "Surprise",
        "S014_003_00000004.png": "Anger",
    }
    assert source.notes == ["ckplus: dropped 1 of 4 labelled sequences (Contempt 1)"]
    with_contempt = by_name(ckplus.load(root, "all", folds=2, include_contempt=True).frame)
    assert with_contempt["S010_002_00000006.png"] == "Contempt"  # native 2


def test_ckplus_frames_options(tmp_path):
    root = fx.make_ckplus(tmp_path).root
    frame = get_loader("ckplus").load(root, "all", folds=2, peak_frames=3,
                                      include_neutral=True).frame
    s005 = by_name(frame[frame["subject"] == "S005"])
    assert s005 == {
        "S005_001_00000001.png": "Neutral",
        "S005_001_00000003.png": "Happiness",
        "S005_001_00000004.png": "Happiness",
        "S005_001_00000005.png": "Happiness",
    }


def test_ckplus_subject_folds(tmp_path):
    ckplus = get_loader("ckplus")
    root = fx.make_ckplus(tmp_path).root
    everything = ckplus.load(root, "all", folds=3, include_contempt=True).frame
    assert dict(zip(everything["subject"], everything["fold"])) == {
        "S005": 0, "S010": 1, "S011": 2, "S014": 0}
    train = ckplus.load(root, "train", folds=3, fold=1, include_contempt=True).frame
    test = ckplus.load(root, "test", folds=3, fold=1, include_contempt=True).frame
    assert set(test["subject"]) == {"S010"} and not set(train["subject"]) & set(test["subject"])
    with pytest.raises(DistmtlError, match="folds=10"):
        ckplus.load(root, "train")  # 4 subjects cannot make 10 folds
    with pytest.raises(DistmtlError, match="fold=3"):
        ckplus.load(root, "train", folds=3, fold=3)


def test_ckplus_check_names_missing_peak_frame(tmp_path):
    root = fx.make_ckplus(tmp_path).root
    missing = root / "cohn-kanade-images" / "S014" / "003" / "S014_003_00000004.png"
    missing.unlink()
    report = get_loader("ckplus").check(root)
    assert not report.ok and str(missing) in report.format()
    assert report.counts[("all", "(all)")] == (4, 327)
    assert report.counts[("all", "(image sequences)")] == (5, 593)


# --- CelebA ---------------------------------------------------------------------------------------

def test_celeba_attributes_identity_partition(tmp_path):
    celeba = get_loader("celeba")
    root = fx.make_celeba(tmp_path).root
    frame = celeba.load(root, "all").frame
    attributes = celeba.TASKS["attributes"]["labels"]
    assert attributes == fx.CELEBA_ATTRIBUTES and len(attributes) == 40
    assert list(frame.columns) == ["image", "identity", *attributes, "split"]
    first = frame.iloc[0]
    assert first["Smiling"] == 1.0 and first["Male"] == 0.0  # -1 -> 0
    expected = np.where(np.array(fx.celeba_attributes(4)) == 1, 1.0, 0.0)
    np.testing.assert_array_equal(frame.iloc[4][attributes].to_numpy(dtype=float), expected)
    assert first["identity"] == "2880" and frame["identity"].dtype == "string"
    assert list(frame["split"]) == ["train", "train", "train", "val", "test", "test"]
    assert len(celeba.load(root, "train").frame) == 3
    val = celeba.load(root, "val").frame
    assert by_name(val, "identity") == {"000004.jpg": "2880"}


def test_celeba_official_layout(tmp_path):
    root = fx.make_celeba(tmp_path, official_layout=True).root
    frame = get_loader("celeba").load(root, "test").frame
    assert by_name(frame, "identity") == {"000005.jpg": "4537", "000006.jpg": "4126"}
    assert os.path.join("Img", "img_align_celeba") in frame["image"][0]
    assert get_loader("celeba").check(root).ok


def test_celeba_check_names_missing_file(tmp_path):
    root = fx.make_celeba(tmp_path).root
    (root / "identity_CelebA.txt").unlink()
    report = get_loader("celeba").check(root)
    assert not report.ok and str(root / "identity_CelebA.txt") in report.format()


# --- CLI helpers ----------------------------------------------------------------------------------

def test_list_datasets_table():
    table = list_datasets()
    lines = table.splitlines()
    assert lines[0].split() == ["name", "description", "tasks"]
    for name in MAKERS:
        assert any(line.startswith(name + " ") for line in lines)
    assert "attributes: multilabel 40" in table and "expression: multiclass 7" in table


def test_check_dataset(tmp_path):
    ok, text = check_dataset("rafdb", fx.make_rafdb(tmp_path / "raf").root)
    assert ok and "rafdb" in text and "12271" in text
    ok, text = check_dataset("celeba", tmp_path / "raf")
    assert not ok and "list_attr_celeba.txt" in text
    ok, text = check_dataset("rafdb", tmp_path / "nowhere")
    assert not ok and "not a directory" in text
    with pytest.raises(DistmtlError, match="did you mean: rafdb"):
        check_dataset("rafbd", tmp_path)
