"""Frame-level similarity of a generated video to its source: PSNR and SSIM.

* PSNR = 10 log10(255^2 / MSE), the MSE over all pixels and channels of a frame; identical frames give +inf.
* SSIM as defined by Wang, Bovik, Sheikh & Simoncelli (IEEE TIP 2004) and their reference implementation
  `ssim_index.m`: local statistics under an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, population (not n - 1) variances, the map taken only where the window fits inside the image
  ("valid", no padding) and averaged. Colour frames are scored per RGB channel and the channel scores
  averaged (as scikit-image's `structural_similarity(..., channel_axis=-1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)`), not on luminance.
* `compare_videos` streams both videos at the same constant frame rate and averages the per-frame scores.

LatentSync's repository ships no PSNR/SSIM script; these are the standard definitions.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Union

import numpy as np
from scipy.ndimage import correlate1d
from tqdm.auto import tqdm

from ..errors import InputError
from ..media import DEFAULT_FPS, VideoReader, probe_video

PIXEL_MAX = 255.0  # L, the dynamic range of uint8 frames
SSIM_WINDOW = 11  # px, side of the Gaussian window
SSIM_SIGMA = 1.5  # px
SSIM_K1 = 0.01
SSIM_K2 = 0.03

PathLike = Union[str, os.PathLike]


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (h, w) or (h, w, c) frames, got {a.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 frames (h, w[, c]); +inf if they are identical."""
    a, b = _pair(a, b)
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(PIXEL_MAX**2 / mse)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()  # separable: the 2-D window is the outer product (MATLAB fspecial('gaussian', 11, 1.5))


def _local_mean(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Gaussian-weighted mean over every window position fully inside the image (h - 10, w - 10, ...)."""
    for axis in (0, 1):
        x = correlate1d(x, window, axis=axis, mode="constant")
    r = len(window) // 2
    return x[r:-r, r:-r]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 frames (h, w) or (h, w, c): per channel, then averaged over channels.

    Frames must be at least 11 x 11. Identical frames give 1.
    """
    a, b = _pair(a, b)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW} x {SSIM_WINDOW}, got {a.shape[:2]}")
    window = _gaussian_window()
    c1, c2 = (SSIM_K1 * PIXEL_MAX) ** 2, (SSIM_K2 * PIXEL_MAX) ** 2
    mu_a, mu_b = _local_mean(a, window), _local_mean(b, window)
    var_a = _local_mean(a * a, window) - mu_a**2
    var_b = _local_mean(b * b, window) - mu_b**2
    cov = _local_mean(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    per_channel = ssim_map.reshape(ssim_map.shape[0], ssim_map.shape[1], -1).mean(axis=(0, 1))
    return float(per_channel.mean())


def compare_videos(source: PathLike, generated: PathLike, fps: float = DEFAULT_FPS,
                   progress: bool = False) -> dict[str, float]:
    """Mean per-frame PSNR and SSIM of `generated` against `source`, both read at `fps` (constant rate), over
    the frames they have in common.

    Lip-syncing a video to its own audio (self-reconstruction) gives a couple of frames more than the source
    (LatentSync's frame count, `floor(N50 / 2) + 2`), so the common prefix is compared and both lengths are
    reported: {"psnr": dB, "ssim": ..., "frames": compared, "source_frames": ..., "generated_frames": ...}.
    The PSNR mean is +inf if any frame pair is identical. Raises InputError naming the videos if they differ
    in frame size, or either cannot be read or is empty.
    """
    readers = VideoReader(source, fps=fps), VideoReader(generated, fps=fps)
    if (readers[0].width, readers[0].height) != (readers[1].width, readers[1].height):
        raise InputError(f"{generated}: frame size {readers[1].width}x{readers[1].height} differs from "
                         f"{source} ({readers[0].width}x{readers[0].height})")
    missing = object()
    total_psnr = total_ssim = 0.0
    n = 0
    counts = [0, 0]
    estimate = probe_video(source).frames_at(fps)
    pairs = itertools.zip_longest(readers[0].frames(), readers[1].frames(), fillvalue=missing)
    for a, b in tqdm(pairs, total=estimate, desc="PSNR/SSIM", unit="frame", disable=not progress):
        counts[0] += a is not missing
        counts[1] += b is not missing
        if a is missing or b is missing:
            continue  # past the end of the shorter video: count the longer one's frames only
        total_psnr += psnr(a, b)
        total_ssim += ssim(a, b)
        n += 1
    if n == 0:
        empty = source if counts[0] == 0 else generated
        raise InputError(f"{empty}: no frames to compare")
    return {"psnr": total_psnr / n, "ssim": total_ssim / n, "frames": n,
            "source_frames": counts[0], "generated_frames": counts[1]}
