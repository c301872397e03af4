"""The faces the SyncNet metric scores: the detection pass over a video, joonson's tracker and face crop
(LatentSync `eval/syncnet_detect.py`, from joonson/syncnet_python's `run_pipeline.py`).

`detect_faces` runs a face backend on every 25 fps frame of a video; `track_faces` joins the per-frame
detections into tracks (greedy IoU, gaps of up to 25 frames, length and size filters); `crop_geometry`
smooths a track's boxes into crop centres and sizes; `crop_face` cuts the reference's 0.4-scale crop at the
SyncNet input size, and `track_crops` streams a track's crops from the video. Scoring the crops is in
`latentsync.sync_score` (`sync_confidence`).

One difference from the reference: a track takes at most one box per frame (see `track_faces`). The crop is
the reference's to the pixel, computed without building the padded frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..defaults import FPS
from ..media import VideoReader, probe_video
from ..models.syncnet_v2 import CROP_SIZE
from .boxes import iou

# ---------------------------------------------------------------------------------------------------------
# Constants of the reference (syncnet_detect.py / run_pipeline.py)

VIDEO_FPS = int(FPS)  # the rate at which the metric reads every video (SyncNet's windows are 25 fps frames)
IOU_THRESHOLD = 0.5  # a detection continues a track if its IoU with the track's last box exceeds this
MAX_MISSED_FRAMES = 25  # `num_failed_det`: a track ends after a gap longer than this
DEFAULT_MIN_TRACK = 50  # frames; a track must be longer than this
DEFAULT_MIN_FACE_SIZE = 100  # px; the larger of a track's mean box width and mean box height must exceed this
SMOOTH_KERNEL = 13  # frames; median filter on box size and centre (scipy.signal.medfilt, zero-padded ends)
DEFAULT_CROP_SCALE = 0.4  # the crop reaches 1 + 2 * 0.4 half-sizes below the centre and 1 + 0.4 to each side
CROP_PAD_VALUE = 110  # grey filling the crop where it leaves the frame


@dataclass
class FaceTrack:
    """Consecutive frames `frames` (n,) and their interpolated boxes (n, 4) x1, y1, x2, y2."""

    frames: np.ndarray
    boxes: np.ndarray

    @property
    def start(self) -> int:
        return int(self.frames[0])

    @property
    def stop(self) -> int:
        return int(self.frames[-1]) + 1


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, disable=not enabled, dynamic_ncols=True)


def detect_faces(video: Path, backend, progress: bool = False) -> list[list[np.ndarray]]:
    """Boxes (4,) of every face `backend` finds in each 25 fps frame of `video`."""
    reset = getattr(backend, "reset", None)
    if callable(reset):
        reset()  # mediapipe tracks between calls: start this video afresh
    detections = []
    with _progress(probe_video(video).frames_at(VIDEO_FPS), "detect faces", progress) as bar:
        for frame in VideoReader(video, fps=VIDEO_FPS).frames():
            detections.append([np.asarray(f.box, dtype=np.float64) for f in backend.detect(frame)])
            bar.update()
    return detections


def track_faces(
    detections: Sequence[Sequence[np.ndarray]],
    min_track: int = DEFAULT_MIN_TRACK,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    iou_threshold: float = IOU_THRESHOLD,
    max_missed: int = MAX_MISSED_FRAMES,
) -> list[FaceTrack]:
    """The reference's greedy tracker (`track_face`) over per-frame boxes.

    Repeatedly: start a track at the first remaining detection; walk forward taking, in each frame, the first
    remaining box whose IoU with the track's last box exceeds `iou_threshold`, until a gap of more than
    `max_missed` frames; remove the taken boxes. A track is kept if it has more than `min_track` detections
    and, after linear interpolation over its missing frames, the larger of its mean box width and mean box
    height exceeds `min_face_size` px. (The reference can take two overlapping boxes of one frame into a
    track; we take at most one per frame.)
    """
    remaining = [[np.asarray(b, dtype=np.float64) for b in boxes] for boxes in detections]
    tracks = []
    while True:
        frames: list[int] = []
        boxes: list[np.ndarray] = []
        for index, candidates in enumerate(remaining):
            if frames and index - frames[-1] > max_missed:
                break
            for k, box in enumerate(candidates):
                if not frames or iou(box, boxes[-1]) > iou_threshold:
                    frames.append(index)
                    boxes.append(candidates.pop(k))
                    break
        if not frames:
            return tracks
        if len(frames) <= min_track:
            continue
        known = np.asarray(frames)
        every = np.arange(known[0], known[-1] + 1)
        found = np.stack(boxes)  # n 4
        filled = np.stack([np.interp(every, known, found[:, j]) for j in range(4)], axis=1)  # m 4
        size = max(np.mean(filled[:, 2] - filled[:, 0]), np.mean(filled[:, 3] - filled[:, 1]))
        if size > min_face_size:
            tracks.append(FaceTrack(every, filled))


def crop_geometry(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre x, centre y, half size) per frame of (n, 4) boxes, each median-filtered over 13 frames
    (`scipy.signal.medfilt`, which pads the ends with zeros, as the reference). Half size = half the
    larger side of the box."""
    from scipy.signal import medfilt

    half = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    with warnings.catch_warnings():
        # Tracks shorter than the kernel are zero-padded like any track's ends; scipy warns about it.
        warnings.filterwarnings("ignore", message="kernel_size exceeds volume extent")
        return tuple(medfilt(v, kernel_size=SMOOTH_KERNEL) for v in (cx, cy, half))


def crop_face(frame: np.ndarray, cx: float, cy: float, half: float,
              crop_scale: float = DEFAULT_CROP_SCALE) -> np.ndarray:
    """The reference's face crop, resized to 224x224: rows from cy - half to cy + half (1 + 2 crop_scale),
    columns cx +- half (1 + crop_scale), taken from the frame padded by int(half (1 + 2 crop_scale)) pixels
    of value 110 on every side (a crop reaching past the padding is cut short there, as numpy slicing cuts
    the reference's). Computed without building the padded frame."""
    half = max(float(half), 1.0)  # a degenerate box would give an empty crop
    pad = int(half * (1 + 2 * crop_scale))
    h, w = frame.shape[:2]
    my, mx = cy + pad, cx + pad  # centre in padded coordinates
    rows = _clip_span(int(my - half), int(my + half * (1 + 2 * crop_scale)), h + 2 * pad)
    cols = _clip_span(int(mx - half * (1 + crop_scale)), int(mx + half * (1 + crop_scale)), w + 2 * pad)
    out = np.full((rows[1] - rows[0], cols[1] - cols[0], frame.shape[2]), CROP_PAD_VALUE, dtype=frame.dtype)
    # The part of the crop inside the original frame (padded coordinates minus pad).
    r0, r1 = max(rows[0], pad), min(rows[1], pad + h)
    c0, c1 = max(cols[0], pad), min(cols[1], pad + w)
    if r1 > r0 and c1 > c0:
        out[r0 - rows[0]: r1 - rows[0], c0 - cols[0]: c1 - cols[0]] = frame[r0 - pad: r1 - pad, c0 - pad: c1 - pad]
    return cv2.resize(out, (CROP_SIZE, CROP_SIZE))


def _clip_span(lo: int, hi: int, size: int) -> tuple[int, int]:
    lo, hi = min(max(lo, 0), size), min(max(hi, 0), size)
    return lo, max(hi, lo)


def track_crops(video: Path, track: FaceTrack, crop_scale: float = DEFAULT_CROP_SCALE,
                progress: bool = False) -> Iterator[np.ndarray]:
    """BGR 224x224 crops of `track`, decoded lazily from its frames of `video` (seeking to its start), so
    memory does not grow with the track's length."""
    cx, cy, half = crop_geometry(track.boxes)
    frames = VideoReader(video, fps=VIDEO_FPS).frames(track.start, track.stop)
    with _progress(track.stop - track.start, "score track", progress) as bar:
        for j, rgb in enumerate(frames):
            yield np.ascontiguousarray(crop_face(rgb, cx[j], cy[j], half[j], crop_scale)[:, :, ::-1])  # RGB -> BGR
            bar.update()


__all__ = [
    "CROP_PAD_VALUE", "DEFAULT_CROP_SCALE", "DEFAULT_MIN_FACE_SIZE", "DEFAULT_MIN_TRACK", "IOU_THRESHOLD",
    "MAX_MISSED_FRAMES", "SMOOTH_KERNEL", "VIDEO_FPS", "FaceTrack", "crop_face", "crop_geometry", "detect_faces",
    "track_crops", "track_faces",
]
