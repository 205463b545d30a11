"""A PNG of an image with its detected faces: boxes, the 5 landmarks, scores and face ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from distmtl.faces.detect import Face, as_rgb
from distmtl.io import atomic_write

LANDMARK_COLOURS = ((255, 64, 64), (64, 160, 255), (255, 230, 0), (255, 64, 255), (0, 230, 230))


def draw_faces(image, faces: Sequence[Face], crops: Sequence[np.ndarray] = ()) -> Image.Image:
    """The image with every face drawn; the aligned crops, if given, in a strip below it."""
    canvas = Image.fromarray(as_rgb(image)).copy()
    pen = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 300))
    for k, face in enumerate(faces):
        x, y, w, h = face.box
        pen.rectangle([x, y, x + w, y + h], outline=(0, 255, 0), width=width)
        label = f"{face.face_id if face.face_id is not None else k}: {face.score:.2f}"
        pen.text((x + 2, max(0, y - 12)), label, fill=(0, 255, 0))
        if face.landmarks is not None:
            r = max(2, round(w / 40))
            for (px, py), colour in zip(face.landmarks, LANDMARK_COLOURS):
                pen.ellipse([px - r, py - r, px + r, py + r], fill=colour, outline=(0, 0, 0))
    if not len(crops):
        return canvas
    side = max(c.shape[0] for c in crops)
    strip = Image.new("RGB", (max(canvas.width, side * len(crops)), side), (40, 40, 40))
    for k, crop in enumerate(crops):
        strip.paste(Image.fromarray(crop), (k * side, 0))
    out = Image.new("RGB", (max(canvas.width, strip.width), canvas.height + side), (40, 40, 40))
    out.paste(canvas, (0, 0))
    out.paste(strip, (0, canvas.height))
    return out


def save_faces_png(path: str | Path, image, faces: Sequence[Face], crops: Sequence[np.ndarray] = ()) -> Path:
    picture = draw_faces(image, faces, crops)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
