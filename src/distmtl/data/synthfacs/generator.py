"""SynthFACS label generator: expression -> stochastic AUs -> valence/arousal.

Starting point: Du, Tao & Martinez (2014), Table 1 (basic) and the compound-expression rows of
the same paper, encoded in ``DU2014_BASIC`` / ``DU2014_COMPOUND`` as ``{class: {AU: value}}``
with prototypical AUs = 1.0 and observational AUs = the fraction of subjects that showed them
(AU11 is outside the 17-AU vocabulary and is dropped; Neutral has no AU).

The generator table ``G[k, j] = p(AU_j active | expression k)`` is close to, but deliberately not
equal to, that table, so that a model which recovers ``G`` from data has learnt something other
than the prior it may be given:

- prototypical AU (du2014 = 1):    ``0.85 + 0.10 * u``           (in [0.85, 0.95])
- observational AU (0 < du2014 < 1): ``du2014 + 0.20 * u - 0.10`` (clipped to [0.05, 0.95])
- any other AU, and every Neutral AU: ``0.03 + 0.03 * u``        (background, in [0.03, 0.06])

where ``u = unit(PERTURBATION_SEED, class, AU)`` in [0, 1) is read from a BLAKE2b hash, so the
tables are constants of the generator (independent of numpy's random streams and of the
dataset seed), rounded to 3 decimals. ``|G - du2014| <= 0.15`` everywhere.

Per image: the expression is drawn uniformly over the classes, each AU is active with
probability ``G[k, j]``, an active AU gets an intensity ``~ U(0.4, 1.0)`` (an inactive one has
intensity 0), and ``(valence, arousal) = centroid[k] * m + N(0, 0.08^2)`` clipped to [-1, 1],
where ``m`` is the mean intensity of the active AUs (0 when none is active).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from distmtl.errors import DistmtlError
from distmtl.tasks import AUS_17, BASIC_EXPRESSIONS

PERTURBATION_SEED = 20140331
INTENSITY_RANGE = (0.4, 1.0)
VA_NOISE = 0.08

# Du et al. 2014, Table 1, restricted to the 17 AUs (prototypical = 1.0).
DU2014_BASIC: dict[str, dict[str, float]] = {
    "Neutral": {},
    "Anger": {"AU04": 1, "AU07": 1, "AU24": 1, "AU10": 0.26, "AU17": 0.52, "AU23": 0.29},
    "Disgust": {"AU09": 1, "AU10": 1, "AU17": 1, "AU04": 0.31, "AU24": 0.26},
    "Fear": {"AU01": 1, "AU04": 1, "AU20": 1, "AU25": 1, "AU02": 0.57, "AU05": 0.63, "AU26": 0.33},
    "Happiness": {"AU12": 1, "AU25": 1, "AU06": 0.51},
    "Sadness": {"AU04": 1, "AU15": 1, "AU01": 0.60, "AU06": 0.50, "AU17": 0.67},
    "Surprise": {"AU01": 1, "AU02": 1, "AU25": 1, "AU26": 1, "AU05": 0.66},
}

DU2014_COMPOUND: dict[str, dict[str, float]] = {
    "Happily surprised": {"AU01": 1, "AU02": 1, "AU12": 1, "AU25": 1, "AU05": 0.64, "AU26": 0.67},
    "Happily disgusted": {"AU10": 1, "AU12": 1, "AU25": 1, "AU04": 0.32, "AU06": 0.61,
                          "AU09": 0.59},
    "Sadly fearful": {"AU01": 1, "AU04": 1, "AU20": 1, "AU25": 1, "AU02": 0.46, "AU05": 0.24,
                      "AU06": 0.34, "AU15": 0.30},
    "Sadly angry": {"AU04": 1, "AU15": 1, "AU06": 0.26, "AU07": 0.48, "AU17": 0.50},
    "Sadly surprised": {"AU01": 1, "AU04": 1, "AU25": 1, "AU26": 1, "AU02": 0.27, "AU06": 0.31},
    "Sadly disgusted": {"AU04": 1, "AU10": 1, "AU01": 0.49, "AU06": 0.61, "AU09": 0.20,
                        "AU15": 0.54, "AU17": 0.47, "AU25": 0.43},
    "Fearfully angry": {"AU04": 1, "AU20": 1, "AU25": 1, "AU05": 0.40, "AU07": 0.39,
                        "AU10": 0.30},
    "Fearfully surprised": {"AU01": 1, "AU02": 1, "AU05": 1, "AU20": 1, "AU25": 1, "AU04": 0.47,
                            "AU10": 0.35, "AU26": 0.51},
    "Fearfully disgusted": {"AU01": 1, "AU04": 1, "AU10": 1, "AU20": 1, "AU25": 1, "AU02": 0.64,
                            "AU05": 0.50, "AU06": 0.26, "AU09": 0.28, "AU15": 0.33},
    "Angrily surprised": {"AU04": 1, "AU25": 1, "AU26": 1, "AU05": 0.35, "AU07": 0.50,
                          "AU10": 0.34},
    "Angrily disgusted": {"AU04": 1, "AU10": 1, "AU17": 1, "AU07": 0.60, "AU09": 0.57,
                          "AU24": 0.36},
    "Disgustedly surprised": {"AU01": 1, "AU02": 1, "AU05": 1, "AU10": 1, "AU04": 0.45,
                              "AU09": 0.37, "AU17": 0.66, "AU24": 0.33},
    "Awed": {"AU01": 1, "AU02": 1, "AU05": 1, "AU25": 1, "AU04": 0.21, "AU20": 0.62,
             "AU26": 0.56},
}
COMPOUND_EXPRESSIONS = tuple(DU2014_COMPOUND)

# (valence, arousal) at full intensity.
VA_CENTROIDS: dict[str, tuple[float, float]] = {
    "Neutral": (0.0, 0.0),
    "Anger": (-0.6, 0.7),
    "Disgust": (-0.65, 0.35),
    "Fear": (-0.6, 0.75),
    "Happiness": (0.8, 0.5),
    "Sadness": (-0.7, -0.4),
    "Surprise": (0.25, 0.8),
}
_COMPOUND_PARTS = {
    "Happily surprised": ("Happiness", "Surprise"),
    "Happily disgusted": ("Happiness", "Disgust"),
    "Sadly fearful": ("Sadness", "Fear"),
    "Sadly angry": ("Sadness", "Anger"),
    "Sadly surprised": ("Sadness", "Surprise"),
    "Sadly disgusted": ("Sadness", "Disgust"),
    "Fearfully angry": ("Fear", "Anger"),
    "Fearfully surprised": ("Fear", "Surprise"),
    "Fearfully disgusted": ("Fear", "Disgust"),
    "Angrily surprised": ("Anger", "Surprise"),
    "Angrily disgusted": ("Anger", "Disgust"),
    "Disgustedly surprised": ("Disgust", "Surprise"),
}
for _name, (_a, _b) in _COMPOUND_PARTS.items():
    VA_CENTROIDS[_name] = tuple(
        round((VA_CENTROIDS[_a][i] + VA_CENTROIDS[_b][i]) / 2, 3) for i in range(2)
    )
VA_CENTROIDS["Awed"] = (0.5, 0.6)


@dataclass(frozen=True, eq=False, repr=False)
class ExpressionTable:
    """``probs[k, j] = p(AU_j active | class k)`` plus the VA centroid of each class."""

    classes: tuple[str, ...]
    probs: np.ndarray  # [K, 17] float
    va_centroids: np.ndarray  # [K, 2] float
    aus: tuple[str, ...] = AUS_17

    def __post_init__(self):
        probs = np.asarray(self.probs, dtype=np.float64)
        va = np.asarray(self.va_centroids, dtype=np.float64)
        if probs.shape != (len(self.classes), len(self.aus)):
            raise DistmtlError(f"expression table: probabilities of shape {probs.shape}, expected "
                               f"({len(self.classes)}, {len(self.aus)})")
        if va.shape != (len(self.classes), 2):
            raise DistmtlError(f"expression table: VA centroids of shape {va.shape}, expected "
                               f"({len(self.classes)}, 2)")
        if not np.all((probs >= 0) & (probs <= 1)):
            raise DistmtlError("expression table: probabilities must lie in [0, 1]")
        probs.setflags(write=False)
        va.setflags(write=False)
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "va_centroids", va)
        object.__setattr__(self, "classes", tuple(self.classes))

    def __repr__(self) -> str:
        shown = ", ".join(self.classes[:3]) + (", ..." if len(self.classes) > 3 else "")
        return f"ExpressionTable({len(self.classes)} classes: {shown})"

    @classmethod
    def from_matrix(cls, classes: Sequence[str], probs, va_centroids=None) -> ExpressionTable:
        """Build a table from class names and a K x 17 matrix (VA centroids default to
        ``VA_CENTROIDS`` where the class is known, else (0, 0))."""
        if va_centroids is None:
            va_centroids = [VA_CENTROIDS.get(c, (0.0, 0.0)) for c in classes]
        return cls(tuple(classes), np.asarray(probs, dtype=np.float64), np.asarray(va_centroids))

    def to_csv(self, path) -> None:
        """Write the table in the relatedness-CSV layout (first column ``class``, AU header)."""
        lines = [",".join(("class",) + self.aus)]
        for name, row in zip(self.classes, self.probs):
            lines.append(",".join([name] + [f"{p:.3f}" for p in row]))
        with open(path, "w", newline="") as f:
            f.write("\n".join(lines) + "\n")


def unit(*key: object) -> float:
    """A fixed pseudo-random number in [0, 1) for ``key`` (keyed by PERTURBATION_SEED)."""
    text = ":".join(str(k) for k in (PERTURBATION_SEED,) + key).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2.0**64


def du2014_matrix(table: Mapping[str, Mapping[str, float]], classes: Sequence[str] | None = None,
                  aus: Sequence[str] = AUS_17) -> np.ndarray:
    """The du2014 dict as a K x J matrix (prototypical 1, observational fraction, else 0)."""
    classes = tuple(table) if classes is None else tuple(classes)
    return np.array([[float(table[c].get(a, 0.0)) for a in aus] for c in classes])


def perturbed_matrix(table: Mapping[str, Mapping[str, float]], classes: Sequence[str],
                     aus: Sequence[str] = AUS_17) -> np.ndarray:
    """Apply the documented fixed perturbation to a du2014-style table."""
    out = np.zeros((len(classes), len(aus)))
    for k, cls in enumerate(classes):
        for j, au in enumerate(aus):
            d = float(table[cls].get(au, 0.0))
            u = unit(cls, au)
            if d >= 1.0:
                p = 0.85 + 0.10 * u
            elif d > 0.0:
                p = min(0.95, max(0.05, d + 0.20 * u - 0.10))
            else:
                p = 0.03 + 0.03 * u
            out[k, j] = round(p, 3)
    return out


GENERATOR_TABLE = ExpressionTable.from_matrix(
    BASIC_EXPRESSIONS, perturbed_matrix(DU2014_BASIC, BASIC_EXPRESSIONS))
COMPOUND_GENERATOR_TABLE = ExpressionTable.from_matrix(
    COMPOUND_EXPRESSIONS, perturbed_matrix(DU2014_COMPOUND, COMPOUND_EXPRESSIONS))


@dataclass
class Labels:
    """Labels of ``n`` faces (arrays of length n)."""

    expression: np.ndarray  # [n] int class index
    active: np.ndarray  # [n, 17] bool
    intensity: np.ndarray  # [n, 17] float in [0, 1], 0 where inactive
    va: np.ndarray  # [n, 2] float in [-1, 1]


def sample_labels(rng: np.random.Generator, n: int, table: ExpressionTable = GENERATOR_TABLE,
                  expression: int | np.ndarray | None = None) -> Labels:
    """Draw expression, AU activations/intensities and VA for ``n`` faces.

    ``expression`` fixes the class (an index or an array of n indices); by default it is
    uniform over ``table.classes``. The order of the draws is fixed, so a generator seeded per
    image gives the same labels whatever else is drawn for other images.
    """
    k_classes = len(table.classes)
    drawn = rng.integers(0, k_classes, size=n)
    if expression is None:
        expr = drawn
    else:
        expr = np.broadcast_to(np.asarray(expression, dtype=np.int64), (n,)).copy()
        if np.any((expr < 0) | (expr >= k_classes)):
            raise DistmtlError(f"expression index out of range 0..{k_classes - 1}")
    active = rng.random((n, len(table.aus))) < table.probs[expr]
    low, high = INTENSITY_RANGE
    intensity = np.where(active, rng.uniform(low, high, size=active.shape), 0.0)
    count = active.sum(axis=1)
    mean = np.where(count > 0, intensity.sum(axis=1) / np.maximum(count, 1), 0.0)
    va = table.va_centroids[expr] * mean[:, None] + rng.normal(0.0, VA_NOISE, size=(n, 2))
    return Labels(expr, active, intensity, np.clip(va, -1.0, 1.0))
