"""LSE-C / LSE-D of many videos, and their report: `evaluate_videos` scores a batch (whole videos or face-crop
videos) loading the network and the face backend once, `summarize` and `format_results` make the table or the
JSON that `latentsync eval sync` prints.

The metric itself (MFCC, windows, distances, offset and confidence, `crop_sync_confidence`, `sync_confidence`)
is `latentsync.sync_score`, and the face tracker and crop are `latentsync.face.sync_tracks`; this module
re-exports their names under its former path for one release.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..face.sync_tracks import (
    CROP_PAD_VALUE,
    DEFAULT_CROP_SCALE,
    DEFAULT_MIN_FACE_SIZE,
    DEFAULT_MIN_TRACK,
    IOU_THRESHOLD,
    MAX_MISSED_FRAMES,
    SMOOTH_KERNEL,
    FaceTrack,
    crop_face,
    crop_geometry,
    track_faces,
)
from ..models.syncnet_v2 import LIP_WINDOW, SyncNetV2
from ..sync_score import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_VSHIFT,
    MFCC_PER_FRAME,
    MIN_FRAMES,
    SAMPLES_PER_FRAME,
    VIDEO_FPS,
    FeatureFn,
    SyncResult,
    SyncScore,
    TrackResult,
    as_syncnet_v2,
    audio_windows,
    crop_sync_confidence,
    detect_faces,
    distance_matrix,
    extract_features,
    lip_windows,
    mfcc_frames,
    model_features,
    num_windows,
    offset_and_confidence,
    pcm16,
    score_crop_video,
    score_features,
    score_windows,
    sync_confidence,
    track_crops,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Many videos, and reporting


def evaluate_videos(
    paths: Sequence[str | Path],
    checkpoint: str | Path | SyncNetV2,
    crops: bool = False,
    skip_errors: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    backend="auto",
    **kw,
) -> list[SyncResult]:
    """`sync_confidence` of each video (or, with `crops=True`, `crop_sync_confidence` of face-crop videos,
    reported as one track over the whole video), loading the network and the face backend once.

    `kw` goes to `sync_confidence` (vshift, min_track, min_face_size, crop_scale, batch_size) or, for crops,
    to `crop_sync_confidence` (vshift, batch_size). With `skip_errors`, a video that raises `InputError` gets
    a result carrying the message in `error` and the batch goes on; otherwise the error propagates.
    """
    from tqdm.auto import tqdm

    model = as_syncnet_v2(checkpoint, device)
    face_backend = None
    if not crops and isinstance(backend, str):
        from ..face.detect import load_face_backend

        face_backend = load_face_backend(backend)
    results = []
    try:
        for path in tqdm(list(paths), desc="sync confidence", unit="video", disable=not progress):
            try:
                if crops:
                    results.append(_crop_result(Path(path), model, **kw))
                else:
                    results.append(sync_confidence(path, model, backend=face_backend or backend,
                                                   progress=progress, **kw))
            except InputError as e:
                if not skip_errors:
                    raise
                log.warning("%s", e)
                results.append(SyncResult(str(path), None, None, None, [], error=str(e)))
    finally:
        if face_backend is not None and callable(getattr(face_backend, "close", None)):
            face_backend.close()
    return results


def _crop_result(path: Path, model: SyncNetV2, vshift: int = DEFAULT_VSHIFT,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> SyncResult:
    score = score_crop_video(path, *model_features(model), vshift=vshift, batch_size=batch_size)
    spanned = score.windows + LIP_WINDOW - 1  # frames 0 .. spanned - 1 feed the windows
    track = TrackResult(0, spanned, score.offset, score.lse_d, score.lse_c)
    return SyncResult(str(path), score.offset, score.lse_d, score.lse_c, [track], frames=spanned)


def summarize(results: Sequence[SyncResult]) -> dict:
    """Means over the videos that have a score: offset, LSE-D, LSE-C, and how many videos were scored."""
    scored = [r for r in results if r.found]
    if not scored:
        return {"videos": 0, "offset": None, "lse_d": None, "lse_c": None}
    return {
        "videos": len(scored),
        "offset": float(np.mean([r.offset for r in scored])),
        "lse_d": float(np.mean([r.lse_d for r in scored])),
        "lse_c": float(np.mean([r.lse_c for r in scored])),
    }


def format_results(results: Sequence[SyncResult], as_json: bool = False) -> str:
    """The results as a text table (one row per video, then the mean over scored videos) or as JSON
    (`{"videos": [...], "mean": {...}}`, per-track details included)."""
    mean = summarize(results)
    if as_json:
        return json.dumps({"videos": [dataclasses.asdict(r) for r in results], "mean": mean}, indent=2)
    name_width = max([len("video")] + [len(r.path) for r in results])
    lines = [f"{'video':<{name_width}}  {'offset':>6}  {'LSE-D':>7}  {'LSE-C':>7}  tracks"]
    for r in results:
        if r.found:
            lines.append(f"{r.path:<{name_width}}  {r.offset:>6d}  {r.lse_d:>7.3f}  {r.lse_c:>7.3f}  {len(r.tracks)}")
        else:
            lines.append(f"{r.path:<{name_width}}  {'-':>6}  {'-':>7}  {'-':>7}  {r.error or 'no face track'}")
    if mean["videos"]:
        label = f"mean ({mean['videos']} of {len(results)})"
        lines.append(f"{label:<{name_width}}  {mean['offset']:>6.2f}  {mean['lse_d']:>7.3f}  {mean['lse_c']:>7.3f}")
    return "\n".join(lines)


__all__ = [
    # this module
    "evaluate_videos",
    "format_results",
    "summarize",
    # re-exported from latentsync.sync_score and latentsync.face.sync_tracks, their homes since issue 15
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_VSHIFT",
    "MFCC_PER_FRAME",
    "MIN_FRAMES",
    "SAMPLES_PER_FRAME",
    "VIDEO_FPS",
    "FeatureFn",
    "SyncResult",
    "SyncScore",
    "TrackResult",
    "audio_windows",
    "crop_sync_confidence",
    "detect_faces",
    "distance_matrix",
    "extract_features",
    "lip_windows",
    "mfcc_frames",
    "model_features",
    "num_windows",
    "offset_and_confidence",
    "pcm16",
    "score_crop_video",
    "score_features",
    "score_windows",
    "sync_confidence",
    "track_crops",
    "CROP_PAD_VALUE",
    "DEFAULT_CROP_SCALE",
    "DEFAULT_MIN_FACE_SIZE",
    "DEFAULT_MIN_TRACK",
    "IOU_THRESHOLD",
    "MAX_MISSED_FRAMES",
    "SMOOTH_KERNEL",
    "FaceTrack",
    "crop_face",
    "crop_geometry",
    "track_faces",
]
