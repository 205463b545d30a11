"""Test pictures made from photographs and drawings that ship in packages (no download).

The astronaut is scikit-image's ``data.astronaut()`` (512x512). Her reference landmarks were
placed by hand on an 8x enlargement of the face with a 5-pixel grid drawn over it (pupil
centres, the tip of the nose, the two corners of the lips), to about a pixel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ASTRONAUT_LANDMARKS = np.array([[203.5, 101.0], [246.0, 104.0], [224.0, 127.0],
                                [202.5, 140.5], [244.5, 141.5]])
ASTRONAUT_FACE = (150, 45, 150, 150)  # x, y, w, h of a crop with the whole face and some hair
SYNTH_INDICES = (0, 2, 5)  # SynthFACS val faces the frontal HOG detector scores above 0.3


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def astronaut_face() -> np.ndarray:
    x, y, w, h = ASTRONAUT_FACE
    return astronaut()[y:y + h, x:x + w]


def synth_face(index: int, size: int = 128) -> np.ndarray:
    from distmtl.data.synthfacs import sample_image

    return sample_image(0, "val", index, size=size, nuisance=0.0)[0]


def paste(canvas: np.ndarray, tile: np.ndarray, x: int, y: int, side: int) -> tuple[int, int, int, int]:
    resized = np.asarray(Image.fromarray(tile).resize((side, side), Image.BILINEAR))
    canvas[y:y + side, x:x + side] = resized
    return x, y, side, side


def scene() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 960x540 picture with five faces of 100 to 240 px; returns it and where each face was put."""
    canvas = np.full((540, 960, 3), 120, np.uint8)
    placed = [paste(canvas, astronaut_face(), 20, 40, 240),
              paste(canvas, astronaut_face(), 300, 300, 120),
              paste(canvas, synth_face(SYNTH_INDICES[0]), 300, 40, 200),
              paste(canvas, synth_face(SYNTH_INDICES[1]), 560, 60, 150),
              paste(canvas, synth_face(SYNTH_INDICES[2]), 700, 300, 180)]
    return canvas, placed
