"""Which detections are faces, which face to sync, and following it from frame to frame.

`FaceFilter` holds the reference's face filter (the data pipeline's) and the smaller faces inference accepts;
`select_face` applies the `--face` rule; `FaceTracker` follows the chosen face through a video over any backend
(`latentsync.face.FaceBackend`), running the detector every N frames and the landmark model alone in between,
and says why a frame had no face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import cv2
import numpy as np

from ..defaults import MIN_FACE_SCORE
from ..errors import ConfigError
from . import Face, FaceBackend
from .boxes import iou, landmark_extent

# The reference's face filter (spec 2.2 step 6, LatentSync `utils/face_detector.py` and
# `utils/image_processor.py`).

MIN_FACE_WIDTH = 50  # px, box width
MIN_FACE_HEIGHT = 80  # px, box height
MIN_ASPECT = 0.2  # box width / height
MAX_ASPECT = 1.5
# (and a score of at least `MIN_FACE_SCORE`, from `latentsync.defaults`)
# Inference accepts smaller faces than the reference's filter (whose 50 x 80 px minimum is meant for training
# data): a face's box from this many px on each side is synced (40 px faces of wide shots have boxes of about
# 40 x 48). Below it the landmarks are too coarse for a steady crop.
MIN_SYNC_FACE = 24

# ---------------------------------------------------------------------------------------------------------------
# Tracking.

FACE_RULES = ("largest", "center")
DEFAULT_IOU_THRESHOLD = 0.3
# Between detections (`FaceTracker(detect_every=N)`, N > 1) the face is followed by the landmark model alone,
# in a box predicted from the previous frame. Its landmarks are discarded, and the detector runs on that frame,
# when they fail one of these checks:
# - The extent (min/max) of the new landmarks overlaps the previous frame's extent less than this (IoU). The
#   landmark crop is 1.5x the box (`LANDMARK_CROP_MARGIN`): a face stays wholly inside it while it moves less
#   than a quarter of its size, and an extent shifted by a quarter of its size along one axis still has IoU
#   0.75 / 1.25 = 0.6. Below 0.5 the face moved farther than the crop allows (so part of it was cut off when
#   the landmarks were computed), or the landmarks jumped because the crop no longer holds the face.
TRACK_MIN_EXTENT_IOU = 0.5
# - A landmark lies outside the frame by more than this fraction of the landmarks' extent (its longer side). A
#   face at the frame edge may run a little past it (the model completes the jaw line across the crop's zero
#   border); farther out, that part of the crop was mostly border and its points are guesses.
TRACK_MAX_OUTSIDE = 0.25
# - The face, with the predicted box and the last detection's score, fails `is_valid_face` (it shrank below
#   the reference's size filter), or a landmark is not finite.
# - The frame is a scene cut: the mean absolute change of hue, saturation and value (0-255 scales, OpenCV's hue
#   0-179), averaged over the three, exceeds PySceneDetect's default ContentDetector threshold. Measured on a
#   thumbnail of the frame (about 3 ms at 1080p on a 2-core CPU); a new shot may show another face, or the same
#   one elsewhere, where the landmark model alone could lock onto the wrong thing.
SCENE_CUT_THRESHOLD = 27.0
SCENE_THUMBNAIL_WIDTH = 64

Rule = Union[str, int]


@dataclass(frozen=True)
class FaceFilter:
    """Which detections count as faces. The default is the reference's filter: box width >= 50, height >= 80,
    0.2 <= width / height <= 1.5, score >= 0.5 (`INFERENCE_FILTER`: smaller boxes, for wide shots)."""

    min_width: float = MIN_FACE_WIDTH
    min_height: float = MIN_FACE_HEIGHT
    min_score: float = MIN_FACE_SCORE

    def with_score(self, min_score: float) -> "FaceFilter":
        return FaceFilter(self.min_width, self.min_height, float(min_score))

    def is_large_enough(self, face: Face) -> bool:
        return face.width >= self.min_width and face.height >= self.min_height

    def accepts(self, face: Face) -> bool:
        w, h = face.width, face.height
        return (self.is_large_enough(face) and h > 0 and MIN_ASPECT <= w / h <= MAX_ASPECT
                and face.score >= self.min_score)


REFERENCE_FILTER = FaceFilter()
INFERENCE_FILTER = FaceFilter(MIN_SYNC_FACE, MIN_SYNC_FACE)


def is_valid_face(face: Face, limits: FaceFilter = REFERENCE_FILTER) -> bool:
    """Whether `face` passes `limits` (by default the reference's filter, see `FaceFilter`)."""
    return limits.accepts(face)


def check_threshold(threshold: float) -> float:
    """A detection score threshold in (0, 1), or ConfigError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ConfigError(f"the face detection threshold must be a number between 0 and 1, got {threshold!r}")
    return float(threshold)


def check_rule(rule: Rule) -> Rule:
    """`rule` as `select_face` takes it: "largest", "center", or an int N >= 0 (a string of digits is read as
    N); anything else raises ConfigError."""
    if isinstance(rule, str) and rule.isdigit():
        rule = int(rule)
    if isinstance(rule, bool) or not (rule in FACE_RULES or (isinstance(rule, int) and rule >= 0)):
        raise ConfigError(f"unknown face rule {rule!r}; expected largest, center, or N (0-based from the left)")
    return rule


def select_face(faces: Sequence[Face], rule: Rule, frame_shape: Sequence[int],
                limits: FaceFilter = REFERENCE_FILTER) -> Face | None:
    """The face to sync among `faces` (only those passing `limits`, by default the reference's filter), or None.

    `rule`: "largest" (the reference: the largest box area), "center" (the box centre nearest the frame
    centre; `frame_shape` is the frame's (h, w, ...)), or an int N (the N-th face from the left by box centre,
    0-based; None when there are fewer).
    """
    rule = check_rule(rule)
    valid = [f for f in faces if limits.accepts(f)]
    if not valid:
        return None
    if rule == "largest":
        return max(valid, key=lambda f: f.area)
    if rule == "center":
        cy, cx = frame_shape[0] / 2, frame_shape[1] / 2

        def distance(f: Face) -> float:
            return float(np.hypot((f.box[0] + f.box[2]) / 2 - cx, (f.box[1] + f.box[3]) / 2 - cy))

        return min(valid, key=distance)
    by_x = sorted(valid, key=lambda f: float(f.box[0] + f.box[2]))
    return by_x[rule] if rule < len(by_x) else None


def predict_box(box: np.ndarray, box_landmarks: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """`box` moved as its face's landmarks moved from `box_landmarks` to `landmarks`: (4,) float32.

    The motion is a scale and a translation (no rotation: the box stays axis-aligned like a detector's). The
    translation is that of the landmarks' centroid; the scale is the ratio of their RMS distances from it,
    which a head tilting in the image plane does not change (a least-squares scale would shrink by the cosine
    of the angle).
    """
    ref = np.asarray(box_landmarks, dtype=np.float64)  # (k, 2)
    cur = np.asarray(landmarks, dtype=np.float64)  # (k, 2)
    ref_c, cur_c = ref.mean(axis=0), cur.mean(axis=0)  # (2,)
    ref_r = np.sqrt(np.mean(np.sum((ref - ref_c) ** 2, axis=1)))
    cur_r = np.sqrt(np.mean(np.sum((cur - cur_c) ** 2, axis=1)))
    scale = cur_r / ref_r if ref_r > 0 else 1.0
    corners = np.asarray(box, dtype=np.float64).reshape(2, 2)  # (x1, y1), (x2, y2)
    return ((corners - ref_c) * scale + cur_c).reshape(4).astype(np.float32)


def frame_signature(frame: np.ndarray) -> np.ndarray:
    """An RGB frame's HSV thumbnail, float32 (h, SCENE_THUMBNAIL_WIDTH, 3), for `content_change`."""
    h, w = frame.shape[:2]
    size = (SCENE_THUMBNAIL_WIDTH, max(1, round(h * SCENE_THUMBNAIL_WIDTH / w)))
    thumbnail = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV).astype(np.float32)


def content_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute change of hue, saturation and value between two signatures, averaged over the three."""
    return float(np.abs(a - b).mean())


# Why a frame has no face to sync (`FaceTracker.miss`).
MISS_NONE = "no face found"
MISS_SMALL = "faces too small"
MISS_RULE = "not the chosen face"  # faces found, but not the N-th from the left


class FaceTracker:
    """Follows one face through a video.

    The first face is chosen by `rule` (see `select_face`). On each later frame the valid face whose box
    overlaps the previous box most is followed, if that IoU is at least `iou_threshold`; otherwise the track
    is lost and the face is chosen by `rule` again. A frame without any valid face returns None (the
    pipeline passes it through unchanged) and keeps the last box, so a face missed for a few frames is picked
    up again where it was. `reset()` forgets the track (and the backend's own tracking state).

    `detect_every`: 1 (the default, as the reference) runs the backend's full detection on every frame. N > 1,
    with a backend that has `refine(frame, face) -> Face | None` (InsightFace), runs it only on the first
    frame, every N-th frame after a detection, and whenever the track is lost; on the frames between, only
    the landmark model runs, in the box of the last detection moved and scaled as the landmarks moved since
    (`predict_box`), and the face keeps that detection's score. Landmarks that fail the checks listed at
    `TRACK_MIN_EXTENT_IOU` lose the track, and so does a scene cut (`SCENE_CUT_THRESHOLD`): the same frame then
    goes through the full detection. Backends without
    `refine` (mediapipe, whose video mode already tracks the face between its own detections) get `detect`
    on every frame whatever `detect_every` is.

    `limits`: which detections count as faces (`FaceFilter`; by default the reference's filter). After a frame
    without a face, `miss` says why (`MISS_NONE`, `MISS_SMALL`, `MISS_RULE`); None after a frame with one.
    """

    def __init__(self, backend: FaceBackend, rule: Rule = "largest", iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                 detect_every: int = 1, limits: FaceFilter = REFERENCE_FILTER):
        if isinstance(detect_every, bool) or not isinstance(detect_every, int) or detect_every < 1:
            raise ConfigError(f"detect_every must be an integer of at least 1, got {detect_every!r}")
        self.backend = backend
        self.rule = check_rule(rule)
        self.iou_threshold = iou_threshold
        self.detect_every = detect_every
        self.limits = limits
        self.miss: str | None = None
        refine = getattr(backend, "refine", None)
        self._refine = refine if detect_every > 1 and callable(refine) else None
        self.box: np.ndarray | None = None  # the last followed box
        self._signature: np.ndarray | None = None  # the previous frame's (`frame_signature`), to see cuts
        self._forget_track()

    def _forget_track(self) -> None:
        self._detected: Face | None = None  # the last detected face: its box and landmarks anchor the prediction
        self._previous: Face | None = None  # the followed face on the previous frame
        self._since_detection = 0  # frames since the last detection, that one included

    def track(self, frame: np.ndarray) -> Face | None:
        """The followed face in `frame`, or None when it has no valid face."""
        cut = False
        if self._refine is not None:
            signature = frame_signature(frame)
            cut = (self._signature is not None and signature.shape == self._signature.shape
                   and content_change(signature, self._signature) > SCENE_CUT_THRESHOLD)
            self._signature = signature
        if (self._refine is not None and self._detected is not None and self._since_detection < self.detect_every
                and not cut):
            face = self._follow(frame)
            if face is not None:
                self.miss = None
                self._since_detection += 1
                self._previous = face
                self.box = np.asarray(face.box, dtype=np.float32).copy()
                return face
        face = self._detect(frame)
        if face is None:
            self._forget_track()
        else:
            self._detected = self._previous = face
            self._since_detection = 1
        return face

    def _detect(self, frame: np.ndarray) -> Face | None:
        """The full path: every face the backend finds, the one overlapping the last box or else `rule`'s."""
        found = self.backend.detect(frame)
        faces = [f for f in found if self.limits.accepts(f)]
        if not faces:
            small = any(not self.limits.is_large_enough(f) and f.score >= self.limits.min_score for f in found)
            self.miss = MISS_SMALL if small else MISS_NONE
            return None
        chosen = None
        if self.box is not None:
            overlaps = [iou(self.box, f.box) for f in faces]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= self.iou_threshold:
                chosen = faces[best]
        if chosen is None:
            chosen = select_face(faces, self.rule, frame.shape, self.limits)
        if chosen is not None:
            self.box = np.asarray(chosen.box, dtype=np.float32).copy()
        self.miss = MISS_RULE if chosen is None else None
        return chosen

    def _follow(self, frame: np.ndarray) -> Face | None:
        """The face followed by the landmark model from the previous frame, or None when the track is lost."""
        detected, previous = self._detected, self._previous
        box = predict_box(detected.box, detected.landmarks, previous.landmarks)
        hint = Face(box=box, score=detected.score, landmarks=previous.landmarks, points=previous.points)
        face = self._refine(frame, hint)
        if face is None or self._lost(face, previous, frame.shape):
            return None
        return face

    def _lost(self, face: Face, previous: Face, frame_shape: Sequence[int]) -> bool:
        """Whether `face`, followed from `previous`, is no longer the face (see `TRACK_MIN_EXTENT_IOU`)."""
        landmarks = np.asarray(face.landmarks, dtype=np.float64)
        if not np.all(np.isfinite(landmarks)) or not self.limits.accepts(face):
            return True
        # The predicted box is where `previous`'s landmarks put the face, so they are where this frame's
        # landmarks are expected.
        extent = landmark_extent(landmarks)
        if iou(extent, landmark_extent(previous.landmarks)) < TRACK_MIN_EXTENT_IOU:
            return True
        margin = TRACK_MAX_OUTSIDE * max(extent[2] - extent[0], extent[3] - extent[1])
        h, w = frame_shape[:2]
        return bool(extent[0] < -margin or extent[1] < -margin or extent[2] > w + margin or extent[3] > h + margin)

    def reset(self) -> None:
        """Forget the followed face, e.g. before another video."""
        self.box = None
        self.miss = None
        self._signature = None
        self._forget_track()
        reset = getattr(self.backend, "reset", None)
        if callable(reset):
            reset()

    def close(self) -> None:
        """Close the backend (mediapipe's graph keeps threads until closed)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
