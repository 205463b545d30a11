"""Small shape helpers for the SynthFACS display list (points are ``[N, 2]`` float arrays)."""

from __future__ import annotations

import numpy as np

_TH = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
_CIRCLE = np.stack([np.cos(_TH), np.sin(_TH)], axis=1)
_B = np.linspace(0.0, 1.0, 9)
_B0, _B1, _B2 = (1 - _B) ** 2, 2 * (1 - _B) * _B, _B**2


def shade(color, factor: float):
    return (min(255, int(color[0] * factor + 0.5)), min(255, int(color[1] * factor + 0.5)),
            min(255, int(color[2] * factor + 0.5)))


def mix(c1, c2, t: float):
    return tuple(int(a + (b - a) * t + 0.5) for a, b in zip(c1, c2))


def P(x: np.ndarray, y) -> np.ndarray:
    """Points from an x array and a y array of the same length (or a scalar y)."""
    out = np.empty((len(x), 2))
    out[:, 0] = x
    out[:, 1] = y
    return out


def ellipse(cx, cy, rx, ry) -> np.ndarray:
    return _CIRCLE * (rx, ry) + (cx, cy)


def band(x: np.ndarray, top, bottom) -> np.ndarray:
    """Polygon between two curves ``top`` and ``bottom`` sampled at the same ``x``."""
    n = len(x)
    out = np.empty((2 * n, 2))
    out[:n, 0] = x
    out[:n, 1] = top
    out[n:, 0] = x[::-1]
    out[n:, 1] = bottom[::-1]
    return out


def bezier(p0, p1, p2) -> np.ndarray:
    """Quadratic Bezier through p0 (control p1) to p2, 9 points."""
    return P(_B0 * p0[0] + _B1 * p1[0] + _B2 * p2[0], _B0 * p0[1] + _B1 * p1[1] + _B2 * p2[1])


def stroke(center: np.ndarray, width) -> np.ndarray:
    """A filled polygon of (possibly varying) vertical ``width`` around a near-horizontal line."""
    half = np.asarray(width) / 2
    return band(center[:, 0], center[:, 1] - half, center[:, 1] + half)
