"""Column layouts of other face-analysis tools.

``openface``: OpenFace 2's FeatureExtraction names first: ``frame`` (counted from 1, images 1),
``face_id``, ``timestamp`` (seconds; images 0), ``confidence`` (the detector's ``FaceScore``),
``success`` (1 when a face was found and predicted), the 5 landmarks ``x_0..x_4, y_0..y_4``, and
the AU presence decisions ``AU01_c ...``; then ``input`` and the rest of distmtl's columns (the
AU probabilities under their bare names, the expression columns, ``error``). OpenFace's
``AUxx_r`` intensities (0-5) have no equivalent here: distmtl predicts probabilities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LEADING = ("frame", "face_id", "timestamp", "confidence", "success")
LANDMARKS = tuple(f"x_{k}" for k in range(5)) + tuple(f"y_{k}" for k in range(5))


def openface_columns(columns: list[str]) -> list[str]:
    """The OpenFace-layout column order for distmtl's face-layout ``columns``."""
    decisions = [c for c in columns if c.endswith("_c")]
    rest = [c for c in columns if c not in (*LEADING, *LANDMARKS, "FaceScore", *decisions)]
    return [*LEADING, *LANDMARKS, *decisions, *rest]


def to_openface(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["confidence"] = out.pop("FaceScore")
    out["frame"] = (out["frame"].fillna(0) + 1).astype("Int64")
    out["timestamp"] = out["timestamp"].fillna(0.0)
    out["success"] = (out["confidence"].notna() & out["error"].eq("")).astype(np.int64)
    return out[openface_columns(list(frame.columns))]
