"""The ``distmtl data prepare`` parser (imports the face code only when the command runs)."""

from __future__ import annotations

DATASETS = ("affectnet", "disfa", "affwild2", "bp4d")


def add_parser(data_sub) -> None:
    """``distmtl data prepare`` on the ``data`` subcommand group."""
    from distmtl.faces.cli import add_face_options

    p = data_sub.add_parser("prepare", help="aligned face crops + a generic CSV from a dataset or a folder")
    p.add_argument("--dataset", choices=list(DATASETS), help="a dataset in its original layout (with --root)")
    p.add_argument("--root", help="the dataset folder")
    p.add_argument("--images", help="instead: a folder of images (searched recursively)")
    p.add_argument("--split", default="train", help="dataset split to prepare (default train; also test, all, ...)")
    p.add_argument("--out", required=True, help="output folder (crops, CSV, faces.json)")
    p.add_argument("--workers", type=int, help="processes (default: one per CPU core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_face_options(p)
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from distmtl.data.prepare import cmd_prepare as run

    return run(args)
