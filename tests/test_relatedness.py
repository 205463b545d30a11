"""Relatedness tables: file format, validation, built-in tables, estimation, comparison, plots."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from distmtl.errors import DistmtlError
from distmtl.relatedness.table import BUILTIN_TABLES, PRIOR_COLUMN, Relatedness, list_builtin
from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS, au_task, expression_task

COMPOUND_CLASSES = (
    "Happily surprised",
    "Happily disgusted",
    "Sadly fearful",
    "Sadly angry",
    "Sadly surprised",
    "Sadly disgusted",
    "Fearfully angry",
    "Fearfully surprised",
    "Fearfully disgusted",
    "Angrily surprised",
    "Angrily disgusted",
    "Disgustedly surprised",
    "Awed",
)


def value(table: Relatedness, class_name: str, label: str) -> float:
    return float(table.matrix[table.classes.index(class_name), table.labels.index(label)])


def raises(match_all: list[str], func, *args, **kwargs) -> str:
    """Run ``func`` expecting a DistmtlError whose one-line message contains every string."""
    with pytest.raises(DistmtlError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for part in match_all:
        assert part in message, f"{part!r} missing from {message!r}"
    return message


def write_csv(tmp_path, text: str, name: str = "table.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- built-in tables


def test_list_builtin_matches_shipped_files():
    assert list_builtin() == ["du2014", "du2014_compound", "emfacs"]
    for file_name in BUILTIN_TABLES.values():
        assert (resources.files("distmtl.relatedness") / "tables" / file_name).is_file()


def test_du2014_spot_values():
    table = Relatedness.builtin("du2014")
    assert table.classes == BASIC_EXPRESSIONS
    assert table.labels == AUS_17
    assert table.name == "du2014" and table.source.endswith("du2014.csv")
    assert value(table, "Happiness", "AU12") == 1.0
    assert value(table, "Happiness", "AU06") == 0.51
    assert value(table, "Sadness", "AU17") == 0.67
    assert value(table, "Fear", "AU26") == 0.33
    assert value(table, "Anger", "AU23") == 0.29
    assert value(table, "Disgust", "AU04") == 0.31
    assert not table.matrix[table.classes.index("Neutral")].any()
    np.testing.assert_array_equal(table.prior, np.full(7, 1 / 7))
    # Happiness: prototypical 12 and 25, observational 6 and nothing else.
    happy = table.to_frame().loc["Happiness"]
    assert set(happy[happy > 0].index) == {"AU06", "AU12", "AU25"}


def test_du2014_compound_rows_and_values():
    table = Relatedness.builtin("du2014_compound")
    assert table.classes == COMPOUND_CLASSES
    assert table.labels == AUS_17
    assert value(table, "Sadly disgusted", "AU25") == 0.43
    assert value(table, "Awed", "AU20") == 0.62
    assert value(table, "Happily surprised", "AU12") == 1.0
    row = table.to_frame().loc["Sadly angry"]
    assert dict(row[row > 0]) == {"AU04": 1.0, "AU06": 0.26, "AU07": 0.48, "AU15": 1.0, "AU17": 0.5}


def test_emfacs_prototype_sets():
    table = Relatedness.builtin("emfacs")
    assert table.classes == BASIC_EXPRESSIONS
    frame = table.to_frame()
    active = {k: {a for a in AUS_17 if frame.loc[k, a] > 0} for k in BASIC_EXPRESSIONS}
    assert active == {
        "Neutral": set(),
        "Happiness": {"AU06", "AU12"},
        "Sadness": {"AU01", "AU04", "AU15"},
        "Surprise": {"AU01", "AU02", "AU05", "AU26"},
        "Fear": {"AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26"},
        "Anger": {"AU04", "AU05", "AU07", "AU23"},
        "Disgust": {"AU09", "AU15"},  # AU16 is outside the 17-AU vocabulary
    }
    assert set(np.unique(table.matrix)) == {0.0, 1.0}


def test_builtin_file_is_what_to_csv_writes(tmp_path):
    for name, file_name in BUILTIN_TABLES.items():
        out = tmp_path / file_name
        Relatedness.builtin(name).to_csv(out)
        shipped = (resources.files("distmtl.relatedness") / "tables" / file_name).read_text(encoding="utf-8")
        assert out.read_text(encoding="utf-8") == shipped


def test_load_builtin_path_and_unknown(tmp_path):
    assert Relatedness.load("emfacs").name == "emfacs"
    path = tmp_path / "mine.csv"
    Relatedness.builtin("du2014").to_csv(path)
    loaded = Relatedness.load(str(path))
    assert loaded.source == str(path) and loaded.name == "mine"
    assert Relatedness.load(loaded) is loaded
    raises(["du2041", "did you mean: du2014"], Relatedness.load, "du2041")
    raises(["du2041", "did you mean: du2014"], Relatedness.builtin, "du2041")
    raises([str(tmp_path / "absent.csv"), "not found"], Relatedness.load, tmp_path / "absent.csv")


# ---------------------------------------------------------------------- CSV round trip


def test_csv_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    classes = ("a", "b, with comma", 'c "quoted"')
    labels = ("x", "y", "z", "w")
    matrix = rng.random((3, 4))
    matrix[0, 0], matrix[1, 1] = 0.0, 1.0
    prior = np.array([0.2, 0.3, 0.5]) / 1.0
    table = Relatedness(matrix, classes, labels, prior=prior, name="random")
    path = tmp_path / "sub" / "random.csv"
    table.to_csv(path)
    back = Relatedness.from_csv(path)
    assert back.classes == classes and back.labels == labels
    np.testing.assert_array_equal(back.matrix, matrix)
    np.testing.assert_array_equal(back.prior, table.prior)
    assert back.source == str(path)
    assert PRIOR_COLUMN in path.read_text().splitlines()[0]
    assert [p.name for p in path.parent.iterdir()] == ["random.csv"]  # no temporary left


def test_uniform_prior_writes_no_prior_column_and_argument_overrides_file(tmp_path):
    path = tmp_path / "t.csv"
    Relatedness([[0.5, 1.0], [0.0, 0.25]], ("a", "b"), ("x", "y")).to_csv(path)
    assert path.read_text() == "class,x,y\na,0.5,1\nb,0,0.25\n"
    Relatedness([[0.5, 1.0], [0.0, 0.25]], ("a", "b"), ("x", "y"), prior=[3, 1]).to_csv(path)
    assert path.read_text().splitlines()[1] == "a,0.5,1,0.75"
    np.testing.assert_array_equal(Relatedness.from_csv(path).prior, [0.75, 0.25])
    np.testing.assert_array_equal(Relatedness.from_csv(path, prior=[1, 1]).prior, [0.5, 0.5])


def test_from_csv_tolerates_spaces_and_blank_lines(tmp_path):
    path = write_csv(tmp_path, "class, x , y\n\n a ,0.5, 1\nb,0,0.25\n\n")
    table = Relatedness.from_csv(path)
    assert table.classes == ("a", "b") and table.labels == ("x", "y")
    assert table.matrix.tolist() == [[0.5, 1.0], [0.0, 0.25]]


# ---------------------------------------------------------------------- CSV validation


def test_csv_duplicate_class_names_file_line_and_class(tmp_path):
    path = write_csv(tmp_path, "class,AU01,AU02\nAnger,0,1\nFear,1,0\nAnger,0,0\n")
    raises(
        [str(path), "line 4", "duplicate class 'Anger'", "first on line 2"],
        Relatedness.from_csv,
        path,
    )


def test_csv_duplicate_label(tmp_path):
    path = write_csv(tmp_path, "class,AU01,AU02,AU01\nAnger,0,1,0\n")
    raises(
        [str(path), "line 1", "duplicate label 'AU01'", "columns 2 and 4"],
        Relatedness.from_csv,
        path,
    )


def test_csv_value_outside_unit_interval(tmp_path):
    path = write_csv(tmp_path, "class,AU01,AU02\nAnger,0,1\nFear,0.2,1.5\n")
    raises(
        [str(path), "line 3", "class 'Fear'", "label 'AU02'", "1.5", "outside [0, 1]"],
        Relatedness.from_csv,
        path,
    )
    path = write_csv(tmp_path, "class,AU01,AU02\nAnger,-0.1,1\n")
    raises(
        [str(path), "line 2", "class 'Anger'", "label 'AU01'", "-0.1"], Relatedness.from_csv, path
    )


def test_csv_nan_cell(tmp_path):
    path = write_csv(tmp_path, "class,AU01,AU02\nAnger,0,1\nFear,nan,0\n")
    raises([str(path), "line 3", "class 'Fear'", "label 'AU01'", "NaN"], Relatedness.from_csv, path)


def test_csv_non_numeric_and_empty_cells(tmp_path):
    path = write_csv(tmp_path, "class,AU01,AU02\nAnger,0,high\n")
    raises(
        [str(path), "line 2", "class 'Anger'", "label 'AU02'", "'high' is not a number"],
        Relatedness.from_csv,
        path,
    )
    path = write_csv(tmp_path, "class,AU01,AU02\nAnger,,1\n")
    raises(
        [str(path), "line 2", "class 'Anger'", "label 'AU01'", "empty cell"],
        Relatedness.from_csv,
        path,
    )


def test_csv_wrong_row_length_and_missing_parts(tmp_path):
    path = write_csv(tmp_path, "class,AU01,AU02\nAnger,0,1\nFear,1\n")
    raises(
        [str(path), "line 3", "class 'Fear'", "1 values, expected 2"], Relatedness.from_csv, path
    )
    path = write_csv(tmp_path, "class,AU01\n,0\n")
    raises([str(path), "line 2", "empty class name"], Relatedness.from_csv, path)
    path = write_csv(tmp_path, "class,AU01,AU02\n")
    raises([str(path), "no class rows"], Relatedness.from_csv, path)
    path = write_csv(tmp_path, "")
    raises([str(path), "empty file"], Relatedness.from_csv, path)
    path = write_csv(tmp_path, "class,AU01\nAnger,0.5\n")
    raises([str(tmp_path / "nope.csv"), "not found"], Relatedness.from_csv, tmp_path / "nope.csv")


def test_csv_prior_column_is_validated(tmp_path):
    path = write_csv(tmp_path, f"class,AU01,{PRIOR_COLUMN}\nAnger,0,0.5\nFear,1,-0.5\n")
    raises([str(path), "prior of class 'Fear'", "-0.5"], Relatedness.from_csv, path)


# ---------------------------------------------------------------------- in-memory validation


def test_constructor_rejects_bad_values_naming_cell():
    raises(
        ["relatedness 'mine'", "class 'b' (row 1)", "label 'y'", "value 1.2 is outside"],
        Relatedness,
        [[0, 0], [0, 1.2]],
        ("a", "b"),
        ("x", "y"),
        name="mine",
    )
    raises(["class 'a' (row 0)", "label 'x'", "NaN"], Relatedness, [[np.nan]], ("a",), ("x",))
    raises(
        ["class 'b'", "label 'x'", "'lots' is not a number"],
        Relatedness,
        [[0, 0], ["lots", 1]],
        ("a", "b"),
        ("x", "y"),
    )


def test_constructor_rejects_duplicates_and_wrong_shape():
    raises(
        ["duplicate class 'a'", "positions 0 and 1"],
        Relatedness,
        np.zeros((2, 1)),
        ("a", "a"),
        ("x",),
    )
    raises(["duplicate label 'x'"], Relatedness, np.zeros((1, 2)), ("a",), ("x", "x"))
    raises(
        ["shape (2, 3)", "expected (2, 2)", "2 classes and 2 labels"],
        Relatedness,
        np.zeros((2, 3)),
        ("a", "b"),
        ("x", "y"),
    )


def test_prior_validation_and_renormalisation():
    classes, labels, matrix = ("a", "b", "c"), ("x",), np.zeros((3, 1))
    raises(["prior has shape (2,)", "(3)"], Relatedness, matrix, classes, labels, prior=[0.5, 0.5])
    raises(["prior of class 'b'", "-1.0"], Relatedness, matrix, classes, labels, prior=[2, -1, 0])
    raises(
        ["prior of class 'c'", "nan"], Relatedness, matrix, classes, labels, prior=[1, 1, np.nan]
    )
    raises(["prior sums to 0.0;"], Relatedness, matrix, classes, labels, prior=[0, 0, 0])
    table = Relatedness(matrix, classes, labels, prior=[1, 1, 2])
    np.testing.assert_allclose(table.prior, [0.25, 0.25, 0.5])
    np.testing.assert_array_equal(Relatedness(matrix, classes, labels).prior, np.full(3, 1 / 3))


# ---------------------------------------------------------------------- alignment, clipping


def test_aligned_reorders_rows_columns_and_prior():
    table = Relatedness(
        [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], ("a", "b", "c"), ("x", "y"), prior=[0.2, 0.3, 0.5]
    )
    out = table.aligned(["c", "a", "b"], ["y", "x"])
    assert out.classes == ("c", "a", "b") and out.labels == ("y", "x")
    assert out.matrix.tolist() == [[0.6, 0.5], [0.2, 0.1], [0.4, 0.3]]
    np.testing.assert_allclose(out.prior, [0.5, 0.2, 0.3])


def test_aligned_to_raf_db_order_with_task_objects():
    raf_order = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
    table = Relatedness.builtin("du2014")
    out = table.aligned(expression_task("raf", raf_order), au_task())
    assert out.classes == raf_order
    assert out.matrix[3, AUS_17.index("AU12")] == 1.0  # Happiness is row 3 in RAF-DB order
    assert out.matrix[4, AUS_17.index("AU17")] == 0.67


def test_aligned_errors_name_task_and_class_or_label():
    table = Relatedness.builtin("du2014")
    seven_but_happy = tuple("Happy" if c == "Happiness" else c for c in BASIC_EXPRESSIONS)
    raises(
        [
            "du2014.csv",
            "class 'Happiness' is not a class of task 'expression'",
            "did you mean:",
            "Happy?",
        ],
        table.aligned,
        seven_but_happy,
        AUS_17,
        task_a="expression",
    )
    raises(
        ["task 'expression'", "class 'Contempt' has no row", "du2014"],
        table.aligned,
        BASIC_EXPRESSIONS + ("Contempt",),
        AUS_17,
        task_a="expression",
    )
    raises(
        ["label 'AU26' is not a label of task 'au'"],
        table.aligned,
        BASIC_EXPRESSIONS,
        AUS_17[:-1],
        task_b="au",
    )
    raises(
        ["task 'au'", "label 'AU45' has no column", "du2014"],
        table.aligned,
        BASIC_EXPRESSIONS,
        AUS_17 + ("AU45",),
        task_b="au",
    )
    raises(
        ["label 'AU01' is not a label of task 'au'", "did you mean: AU1"],
        table.aligned,
        BASIC_EXPRESSIONS,
        ("AU1",) + AUS_17[1:],
        task_b="au",
    )


def test_clipped():
    table = Relatedness([[0.0, 0.5, 1.0]], ("a",), ("x", "y", "z"))
    assert table.clipped().tolist() == [[0.05, 0.5, 0.95]]
    assert table.clipped(0.1).tolist() == [[0.1, 0.5, 0.9]]
    assert table.matrix.tolist() == [[0.0, 0.5, 1.0]]  # the table itself is unchanged
    raises(["clip eps", "0.5"], table.clipped, 0.5)


# ---------------------------------------------------------------------- estimation


def test_estimate_hand_counted():
    class_index = np.array([0, 0, 1, -1, 1])
    values = np.array([[1, 0], [1, 1], [0, 1], [1, 1], [1, 1]], dtype=float)
    mask = np.array([[1, 1], [1, 0], [1, 0], [1, 1], [0, 0]], dtype=bool)
    table = Relatedness.estimate(class_index, values, mask, ("a", "b"), ("x", "y"))
    # a: x seen 2/2, y seen 0/1; b: x seen 0/1, y never annotated; alpha = 1.
    np.testing.assert_allclose(table.matrix, [[3 / 4, 1 / 3], [1 / 3, 1 / 2]])
    # Samples used for the prior: 0, 1 (class a) and 2 (class b); sample 4 annotates nothing.
    np.testing.assert_allclose(table.prior, [3 / 5, 2 / 5])
    raises(
        ["class 'b'", "label 'y'", "alpha > 0"],
        Relatedness.estimate,
        class_index,
        values,
        mask,
        ("a", "b"),
        ("x", "y"),
        alpha=0,
    )


def test_estimate_recovers_table_and_ignores_masked_labels():
    rng = np.random.default_rng(0)
    classes, labels = ("a", "b", "c", "d"), ("x", "y", "z", "u", "v")
    truth = np.array(
        [
            [0.9, 0.1, 0.5, 0.0, 0.3],
            [0.2, 0.8, 0.6, 1.0, 0.05],
            [0.5, 0.5, 0.1, 0.7, 0.95],
            [0.0, 0.35, 0.9, 0.25, 0.6],
        ]
    )
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    n = 20_000
    class_index = rng.choice(4, size=n, p=prior)
    values = (rng.random((n, 5)) < truth[class_index]).astype(float)
    mask = rng.random((n, 5)) < 0.7
    values[~mask] = 1.0  # placeholders that would bias every cell if they were counted
    no_class = rng.random(n) < 0.1
    class_index[no_class] = -1
    values[no_class] = 1.0
    table = Relatedness.estimate(class_index, values, mask, classes, labels)
    assert np.abs(table.matrix - truth).max() < 0.03
    assert np.abs(table.prior - prior).max() < 0.02
    assert table.classes == classes and table.labels == labels


def test_estimate_accepts_tensors_and_validates_inputs():
    torch = pytest.importorskip("torch")
    class_index = torch.tensor([0, 1])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    table = Relatedness.estimate(class_index, values, mask, ("a", "b"), ("x", "y"), alpha=0.5)
    np.testing.assert_allclose(table.matrix, [[0.75, 0.25], [0.25, 0.75]])
    raises(
        ["label_values of sample 1", "label 'y'", "0.5", "0 or 1"],
        Relatedness.estimate,
        [0, 1],
        [[1, 0], [0, 0.5]],
        np.ones((2, 2), bool),
        ("a", "b"),
        ("x", "y"),
    )
    raises(
        ["class_index of sample 1 is 2", "0..1"],
        Relatedness.estimate,
        [0, 2],
        np.zeros((2, 2)),
        np.ones((2, 2), bool),
        ("a", "b"),
        ("x", "y"),
    )
    raises(
        ["label_mask has shape (2, 3)", "expected (2, 2)"],
        Relatedness.estimate,
        [0, 1],
        np.zeros((2, 2)),
        np.ones((2, 3), bool),
        ("a", "b"),
        ("x", "y"),
    )


# ---------------------------------------------------------------------- class attributes


def test_from_class_attributes_scales_and_validates():
    table = Relatedness.from_class_attributes(
        [[50, 100], [0, 25]], ("sparrow", "gull"), ("has_beak", "is_red"), scale=100
    )
    assert table.matrix.tolist() == [[0.5, 1.0], [0.0, 0.25]]
    np.testing.assert_array_equal(table.prior, [0.5, 0.5])
    raises(
        ["class 'gull'", "label 'is_red'", "1.5", "outside [0, 1]"],
        Relatedness.from_class_attributes,
        [[50, 100], [0, 150]],
        ("sparrow", "gull"),
        ("has_beak", "is_red"),
        scale=100,
    )
    raises(["scale", "0"], Relatedness.from_class_attributes, [[0.5]], ("a",), ("x",), scale=0)


# ---------------------------------------------------------------------- comparison and plots


def test_compare_reports_largest_cells():
    base = Relatedness.builtin("du2014")
    frame = base.to_frame()
    frame.loc["Sadness", "AU06"] = 0.9  # du2014 - other = -0.4
    frame.loc["Fear", "AU02"] = 0.47  # +0.1
    frame.loc["Anger", "AU23"] = 0.34  # -0.05
    shuffled = frame.iloc[::-1, ::-1]  # compare must align by name, not position
    other = Relatedness(shuffled.to_numpy(), shuffled.index, shuffled.columns, name="edited")
    result = base.compare(other, top=3)
    assert result.max_abs == pytest.approx(0.4)
    assert result.mean_abs == pytest.approx(0.55 / (7 * 17))
    assert [(c.class_name, c.label) for c in result.top] == [
        ("Sadness", "AU06"),
        ("Fear", "AU02"),
        ("Anger", "AU23"),
    ]
    assert result.top[0].difference == pytest.approx(-0.4)
    assert result.difference[BASIC_EXPRESSIONS.index("Fear"), 1] == pytest.approx(0.1)
    report = str(result)
    assert "du2014" in report and "edited" in report and "max |diff| 0.400" in report
    first = report.splitlines()[3]
    assert "Sadness" in first and "AU06" in first and "-0.400" in first


def test_compare_needs_matching_names():
    other = Relatedness(np.zeros((2, 17)), ("Anger", "Fear"), AUS_17, name="small")
    raises(
        ["task 'du2014'", "class 'Neutral' has no row", "small"],
        Relatedness.builtin("du2014").compare,
        other,
    )


def test_plot_writes_png(tmp_path):
    table = Relatedness.builtin("du2014")
    single = tmp_path / "single.png"
    table.plot(single, title="Du et al. 2014")
    pair = tmp_path / "plots" / "pair.png"
    table.plot(pair, other=Relatedness.builtin("emfacs"), other_title="EMFACS")
    for path in (single, pair):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert pair.stat().st_size > single.stat().st_size  # two panels
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["pair.png", "single.png"]
