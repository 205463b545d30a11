"""The generic CSV format: validation names file/line/column/value; encoding masks what is missing."""

import numpy as np
import pytest
from PIL import Image

from distmtl.data.csvformat import encode, read_csv_source
from distmtl.errors import DistmtlError
from distmtl.tasks import Task

TASKS = {
    "expression": Task("expression", "multiclass", ("Neutral", "Happiness", "Surprise")),
    "au": Task("au", "multilabel", ("AU01", "AU12")),
    "va": Task("va", "regression", ("valence", "arousal")),
}


def write_csv(tmp_path, text, images=("a.png", "b.png", "c.png")):
    for name in images:
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_valid_csv_encodes_targets_and_masks(tmp_path):
    path = write_csv(tmp_path, "image,expression,AU01,AU12,valence,arousal\n"
                               "a.png,Happiness,1,,0.5,\n"
                               "b.png,,0,-1,,0.2\n"
                               "c.png,Surprise,,1,-0.3,0.1\n")
    src = encode(read_csv_source(path, TASKS), TASKS)
    assert src.targets["expression"][0].tolist() == [0, 1, 0]
    assert src.masks["expression"].tolist() == [True, False, True]
    assert src.masks["au"].tolist() == [[True, False], [True, False], [False, True]]
    assert src.targets["au"][0, 0] == 1 and src.targets["au"][1, 0] == 0
    assert src.masks["va"].tolist() == [[True, False], [False, True], [True, True]]
    np.testing.assert_allclose(src.targets["va"][2], [-0.3, 0.1], rtol=1e-6)
    assert str(tmp_path / "a.png") == src.images[0]


def test_missing_label_columns_mean_not_annotated(tmp_path):
    path = write_csv(tmp_path, "image,AU12\na.png,1\nb.png,0\n")
    src = encode(read_csv_source(path, TASKS), TASKS)
    assert not src.masks["expression"].any() and not src.masks["va"].any()
    assert src.masks["au"][:, 0].sum() == 0 and src.masks["au"][:, 1].all()
    assert src.annotated_tasks == ["au"]


@pytest.mark.parametrize("row, column, value", [
    ("a.png,Hapiness,1", "expression", "Hapiness"),
    ("a.png,Happiness,2", "AU01", "2"),
    ("missing.png,Happiness,1", "image", "missing.png"),
])
def test_bad_value_names_file_line_column_value(tmp_path, row, column, value):
    path = write_csv(tmp_path, f"image,expression,AU01\nb.png,Neutral,0\n{row}\n")
    with pytest.raises(DistmtlError) as err:
        read_csv_source(path, TASKS)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and "line 3" in message
    assert f"'{column}'" in message and f"'{value}'" in message


def test_regression_value_not_a_number(tmp_path):
    path = write_csv(tmp_path, "image,valence\na.png,abc\n")
    with pytest.raises(DistmtlError, match=r"line 2 column 'valence' value 'abc'"):
        read_csv_source(path, TASKS)


def test_error_counts_all_bad_rows_and_lists_first_few(tmp_path):
    rows = "".join(f"a.png,Bad{i}\n" for i in range(7))
    path = write_csv(tmp_path, "image,expression\n" + rows)
    with pytest.raises(DistmtlError, match=r"7 bad rows: .*Bad0.*and 4 more"):
        read_csv_source(path, TASKS)


def test_skip_bad_rows_counts_and_keeps_the_rest(tmp_path):
    path = write_csv(tmp_path, "image,expression\na.png,Happiness\nb.png,Nope\nc.png,Neutral\n")
    loaded = read_csv_source(path, TASKS, skip_bad_rows=True)
    assert loaded.skipped == 1
    assert loaded.frame["expression"].tolist() == ["Happiness", "Neutral"]
    assert "skipped 1" in loaded.notes[0]


def test_structural_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DistmtlError, match="empty"):
        read_csv_source(empty, TASKS)
    no_image = write_csv(tmp_path, "file,expression\na.png,Happiness\n")
    with pytest.raises(DistmtlError, match="no 'image' column"):
        read_csv_source(no_image, TASKS)
    unrelated = write_csv(tmp_path, "image,colour\na.png,red\n")
    with pytest.raises(DistmtlError, match="annotates none of the configured tasks"):
        read_csv_source(unrelated, TASKS)


def test_rename_maps_user_columns(tmp_path):
    path = write_csv(tmp_path, "image,emotion\na.png,Surprise\n")
    loaded = read_csv_source(path, TASKS, rename={"emotion": "expression"})
    assert loaded.frame["expression"].tolist() == ["Surprise"]


def test_soft_class_columns(tmp_path):
    path = write_csv(tmp_path, "image,expression:Neutral,expression:Happiness,expression:Surprise\n"
                               "a.png,2,6,2\nb.png,,,\n")
    src = encode(read_csv_source(path, TASKS), TASKS)
    np.testing.assert_allclose(src.targets["expression"][0], [0.2, 0.6, 0.2])
    assert src.masks["expression"].tolist() == [True, False]
