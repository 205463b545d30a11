"""The scikit-learn digits loader: splits, disjoint sources, attributes drawn from the table."""

import numpy as np
import pytest

from distmtl.data.loaders import digits, get_loader
from distmtl.errors import DistmtlError


def test_splits_are_disjoint_and_cover_the_data():
    sizes = {s: len(digits.load(split=s).frame) for s in digits.SPLITS}
    assert sizes == {"train": 1200, "val": 300, "test": 297}
    assert get_loader("digits") is digits


def test_scarce_digit_source_and_attribute_source_keep_one_task_each():
    scarce = digits.load(split="train", subset=[0, 100], keep="digit")
    rest = digits.load(split="train", subset=[100, 1200], keep="attributes")
    assert len(scarce.frame) == 100 and "closed_loop" not in scarce.frame.columns
    assert scarce.frame["digit"].notna().all() and rest.frame["digit"].isna().all()
    assert rest.images.shape == (1100, 8, 8) and rest.images.dtype == np.uint8 and rest.images.max() > 200
    # the same image gets the same attributes whatever the subset
    both = digits.load(split="train")
    assert np.array_equal(both.frame.loc[100:, list(digits.ATTRIBUTES)].to_numpy(),
                          rest.frame[list(digits.ATTRIBUTES)].to_numpy())


def test_attributes_follow_the_class_table():
    frame = digits.load(split="train", noise=0.0).frame
    table, names = digits.attribute_table()
    for k in range(10):
        rows = frame[frame["digit"] == str(k)]
        for j, name in enumerate(names):
            if table[k, j] in (0.0, 1.0):
                assert (rows[name] == table[k, j]).all()
    odd = frame[frame["digit"].isin(["1", "3", "5", "7", "9"])]
    assert (odd["odd"] == 1).all() and digits.relatedness().matrix.shape == (10, 6)


def test_bad_options_are_one_line_errors():
    with pytest.raises(DistmtlError, match="digits: unknown split 'valid'"):
        digits.load(split="valid")
    with pytest.raises(DistmtlError, match="digits: subset .* reaches past the 300 images"):
        digits.load(split="val", subset=[0, 400])
