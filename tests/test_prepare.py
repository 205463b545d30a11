"""distmtl data prepare: AffectNet by its box/landmark columns, DISFA from its videos, folders;
resumable (a re-run does no work)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from distmtl.faces import FacePreprocessing, crop_box
from faces_scenes import astronaut_face, paste, scene
from fixtures.loaders_au import DISFA_PARTS, write_disfa

pytest.importorskip("dlib")
HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def _affectnet(root):
    """Three photographs of 260x220 with the face at a known box; the second without landmarks."""
    lines, pictures = [HEADER], {}
    ramp = np.linspace(0, 255, 260, dtype=np.uint8)
    for i, (x, y, side) in enumerate([(20, 30, 150), (90, 50, 120), (60, 10, 190)]):
        canvas = np.stack([np.tile(ramp, (220, 1)), np.tile(ramp[::-1], (220, 1)),
                           np.full((220, 260), 60 * i, np.uint8)], axis=-1)
        paste(canvas, astronaut_face(), x, y, min(side, 220 - y))
        name = f"10{i}/face{i}.jpg"
        (root / "Manually_Annotated_Images" / f"10{i}").mkdir(parents=True)
        Image.fromarray(canvas).save(root / "Manually_Annotated_Images" / name, quality=98, subsampling=0)
        decoded = np.asarray(Image.open(root / "Manually_Annotated_Images" / name))
        pictures[name] = (decoded, (x + 10, y + 10, side - 20, side - 20))
        marks = "" if i == 1 else ";".join(["1.0"] * 136)  # degenerate: alignment must not use them in box mode
        bx, by, bw, bh = pictures[name][1]
        lines.append(f"{name},{bx},{by},{bw},{bh},{marks},{i + 1},0.5,-0.25")
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir()
    (lists / "training.csv").write_text("\n".join(lines) + "\n")
    (lists / "validation.csv").write_text(HEADER + "\n")
    return pictures


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.jpg")}


def test_affectnet_is_cropped_by_its_box_columns_and_a_rerun_does_no_work(tmp_path):
    from distmtl.data.prepare import prepare

    pictures = _affectnet(tmp_path / "affectnet")
    pre = FacePreprocessing(mode="box", size=64, margin=0.1)
    result = prepare(tmp_path / "out", pre, dataset="affectnet", root=tmp_path / "affectnet", workers=1, quiet=True)
    assert result["rows"] == 3 and result["dropped"] == 0 and result["processed"] == 3
    table = pd.read_csv(result["csv"])
    assert table["expression"].tolist() == ["Happiness", "Sadness", "Surprise"]
    assert set(table.columns) >= {"image", "valence", "arousal"}
    for rel in table["image"]:
        name = rel.split("Manually_Annotated_Images/")[-1]
        canvas, box = pictures[name]
        made = np.asarray(Image.open(tmp_path / "out" / rel)).astype(float)
        expected = crop_box(canvas, box, 64, 0.1).astype(float)
        assert made.shape == (64, 64, 3)
        assert np.abs(made - expected).mean() < 3  # the crop's JPEG compression, nothing else
        other = crop_box(canvas, (0, 0, 60, 60), 64, 0.1).astype(float)
        assert np.abs(made - other).mean() > 20
    assert json.loads((tmp_path / "out" / "faces.json").read_text())["mode"] == "box"
    before = _mtimes(tmp_path / "out")
    again = prepare(tmp_path / "out", pre, dataset="affectnet", root=tmp_path / "affectnet", workers=1, quiet=True)
    assert again["processed"] == 0 and again["skipped"] == 3 and again["rows"] == 3
    assert _mtimes(tmp_path / "out") == before


def _disfa_with_videos(root):
    from distmtl.faces.video import write_video

    write_disfa(root, images=False)
    subjects = [s for part in DISFA_PARTS.values() for s in part]
    for k, subject in enumerate(subjects):
        frames = []
        for f in range(6):
            canvas = np.full((200, 220, 3), 100, np.uint8)
            if subject != "SN004":  # this subject's camera shows no face
                paste(canvas, astronaut_face(), 20 + 3 * f + k, 30, 150)
            frames.append(canvas)
        (root / "Videos_LeftCamera").mkdir(exist_ok=True)
        write_video(root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi", frames, fps=5)
    return subjects


def test_disfa_frames_are_extracted_from_the_videos_and_aligned(tmp_path):
    from distmtl.cli import main
    from distmtl.data.loaders import get_loader

    subjects = _disfa_with_videos(tmp_path / "disfa")
    labels = get_loader("disfa").load(tmp_path / "disfa", "all").frame
    out = tmp_path / "out"
    argv = ["data", "prepare", "--dataset", "disfa", "--root", str(tmp_path / "disfa"), "--split", "all",
            "--out", str(out), "--size", "64", "--workers", "1", "--quiet"]
    assert main(argv) == 0
    table = pd.read_csv(out / "disfa_all.csv")
    dropped = pd.read_csv(out / "disfa_all_dropped.csv")
    no_face = (labels["subject"] == "SN004").sum()
    assert len(table) == len(labels) - no_face and len(dropped) == no_face
    assert set(dropped["reason"]) == {"no face found"}
    assert set(table["subject"]) == set(subjects) - {"SN004"}
    assert table["image"].str.fullmatch(r"img/SN\d{3}/\d\.jpg").all()
    first = table[table["subject"] == "SN001"]
    assert first["AU01"].notna().all()
    crop = np.asarray(Image.open(out / first["image"].iloc[0]))
    assert crop.shape == (64, 64, 3) and crop.std() > 20  # a face, not the grey background
    before = _mtimes(out)
    assert main(argv) == 0
    assert _mtimes(out) == before and len(pd.read_csv(out / "disfa_all.csv")) == len(table)


def test_a_folder_of_images_in_parallel(tmp_path, capsys):
    from distmtl.data.prepare import prepare

    (tmp_path / "in" / "sub").mkdir(parents=True)
    image, _ = scene()
    Image.fromarray(image).save(tmp_path / "in" / "scene.png")
    Image.fromarray(np.full((100, 100, 3), 50, np.uint8)).save(tmp_path / "in" / "sub" / "plain.png")
    Image.fromarray(astronaut_face()).save(tmp_path / "in" / "sub" / "astronaut.png")
    result = prepare(tmp_path / "out", FacePreprocessing(size=48), images=tmp_path / "in", workers=2, quiet=True)
    assert result["rows"] == 2 and result["dropped"] == 1
    table = pd.read_csv(result["csv"])
    assert sorted(table["image"]) == ["scene.jpg", "sub/astronaut.jpg"]
    assert pd.read_csv(result["dropped_csv"])["image"].tolist() == ["sub/plain.jpg"]


def test_affwild2_two_person_video_gives_left_and_right_faces(tmp_path):
    from distmtl.data.loaders import get_loader
    from distmtl.data.prepare import prepare
    from distmtl.faces.video import write_video
    from faces_scenes import synth_face
    from fixtures.loaders_au import write_affwild2

    root = tmp_path / "affwild2"
    write_affwild2(root, images=False)
    for folder, video, two in (("batch1", "1-30-1280x720", False), ("batch2", "10-60-1280x720", True),
                               ("batch1", "118-30-640x480", False)):
        frames = []
        for f in range(8):
            canvas = np.full((200, 340, 3), 90, np.uint8)
            paste(canvas, astronaut_face(), 10 + f, 30, 150)
            if two:
                paste(canvas, synth_face(0), 180, 40, 140)
            frames.append(canvas)
        (root / folder).mkdir(exist_ok=True)
        write_video(root / folder / f"{video}.mp4", frames, fps=5)
    labels = get_loader("affwild2").load(root, "train").frame
    result = prepare(tmp_path / "out", FacePreprocessing(size=48), dataset="affwild2", root=root, workers=1,
                     quiet=True)
    table = pd.read_csv(result["csv"])
    assert result["dropped"] == 0 and len(table) == len(labels)
    left = table[table["image"].str.startswith("cropped_aligned/10-60-1280x720_left/")]["image"]
    right = table[table["image"].str.startswith("cropped_aligned/10-60-1280x720_right/")]["image"]
    assert len(left) and len(right)
    a = np.asarray(Image.open(tmp_path / "out" / left.iloc[0])).astype(float)
    b = np.asarray(Image.open(tmp_path / "out" / right.iloc[0])).astype(float)
    alone = table[table["image"].str.startswith("cropped_aligned/1-30-1280x720/")]["image"].iloc[0]
    c = np.asarray(Image.open(tmp_path / "out" / alone)).astype(float)
    assert np.abs(a - c).mean() < np.abs(a - b).mean() / 2  # left: the astronaut; right: the other face
