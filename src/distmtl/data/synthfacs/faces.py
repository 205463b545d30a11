"""SynthFACS identities: a fixed seeded draw of face shape, feature geometry, colours and
attributes per identity.

All geometry is in *face coordinates*: x to the right, y downwards, the image spanning
[-1, 1] x [-1, 1] when no nuisance transform is applied (1 unit = half the image side). An
identity is a pure function of ``(seed, index)``: the same pair gives the same face in any
process and in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

IDENTITY_STREAM = 0x1D  # separates identity draws from per-image draws of the same seed

HAIR_STYLES = ("short", "long", "bald", "fringe")

_SKIN_LIGHT = np.array([246.0, 208.0, 182.0])
_SKIN_DARK = np.array([112.0, 74.0, 54.0])
_HAIR_COLOURS = np.array([
    [28, 22, 20], [58, 38, 26], [96, 62, 38], [150, 112, 66], [214, 180, 112],
    [160, 72, 36], [150, 148, 146], [60, 60, 64],
], dtype=np.float64)
_HAIR_WEIGHTS = np.array([0.26, 0.24, 0.16, 0.08, 0.09, 0.06, 0.06, 0.05])
_IRIS_COLOURS = np.array([
    [70, 44, 28], [40, 28, 22], [72, 110, 150], [86, 116, 70], [110, 84, 50],
], dtype=np.float64)
_IRIS_WEIGHTS = np.array([0.36, 0.26, 0.16, 0.1, 0.12])

Color = tuple[int, int, int]


@dataclass(frozen=True)
class Identity:
    """Everything about a face that does not change with expression or imaging."""

    index: int
    name: str
    # head outline: half-width, top (negative y), chin (positive y), jaw squareness exponent
    head_w: float
    head_top: float
    chin_y: float
    jaw_sq: float
    # eyes: centre x (per side), centre y, half-width, upper/lower lid heights, iris radius, tilt
    eye_x: float
    eye_y: float
    eye_w: float
    eye_up: float
    eye_lo: float
    iris_r: float
    eye_tilt: float
    # brows: gap above the eye centre, thickness, inner/outer x, arch height
    brow_gap: float
    brow_thick: float
    brow_in: float
    brow_out: float
    brow_arch: float
    # nose tip y and half-width; mouth centre y, half-width, lip thicknesses
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_up: float
    lip_lo: float
    neck_w: float
    hairline: float
    hair_style: str
    glasses: bool
    glasses_round: bool
    beard: bool
    skin: Color
    lip: Color
    hair: Color
    brow: Color
    iris: Color
    background: Color
    shirt: Color
    frame: Color

    @property
    def attributes(self) -> dict[str, int]:
        return {"glasses": int(self.glasses), "beard": int(self.beard)}


def identity_name(index: int) -> str:
    return f"id{index:04d}"


def _col(values) -> Color:
    v = np.clip(np.rint(values), 0, 255).astype(int)
    return int(v[0]), int(v[1]), int(v[2])


@lru_cache(maxsize=4096)
def make_identity(seed: int, index: int) -> Identity:
    """The identity ``index`` of the dataset drawn with ``seed`` (cached per process)."""
    rng = np.random.default_rng([int(seed), IDENTITY_STREAM, int(index)])
    u = rng.random(40)  # one fixed slot per attribute: adding attributes keeps old ones stable

    def lerp(i: int, low: float, high: float) -> float:
        return float(low + (high - low) * u[i])

    tone = u[0] ** 1.3
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * tone
    skin = skin * (1.0 + 0.05 * np.array([u[1] - 0.5, u[2] - 0.5, u[3] - 0.5]) * 2)
    lip = skin * np.array([0.86, 0.58, 0.58]) + np.array([30.0, 4.0, 8.0])
    hair_idx = int(np.searchsorted(np.cumsum(_HAIR_WEIGHTS), u[4] * _HAIR_WEIGHTS.sum()))
    hair = _HAIR_COLOURS[min(hair_idx, len(_HAIR_COLOURS) - 1)] * (0.9 + 0.2 * u[5])
    brow = hair * 0.75 if hair.mean() < 120 else hair * 0.55
    brow = brow * min(1.0, 0.45 * skin.mean() / max(brow.mean(), 1.0))  # keep brows visible
    iris_idx = int(np.searchsorted(np.cumsum(_IRIS_WEIGHTS), u[6] * _IRIS_WEIGHTS.sum()))
    iris = _IRIS_COLOURS[min(iris_idx, len(_IRIS_COLOURS) - 1)]
    bg_hue = rng.random(3)
    background = 95.0 + 120.0 * bg_hue
    shirt = 40.0 + 180.0 * rng.random(3)
    frame = np.array([25.0, 25.0, 30.0]) if u[7] < 0.6 else 40.0 + 150.0 * rng.random(3)
    style_p = u[8]
    hair_style = ("short" if style_p < 0.4 else "long" if style_p < 0.7
                  else "fringe" if style_p < 0.88 else "bald")
    beard = bool(u[9] < 0.2)
    glasses = bool(u[10] < 0.25)

    head_w = lerp(11, 0.55, 0.65)
    return Identity(
        index=int(index),
        name=identity_name(index),
        head_w=head_w,
        head_top=lerp(12, 0.80, 0.88),
        chin_y=lerp(13, 0.72, 0.80),
        jaw_sq=lerp(14, 0.55, 0.95),
        eye_x=lerp(15, 0.225, 0.26),
        eye_y=lerp(16, -0.13, -0.08),
        eye_w=lerp(17, 0.11, 0.13),
        eye_up=lerp(18, 0.052, 0.062),
        eye_lo=lerp(19, 0.036, 0.044),
        iris_r=lerp(20, 0.055, 0.063),
        eye_tilt=lerp(21, -0.012, 0.016),
        brow_gap=lerp(22, 0.16, 0.20),
        brow_thick=lerp(23, 0.040, 0.060),
        brow_in=lerp(24, 0.075, 0.10),
        brow_out=lerp(25, 0.38, 0.43),
        brow_arch=lerp(26, 0.015, 0.045),
        nose_y=lerp(27, 0.12, 0.17),
        nose_w=lerp(28, 0.065, 0.085),
        mouth_y=lerp(29, 0.37, 0.43),
        mouth_w=lerp(30, 0.16, 0.20),
        lip_up=lerp(31, 0.030, 0.045),
        lip_lo=lerp(32, 0.040, 0.058),
        neck_w=lerp(33, 0.20, 0.27),
        hairline=lerp(34, -0.70, -0.60) if hair_style != "fringe" else lerp(34, -0.56, -0.50),
        hair_style=hair_style,
        glasses=glasses,
        glasses_round=bool(u[35] < 0.5),
        beard=beard,
        skin=_col(skin),
        lip=_col(lip),
        hair=_col(hair),
        brow=_col(brow),
        iris=_col(iris),
        background=_col(background),
        shirt=_col(shirt),
        frame=_col(frame),
    )


def split_identities(n_identities: int, heldout_fraction: float = 0.2) -> tuple[range, range]:
    """Training and held-out identity indices (the last ``heldout_fraction`` are held out)."""
    n_identities = int(n_identities)
    n_heldout = max(1, int(round(n_identities * heldout_fraction)))
    n_train = n_identities - n_heldout
    return range(0, n_train), range(n_train, n_identities)
