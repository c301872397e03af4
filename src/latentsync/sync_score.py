"""The SyncNet-v2 score (LSE-C / LSE-D), the standard lip-sync metric, computed with joonson's SyncNet
(`syncnet_v2.model`), spec 5.2: the core under the data pipeline's sync filter, training's validation and the
evaluation reports.

Two entries:

* `crop_sync_confidence(video, checkpoint)` scores a face-crop video with its audio track, exactly as
  `SyncNetInstance.evaluate` (joonson/syncnet_python) and LatentSync's `eval/syncnet/syncnet_eval.py` do.
* `sync_confidence(video, checkpoint)` scores any video: faces are detected in every frame, tracked, cropped
  (LatentSync `eval/syncnet_detect.py`, from joonson's `run_pipeline.py`; the detection pass, the tracker and
  the crop are in `latentsync.face.sync_tracks`) and each track is scored as a crop.

Batches of videos and their report (`evaluate_videos`, `format_results`) are in
`latentsync.evaluation.sync_confidence`.

The score, for a crop video at 25 fps with 16 kHz audio (`SyncNetInstance.evaluate`):

1. Frames are resized to 224x224 (bilinear) and fed as the reference reads its JPEGs with OpenCV: BGR order,
   raw 0-255 values. Audio: `python_speech_features.mfcc(pcm, 16000)` on the int16 samples of the 16 kHz mono
   WAV the reference extracts (it passes `scipy.io.wavfile`'s int16 array unconverted; the pre-emphasis step
   turns it into float64 at int16 scale): 13 coefficients at 100 Hz, the first replaced by the log frame energy.
2. `min_length = min(frames, floor(samples / 640))`; windows i = 0 .. min_length - 6 (the reference's
   `lastframe = min_length - 5` is an exclusive bound, so the last window that would fit is not used): lip
   window i = frames i..i+4, audio window i = MFCC frames 4i..4i+19 (both 0.2 s).
3. Each window is embedded by SyncNet (1024-d, in batches). For each i, the Euclidean distance
   (`torch.nn.functional.pairwise_distance`, eps 1e-6) between lip feature i and audio features
   i - vshift .. i + vshift, audio features zero-padded by vshift on both sides; averaged over i: a
   (2 vshift + 1)-vector `mean_dists`.
4. offset = vshift - argmin(mean_dists); LSE-D = min(mean_dists); LSE-C = median(mean_dists) - min.

Sign of the offset: a positive offset means the sound comes early (lip frame i matches audio frame
i - offset); delaying the audio by offset frames puts it in sync (LatentSync's `sync_av.py` does this with
`-itsoffset offset/25` on the audio input).

Differences from the reference, all deliberate:
* Everything stays in memory: no ffmpeg runs, no JPEG frame dumps, no re-encoded crop videos (the reference
  scores crops after an mp4v encode and a JPEG round trip, so its numbers carry that extra compression).
* Frames are read at 25 fps by `VideoReader` (the metric assumes 25 fps; the reference's crop scorer takes
  the frames as they are, which misaligns other rates).
* Faces come from our backends (mediapipe or InsightFace's SCRFD) instead of S3FD, and shot detection
  (PySceneDetect) is skipped: a cut breaks IoU tracking anyway, so a track rarely spans one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .defaults import SAMPLE_RATE_HZ
from .errors import InputError
from .face.sync_tracks import (
    DEFAULT_CROP_SCALE,
    DEFAULT_MIN_FACE_SIZE,
    DEFAULT_MIN_TRACK,
    VIDEO_FPS,
    detect_faces,
    track_crops,
    track_faces,
)
from .media import S16_FULL_SCALE, S16_MAX, VideoReader, decode_audio
from .models.syncnet_v2 import CROP_SIZE, LIP_WINDOW, MFCC_WINDOW, SyncNetV2, load_syncnet_v2

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Constants of the reference (SyncNetInstance.py, syncnet_eval.py)

SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // VIDEO_FPS  # 640: the reference's floor(len(audio) / 640)
MFCC_PER_FRAME = 4  # 100 Hz MFCC frames per 25 fps video frame
# A window needs min_length - LIP_WINDOW > 0: at least 6 frames and 6 * 640 samples (see step 2 above).
MIN_FRAMES = LIP_WINDOW + 1
DEFAULT_VSHIFT = 15  # frames tried on each side: +-0.6 s
DEFAULT_BATCH_SIZE = 20

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Results


@dataclass
class SyncScore:
    """The score of one face crop. `mean_dists`: the (2 vshift + 1,) mean distances, audio shifted by
    -vshift frames first; `windows`: how many 5-frame windows were averaged."""

    offset: int
    lse_d: float
    lse_c: float
    mean_dists: np.ndarray = field(repr=False)
    windows: int = 0


@dataclass
class TrackResult:
    """One face track of a video: frames `start` (inclusive) to `stop` (exclusive), 25 fps indices."""

    start: int
    stop: int
    offset: int
    lse_d: float
    lse_c: float


@dataclass
class SyncResult:
    """The metric for one video: means over its face tracks (`int(mean offset)`, as LatentSync reports).

    A video in which no face track passes the filters has `tracks == []` and `offset`, `lse_d`, `lse_c`
    None (the reference raises "Face not detected" there; a result lets a batch go on and report it).
    `error` is set instead when `evaluate_videos(..., skip_errors=True)` (`latentsync.evaluation.sync_confidence`)
    could not read the video.
    """

    path: str
    offset: int | None
    lse_d: float | None
    lse_c: float | None
    tracks: list[TrackResult]
    frames: int = 0  # 25 fps frames examined
    error: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.tracks)


# ---------------------------------------------------------------------------------------------------------
# Audio and windows


def pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples from `decode_audio` (int16 / 32768) back to the int16 values of the reference's WAV."""
    scaled = np.round(np.asarray(samples, dtype=np.float64) * S16_FULL_SCALE)
    return np.clip(scaled, -S16_FULL_SCALE, S16_MAX).astype(np.int16)


def mfcc_frames(pcm: np.ndarray) -> np.ndarray:
    """(13, t) float32 MFCCs at 100 Hz of int16 16 kHz samples: `python_speech_features.mfcc(pcm, 16000)`,
    transposed, cast to float32 as the reference's `torch.from_numpy(cc.astype(float)).float()`."""
    import python_speech_features

    return python_speech_features.mfcc(pcm, SAMPLE_RATE_HZ).T.astype(np.float32)  # t 13 -> 13 t


def num_windows(n_frames: int, n_samples: int) -> int:
    """How many 5-frame windows the reference scores: min(frames, floor(samples / 640)) - 5 (may be <= 0)."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - LIP_WINDOW


def audio_windows(mfcc: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """MFCC windows of video frames start..stop-1: (b, 1, 13, 20), window i = MFCC frames 4i .. 4i+19."""
    windows = [mfcc[:, MFCC_PER_FRAME * i: MFCC_PER_FRAME * i + MFCC_WINDOW] for i in range(start, stop)]
    return rearrange(torch.from_numpy(np.stack(windows)), "b h w -> b 1 h w")


def lip_windows(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """All 5-frame windows of consecutive BGR uint8 (224, 224, 3) frames: (len - 4, 3, 5, 224, 224) float32,
    a strided view over one copy of the frames (the feature function lays it out as its network likes)."""
    video = torch.from_numpy(np.stack(frames)).float()  # t h w c, raw 0-255
    windows = video.unfold(0, LIP_WINDOW, 1)  # b h w c t
    return rearrange(windows, "b h w c t -> b c t h w")


def _to_crop_size(frame: np.ndarray) -> np.ndarray:
    if frame.shape[:2] == (CROP_SIZE, CROP_SIZE):
        return frame
    return cv2.resize(frame, (CROP_SIZE, CROP_SIZE))  # bilinear, as the reference's cv2.resize


def extract_features(
    frames: Iterable[np.ndarray],
    pcm: np.ndarray,
    lip_fn: FeatureFn,
    audio_fn: FeatureFn,
    batch_size: int = DEFAULT_BATCH_SIZE,
    source: str = "video",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lip and audio features (n, d) of every window, n = `num_windows(frames, samples)`.

    `frames`: BGR uint8 (h, w, 3) frames at 25 fps (resized to 224x224 if needed), consumed lazily: memory
    holds one batch of frames, whatever the video's length. `pcm`: int16 16 kHz mono samples. `lip_fn` maps
    (b, 3, 5, 224, 224) float32 BGR 0-255 windows and `audio_fn` (b, 1, 13, 20) MFCC windows to (b, d)
    features. Raises InputError naming `source` when there is not one window.
    """
    mfcc = mfcc_frames(pcm)
    n_audio_frames = len(pcm) // SAMPLES_PER_FRAME
    stream = iter(frames)
    buffer: list[np.ndarray] = []  # frames first .. first + len(buffer) - 1
    first, seen, exhausted = 0, 0, False
    lip_feats, audio_feats = [], []
    start = 0
    while True:
        stop = min(start + batch_size, n_audio_frames - LIP_WINDOW)
        # Window i is scored only if frame i + 5 exists (see num_windows): read one frame past the batch.
        while not exhausted and seen < stop + LIP_WINDOW:
            frame = next(stream, None)
            if frame is None:
                exhausted = True
            else:
                buffer.append(_to_crop_size(frame))
                seen += 1
        if exhausted:
            stop = min(stop, seen - LIP_WINDOW)
        if stop <= start:
            break
        lips = lip_windows(buffer[start - first: stop - first + LIP_WINDOW - 1])  # b 3 5 224 224
        lip_feats.append(lip_fn(lips))  # b d
        audio_feats.append(audio_fn(audio_windows(mfcc, start, stop)))  # b d
        del buffer[: stop - first]
        first, start = stop, stop
    if not lip_feats:
        need = f"needs {MIN_FRAMES} frames at {VIDEO_FPS} fps and {MIN_FRAMES / VIDEO_FPS:.2f} s of audio"
        if n_audio_frames < MIN_FRAMES:
            seconds = len(pcm) / SAMPLE_RATE_HZ
            raise InputError(f"{source}: too short to score lip sync ({seconds:.2f} s of audio; {need})")
        raise InputError(f"{source}: too short to score lip sync ({seen} frames; {need})")
    return torch.cat(lip_feats), torch.cat(audio_feats)


# ---------------------------------------------------------------------------------------------------------
# The arithmetic


def distance_matrix(lip: torch.Tensor, audio: torch.Tensor, vshift: int) -> torch.Tensor:
    """(n, 2 vshift + 1) distances: row i, column k = ||lip[i] - audio[i + k - vshift] + 1e-6||, with audio
    features outside 0..n-1 taken as zeros (the reference's `calc_pdist`). `lip`, `audio`: (n, d)."""
    width = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))  # (n + 2 vshift) d
    windows = rearrange(padded.unfold(0, width, 1), "n d k -> n k d")[: len(lip)]  # n k d
    return F.pairwise_distance(lip[:, None, :].expand_as(windows), windows)  # n k


def offset_and_confidence(mean_dists: torch.Tensor, vshift: int) -> tuple[int, float, float]:
    """(offset, LSE-D, LSE-C) from the mean distances per shift: vshift - argmin, min, median - min.

    `torch.median` (the lower middle value for an even count; the count 2 vshift + 1 is odd)."""
    min_dist, min_index = torch.min(mean_dists, 0)
    return vshift - int(min_index), float(min_dist), float(torch.median(mean_dists) - min_dist)


def score_features(lip: torch.Tensor, audio: torch.Tensor, vshift: int = DEFAULT_VSHIFT) -> SyncScore:
    """The score of aligned (n, d) lip and audio features."""
    dists = distance_matrix(lip.float(), audio.float(), vshift)  # n k
    # Averaged over a contiguous (k, n) layout, the reference's torch.stack(dists, 1): the same summation
    # order, so the same float32 result to the last bit.
    mean_dists = rearrange(dists, "n k -> k n").contiguous().mean(1)  # k
    offset, lse_d, lse_c = offset_and_confidence(mean_dists, vshift)
    return SyncScore(offset, lse_d, lse_c, mean_dists.numpy(), windows=len(lip))


def score_windows(frames: Iterable[np.ndarray], pcm: np.ndarray, lip_fn: FeatureFn, audio_fn: FeatureFn,
                  vshift: int = DEFAULT_VSHIFT, batch_size: int = DEFAULT_BATCH_SIZE,
                  source: str = "video") -> SyncScore:
    """`score_features` of `extract_features`: the score of BGR face-crop frames (25 fps) and their int16
    16 kHz audio, with the given feature functions (the arguments are `extract_features`'s, and `vshift`)."""
    lip, audio = extract_features(frames, pcm, lip_fn, audio_fn, batch_size, source)
    return score_features(lip, audio, vshift)


def score_crop_video(
    video: str | Path,
    lip_fn: FeatureFn,
    audio_fn: FeatureFn,
    vshift: int = DEFAULT_VSHIFT,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SyncScore:
    """`score_windows` on a face-crop video file and its audio track (read at 25 fps and 16 kHz)."""
    path = Path(video)
    pcm = pcm16(decode_audio(path, SAMPLE_RATE_HZ))  # InputError naming the file if it has no audio
    frames = (rgb[:, :, ::-1] for rgb in VideoReader(path, fps=VIDEO_FPS).frames())  # RGB -> BGR views
    return score_windows(frames, pcm, lip_fn, audio_fn, vshift, batch_size, source=str(path))


# ---------------------------------------------------------------------------------------------------------
# The network


def as_syncnet_v2(checkpoint: str | Path | SyncNetV2, device) -> SyncNetV2:
    """`checkpoint` itself in eval mode if it is a loaded `SyncNetV2`, else the network loaded from that path
    onto `device`."""
    if isinstance(checkpoint, SyncNetV2):
        return checkpoint.eval()
    return load_syncnet_v2(checkpoint, device=device)


def model_features(model: SyncNetV2) -> tuple[FeatureFn, FeatureFn]:
    """(lip_fn, audio_fn) running `model`'s towers on its device and dtype; features come back float32 CPU.

    On the CPU the lip tower runs in channels-last-3d memory order: oneDNN's 3-D convolutions are then about
    1.7x faster (measured on 2 cores), with the same values up to float rounding (~1e-6 relative). This
    switches the layout of `model.netcnnlip`'s weights in place (not their values).
    """
    param = next(model.parameters())
    layout = torch.contiguous_format
    if param.device.type == "cpu":
        layout = torch.channels_last_3d
        model.netcnnlip.to(memory_format=layout)

    def run(tower: FeatureFn, memory_format: torch.memory_format) -> FeatureFn:
        def features(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device=param.device, dtype=param.dtype).contiguous(memory_format=memory_format)
            with torch.inference_mode():
                return tower(x).float().cpu()

        return features

    return run(model.forward_lip, layout), run(model.forward_aud, torch.contiguous_format)


def crop_sync_confidence(
    video: str | Path,
    checkpoint: str | Path | SyncNetV2,
    vshift: int = DEFAULT_VSHIFT,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> tuple[float, float, float]:
    """(offset, LSE-D, LSE-C) of a face-crop video with its audio track: the reference's
    `SyncNetEval.evaluate(video, vshift=15, batch_size=20)` (see the module docstring for the algorithm).

    `checkpoint`: the path of a `syncnet_v2.model`-format file (a raw state dict), or an already loaded
    `SyncNetV2` (reused as is; `device` is then ignored), to score many videos without reloading. `offset` is
    in frames at 25 fps (an integer, returned as a float like the other two). Raises `InputError` naming the
    video if it has no audio track or is too short for one window (6 frames and 0.24 s of audio);
    `CheckpointError` naming the file if the weights do not match.
    """
    model = as_syncnet_v2(checkpoint, device)
    score = score_crop_video(video, *model_features(model), vshift=vshift, batch_size=batch_size)
    return float(score.offset), score.lse_d, score.lse_c


# ---------------------------------------------------------------------------------------------------------
# Any video: its face tracks (see `latentsync.face.sync_tracks`), each scored as a crop


def sync_confidence(
    video: str | Path,
    checkpoint: str | Path | SyncNetV2,
    backend="auto",
    vshift: int = DEFAULT_VSHIFT,
    min_track: int = DEFAULT_MIN_TRACK,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    crop_scale: float = DEFAULT_CROP_SCALE,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> SyncResult:
    """LSE-C / LSE-D of any video with an audio track, as LatentSync's `eval/eval_sync_conf.py` computes them.

    Frames at 25 fps; faces in every frame (`backend`: "auto", "mediapipe", "insightface", or a backend
    object, reused and left open); tracks by `track_faces` (IoU > 0.5, up to 25 missed frames, longer than
    `min_track` frames, mean face size above `min_face_size` px); boxes interpolated and median-filtered,
    cropped by `crop_face` (`crop_scale`); each track scored like `crop_sync_confidence` on its crops and the
    audio of its frames. Per video: mean LSE-C and LSE-D over tracks and int(mean offset).

    Shot detection (PySceneDetect in the reference) is skipped: a cut breaks IoU tracking anyway. A video
    without any face track gives a result with no tracks and None metrics (see `SyncResult`); a track too
    short for one window (possible with a small `min_track`) is left out with a warning. `checkpoint`: a
    path or a loaded `SyncNetV2` (see `crop_sync_confidence`). Raises `InputError` naming the video if it
    cannot be read or has no audio track.
    """
    path = Path(video)
    pcm = pcm16(decode_audio(path, SAMPLE_RATE_HZ))
    model = as_syncnet_v2(checkpoint, device)
    owned = isinstance(backend, str)
    if owned:
        from .face.detect import load_face_backend

        backend = load_face_backend(backend)
    try:
        detections = detect_faces(path, backend, progress)
    finally:
        if owned and callable(getattr(backend, "close", None)):
            backend.close()
    tracks = track_faces(detections, min_track=min_track, min_face_size=min_face_size)
    results: list[TrackResult] = []
    lip_fn, audio_fn = model_features(model)
    for track in tracks:
        # The audio of the track's frames (the reference cuts it with ffmpeg -ss start/25 -to stop/25).
        segment = pcm[track.start * SAMPLES_PER_FRAME: track.stop * SAMPLES_PER_FRAME]
        if num_windows(track.stop - track.start, len(segment)) <= 0:
            log.warning("%s: face track at frames %d-%d is too short to score; left out",
                        path, track.start, track.stop)
            continue
        crops = track_crops(path, track, crop_scale, progress)
        score = score_windows(crops, segment, lip_fn, audio_fn, vshift, batch_size, source=str(path))
        results.append(TrackResult(track.start, track.stop, score.offset, score.lse_d, score.lse_c))
    if not results:
        return SyncResult(str(path), None, None, None, [], frames=len(detections))
    return SyncResult(
        str(path),
        offset=int(np.mean([t.offset for t in results])),  # int() truncates towards zero, as the reference
        lse_d=float(np.mean([t.lse_d for t in results])),
        lse_c=float(np.mean([t.lse_c for t in results])),
        tracks=results,
        frames=len(detections),
    )


__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_VSHIFT", "MFCC_PER_FRAME", "MIN_FRAMES", "SAMPLES_PER_FRAME", "VIDEO_FPS",
    "FeatureFn", "SyncResult", "SyncScore", "TrackResult", "as_syncnet_v2", "audio_windows",
    "crop_sync_confidence", "detect_faces", "distance_matrix", "extract_features", "lip_windows", "mfcc_frames",
    "model_features", "num_windows", "offset_and_confidence", "pcm16", "score_crop_video", "score_features",
    "score_windows", "sync_confidence", "track_crops",
]
