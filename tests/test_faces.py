"""Face detection, landmarks and alignment on photographs and drawings shipped in packages."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import SimilarityTransform, warp

from distmtl.errors import DistmtlError
from distmtl.faces import Detector, FaceCropper, FacePreprocessing, align, crop_box, template
from distmtl.faces.align import crop_mismatch
from faces_scenes import ASTRONAUT_LANDMARKS, astronaut, scene

pytest.importorskip("dlib")
LANDMARK_TOLERANCE_PX = 4.0  # about a tenth of the astronaut's 42 px between the pupils


@pytest.fixture(scope="module")
def detector():
    return Detector("dlib")


def test_astronaut_face_and_landmarks_match_hand_placed_points(detector):
    faces = detector.detect(astronaut())
    assert len(faces) == 1, [f.box for f in faces]  # the badge on her suit scores below the threshold
    face = faces[0]
    x, y, w, h = face.box
    assert x < ASTRONAUT_LANDMARKS[:, 0].min() and ASTRONAUT_LANDMARKS[:, 0].max() < x + w
    assert y < ASTRONAUT_LANDMARKS[:, 1].min() and ASTRONAUT_LANDMARKS[:, 1].max() < y + h
    errors = np.linalg.norm(face.landmarks - ASTRONAUT_LANDMARKS, axis=1)
    assert errors.max() < LANDMARK_TOLERANCE_PX, errors


def test_every_face_of_a_multi_face_scene_is_found(detector):
    image, placed = scene()
    faces = detector.detect(image)
    assert len(faces) == len(placed)
    for px, py, side, _ in placed:
        inside = [f for f in faces if px <= f.box[0] and f.box[0] + f.box[2] <= px + side
                  and py <= f.box[1] and f.box[1] + f.box[3] <= py + side]
        assert len(inside) == 1, (px, py, side)
        assert inside[0].box[2] > 0.35 * side  # the face, not a detail of it


@pytest.mark.parametrize("kind", ["plain", "noise"])
def test_plain_or_noise_image_has_no_face(detector, kind):
    rng = np.random.default_rng(0)
    image = np.full((360, 480, 3), 90, np.uint8) if kind == "plain" else \
        rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    assert detector.detect(image) == []


def test_min_face_score_filters(detector):
    image, placed = scene()
    scores = sorted(f.score for f in detector.detect(image))
    strict = Detector("dlib", min_score=scores[2] + 1e-6)
    assert len(strict.detect(image)) == len(placed) - 3


def test_aligning_a_rotated_scaled_copy_recovers_the_upright_crop(detector):
    image = astronaut()
    upright = align(image, detector.detect(image)[0].landmarks)
    moved = SimilarityTransform(scale=0.7, rotation=np.deg2rad(25), translation=(150, -20))
    copy = warp(image, moved.inverse, output_shape=(512, 640), preserve_range=True).astype(np.uint8)
    faces = detector.detect(copy)
    assert len(faces) == 1
    recovered = align(copy, faces[0].landmarks)
    error = np.abs(recovered.astype(float) - upright).mean()
    assert error < 8.0, error  # measured 4.2 grey levels of 255 (resampling alone: 2.7)
    # a crop of another place of the photograph is far from it
    assert np.abs(crop_box(image, (300, 300, 90, 90)).astype(float) - upright).mean() > 30


def test_alignment_puts_landmarks_on_the_template():
    from distmtl.faces.align import alignment_transform

    image = astronaut()
    for size, margin in ((112, 0.0), (64, 0.25)):
        placed = SimilarityTransform(scale=2.5, rotation=0.3, translation=(40, 90))(template(size, margin))
        tform = alignment_transform(placed, size, margin)
        assert np.abs(tform(placed) - template(size, margin)).max() < 1e-6
        assert align(image, placed, size, margin).shape == (size, size, 3)
    # a real face is not exactly a similar copy of the template: least squares, residual a few px
    residual = alignment_transform(ASTRONAUT_LANDMARKS)(ASTRONAUT_LANDMARKS) - template()
    assert 0.5 < np.linalg.norm(residual, axis=1).max() < 10  # her smile is wider than the template


def test_box_crop_keeps_the_aspect_ratio():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 50:150] = 255  # a 100x20 white bar
    crop = crop_box(image, (50, 40, 100, 20), size=50)
    rows = np.where(crop[:, 25, 0] > 128)[0]
    cols = np.where(crop[25, :, 0] > 128)[0]
    assert len(cols) == 50 and 8 <= len(rows) <= 12  # 5:1, not squashed to a square


def test_mode_none_passes_the_image_through_and_mismatch_is_reported():
    image = np.zeros((80, 60, 3), np.uint8)
    (face, crop), = FaceCropper(FacePreprocessing(mode="none")).faces(image)
    assert crop.shape == image.shape and face.box == (0, 0, 60, 80)
    pre = FacePreprocessing(size=112)
    assert crop_mismatch((112, 112, 3), pre) is None
    assert "not square" in crop_mismatch((80, 60, 3), pre)
    assert "far from" in crop_mismatch((512, 512, 3), pre)


@pytest.mark.parametrize("bad, message", [({"mode": "squash"}, "faces.mode"), ({"size": 2}, "faces.size"),
                                          ({"backend": "haar"}, "faces.backend"), ({"sise": 64}, "unknown key")])
def test_bad_preprocessing_is_one_line(bad, message):
    with pytest.raises(DistmtlError, match=message):
        FacePreprocessing.from_dict(bad)


def test_unknown_backend_and_absent_insightface_models_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(DistmtlError, match="unknown backend 'dlip'.*did you mean: dlib"):
        Detector("dlip")
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    with pytest.raises(DistmtlError, match="face backend 'insightface'") as info:
        Detector("insightface")
    assert "\n" not in str(info.value)


def test_faces_show_writes_a_png(tmp_path, capsys):
    from PIL import Image

    from distmtl.cli import main

    Image.fromarray(astronaut()).save(tmp_path / "astronaut.png")
    assert main(["faces", "show", str(tmp_path / "astronaut.png"), "--png", str(tmp_path / "faces.png")]) == 0
    assert "1 face(s)" in capsys.readouterr().out
    drawn = np.asarray(Image.open(tmp_path / "faces.png"))
    assert drawn.shape == (512 + 112, 512, 3)
