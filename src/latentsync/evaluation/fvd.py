"""Fréchet Video Distance (FVD) between two sets of videos, with the Kinetics-400 I3D.

FVD (Unterthiner et al. 2018, arXiv 1812.01717) embeds one clip per video with I3D (the Kinetics-400 logits
averaged over time, see `latentsync.models.i3d`), fits a Gaussian to each set and reports the Fréchet
distance between them: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

The protocol follows LatentSync's `eval/eval_fvd.py` and `eval/fvd.py` (itself adapted from
universome/fvd-comparison `our_fvd.py`):

* One clip per video: frames 20 to 35 (16 frames, `vr[20:36]` with decord, i.e. the video's own frames).
* Each frame is cropped to the first face that mediapipe's short-range face detector finds
  (`FaceDetection(model_selection=0, min_detection_confidence=0.5)`) and resized to 224 x 224 with
  `cv2.INTER_AREA`, ignoring the aspect ratio. The box is truncated to whole pixels and clipped to the frame
  the way the reference does it (its right/bottom edge is computed from the already clipped left/top edge).
* Pixel values: the reference divides by 255 and calls `i3d_torchscript.pt` with `rescale=False`, so I3D
  sees [0, 1] although it was trained on [-1, 1] (what the original TF FVD feeds). `value_range="latentsync"`
  (the default) reproduces that, for numbers comparable with LatentSync's; `"standard"` feeds [-1, 1].
* Statistics: mean and unbiased covariance (`np.cov(rowvar=False)`) of the (n, 400) features; the square root
  with `scipy.linalg.sqrtm` (the reference keeps the real part of the result).

Differences from the reference, none of which changes the number: videos are decoded as a stream and I3D runs
in batches (BatchNorm uses its stored statistics, so each clip's features do not depend on the batch), a
video without a face or shorter than 36 frames is an `InputError` naming it (the reference crashes or, for a
short video, returns an exception object instead of raising it), and videos of a folder are taken in sorted
order (the set is what matters).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from ..errors import InputError, LatentSyncError
from ..face.mediapipe import MEDIAPIPE_INSTALL
from ..media import VideoReader, probe_video

log = logging.getLogger(__name__)

# The reference clip (eval_fvd.py: `vr[20:36]`, `resolution=(224, 224)`).
DEFAULT_START_FRAME = 20
DEFAULT_NUM_FRAMES = 16
DEFAULT_SIZE = 224  # px, I3D's training resolution
DEFAULT_BATCH_SIZE = 8  # clips per I3D forward (about 1 s each on two CPU cores)

# The reference face detector (eval_fvd.py): mediapipe's short-range model, first detection.
FACE_MODEL_SELECTION = 0  # 0: short-range model (faces within about 2 m), 1: full-range
FACE_MIN_CONFIDENCE = 0.5

CROPS = ("face", "center", "none")
# uint8 0..255 is mapped linearly onto [low, high] before I3D.
VALUE_RANGES = {"latentsync": (0.0, 1.0), "standard": (-1.0, 1.0)}
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")

# Fréchet distance numerics (as pytorch-fid / the TF-GAN implementation handle them).
SQRTM_EPS = 1e-6  # kept for callers passing eps; the eigenvalue route needs no regularisation

PathLike = Union[str, os.PathLike]
Videos = Union[PathLike, Sequence[PathLike]]


# ---- Fréchet distance -----------------------------------------------------------------------------------------

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of features (n, d), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features of shape (n >= 2, d), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = SQRTM_EPS) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    The trace of the square root is computed from symmetric eigendecompositions: for positive semi-definite
    covariances, sigma1 sigma2 is similar to S sigma2 S with S = sigma1^(1/2) (symmetric PSD), so
    tr((sigma1 sigma2)^(1/2)) = sum of the square roots of the eigenvalues of S sigma2 S. This equals what
    `scipy.linalg.sqrtm` of the product gives (the usual implementation) but is real by construction and much
    faster for 2048-d features. Eigenvalues that rounding makes slightly negative are clipped at 0; `eps` is
    kept for signature compatibility (no regularisation is needed).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)  # symmetrised against rounding
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # sigma1^(1/2)
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


# ---- clips ----------------------------------------------------------------------------------------------------

class FaceCropper:
    """The reference's face crop: mediapipe's short-range detector, first face, box as eval_fvd.py cuts it.

    Use as a context manager or call `close()`.
    """

    def __init__(self, min_confidence: float = FACE_MIN_CONFIDENCE):
        try:
            from mediapipe.python.solutions import face_detection
        except ImportError as e:
            raise LatentSyncError(f"the FVD face crop needs mediapipe 0.10.21 ({e}): run `{MEDIAPIPE_INSTALL}`, "
                                  "or use crop='center'") from e
        self._detector = face_detection.FaceDetection(model_selection=FACE_MODEL_SELECTION,
                                                      min_detection_confidence=min_confidence)

    def box(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the first face in an RGB uint8 frame, or None."""
        height, width = frame.shape[:2]
        result = self._detector.process(np.ascontiguousarray(frame))
        if not result.detections:
            return None
        rel = result.detections[0].location_data.relative_bounding_box
        # int() truncates toward zero, and the far edges start from the clipped near edges: as the reference.
        x0, y0 = max(0, int(rel.xmin * width)), max(0, int(rel.ymin * height))
        x1 = min(width, x0 + int(rel.width * width))
        y1 = min(height, y0 + int(rel.height * height))
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def __enter__(self) -> FaceCropper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def center_square(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return frame[y0:y0 + side, x0:x0 + side]


def video_clip(path: PathLike, num_frames: int = DEFAULT_NUM_FRAMES, start_frame: int = DEFAULT_START_FRAME,
               size: int = DEFAULT_SIZE, crop: str = "face", fps: float | None = None,
               face_cropper: FaceCropper | None = None) -> np.ndarray:
    """The clip FVD takes from one video: (num_frames, size, size, 3) RGB uint8.

    Frames `start_frame` .. `start_frame + num_frames - 1` at `fps` (None: the video's own rate, i.e. its own
    frames, as decord indexes them), each cropped by `crop` and resized to size x size with `cv2.INTER_AREA`:
    "face" (the reference: first mediapipe face of each frame; pass a `FaceCropper` to reuse one across
    videos), "center" (the largest centred square) or "none" (the whole frame, aspect ratio not kept).

    Raises InputError naming the video if it cannot be read, is too short, or (crop "face") a frame has no
    face.
    """
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {', '.join(CROPS)}")
    if fps is None:
        fps = probe_video(path).fps or None
    reader = VideoReader(path) if fps is None else VideoReader(path, fps=fps)
    owned = face_cropper is None and crop == "face"
    cropper = FaceCropper() if owned else face_cropper
    try:
        frames = []
        for index, frame in enumerate(reader.frames(start_frame, start_frame + num_frames), start=start_frame):
            if crop == "face":
                box = cropper.box(frame)
                if box is None:
                    raise InputError(f"{path}: no face found in frame {index} (FVD crops each frame to the face)")
                x0, y0, x1, y1 = box
                frame = frame[y0:y1, x0:x1]
            elif crop == "center":
                frame = center_square(frame)
            frames.append(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA))
    finally:
        if owned:
            cropper.close()
    if len(frames) < num_frames:
        has = start_frame + len(frames) if frames else f"at most {start_frame}"
        last = start_frame + num_frames - 1
        raise InputError(f"{path}: too short for FVD: has {has} frames, needs {last + 1} "
                         f"(the clip is frames {start_frame}-{last})")
    return np.stack(frames)  # t h w c


def video_paths(videos: Videos) -> list[Path]:
    """The videos of a folder (its files ending in .mp4, .mov, .mkv, .avi or .webm, sorted; not recursive),
    of a single file, or of a list of files. InputError for a missing path or a folder without videos."""
    if isinstance(videos, (str, os.PathLike)):
        source = Path(videos)
        if source.is_dir():
            paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not paths:
                raise InputError(f"{source}: no videos found ({', '.join(VIDEO_SUFFIXES)})")
            return paths
        videos = [source]
    paths = [Path(p) for p in videos]
    if not paths:
        raise InputError("no videos given")
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: video not found")
    return paths


# ---- features and distance ------------------------------------------------------------------------------------

@torch.no_grad()
def i3d_features(clips: Iterable[np.ndarray | torch.Tensor], model: torch.nn.Module,
                 batch_size: int = DEFAULT_BATCH_SIZE, value_range: str = "latentsync") -> np.ndarray:
    """I3D embeddings (n, 400) float64 of clips (t, h, w, 3) with values 0..255 (uint8 or float).

    `clips` is consumed lazily, `batch_size` at a time, on the device of `model`'s parameters. `value_range`
    names what 0..255 becomes before I3D: "latentsync" [0, 1] (the reference's FVD) or "standard" [-1, 1].
    """
    if value_range not in VALUE_RANGES:
        raise ValueError(f"unknown value_range {value_range!r}; expected one of {', '.join(VALUE_RANGES)}")
    low, high = VALUE_RANGES[value_range]
    param = next(model.parameters())
    out: list[np.ndarray] = []

    def run(batch: list) -> None:
        x = torch.stack([torch.as_tensor(c) for c in batch]).to(device=param.device, dtype=param.dtype)  # b t h w c
        x = rearrange(x, "b t h w c -> b c t h w") * ((high - low) / 255.0) + low
        out.append(model(x).double().cpu().numpy())  # b k

    batch: list = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    if not out:
        return np.zeros((0, 0))
    return np.concatenate(out)


def _clips(paths: Sequence[Path], bar: tqdm, cropper: FaceCropper | None, **clip_kwargs) -> Iterator[np.ndarray]:
    for path in paths:
        yield video_clip(path, face_cropper=cropper, **clip_kwargs)
        bar.update(1)


def fvd(real: Videos, generated: Videos, *, model: torch.nn.Module | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE, num_frames: int = DEFAULT_NUM_FRAMES,
        start_frame: int = DEFAULT_START_FRAME, size: int = DEFAULT_SIZE, crop: str = "face",
        value_range: str = "latentsync", fps: float | None = None, device: str | torch.device | None = None,
        progress: bool = True) -> float:
    """FVD between the videos of `real` and `generated` (each a folder, a video file or a list of files).

    One clip per video (`video_clip`), I3D embeddings (`i3d_features`), Fréchet distance of their Gaussians.
    `model` defaults to `load_i3d(device=device)`. Each side needs at least 2 videos (a covariance), and
    realistically hundreds: with fewer than 400 the covariances are singular and the number is noisy.
    Raises InputError (one line naming the folder or video) for a folder without videos, a missing, unreadable
    or too short video, or a frame without a face (crop "face").
    """
    real_paths, generated_paths = video_paths(real), video_paths(generated)
    for name, paths in (("real", real_paths), ("generated", generated_paths)):
        if len(paths) < 2:
            raise InputError(f"FVD needs at least 2 {name} videos, got {len(paths)} ({paths[0]})")
    if model is None:
        from ..models.i3d import load_i3d

        model = load_i3d(device=device)
    clip_kwargs = dict(num_frames=num_frames, start_frame=start_frame, size=size, crop=crop, fps=fps)
    cropper = FaceCropper() if crop == "face" else None
    total = len(real_paths) + len(generated_paths)
    try:
        with tqdm(total=total, desc="FVD", unit="video", disable=not progress) as bar:
            feats = [i3d_features(_clips(paths, bar, cropper, **clip_kwargs), model, batch_size, value_range)
                     for paths in (real_paths, generated_paths)]
    finally:
        if cropper is not None:
            cropper.close()
    return frechet_distance(*feature_statistics(feats[0]), *feature_statistics(feats[1]))
