"""Subcommands for inference and export: ``distmtl export``, ``predict``, ``compound``, ``fewshot``, ``push``.

``distmtl predict`` writes a CSV or a Parquet file, chosen by the output's extension. Rows stream to
a CSV as batches finish (each batch is written whole and flushed, so a job that dies keeps every
finished batch); a Parquet file is written once, at the end, atomically. It also writes a JSON sidecar next to it
(``preds.csv`` -> ``preds.json``) with the model config's SHA-256, the label orders, thresholds and
columns, the run's options and, once finished, ``complete: true`` and the row counts.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

DELAY_ENV = "DISTMTL_PREDICT_TEST_DELAY"  # seconds to sleep after each batch (tests only)
OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet"}


def output_format(out: Path) -> str:
    """``csv`` or ``parquet`` from the file name; another extension is an error."""
    from distmtl.errors import DistmtlError

    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise DistmtlError(f"-o {out}: unknown output format '{out.suffix or '(no extension)'}'; "
                           f"name the file .csv or .parquet")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DistmtlError(f"-o {out}: writing Parquet needs pyarrow (pip install pyarrow)") from None
    return fmt


def cmd_export(args) -> int:
    from distmtl.inference.export import CONFIG_NAME, ONNX_NAME, WEIGHTS_NAME, export_model

    config = export_model(args.checkpoint, args.out, val=args.val, calibrate_thresholds=not args.no_calibrate,
                          onnx=args.onnx, onnx_exporter=args.onnx_exporter, opset=args.opset,
                          batch_size=args.batch_size, num_workers=args.num_workers)
    out = Path(args.out)
    written = [WEIGHTS_NAME, CONFIG_NAME] + ([ONNX_NAME] if args.onnx else [])
    print(f"model written to {out}: {', '.join(written)}")
    for task, info in (config.get("calibration") or {}).items():
        print(f"  thresholds of '{task}': " + (f"calibrated on {info['source']}" if info.get("source")
                                             else info.get("note", "default 0.5")))
    if args.onnx and config["onnx"].get("max_abs_diff_vs_torch") is not None:
        print(f"  ONNX ({config['onnx']['exporter']} exporter) vs PyTorch: max abs diff "
              f"{config['onnx']['max_abs_diff_vs_torch']:.2g}")
    return 0


def model_reference(model: str, revision: str | None) -> str:
    """How the predictions' metadata names the model: a local folder's absolute path, or the Hub id."""
    if Path(model).is_dir():
        return str(Path(model).resolve())
    return f"hf://{model}" + (f"@{revision}" if revision else "")


def cmd_push(args) -> int:
    from distmtl.inference.hub import push_model

    result = push_model(args.model, args.repo, revision=args.revision, private=args.private,
                        results=args.results, commit_message=args.message)
    print(f"pushed {', '.join(result['files'])} to {args.repo}: {result['url']}")
    if result["results"]:
        print(f"  model card includes the study results of {result['results']}")
    return 0


def sidecar_path(out: str | Path) -> Path:
    out = Path(out)
    side = out.with_suffix(".json")
    return side if side != out else out.with_name(out.name + ".meta.json")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame):
    """Text cells that a spreadsheet would run as a formula (``=cmd|calc!A1``, a file named
    ``+1.png``) get a leading quote, the usual CSV-injection rule; numbers are left as they are."""
    import pandas as pd

    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = [f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
                           for v in out[column]]
    return out


def cmd_predict(args) -> int:
    import pandas as pd
    from tqdm import tqdm

    from distmtl.errors import DistmtlError
    from distmtl.io import atomic_write, atomic_write_text
    from distmtl.inference.face_rows import FaceRows
    from distmtl.inference.predictor import Predictor, gather_inputs

    fmt = output_format(Path(args.out))
    if args.detect and args.no_detect:
        raise DistmtlError("predict: give at most one of --detect and --no-detect")
    detect = True if args.detect else False if args.no_detect else None
    predictor = Predictor.from_pretrained(args.model, device=args.device, revision=args.revision)
    faces = predictor.face_preprocessing(detect, args.backend, args.min_face_score)
    face_options = {"backend": args.backend, "min_face_score": args.min_face_score, "every": args.every}
    layout = faces.mode != "none"
    if layout:
        FaceRows(faces, predictor.preprocessing, args.every)  # a missing backend: one line, before any file
    elif args.layout == "openface":
        raise DistmtlError("--layout openface needs face detection (it has frame, face_id and confidence columns)")
    items = gather_inputs(args.inputs, recursive=args.recursive, videos=layout)
    columns = predictor.columns(compound=args.compound, detect=layout)
    if args.layout == "openface":
        from distmtl.inference.layouts import openface_columns

        columns = openface_columns(columns)
    out, side = Path(args.out), sidecar_path(args.out)
    if out.is_dir():
        raise DistmtlError(f"{out}: is a folder; -o expects a .csv or .parquet file name")
    if out.exists() and not args.overwrite:
        raise DistmtlError(f"{out}: exists; pass --overwrite to replace it, or choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    meta = {"model": model_reference(args.model, args.revision), **predictor.describe(), "columns": columns,
            "inputs": len(items), "batch_size": args.batch_size, "device": str(predictor.device),
            "compound": args.compound, "faces_applied": faces.to_dict(), "every": args.every,
            "layout": args.layout,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "complete": False}
    atomic_write_text(side, json.dumps(meta, indent=2) + "\n")
    delay = float(os.environ.get(DELAY_ENV) or 0)
    rows = errors = no_face = 0
    frames = []  # Parquet: kept until the end
    seen: set[str] = set()
    try:
        with (open(out, "w", newline="", encoding="utf-8") if fmt == "csv" else contextlib.nullcontext()) \
                as handle, tqdm(total=len(items), unit="input", disable=True if args.quiet else None) as bar:
            if handle is not None:
                handle.write(pd.DataFrame(columns=columns).to_csv(index=False))
                handle.flush()
            for frame in predictor.iter_predict(items, args.batch_size, args.num_workers, strict=args.strict,
                                                compound=args.compound, detect=detect, **face_options):
                if args.layout == "openface":
                    from distmtl.inference.layouts import to_openface

                    frame = to_openface(frame)
                if handle is None:
                    frames.append(frame)
                else:
                    handle.write(spreadsheet_safe(frame).to_csv(index=False, header=False, float_format="%.6g"))
                    handle.flush()  # one write per batch: a killed job leaves whole rows only
                rows += len(frame)
                errors += int((frame["error"] != "").sum())
                if layout:
                    no_face += int((frame["error"].eq("") & frame["confidence" if args.layout == "openface"
                                                               else "FaceScore"].isna()).sum())
                if plot_dir is not None:
                    score = "confidence" if args.layout == "openface" else "FaceScore"
                    for offset, (_, row) in enumerate(frame.iterrows()):
                        if row["error"] == "" and not (layout and pd.isna(row[score])):
                            plot_prediction(row, predictor,
                                            plot_dir / _plot_name(rows - len(frame) + offset, row["input"]))
                seen.update(frame["input"])
                bar.n = len(seen) - 1  # the last input may have more rows (faces, frames) to come
                bar.refresh()
                if delay:
                    time.sleep(delay)
            bar.n = len(items)
            bar.refresh()
    except BaseException:
        if out.exists() and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
            out.unlink()  # a run that stopped on an error leaves no partial file behind
        raise
    if fmt == "parquet":
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        atomic_write(out, lambda tmp: table.to_parquet(tmp, index=False))
    meta.update(complete=True, rows=rows, errors=errors, finished=_dt.datetime.now(
        _dt.timezone.utc).isoformat(timespec="seconds"), **({"no_face": no_face} if layout else {}))
    atomic_write_text(side, json.dumps(meta, indent=2) + "\n")
    extra = f", {no_face} without a face" if layout else ""
    print(f"{rows} rows written to {out} ({errors} unreadable{extra}); metadata in {side}")
    if errors and not args.keep_going:
        print(f"error: {errors} input(s) could not be read (see the error column); --keep-going exits 0 "
              "in that case", file=sys.stderr)
        return 1
    return 0


def cmd_compound(args) -> int:
    from distmtl.errors import DistmtlError
    from distmtl.inference.compound import evaluate_compound
    from distmtl.inference.predictor import Predictor
    from distmtl.tasks import RAFDB_COMPOUND_11

    if bool(args.data) == bool(args.rafdb):
        raise DistmtlError("compound: give either --data CSV or --rafdb ROOT")
    if args.rafdb:
        from distmtl.data.loaders import get_loader

        data = get_loader("rafdb").load(args.rafdb, args.split, subset="compound").frame
    else:
        data = args.data
    classes = {"rafdb11": list(RAFDB_COMPOUND_11)}.get(args.classes, args.classes)
    predictor = Predictor.from_pretrained(args.model, device=args.device)
    result = evaluate_compound(predictor, data, column=args.column, classes=classes,
                               batch_size=args.batch_size, num_workers=args.num_workers)
    print(f"zero-shot compound expressions, {len(result['classes'])} classes, {result['n']} images"
          + (f" ({result['n_errors']} unreadable)" if result["n_errors"] else "") + ":")
    for name, value in result["per_class"].items():
        print(f"  {name:<24} {value:.4f}")
    print(f"accuracy {result['accuracy']:.4f}, mean per-class accuracy {result['mean_class_accuracy']:.4f} "
          f"(chance {result['chance']:.4f}, majority {result['majority']:.4f})")
    if args.out:
        from distmtl.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")
    return 0


def cmd_fewshot(args) -> int:
    from distmtl.inference.fewshot import markdown_table, plot_summary, run_fewshot, summarise
    from distmtl.io import atomic_write_text

    frame = run_fewshot(args.model, args.data, shots=args.shots, seeds=args.seeds, column=args.column,
                        scratch_steps=args.scratch_steps, head_steps=args.head_steps, head_l2=args.head_l2,
                        **({"methods": args.methods} if args.methods else {}),
                        progress=None if args.quiet else print)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(frame)
    atomic_write_text(out / "episodes.csv", frame.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False, float_format="%.6g"))
    table = markdown_table(summary)
    classes = frame.attrs["classes"]
    atomic_write_text(out / "summary.md", f"Mean per-class accuracy on the query images, mean ± std over "
                                          f"{args.seeds} episode seeds, {len(classes)} classes.\n\n{table}\n")
    plot_summary(summary, out / "fewshot.png", title=f"few-shot, {len(classes)} classes")
    print(f"\nmean per-class accuracy (query), mean ± std over {args.seeds} seeds, {len(classes)} classes:")
    print(table)
    print(f"\nwritten to {out}: episodes.csv, summary.csv, summary.md, fewshot.png")
    return 0


def _plot_name(index: int, name: str) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(str(name)).stem)
    return f"{index:06d}_{stem[:60]}.png"


def plot_prediction(row, predictor, path: str | Path) -> Path:
    """A PNG with the input image, its class probabilities and its label probabilities."""
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from distmtl.data.transforms import load_image

    bars = []  # (title, names, values, thresholds or None)
    for name, groups in predictor.task_columns.items():
        task = predictor.tasks[name]
        values = [float(row[c]) for c in groups["values"]]
        if task.kind == "multiclass":
            bars.append((f"{name}: {row[name]}", list(task.labels), values, None))
        elif task.kind == "multilabel":
            bars.append((name, list(task.labels), values, list(predictor.thresholds[name])))
    if "compound" in row.index and isinstance(row["compound"], str):
        classes = [c[len("compound_"):] for c in row.index if c.startswith("compound_")]
        bars.append((f"compound: {row['compound']}", classes,
                     [float(row[f"compound_{c}"]) for c in classes], None))
    fig = Figure(figsize=(4 + 4 * max(1, len(bars)), 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(bars), squeeze=False)[0]
    try:
        image = load_image(row["input"], 3)  # a video's frame is not drawn
        if "FaceRectX" in row.index and not pd.isna(row["FaceRectX"]):  # one face of the picture
            x, y, w, h = (float(row[c]) for c in ("FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight"))
            image = image.crop((int(x - w / 4), int(y - h / 4), int(x + w * 1.25), int(y + h * 1.25)))
        axes[0].imshow(image)
    except Exception:  # noqa: BLE001 - the bars are still worth drawing
        axes[0].text(0.5, 0.5, "image not available", ha="center", va="center")
    title = Path(str(row["input"])).name[:40]
    for key, word in (("frame", "frame"), ("face_id", "face")):
        if key in row.index and not pd.isna(row[key]):
            title += f", {word} {int(row[key])}"
    axes[0].set_title(title, fontsize=9)
    axes[0].axis("off")
    for ax, (title, names, values, thresholds) in zip(axes[1:], bars):
        positions = range(len(names))
        colors = ["tab:blue"] * len(names) if thresholds is None else \
            ["tab:orange" if v > t else "tab:gray" for v, t in zip(values, thresholds)]
        ax.barh(positions, values, color=colors)
        if thresholds is not None:
            ax.scatter(thresholds, positions, marker="|", color="black", s=80, label="threshold")
        ax.set_yticks(list(positions), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return Path(path)


def add_parsers(sub) -> None:
    """Register this module's subcommands on the top-level subparsers."""
    p = sub.add_parser("export", help="write a model folder (safetensors + JSON config, optional ONNX)")
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (.ckpt)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--val", help="CSV (generic format) to calibrate the multilabel thresholds on "
                                 "(default: the experiment's data.val when readable, else 0.5)")
    p.add_argument("--no-calibrate", action="store_true", help="keep every threshold at 0.5")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs distmtl[onnx])")
    p.add_argument("--onnx-exporter", default="auto", choices=["auto", "legacy", "dynamo"])
    p.add_argument("--opset", type=int, help="ONNX opset (default 17 legacy, 18 dynamo)")
    p.add_argument("--batch-size", type=int, default=256, help="for calibration")
    p.add_argument("--num-workers", type=int, default=0, help="for calibration")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="predict on images and videos with an exported model; rows stream to a CSV")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, or folders of them")
    p.add_argument("--model", required=True,
                   help="model folder written by distmtl export, or a Hugging Face Hub repo id org/name")
    p.add_argument("--revision", help="Hub branch, tag or commit (with --model org/name)")
    p.add_argument("-o", "--out", required=True,
                   help="file to write: .csv (rows stream in) or .parquet (written at the end); "
                        "metadata goes to the same name with .json")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--detect", action="store_true",
                   help="detect and align faces even when the model records no face preprocessing "
                        "(default: do what the model was trained with)")
    p.add_argument("--no-detect", action="store_true",
                   help="take the inputs as already aligned face crops (no detection)")
    from distmtl.faces.detect import BACKENDS

    p.add_argument("--backend", choices=list(BACKENDS), help="face detector (default: the model's)")
    p.add_argument("--min-face-score", type=float, help="drop faces scoring below this (default: the model's, "
                                                         "else the backend's threshold)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="videos: every N-th frame (default 1: all)")
    p.add_argument("--recursive", action="store_true", help="search folders and their sub-folders")
    p.add_argument("--layout", choices=["distmtl", "openface"], default="distmtl",
                   help="column layout; openface: OpenFace's names (frame from 1, confidence, success, AU01_c)")
    p.add_argument("--keep-going", action="store_true",
                   help="exit 0 even when some inputs could not be read (their rows carry the error)")
    p.add_argument("--compound", action="store_true", help="add zero-shot compound-expression columns")
    p.add_argument("--plot", metavar="DIR", help="write one PNG per image with its prediction bars")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable input")
    p.add_argument("--overwrite", action="store_true", help="replace the -o file if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("compound", help="zero-shot compound-expression accuracy of an exported model")
    p.add_argument("--model", required=True, help="model folder written by distmtl export")
    p.add_argument("--data", help="CSV with image and a compound-class column")
    p.add_argument("--rafdb", metavar="ROOT", help="RAF-DB folder: its compound subset (11 classes)")
    p.add_argument("--split", default="test", choices=["train", "test", "all"], help="with --rafdb")
    p.add_argument("--column", help="class column (default: compound, else expression)")
    p.add_argument("--classes", default="data",
                   help="classes to choose from: data (those in the data; default), table (all 13), rafdb11")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--out", help="write the result as JSON here")
    p.set_defaults(func=cmd_compound)

    p = sub.add_parser("fewshot", help="adapt an exported model to new classes from k images each")
    p.add_argument("--model", required=True, help="model folder written by distmtl export")
    p.add_argument("--data", required=True, help="CSV with image and a class column (compound expressions)")
    p.add_argument("--column", help="class column (default: compound, else expression)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--seeds", type=int, default=5, help="episodes per number of shots")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="default all: 'zero-shot' 'linear probe' 'zero-shot head, fine-tuned' 'from scratch'")
    p.add_argument("--scratch-steps", type=int, default=100, help="full-batch steps of the from-scratch network")
    p.add_argument("--head-steps", type=int, default=200, help="steps of the fine-tuned zero-shot head")
    p.add_argument("--head-l2", type=float, default=0.01, help="pull of the fine-tuned head towards its init")
    p.add_argument("--out", default="runs/fewshot", help="folder for episodes.csv, summary.csv/.md, fewshot.png")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_fewshot)

    p = sub.add_parser("push", help="upload a model folder to the Hugging Face Hub with a generated model card")
    p.add_argument("--model", required=True, help="model folder written by distmtl export")
    p.add_argument("--repo", required=True, help="Hub repo id org/name (created when missing)")
    p.add_argument("--revision", help="branch to commit to (created when missing; default main)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--results", help="a study's results.md for the model card (default: the one of the "
                                     "compare run the model came from, when there is one)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=cmd_push)
