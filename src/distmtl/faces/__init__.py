"""Faces in the wild: detection with 5 landmarks, alignment, video frames and face tracks.

One preprocessing (:class:`FacePreprocessing`) serves training-data preparation and prediction,
so a model sees at prediction time the crops it was trained on. See docs/faces.md.
"""

from distmtl.faces.align import (ARCFACE_112, FaceCropper, FacePreprocessing, align, crop_box, crop_face,
                                 template)
from distmtl.faces.detect import BACKENDS, LANDMARK_NAMES, Detector, Face, iou

__all__ = ["ARCFACE_112", "BACKENDS", "Detector", "Face", "FaceCropper", "FacePreprocessing",
           "LANDMARK_NAMES", "align", "crop_box", "crop_face", "iou", "template"]
