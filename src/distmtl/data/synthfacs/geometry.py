"""SynthFACS face geometry: identity + 17 AU intensities -> a display list in face coordinates.

Face coordinates: x to the right, y downwards, the image spanning [-1, 1] x [-1, 1] without
nuisance (1 unit = half the image side, 32 px at 64x64). Every AU has a graded effect
(intensity in [0, 1], 0 = no change at all) confined to a documented region, the box
``AU_EFFECTS[au].region`` in face coordinates, valid for every identity (tested: rendering an
AU at intensity 1 against the neutral face changes no pixel outside it).

Distances are in face units at intensity 1 (they scale linearly with the intensity); the
region is the face box ``(x0, y0, x1, y1)``:

====  ===========================================================  ==========================
AU    visible effect                                               region
====  ===========================================================  ==========================
AU01  inner brow ends up 0.12 (brow middle 0.04); two rows of       (-0.48, -0.64, 0.48, -0.16)
      central forehead wrinkles                                     brows, forehead
AU02  outer brow ends up 0.12 (middle 0.07); lateral forehead       (-0.48, -0.64, 0.48, -0.16)
      wrinkles                                                      brows, forehead
AU04  brows down 0.05-0.10 (inner ends most) and 0.035 closer       (-0.48, -0.45, 0.48, -0.05)
      together; two vertical glabella furrows                       brows, glabella
AU05  upper-lid opening x1.95: sclera shows above the iris          (-0.45, -0.35, 0.45, -0.02)
                                                                    eyes
AU06  cheek apples up 0.075, redder, highlighted; lower-lid         (-0.54, -0.28, 0.54, 0.30)
      opening -50 %; crow's feet; infra-orbital crease              eyes, cheeks
AU07  upper-lid opening -35 %, lower -55 % and straightened;        (-0.45, -0.30, 0.45, 0.00)
      thicker lower-lid line                                        eyes
AU09  three wrinkles across the nose bridge, two at its sides;      (-0.20, -0.16, 0.20, 0.26)
      nostrils and wings up 0.035 and wider                         nose
AU10  upper lip up 0.065 at the centre, upper teeth show;           (-0.30, 0.05, 0.30, 0.52)
      darker naso-labial folds                                      upper lip, folds
AU12  lip corners up 0.10 and out 26 %; lips 15 % thinner;          (-0.36, 0.05, 0.36, 0.55)
      darker naso-labial folds                                      mouth, folds
AU14  dimple creases beside the lip corners; corners 12 % in        (-0.30, 0.05, 0.30, 0.54)
      and 0.015 up                                                  mouth, dimples
AU15  lip corners down 0.08                                         (-0.30, 0.05, 0.30, 0.60)
                                                                    mouth, folds' ends
AU17  lower lip up 0.022 and 25 % fuller, corners down 0.02;        (-0.38, 0.20, 0.38, 0.90)
      chin tip up 0.035, chin dimpling, deeper mento-labial crease  lower lip, chin
AU20  mouth 50 % wider, lips 35 % thinner, corners down 0.02;       (-0.42, 0.05, 0.42, 0.55)
      a parted mouth opens as a rectangle                           mouth, folds' ends
AU23  lips 60 % thinner, mouth 25 % narrower, opening -30 %         (-0.30, 0.05, 0.30, 0.55)
                                                                    mouth, folds' ends
AU24  lips 60 % thinner, opening -80 %; compression bulges above    (-0.28, 0.22, 0.28, 0.56)
      and below the lips                                            mouth
AU25  lips parted by 0.06: dark mouth interior, upper teeth         (-0.28, 0.20, 0.28, 0.58)
                                                                    mouth
AU26  jaw and chin down 0.17 (jaw line, beard follow); mouth        (-0.70, 0.05, 0.70, 1.00)
      opened by 0.17 and 18 % narrower, lower teeth show            lower face, jaw, neck
====  ===========================================================  ==========================

The display list is a list of ``("P", points, colour)`` (filled polygon) and
``("L", points, colour, width)`` (poly-line) operations, drawn in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from distmtl.data.synthfacs.faces import Identity
from distmtl.data.synthfacs.shapes import P, band, bezier, ellipse, mix, shade, stroke
from distmtl.errors import DistmtlError
from distmtl.tasks import AUS_17


@dataclass(frozen=True)
class AUEffect:
    description: str
    region: tuple[float, float, float, float]  # x0, y0, x1, y1 in face coordinates


AU_EFFECTS: dict[str, AUEffect] = {
    "AU01": AUEffect("inner brow ends raised; central forehead wrinkles",
                     (-0.48, -0.64, 0.48, -0.16)),
    "AU02": AUEffect("outer brow ends raised; lateral forehead wrinkles",
                     (-0.48, -0.64, 0.48, -0.16)),
    "AU04": AUEffect("brows lowered and drawn together; glabella furrows",
                     (-0.48, -0.45, 0.48, -0.05)),
    "AU05": AUEffect("upper lids raised, sclera shows above the iris",
                     (-0.45, -0.35, 0.45, -0.02)),
    "AU06": AUEffect("cheeks raised, lower lids pushed up, crow's feet",
                     (-0.54, -0.28, 0.54, 0.30)),
    "AU07": AUEffect("lids tightened, lower lid raised and straightened",
                     (-0.45, -0.30, 0.45, 0.00)),
    "AU09": AUEffect("nose wrinkled, nostrils raised",
                     (-0.20, -0.16, 0.20, 0.26)),
    "AU10": AUEffect("upper lip raised, upper teeth show, deeper naso-labial folds",
                     (-0.30, 0.05, 0.30, 0.52)),
    "AU12": AUEffect("lip corners pulled up and out",
                     (-0.36, 0.05, 0.36, 0.55)),
    "AU14": AUEffect("dimples beside the lip corners",
                     (-0.30, 0.05, 0.30, 0.54)),
    "AU15": AUEffect("lip corners pulled down",
                     (-0.30, 0.05, 0.30, 0.60)),
    "AU17": AUEffect("chin raised, lower lip pushed up, chin dimpled",
                     (-0.38, 0.20, 0.38, 0.90)),
    "AU20": AUEffect("lips stretched sideways and flattened",
                     (-0.42, 0.05, 0.42, 0.55)),
    "AU23": AUEffect("lips thinned and narrowed",
                     (-0.30, 0.05, 0.30, 0.55)),
    "AU24": AUEffect("lips pressed together, bulges above and below",
                     (-0.28, 0.22, 0.28, 0.56)),
    "AU25": AUEffect("lips parted",
                     (-0.28, 0.20, 0.28, 0.58)),
    "AU26": AUEffect("jaw dropped, mouth opened",
                     (-0.70, 0.05, 0.70, 1.00)),
}

AU_INDEX = {au: j for j, au in enumerate(AUS_17)}

_T = np.linspace(-1.0, 1.0, 15)  # lid and lip parameter, -1 = inner eye corner / left corner
_W = 1.0 - _T**2
_W45, _W60, _W65, _W80 = _W**0.45, _W**0.6, _W**0.65, _W**0.8
_BOW = 1.0 - 0.3 * np.exp(-((_T / 0.2) ** 2))
_MID = slice(3, 12)  # |t| <= 0.6
_INNER = slice(2, 13)  # |t| <= 0.72
_B = np.linspace(0.0, 1.0, 9)  # brow parameter, matches shapes.bezier
_U = np.linspace(-0.999, 0.999, 11)
_UH = np.sqrt(1 - _U**2)
_HEAD = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
_HC, _HS = np.cos(_HEAD), np.sin(_HEAD)
_HLOW = _HS > 0
_HSL = np.clip(_HS, 0.0, 1.0)
_HSL3 = _HSL**3
_CHIN_TIP = np.clip((_HSL - 0.93) / 0.07, 0.0, 1.0) ** 2  # zero away from the chin
_CHIN_X = np.linspace(-0.11, 0.11, 9)
_CHIN_W = 1 - (_CHIN_X / 0.11) ** 2
_NOSE_X = np.linspace(-0.075, 0.075, 7)
_NOSE_W = 0.012 * (1 - (_NOSE_X / 0.075) ** 2)
_FOOT = np.linspace(-0.7, 1.0, 9)
_DIMPLE_Y = np.linspace(-0.04, 0.045, 5)
_DIMPLE_X = 0.012 * (1 - np.linspace(-1, 1, 5) ** 2)
SCLERA = (236, 236, 230)
LASH = (38, 28, 28)
PUPIL = (20, 16, 16)
MOUTH_INSIDE = (72, 26, 32)
TEETH = (236, 232, 220)
WHITE = (255, 255, 255)


def au_vector(au) -> np.ndarray:
    """A length-17 float vector in AUS_17 order from a vector or a ``{name: intensity}`` dict."""
    if au is None:
        return np.zeros(len(AUS_17))
    if isinstance(au, Mapping):
        vec = np.zeros(len(AUS_17))
        for name, value in au.items():
            if name not in AU_INDEX:
                raise DistmtlError(f"unknown AU '{name}'; expected one of {', '.join(AUS_17)}")
            vec[AU_INDEX[name]] = float(value)
    else:
        vec = np.asarray(au, dtype=np.float64).reshape(-1)
        if vec.shape != (len(AUS_17),):
            raise DistmtlError(f"AU vector of length {vec.size}, expected {len(AUS_17)}")
    return np.minimum(np.maximum(vec, 0.0), 1.0)


@lru_cache(maxsize=4096)
def _static(ident: Identity) -> tuple[list, list, dict]:
    """The AU-independent parts of a face: (drawn first, drawn last, eye constants)."""
    skin, hair, hw, cy, nw = ident.skin, ident.hair, ident.head_w, -0.02, ident.neck_w
    pre = [
        ("P", np.array([[-1.3, 1.3], [-1.3, 1.0], [-0.85, 0.86], [-nw - 0.06, 0.80],
                        [nw + 0.06, 0.80], [0.85, 0.86], [1.3, 1.0], [1.3, 1.3]]), ident.shirt),
        ("P", np.array([[-nw, 0.2], [nw, 0.2], [nw, 0.86], [0.0, 0.96], [-nw, 0.86]]),
         shade(skin, 0.82)),
    ]
    if ident.hair_style == "long":
        th = np.linspace(np.pi, 2 * np.pi, 25)
        top = P((hw + 0.1) * np.cos(th), cy - 0.04 + (ident.head_top + 0.1) * np.sin(th))
        pre.append(("P", np.concatenate([[[-hw - 0.1, 0.78]], top, [[hw + 0.1, 0.78]]]),
                    shade(hair, 0.85)))
    for s in (-1.0, 1.0):
        pre.append(("P", ellipse(s * hw * 0.97, ident.eye_y + 0.07, 0.075, 0.12), shade(skin, 0.9)))
    post = []
    if ident.hair_style != "bald":
        th = np.linspace(np.pi - 0.2, 2 * np.pi + 0.2, 31)
        outer = P((hw + 0.04) * np.cos(th), cy + (ident.head_top + 0.06) * np.sin(th))
        xs = np.linspace(hw, -hw, 17)
        power = 4.0 if ident.hair_style == "fringe" else 2.2
        hl = ident.hairline
        inner = P(xs, hl + (-0.22 - hl) * np.abs(xs / hw) ** power)
        post.append(("P", np.concatenate([outer, inner]), hair))
    if ident.glasses:
        rx, ry, ex, ey = ident.eye_w + 0.055, 0.1, ident.eye_x, ident.eye_y + 0.01
        th = np.linspace(0, 2 * np.pi, 29)
        c, sn = np.cos(th), np.sin(th)
        if not ident.glasses_round:
            c, sn = np.sign(c) * np.abs(c) ** 0.5, np.sign(sn) * np.abs(sn) ** 0.5
        for s in (-1.0, 1.0):
            post.append(("L", P(s * ex + rx * c, ey + ry * sn), ident.frame, 0.024))
            post.append(("L", np.array([[s * (ex + rx), ey - 0.03], [s * (hw - 0.01), ey - 0.04]]),
                         ident.frame, 0.024))
        xi = ex - rx
        post.append(("L", np.array([[-xi, ey - 0.02], [0.0, ey - 0.045], [xi, ey - 0.02]]),
                     ident.frame, 0.024))
    # per eye: lid abscissae, and the iris and pupil sampled at fixed offsets, where the lid
    # curves depend on the AUs only through the lid heights
    eye = {}
    tilt, ic = -ident.eye_tilt * _T, ident.eye_y + 0.01
    for s in (-1.0, 1.0):
        cx = s * ident.eye_x
        discs = []
        for r in (ident.iris_r, ident.iris_r * 0.45):
            t = r * _U / ident.eye_w
            w = np.clip(1 - t**2, 0.0, 1.0)
            discs.append((cx + r * _U, ic - r * _UH, ic + r * _UH, -ident.eye_tilt * s * t, w,
                          w**0.65, w**0.8))
        x = cx + s * ident.eye_w * _T
        eye[s] = (x, tilt, x[_INNER], 0.04 + 0.01 * _W[_INNER], discs)
    return pre, post, eye


def face_ops(ident: Identity, au) -> list[tuple]:
    """The display list of one face (identity + AU intensities), back to front."""
    a = au_vector(au).tolist()
    (a1, a2, a4, a5, a6, a7, a9, a10, a12, a14, a15, a17, a20, a23, a24, a25, a26) = a
    pre, post, eye = _static(ident)
    ops = list(pre)
    skin, hw, cy = ident.skin, ident.head_w, -0.02

    # head outline: upper half ellipse, lower half a jaw whose chin drops (AU26) / rises (AU17)
    jaw = 0.17 * a26
    x = np.where(_HLOW, hw * np.sign(_HC) * np.abs(_HC) ** ident.jaw_sq, hw * _HC)
    y = np.where(_HLOW, cy + (ident.chin_y - cy) * _HS + jaw * _HSL3 - 0.035 * a17 * _CHIN_TIP,
                 cy + ident.head_top * _HS)
    outline = P(x, y)
    ops.append(("P", outline, skin))
    chin_tip = ident.chin_y + jaw - 0.035 * a17

    _cheeks(ops, ident, a6)
    m = _mouth_shape(ident, a10, a12, a14, a15, a17, a20, a23, a24, a25, a26)
    _chin(ops, ident, m, chin_tip, a17)
    if ident.beard:
        y_mid = ident.mouth_y + 0.02
        side = outline[_HLOW & (y > y_mid - 0.16)]
        xr = max(abs(side[0, 0]), 1e-3)
        xs = np.linspace(side[-1, 0], side[0, 0], 11)
        ops.append(("P", np.concatenate([side, P(xs, y_mid - 0.16 * (xs / xr) ** 2)]),
                    shade(ident.hair, 0.9)))
    _folds(ops, ident, m, a10, a12)
    _nose(ops, ident, a9)
    _draw_mouth(ops, ident, m, a14, a24)
    _eye(ops, ident, eye, -1.0, a5, a6, a7)
    _eye(ops, ident, eye, 1.0, a5, a6, a7)
    _brows(ops, ident, a1, a2, a4)
    ops.extend(post)
    return ops


def _cheeks(ops, ident, a6):
    r, g, b = ident.skin
    blush = mix(ident.skin, (min(255, int(r * 1.06)), int(g * 0.8), int(b * 0.8)), 0.35 + 0.45 * a6)
    for s in (-1.0, 1.0):
        cx, cyy = s * (ident.eye_x + 0.09), ident.eye_y + 0.26 - 0.075 * a6
        ops.append(("P", ellipse(cx, cyy, 0.115 * (1 + 0.1 * a6), 0.08), blush))
        if a6 > 0:
            ops.append(("P", ellipse(cx - s * 0.01, cyy - 0.03, 0.06, 0.03),
                        mix(blush, (255, 245, 235), 0.25 * a6)))


def _mouth_shape(ident, a10, a12, a14, a15, a17, a20, a23, a24, a25, a26) -> dict:
    my, mw = ident.mouth_y, ident.mouth_w
    cw = mw * (1 + 0.26 * a12 + 0.5 * a20 - 0.25 * a23 - 0.12 * a14 - 0.18 * a26)
    corner_y = my - 0.10 * a12 + 0.08 * a15 + 0.02 * a20 + 0.02 * a17 - 0.015 * a14
    center_y = my - 0.022 * a17
    gap = (0.06 * a25 + 0.17 * a26) * (1 - 0.8 * a24) * (1 - 0.3 * a23)
    lift = 0.065 * a10
    thin = 1 - 0.6 * a23 - 0.6 * a24 - 0.35 * a20 - 0.15 * a12
    ut = max(0.007, ident.lip_up * thin)
    lt = max(0.008, ident.lip_lo * (thin + 0.25 * a17))
    base = corner_y + (center_y - corner_y) * _W
    wo = _W ** (0.55 - 0.3 * a20)
    ui = base - (0.22 * gap + lift) * wo
    li = base + 0.78 * gap * wo
    return {"x": cw * _T, "cw": cw, "corner_y": corner_y, "base": base, "ui": ui, "li": li,
            "uo": ui - ut * _W45 * _BOW, "lo": li + lt * _W60, "open": gap + lift, "gap": gap,
            "lift": lift}


def _chin(ops, ident, m, chin_tip, a17):
    skin, lo_c = ident.skin, float(m["lo"][7])
    depth = 0.08 + 0.4 * a17
    ys = lo_c + 0.05 + 0.01 * a17 - (0.004 + 0.02 * a17) * _CHIN_W
    ops.append(("L", P(_CHIN_X, ys), shade(skin, 1 - 0.4 * depth), 0.018))
    if a17 > 0:
        dot = shade(skin, 1 - 0.3 * a17)
        for dx, dy in ((-0.05, 0.11), (0.05, 0.11), (0.0, 0.14), (-0.085, 0.07), (0.085, 0.07)):
            ops.append(("P", ellipse(dx, chin_tip - dy, 0.017, 0.013), dot))


def _folds(ops, ident, m, a10, a12):
    color = shade(ident.skin, 1 - 0.35 * (0.10 + 0.45 * a10 + 0.45 * a12))
    for s in (-1.0, 1.0):
        p0 = (s * (ident.nose_w + 0.055), ident.nose_y - 0.02)
        p2 = (s * (m["cw"] + 0.045), m["corner_y"] + 0.035)
        p1 = (s * (max(abs(p0[0]), abs(p2[0])) + 0.03), (p0[1] + p2[1]) / 2)
        ops.append(("L", bezier(p0, p1, p2), color, 0.02))


def _nose(ops, ident, a9):
    skin, ny, nw, ey = ident.skin, ident.nose_y, ident.nose_w, ident.eye_y
    ops.append(("L", np.array([[-0.045, ey + 0.03], [-0.06, ny - 0.035]]), shade(skin, 0.88), 0.02))
    wing = shade(skin, 0.9)
    for s in (-1.0, 1.0):
        ops.append(("P", ellipse(s * (nw + 0.012 * a9), ny + 0.005 - 0.035 * a9,
                                 0.032 * (1 + 0.2 * a9), 0.032), wing))
    ops.append(("P", ellipse(0.0, ny - 0.012 * a9, nw * 0.75, 0.048), mix(skin, WHITE, 0.08)))
    nostril = shade(skin, 0.45)
    for s in (-1.0, 1.0):
        ops.append(("P", ellipse(s * nw * 0.55, ny + 0.035 - 0.035 * a9, 0.024 * (1 + 0.3 * a9),
                                 0.013), nostril))
    if a9 > 0:
        line = shade(skin, 1 - 0.45 * a9)
        for k in range(3):
            ops.append(("L", P(_NOSE_X, ey + 0.035 + 0.04 * k - _NOSE_W), line, 0.02))
        for s in (-1.0, 1.0):
            ops.append(("L", np.array([[s * 0.085, ey + 0.08], [s * 0.13, ey + 0.15]]), line, 0.02))


def _draw_mouth(ops, ident, m, a14, a24):
    x, skin, lip, ui, li, uo, lo = m["x"], ident.skin, ident.lip, m["ui"], m["li"], m["uo"], m["lo"]
    if ident.beard:
        top = np.maximum(ident.nose_y + 0.065, uo - 0.045 - 0.01 * _T**2)
        xs = (m["cw"] + 0.02) * _T
        ops.append(("P", band(xs, top, np.maximum(uo + 0.012, top + 0.02)),
                    shade(ident.hair, 0.8)))
    if m["open"] > 0.003:
        ops.append(("P", band(x, ui, li), MOUTH_INSIDE))
        # the upper teeth fill a raised-lip opening (AU10) but only the top half of a parted or
        # dropped one, so an open mouth stays dark
        frac = (m["lift"] + 0.5 * m["gap"]) / (m["lift"] + m["gap"])
        teeth = ui + np.minimum(0.045, frac * (li - ui))
        ops.append(("P", band(x[_INNER], ui[_INNER], teeth[_INNER]), TEETH))
        if m["gap"] > 0.1:
            top = np.maximum(li - 0.025, teeth + 0.02)
            ops.append(("P", band(x[_MID], np.minimum(top, li)[_MID], li[_MID]),
                        shade(TEETH, 0.93)))
    ops.append(("P", band(x, uo, ui), shade(lip, 0.9)))
    ops.append(("P", band(x, li, lo), lip))
    if m["open"] <= 0.003:
        ops.append(("L", P(x, m["base"]), shade(lip, 0.5), 0.014))
    if a24 > 0:
        bulge = shade(skin, 1 - 0.4 * a24)
        ops.append(("L", P(x[_MID], uo[_MID] - 0.032), bulge, 0.026))
        ops.append(("L", P(x[_MID], lo[_MID] + 0.032), bulge, 0.026))
    if a14 > 0:
        dimple = shade(skin, 1 - 0.55 * a14)
        for s in (-1.0, 1.0):
            ops.append(("L", P(s * (m["cw"] + 0.045 + _DIMPLE_X), m["corner_y"] + _DIMPLE_Y),
                        dimple, 0.032))


def _eye(ops, ident, eye, s, a5, a6, a7):
    skin, cx, cy, ew = ident.skin, s * ident.eye_x, ident.eye_y, ident.eye_w
    up = ident.eye_up * (1 + 0.95 * a5) * (1 - 0.35 * a7) * (1 - 0.12 * a6)
    lo = ident.eye_lo * (1 - 0.5 * a6) * (1 - 0.55 * a7) + 0.005
    lo_pow = 0.8 - 0.5 * a7  # AU7 straightens the lower lid
    x, tilt, x_in, crease, discs = eye[s]
    upper = cy - up * _W65 + tilt
    lower = cy + lo * (_W80 if a7 == 0 else _W**lo_pow) + tilt
    ops.append(("P", band(x, upper, lower), SCLERA))
    for (xs, disc_top, disc_bot, tilt_d, w, w65, w80), color in zip(discs, (ident.iris, PUPIL)):
        top = np.maximum(disc_top, cy - up * w65 + tilt_d)
        bot = np.minimum(disc_bot, cy + lo * (w80 if a7 == 0 else w**lo_pow) + tilt_d)
        if (bot > top).any():
            ops.append(("P", band(xs, top, np.maximum(bot, top)), color))
    ops.append(("L", P(x_in, upper[_INNER] - crease), shade(skin, 0.86), 0.012))
    ops.append(("L", P(x, upper), LASH, 0.022))
    ops.append(("L", P(x, lower), shade(skin, 0.78 - 0.15 * a7), 0.012 * (1 + 1.2 * a7)))
    if a6 > 0:
        line = shade(skin, 1 - 0.35 * a6)
        x0 = cx + s * (ew + 0.03)
        for d in (-0.035, 0.0, 0.035):
            ops.append(("L", np.array([[x0, cy + d], [x0 + s * 0.08, cy + 1.8 * d]]), line, 0.018))
        ops.append(("L", P(cx + s * ew * 0.85 * _FOOT, cy + lo + 0.05 + 0.02 * (1 - _FOOT**2)),
                    line, 0.016))


def _brows(ops, ident, a1, a2, a4):
    by0, skin = ident.eye_y - ident.brow_gap, ident.skin
    width = ident.brow_thick * (1.15 - 0.55 * _B)
    for s in (-1.0, 1.0):
        p0 = (s * (ident.brow_in - 0.035 * a4), by0 + 0.01 - 0.12 * a1 + 0.10 * a4)
        p1 = (s * ((ident.brow_in + ident.brow_out) / 2 - 0.02 * a4),
              by0 - 2 * ident.brow_arch - 0.04 * a1 - 0.07 * a2 + 0.06 * a4)
        p2 = (s * ident.brow_out, by0 + 0.02 - 0.12 * a2 + 0.05 * a4)
        center = bezier(p0, p1, p2)
        # forehead wrinkles follow the raised brow: central part from AU1, lateral from AU2
        for k in range(2):
            wy = center[:, 1] - 0.13 - 0.07 * k
            for lo_b, hi_b, level in ((0, 5, a1), (3, 9, a2)):
                if level > 0:
                    ops.append(("L", P(center[lo_b:hi_b, 0] * 0.9, wy[lo_b:hi_b]),
                                shade(skin, 1 - 0.4 * level), 0.022))
        ops.append(("P", stroke(center, width), ident.brow))
    if a4 > 0:
        line = shade(skin, 1 - 0.45 * a4)
        for s in (-1.0, 1.0):
            ops.append(("L", np.array([[s * 0.028, by0 + 0.04], [s * 0.022, by0 + 0.14]]), line,
                        0.022))
