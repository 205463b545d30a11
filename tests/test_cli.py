"""The command line: subcommands run in-process and print what they promise."""

import pandas as pd

from distmtl.cli import main


def test_relatedness_show_prints_table_and_draws_heat_map(tmp_path, capsys):
    png = tmp_path / "du2014.png"
    assert main(["relatedness", "show", "du2014", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Happiness" in out and "AU12" in out
    assert png.stat().st_size > 1000


def test_unknown_table_is_one_line_error(capsys):
    assert main(["relatedness", "show", "du2041"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "du2014" in err


def test_data_synth_writes_sources_in_the_generic_format(tmp_path, capsys):
    out = tmp_path / "sf"
    assert main(["data", "synth", "--out", str(out), "--preset", "tiny", "--n", "20", "--workers", "1"]) == 0
    expr = pd.read_csv(out / "expr_train.csv")
    au = pd.read_csv(out / "au_train.csv")
    assert len(expr) == 20 and expr["expression"].notna().all() and expr["AU12"].isna().all()
    assert au["expression"].isna().all() and au["AU12"].notna().all()
    assert not set(expr["image"]) & set(au["image"])
    assert (out / "contact_sheet.png").exists()


def test_datasets_list_names_every_loader(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("rafdb", "affectnet", "disfa", "bp4d", "celeba", "cub200", "fashion_mnist"):
        assert name in out
