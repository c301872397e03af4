"""Fréchet Inception Distance (FID) over video frames: the "FID" of the lip-sync literature.

FID (Heusel et al. 2017, arXiv 1706.08500) embeds images with TF's 2015 Inception-v3 (2048-d pool3, see
`latentsync.models.inception`), fits a Gaussian to each set and reports the Fréchet distance between them.
Lip-sync papers report it on FRAMES: frames of the generated videos against
frames of the real ones. LatentSync's repository ships no FID script, so the protocol is ours, built from the
FVD protocol (`latentsync.evaluation.fvd`) and pytorch-fid:

* Frames: `frames_per_video` (default 16) from each video, at the centres of that many equal segments of the
  video (frame floor((2i + 1) n / 2k) for i < k, of n frames at the video's own rate): spread over the whole
  video rather than one window, since FID measures per-frame quality. A video with no more frames than that
  gives all of them; `frames_per_video=None` takes every frame. Finding n decodes the video once more
  (`VideoReader.count`, without colour conversion: cheap next to Inception).
* Crop: as FVD's (`crop="face"`: the first face that mediapipe's short-range detector finds in each frame,
  the box cut as LatentSync's eval_fvd.py cuts it; "center": the largest centred square; "none": the whole
  frame), resized with `cv2.INTER_AREA` to `size` (default 299, Inception's input, so the network's own
  bilinear resize to 299 is the identity and the downscaling is area-averaged rather than aliased).
  A frame without a face is an InputError naming the video and the frame, as in FVD.
* Pixels: uint8 / 255 into the network, which maps [0, 1] to [-1, 1] as pytorch-fid does.
* Statistics and distance: fvd.py's `feature_statistics` (mean, unbiased covariance in float64) and
  `frechet_distance` (scipy's sqrtm, as pytorch-fid), on 2048-d features. With fewer than 2048 frames per side
  the covariances are singular and the number is biased upwards; use thousands of frames for a stable value.

Frames are decoded as a stream and embedded `batch_size` at a time; what is kept is the features, 8 KB a frame.
On two CPU cores Inception takes about 10-12 s of wall time per 100 frames on an idle machine (about 30 s of CPU
time with decoding and cropping, measured on a busy one), and the square root of the 2048 x 2048 covariance
product 15-40 s per FID, whatever the frame count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from ..errors import InputError
from ..media import VideoReader, probe_video
from .fvd import (
    CROPS,
    FaceCropper,
    PathLike,
    Videos,
    center_square,
    feature_statistics,
    frechet_distance,
    video_paths,
)

DEFAULT_FRAMES_PER_VIDEO = 16
DEFAULT_SIZE = 299  # px, the crop side; Inception's input size (models.inception.INPUT_SIZE)
DEFAULT_BATCH_SIZE = 16  # frames per Inception forward (about 2 s on two CPU cores)
PIXEL_MAX = 255.0  # uint8 frames -> [0, 1]
MIN_FRAMES = 2  # a covariance needs two samples


def default_fid_weights() -> Path:
    """Where the FID Inception weights are looked for by default: `auxiliary/` of the checkpoints folder."""
    from ..weights import CheckpointLayout, default_checkpoints_dir

    return CheckpointLayout(default_checkpoints_dir()).fid_inception


def frame_indices(num_frames: int, frames_per_video: int | None) -> list[int]:
    """The frames FID takes from a video of `num_frames`: the centre frame of each of `frames_per_video` equal
    segments, floor((2i + 1) n / 2k); every frame when the video has no more than that, or for None."""
    if frames_per_video is None or num_frames <= frames_per_video:
        return list(range(num_frames))
    return [(2 * i + 1) * num_frames // (2 * frames_per_video) for i in range(frames_per_video)]


def video_frames(path: PathLike, frames_per_video: int | None = DEFAULT_FRAMES_PER_VIDEO, crop: str = "face",
                 size: int = DEFAULT_SIZE, fps: float | None = None,
                 face_cropper: FaceCropper | None = None) -> Iterator[np.ndarray]:
    """The frames FID takes from one video, one at a time: (size, size, 3) RGB uint8 crops.

    `frame_indices` of the video at `fps` (None: its own rate, i.e. its own frames), each cropped by `crop`
    ("face", "center" or "none", as `fvd.video_clip`; pass a `FaceCropper` to reuse one across videos) and resized
    to size x size with `cv2.INTER_AREA`. Raises InputError naming the video if it cannot be read or (crop
    "face") a sampled frame has no face.
    """
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {', '.join(CROPS)}")
    if frames_per_video is not None and frames_per_video < 1:
        raise ValueError(f"frames_per_video must be positive or None, got {frames_per_video}")
    if fps is None:
        fps = probe_video(path).fps or None
    reader = VideoReader(path) if fps is None else VideoReader(path, fps=fps)
    wanted = frame_indices(reader.count(), frames_per_video)
    if not wanted:
        return
    owned = face_cropper is None and crop == "face"
    cropper = FaceCropper() if owned else face_cropper
    try:
        pending = iter(wanted)
        target = next(pending)
        for index, frame in enumerate(reader.frames(wanted[0], wanted[-1] + 1), start=wanted[0]):
            if index != target:
                continue
            if crop == "face":
                box = cropper.box(frame)
                if box is None:
                    raise InputError(f"{path}: no face found in frame {index} (FID crops each frame to the face; "
                                     "crop 'center' does not)")
                x0, y0, x1, y1 = box
                frame = frame[y0:y1, x0:x1]
            elif crop == "center":
                frame = center_square(frame)
            yield cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)  # h w c
            target = next(pending, None)
        if target is not None:
            raise InputError(f"{path}: the video ended before frame {target} (it counted {wanted[-1] + 1} or more)")
    finally:
        if owned:
            cropper.close()


@torch.no_grad()
def inception_features(frames: Iterable[np.ndarray], model: torch.nn.Module,
                       batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Inception pool3 features (n, d) float32 of frames (h, w, 3) with values 0..255 (uint8 or float).

    `frames` is consumed lazily, `batch_size` at a time, on the device and dtype of `model`'s parameters; the
    model gets (b, 3, h, w) in [0, 1].
    """
    param = next(model.parameters())
    out: list[np.ndarray] = []

    def run(batch: list) -> None:
        x = torch.from_numpy(np.stack(batch)).to(device=param.device, dtype=param.dtype)  # b h w c
        x = rearrange(x, "b h w c -> b c h w") / PIXEL_MAX  # b c h w in [0, 1]
        out.append(model(x).float().cpu().numpy())  # b d

    batch: list = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _frames(paths: Sequence[Path], bar: tqdm, cropper: FaceCropper | None, **frame_kwargs) -> Iterator[np.ndarray]:
    for path in paths:
        yield from video_frames(path, face_cropper=cropper, **frame_kwargs)
        bar.update(1)


def frame_fid(real: Videos, generated: Videos, *, weights: PathLike | None = None,
              model: torch.nn.Module | None = None,
              frames_per_video: int | None = DEFAULT_FRAMES_PER_VIDEO, crop: str = "face", size: int = DEFAULT_SIZE,
              fps: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
              device: str | torch.device | None = None, progress: bool = True) -> float:
    """FID between the frames of the videos of `real` and of `generated` (each a folder, a video or a list).

    Frames as `video_frames` takes them (see the module docstring for the protocol), Inception pool3 features
    (`inception_features`), Fréchet distance of their Gaussians. `model` is a loaded `FIDInceptionV3` (or any
    module mapping (b, 3, h, w) in [0, 1] to features); by default `load_fid_inception(weights, device)`, with
    `weights` defaulting to `default_fid_weights()`. Each side needs at least 2 frames, and realistically
    thousands. Raises InputError (one line naming the folder or video) for a folder without videos, a missing
    or unreadable video, or a sampled frame without a face (crop "face"); CheckpointError for missing weights.
    """
    if weights is not None and model is not None:
        raise ValueError("pass either weights or model, not both")
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {', '.join(CROPS)}")
    if frames_per_video is not None and frames_per_video < 1:
        raise ValueError(f"frames_per_video must be positive or None, got {frames_per_video}")
    real_paths, generated_paths = video_paths(real), video_paths(generated)
    if model is None:
        from ..models.inception import load_fid_inception

        model = load_fid_inception(weights if weights is not None else default_fid_weights(), device=device)
    frame_kwargs = dict(frames_per_video=frames_per_video, crop=crop, size=size, fps=fps)
    cropper = FaceCropper() if crop == "face" else None
    try:
        with tqdm(total=len(real_paths) + len(generated_paths), desc="FID", unit="video",
                  disable=not progress) as bar:
            feats = [inception_features(_frames(paths, bar, cropper, **frame_kwargs), model, batch_size)
                     for paths in (real_paths, generated_paths)]
    finally:
        if cropper is not None:
            cropper.close()
    for name, paths, f in (("real", real_paths, feats[0]), ("generated", generated_paths, feats[1])):
        if len(f) < MIN_FRAMES:
            raise InputError(f"FID needs at least {MIN_FRAMES} {name} frames, got {len(f)} from "
                             f"{len(paths)} video(s) ({paths[0]})")
    return frechet_distance(*feature_statistics(feats[0]), *feature_statistics(feats[1]))
