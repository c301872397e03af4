"""Face detection: `load_face_backend` picks the backend, and this module gathers the face package's detection
names in one place (their homes: `insightface.py`, `mediapipe.py`, `tracking.py`, `boxes.py`).

Backends (both implement `latentsync.face.FaceBackend`; frames are RGB uint8 `(h, w, 3)`):

* `InsightFaceBackend` (`face.insightface`): what the reference uses, InsightFace's `buffalo_l` SCRFD detector
  and 106-point landmark model run through onnxruntime.
* `MediapipeBackend` (`face.mediapipe`): mediapipe's full-range face detector and its face mesh, whose models
  ship inside the mediapipe wheel, so it works with no downloaded file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError
from . import FaceBackend
from .boxes import iou, landmark_extent, nms
from .insightface import (
    BROW_A_106,
    BROW_B_106,
    DEFAULT_DET_SIZE,
    DET_SCORE_THRESHOLD,
    NOSE_106,
    InsightFaceBackend,
    Landmark106,
    PathLike,
    ScrfdDetector,
    alignment_points,
    landmark_input_normalisation,
    onnx_node_names,
)
from .mediapipe import MediapipeBackend, mesh_alignment_points, mesh_box
from .tracking import (
    INFERENCE_FILTER,
    MIN_FACE_HEIGHT,
    MIN_FACE_SCORE,
    MIN_FACE_WIDTH,
    MIN_SYNC_FACE,
    MISS_NONE,
    MISS_RULE,
    MISS_SMALL,
    REFERENCE_FILTER,
    SCENE_CUT_THRESHOLD,
    FaceFilter,
    FaceTracker,
    Rule,
    check_rule,
    check_threshold,
    content_change,
    frame_signature,
    is_valid_face,
    predict_box,
    select_face,
)

__all__ = [  # the face package's detection names, from their homes
    "alignment_points",
    "BROW_A_106",
    "BROW_B_106",
    "check_rule",
    "check_threshold",
    "content_change",
    "DEFAULT_DET_SIZE",
    "DET_SCORE_THRESHOLD",
    "FaceFilter",
    "FaceTracker",
    "frame_signature",
    "INFERENCE_FILTER",
    "InsightFaceBackend",
    "iou",
    "is_valid_face",
    "Landmark106",
    "landmark_extent",
    "landmark_input_normalisation",
    "load_face_backend",
    "MediapipeBackend",
    "mesh_alignment_points",
    "mesh_box",
    "MIN_FACE_HEIGHT",
    "MIN_FACE_SCORE",
    "MIN_FACE_WIDTH",
    "MIN_SYNC_FACE",
    "MISS_NONE",
    "MISS_RULE",
    "MISS_SMALL",
    "nms",
    "NOSE_106",
    "onnx_node_names",
    "PathLike",
    "predict_box",
    "REFERENCE_FILTER",
    "Rule",
    "SCENE_CUT_THRESHOLD",
    "ScrfdDetector",
    "select_face",
]

log = logging.getLogger(__name__)


def load_face_backend(name: str = "auto", checkpoints: PathLike | None = None,
                      threshold: float = MIN_FACE_SCORE) -> FaceBackend:
    """The face backend called `name`: "insightface", "mediapipe", or "auto", detecting faces from a score of
    `threshold` (the reference's 0.5).

    "auto" is InsightFace (the published face stack) when both `auxiliary/models/buffalo_l/det_10g.onnx` and
    `2d106det.onnx` are in the checkpoints folder (default: `latentsync.weights.default_checkpoints_dir()`),
    else mediapipe. "insightface" without those files raises CheckpointError naming them.
    """
    from ..weights import CheckpointLayout, default_checkpoints_dir

    layout = CheckpointLayout(Path(checkpoints) if checkpoints is not None else default_checkpoints_dir())
    if name == "auto":
        have = layout.is_present("insightface_det") and layout.is_present("insightface_landmarks")
        name = "insightface" if have else "mediapipe"
        log.info("face backend: %s", name)
    if name == "insightface":
        det, lmk = layout.require("insightface_det", "insightface_landmarks")
        return InsightFaceBackend(det, lmk, threshold=threshold)
    if name == "mediapipe":
        return MediapipeBackend(threshold=threshold)
    raise ConfigError(f"unknown face backend {name!r}; expected auto, insightface or mediapipe")
