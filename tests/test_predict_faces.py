"""predict with face detection: every face of an image, videos frame by frame, face ids, layouts."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from distmtl.errors import DistmtlError
from faces_scenes import astronaut_face, paste, scene, synth_face
from test_predict import EXPECTED_COLUMNS, shared_tiny_run

pytest.importorskip("dlib")
FPS, SECONDS, EVERY = 10, 3, 3


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    """The tiny model, its folder saying it was trained on 112x112 aligned crops."""
    run = shared_tiny_run(tmp_path_factory)
    folder = tmp_path_factory.mktemp("face_model") / "model"
    shutil.copytree(run.model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["faces"] = {"mode": "align", "size": 112, "margin": 0.0, "backend": "dlib", "min_face_score": None}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def predictor(face_model):
    from distmtl.inference.predictor import Predictor

    torch.set_num_threads(1)
    return Predictor.from_pretrained(face_model, device="cpu")


def clip_frames() -> list[np.ndarray]:
    """Two faces for 3 s: the astronaut moving right 4 px a frame, a SynthFACS face still."""
    synth = synth_face(0)
    frames = []
    for k in range(FPS * SECONDS):
        canvas = np.full((240, 360, 3), 110, np.uint8)
        paste(canvas, astronaut_face(), 10 + 4 * k, 40, 130)
        paste(canvas, synth, 220, 90, 130)
        frames.append(canvas)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from distmtl.faces.video import write_video

    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", clip_frames(), fps=FPS)


def test_every_face_of_an_image_is_a_row_and_a_plain_image_has_none(predictor):
    image, placed = scene()
    plain = np.full((200, 200, 3), (40, 60, 200), np.uint8)  # a plain blue picture
    frame = predictor.predict([image, plain])
    assert list(frame.columns) == predictor.columns(detect=True)
    rows = frame[frame["input"] == "array:0"]
    assert len(rows) == len(placed) and sorted(rows["face_id"]) == list(range(len(placed)))
    assert rows["FaceScore"].gt(0.2).all() and rows[EXPECTED_COLUMNS[1:-1]].notna().all().all()
    assert rows[["x_0", "y_0", "x_4", "y_4"]].notna().all().all()
    blue = frame[frame["input"] == "array:1"]
    assert len(blue) == 1 and blue["FaceScore"].isna().all() and blue["face_id"].isna().all()
    assert blue[EXPECTED_COLUMNS[1:-1]].isna().all().all() and (frame["error"] == "").all()


def test_a_video_gives_one_row_per_frame_and_face_with_stable_ids(predictor, clip):
    frame = predictor.predict([str(clip)], every=EVERY)
    frames = list(range(0, FPS * SECONDS, EVERY))
    assert sorted(set(frame["frame"])) == frames
    assert len(frame) == 2 * len(frames)  # both faces in every processed frame
    assert np.allclose(frame["timestamp"], frame["frame"] / FPS, atol=1e-6)
    assert set(frame["face_id"]) == {0, 1}
    for _, track in frame.groupby("face_id"):
        centre_x = (track["FaceRectX"] + track["FaceRectWidth"] / 2).to_numpy()
        assert len(track) == len(frames)
        assert (centre_x < 200).all() or (centre_x > 200).all()  # one id, one face: never swapped
    moving = frame.groupby("face_id")["FaceRectX"].agg(lambda x: x.iloc[-1] - x.iloc[0])
    assert moving.max() > 0.7 * 4 * (frames[-1] - frames[0])  # the astronaut's track follows her


def _cli(*argv) -> int:
    from distmtl.cli import main

    return main([str(a) for a in argv])


def test_cli_video_bad_input_keep_going_and_openface_layout(face_model, clip, tmp_path):
    out = tmp_path / "preds.csv"
    missing = tmp_path / "nowhere.png"
    assert _cli("predict", clip, missing, "--model", face_model, "-o", out, "--every", 10, "--quiet") == 1
    table = pd.read_csv(out, keep_default_na=False)
    error_rows = table[table["error"] != ""]
    assert len(error_rows) == 1 and "nowhere.png" in error_rows["error"].iloc[0]
    assert len(table) == 1 + 2 * 3  # frames 0, 10, 20 with two faces each
    assert _cli("predict", clip, missing, "--model", face_model, "-o", out, "--every", 10, "--quiet",
                "--keep-going", "--layout", "openface", "--overwrite") == 0
    table = pd.read_csv(out)
    assert list(table.columns[:5]) == ["frame", "face_id", "timestamp", "confidence", "success"]
    assert "AU01_c" in table.columns and "FaceScore" not in table.columns
    assert sorted(set(table["frame"].dropna())) == [1, 11, 21]  # OpenFace counts frames from 1
    assert table["success"].tolist().count(0) == 1


def test_strict_failure_leaves_no_partial_csv(face_model, clip, tmp_path):
    out = tmp_path / "preds.csv"
    assert _cli("predict", clip, tmp_path / "nowhere.png", "--model", face_model, "-o", out,
                "--every", 10, "--quiet", "--strict") == 2
    assert not out.exists()


def test_recursive_folder_search(face_model, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    image, _ = scene()
    Image.fromarray(image).save(tmp_path / "a" / "b" / "scene.png")
    out = tmp_path / "p.csv"
    with pytest.raises(DistmtlError, match="--recursive"):
        _cli_raise("predict", tmp_path / "a", "--model", face_model, "-o", out)
    assert _cli("predict", tmp_path / "a", "--model", face_model, "-o", out, "--recursive", "--quiet") == 0
    table = pd.read_csv(out)
    assert len(table) == 5 and set(table["input"]) == {str(tmp_path / "a" / "b" / "scene.png")}
    plain = tmp_path / "plain.png"
    Image.fromarray(np.full((90, 90, 3), 70, np.uint8)).save(plain)
    assert _cli("predict", tmp_path / "a" / "b" / "scene.png", plain, "--model", face_model, "-o", out,
                "--plot", tmp_path / "plots", "--quiet", "--overwrite") == 0
    assert len(list((tmp_path / "plots").glob("*.png"))) == 5  # one per face; the plain image has none


def _cli_raise(*argv):
    from distmtl.cli import build_parser

    args = build_parser().parse_args([str(a) for a in argv])
    return args.func(args)


def test_no_detect_warns_when_inputs_are_not_like_the_training_crops(predictor, caplog):
    photo = np.full((300, 400, 3), 128, np.uint8)
    with caplog.at_level(logging.WARNING):
        frame = predictor.predict([photo], detect=False)
    assert list(frame.columns) == EXPECTED_COLUMNS and frame["expression"].notna().all()
    assert "do not look like the align face crops" in caplog.text and "not square" in caplog.text


def test_export_records_the_prepared_face_preprocessing(tmp_path):
    from distmtl.inference.export import training_faces

    prepared = {"mode": "align", "size": 96, "margin": 0.1, "backend": "dlib", "min_face_score": None}
    for name, faces in (("a", prepared), ("b", prepared), ("c", None)):
        (tmp_path / name).mkdir()
        if faces:
            (tmp_path / name / "faces.json").write_text(json.dumps(faces))
    config = {"data": {"faces": "auto", "sources": [{"csv": str(tmp_path / "a" / "x.csv")},
                                                    {"csv": str(tmp_path / "b" / "x.csv")}]}}
    assert training_faces(config).to_dict() == prepared
    config["data"]["sources"].append({"csv": str(tmp_path / "c" / "x.csv")})
    with pytest.raises(DistmtlError, match="prepared differently"):
        training_faces(config)
    config["data"]["faces"] = "none"
    assert training_faces(config).mode == "none"
