"""``distmtl data prepare``: aligned face crops of a training set, with the code predict uses.

- AffectNet (CSV release): each image is cropped by its own landmark columns (5-point alignment
  from the 68 points) or, with ``--mode box`` or unreadable landmarks, by its face box; the npy
  re-packaging has no box: landmarks, else the detector.
- DISFA and Aff-Wild2: the frames the labels name are decoded from the videos (PyAV) and aligned
  (DISFA: ``Videos_LeftCamera/LeftVideo<SN>_comp.avi``; Aff-Wild2: ``<video>.mp4|avi`` anywhere
  under the root; a ``<id>_left`` / ``<id>_right`` label set takes the left- / right-most face).
- BP4D: its extracted frames are aligned; any folder of images (``--images``) likewise.

Output, under ``--out``: the crops (``.jpg``, quality 95, no chroma subsampling) at the labelled image's relative path,
a CSV in the generic format (``<dataset>_<split>.csv``: ``image`` relative to the CSV, the
labels, ``subject`` where the dataset has one; ``images.csv`` for a folder) and ``faces.json``,
the face preprocessing (which ``data.faces: auto`` records in exported models). A row whose
image or frame gave no crop (no face found, unreadable) is left out of the CSV and listed, with
the reason, in ``<csv stem>_dropped.csv``. Resumable: ``.prepare_done.jsonl`` records every
finished image or video, and a re-run skips them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distmtl.data.prepare_cli import DATASETS
from distmtl.errors import DistmtlError
from distmtl.faces.align import PREPARED_FACES_NAME, FaceCropper, FacePreprocessing, align, crop_box
from distmtl.faces.detect import five_from_68
from distmtl.faces.video import VIDEO_SUFFIXES, read_frames
from distmtl.io import atomic_write, atomic_write_text

LEDGER = ".prepare_done.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Job:
    """One image (``frames`` None) or one video: what to read, what to write where."""

    key: str
    src: str
    out: str = ""  # image jobs: the crop's path relative to the output folder
    box: tuple | None = None
    landmarks: np.ndarray | None = None
    frames: dict[int, str] | None = None  # video jobs: decode index -> crop path
    pick: str = "best"  # best | left | right


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    written: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # crop path -> why it has none


_CROPPER: FaceCropper | None = None


def _init(pre: dict) -> None:
    global _CROPPER
    _CROPPER = FaceCropper(FacePreprocessing(**pre))


def _save(out_dir: Path, rel: str, crop: np.ndarray) -> None:
    from PIL import Image

    atomic_write(out_dir / rel, lambda tmp: Image.fromarray(crop).save(tmp, format="JPEG", quality=95, subsampling=0))


def _best(found, pick: str):
    if not found:
        return None
    if pick == "left":
        return min(found, key=lambda fc: fc[0].box[0] + fc[0].box[2] / 2)
    if pick == "right":
        return max(found, key=lambda fc: fc[0].box[0] + fc[0].box[2] / 2)
    return found[0]  # best score first


def _crop_image(rgb: np.ndarray, job: Job) -> tuple[np.ndarray | None, str]:
    pre = _CROPPER.pre
    if pre.mode == "align" and job.landmarks is not None:
        return align(rgb, job.landmarks, pre.size, pre.margin), ""
    if job.box is not None and pre.mode in ("align", "box"):
        return crop_box(rgb, job.box, pre.size, pre.margin), ""
    chosen = _best(_CROPPER.faces(rgb), job.pick)
    return (None, "no face found") if chosen is None else (chosen[1], "")


def _read_rgb(path: str) -> np.ndarray:
    """An image file as RGB (Pillow only: workers need not import torch)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DistmtlError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DistmtlError(f"{path}: cannot decode image: {' '.join(str(exc).split())}") from None


def _work(payload: tuple[Job, str]) -> tuple[str, list[str], dict[str, str]]:
    """Run one job; returns (key, crops written, {crop: why not})."""
    job, out = payload
    out_dir = Path(out)
    written, failed = [], {}
    try:
        if job.frames is None:
            crop, why = _crop_image(_read_rgb(job.src), job)
            if crop is None:
                failed[job.out] = why
            else:
                _save(out_dir, job.out, crop)
                written.append(job.out)
            return job.key, written, failed
        wanted = dict(job.frames)
        last = max(wanted)
        for index, _, rgb in read_frames(job.src):
            if index in wanted:
                crop, why = _crop_image(rgb, Job(job.key, job.src, pick=job.pick))
                rel = wanted.pop(index)
                if crop is None:
                    failed[rel] = why
                else:
                    _save(out_dir, rel, crop)
                    written.append(rel)
            if index >= last:
                break
        failed.update({rel: "frame not in the video" for rel in wanted.values()})
    except DistmtlError as exc:
        targets = [job.out] if job.frames is None else [r for r in job.frames.values() if r not in written]
        failed.update({rel: str(exc) for rel in targets if rel not in failed})
    return job.key, written, failed


def run_jobs(jobs: list[Job], out_dir: Path, pre: FacePreprocessing, workers: int = 1,
             quiet: bool = False, desc: str = "prepare") -> Summary:
    """Every job not yet in the ledger, in parallel over ``workers`` processes, with a progress bar."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = out_dir / LEDGER
    finished: dict[str, dict] = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                finished[record["key"]] = record
    summary = Summary()
    todo = []
    for job in jobs:
        record = finished.get(job.key)
        if record is not None and all((out_dir / rel).exists() for rel in record["written"]):
            summary.skipped += 1
            summary.written.update(record["written"])
            summary.failed.update(record["failed"])
        else:
            todo.append(job)
    _init(pre.to_dict())
    if any(job.frames is not None or (job.box is None and job.landmarks is None) for job in todo):
        _CROPPER.detector  # noqa: B018 - a missing backend: one line before any work; forked workers share it
    payloads = [(job, str(out_dir)) for job in todo]
    with open(ledger, "a", encoding="utf-8") as handle, \
            tqdm(total=len(todo), desc=desc, unit="file", disable=True if quiet else None) as bar:
        if workers > 1 and len(todo) > 1:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(pre.to_dict(),))
            results: Iterable = pool.map(_work, payloads, chunksize=max(1, min(64, len(todo) // (4 * workers))))
        else:
            pool, results = None, map(_work, payloads)
        try:
            for key, written, failed in results:
                handle.write(json.dumps({"key": key, "written": written, "failed": failed}) + "\n")
                handle.flush()
                summary.done += 1
                summary.written.update(written)
                summary.failed.update(failed)
                bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return summary


def _rel(path: str | Path, root: Path) -> str:
    try:
        rel = Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(*Path(path).parts[-3:])
    return str(rel.with_suffix(".jpg"))


def image_jobs(frame: pd.DataFrame, root: Path, regions: dict | None = None) -> list[Job]:
    jobs = []
    for image in frame["image"].astype(str):
        box, marks = (regions or {}).get(image, (None, None))
        five = five_from_68(marks) if marks is not None else None
        jobs.append(Job(key=image, src=image, out=_rel(image, root), box=box, landmarks=five))
    return jobs


def _video_index(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(root.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()}


def video_jobs(frame: pd.DataFrame, dataset: str, root: Path) -> tuple[list[Job], list[str]]:
    """Video jobs for the frames the label rows name, and each row's crop path (same order)."""
    videos = _video_index(root)
    by_video: dict[tuple[str, str], dict[int, str]] = {}
    targets = []
    for image in frame["image"].astype(str):
        path = Path(image)
        pick = "best"
        if dataset == "disfa":  # loaded with image_template "{subject}/{index}"
            subject, index = path.parent.name, int(path.name)
            name, rel = f"LeftVideo{subject}_comp", f"img/{subject}/{index}.jpg"
        else:  # affwild2: cropped_aligned/<video>/<i:05d>.jpg, frame i counted from 1
            name, index = path.parent.name, int(path.stem) - 1
            rel = f"cropped_aligned/{name}/{path.stem}.jpg"
            for side in ("left", "right"):
                if name.endswith(f"_{side}"):
                    name, pick = name[: -len(side) - 1], side
        by_video.setdefault((name, pick), {})[index] = rel
        targets.append(rel)
    jobs = []
    for (name, pick), frames in sorted(by_video.items()):
        src = videos.get(name)
        if src is None:
            raise DistmtlError(f"{dataset}: no video file '{name}' ({', '.join(VIDEO_SUFFIXES[:3])}, ...) under {root}")
        jobs.append(Job(key=f"{src}|{pick}|{min(frames)}-{max(frames)}|{len(frames)}", src=str(src),
                        frames=frames, pick=pick))
    return jobs, targets


def load_dataset(dataset: str, root: Path, split: str) -> pd.DataFrame:
    from distmtl.data.loaders import get_loader

    loader = get_loader(dataset)
    options = {"image_template": "{subject}/{index}"} if dataset == "disfa" else {}
    return loader.load(root, split, **options).frame


def prepare(out: str | Path, pre: FacePreprocessing, *, dataset: str | None = None, root: str | Path | None = None,
            images: str | Path | None = None, split: str = "train", workers: int | None = None,
            quiet: bool = False) -> dict:
    """Prepare one dataset split (or a folder of images); returns what was done (see the module doc)."""
    started = time.monotonic()
    out_dir = Path(out)
    workers = workers or os.cpu_count() or 1
    if (dataset is None) == (images is None):
        raise DistmtlError("data prepare: give either --dataset (with --root) or --images FOLDER")
    if pre.mode == "none":
        raise DistmtlError("data prepare: --mode none makes no crops; use align or box")
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise DistmtlError(f"{folder}: not a folder of images")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DistmtlError(f"{folder}: no image files found (searched sub-folders too)")
        frame = pd.DataFrame({"image": [str(p) for p in files]})
        jobs, targets = image_jobs(frame, folder), None
        csv_name = "images.csv"
    else:
        if dataset not in DATASETS:
            raise DistmtlError(f"data prepare: --dataset must be one of {', '.join(DATASETS)}, got '{dataset}'")
        if root is None:
            raise DistmtlError(f"data prepare: --dataset {dataset} needs --root")
        root = Path(root)
        frame = load_dataset(dataset, root, split)
        if dataset in ("disfa", "affwild2"):
            jobs, targets = video_jobs(frame, dataset, root)
        else:
            regions = None
            if dataset == "affectnet":
                from distmtl.data.loaders.affectnet import face_regions

                regions = face_regions(root, split)
            jobs, targets = image_jobs(frame, root, regions), None
        csv_name = f"{dataset}_{split}.csv"
    summary = run_jobs(jobs, out_dir, pre, workers=workers, quiet=quiet, desc=csv_name[:-4])
    crops = targets if targets is not None else [job.out for job in jobs]
    table = frame.copy()
    table["image"] = crops
    kept = table["image"].isin(summary.written)
    dropped = table.loc[~kept, ["image"]].assign(reason=lambda d: d["image"].map(summary.failed).fillna("not written"))
    csv_path = out_dir / csv_name
    keep = table[kept].drop(columns=[c for c in ("split",) if c in table.columns])
    atomic_write(csv_path, lambda tmp: keep.to_csv(tmp, index=False))
    dropped_path = out_dir / f"{csv_path.stem}_dropped.csv"
    if len(dropped):
        atomic_write(dropped_path, lambda tmp: dropped.to_csv(tmp, index=False))
    elif dropped_path.exists():
        dropped_path.unlink()
    atomic_write_text(out_dir / PREPARED_FACES_NAME, json.dumps(pre.to_dict(), indent=2) + "\n")
    return {"csv": str(csv_path), "rows": int(kept.sum()), "dropped": int((~kept).sum()),
            "dropped_csv": str(dropped_path) if len(dropped) else None, "jobs": len(jobs),
            "processed": summary.done, "skipped": summary.skipped, "seconds": time.monotonic() - started}


def cmd_prepare(args) -> int:
    pre = FacePreprocessing(mode=args.mode, size=args.size, margin=args.margin, backend=args.backend,
                            min_face_score=args.min_face_score)
    result = prepare(args.out, pre, dataset=args.dataset, root=args.root, images=args.images, split=args.split,
                     workers=args.workers, quiet=args.quiet)
    line = (f"{result['rows']} rows written to {result['csv']} ({result['processed']} files processed, "
            f"{result['skipped']} already done, {result['seconds']:.1f} s)")
    if result["dropped"]:
        line += f"; {result['dropped']} rows without a crop are listed in {result['dropped_csv']}"
    print(line)
    return 0
