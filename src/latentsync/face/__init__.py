"""Faces: detection and landmarks (`detect.py` loads a backend: `insightface.py`, `mediapipe.py`), face choice
and tracking (`tracking.py`, over `boxes.py`), alignment to the LatentSync crop and pasting back (`align.py`),
and the mouth mask (`mask.py`).

Frames are RGB `uint8` arrays `(h, w, 3)`; coordinates are in frame pixels, x to the right, y down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import InputError


@dataclass
class Face:
    """One detected face.

    `box`: (4,) float32 x1, y1, x2, y2. `score`: detector confidence in [0, 1].
    `landmarks`: (k, 2) float32, the backend's own landmark layout (106 points for InsightFace, 468 for
    mediapipe's face mesh). `points`: (3, 2) float32, the three alignment points LatentSync uses, in the
    reference's order: the mean of one eyebrow, the mean of the other eyebrow, the mean of the lower nose
    (spec 2.2 step 6: 106-point indices [43, 48, 49, 51, 50], [101..105] and [74, 77, 83, 86]).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    points: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


class FaceBackend(Protocol):
    """Finds faces and their landmarks in one frame.

    A backend may also have `refine(frame, face) -> Face | None`: `face` followed into `frame` with landmarks
    only, in the box `face.box` predicted from earlier frames (None: it cannot). `tracking.FaceTracker` uses it
    between detections when `detect_every` > 1 (both backends have it; mediapipe's former whole-frame mode,
    which tracks on its own, does not).
    """

    name: str

    def detect(self, frame: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 frame (h, w, 3), any order."""
        ...


def check_frame(frame: np.ndarray) -> np.ndarray:
    """`frame` as an array, or InputError when it is not an RGB uint8 frame (h, w, 3)."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InputError(f"face detection needs an RGB uint8 frame (h, w, 3), got {frame.dtype} {frame.shape}")
    return frame
