"""Alignment to the LatentSync face crop, and pasting a generated face back (spec 2.2 steps 6 and 9).

Alignment. Three points (one eyebrow, the other eyebrow, the lower nose; `Face.points`) are mapped onto the
template `[[17, 20], [58, 20], [37.5, 40]] * ratio` with `ratio = R / 256 * 2.8` by a similarity transform,
estimated as the reference's `AlignRestore.transformation_from_points` does: centre both point sets, divide
each by its global standard deviation (`torch.std`, i.e. over all six coordinates with Bessel's correction),
SVD of the 2 x 2 covariance, reflection fix, `sR = (s2 / s1) R`, `T = c2 - sR c1`. The reference then adds a
"smoothing" translation, the nose's offset in the *normalised* coordinates, `bias = template_n[2] - points_n[2]`,
smoothed across frames as `bias = 0.2 * previous + 0.8 * current`, straight onto the pixel translation
(a sub-pixel nudge; it is there for compatibility, not because it is meaningful). `FaceAligner` carries that
state from frame to frame of one video. The frame is warped into the `W x H` crop (210 x 280 at R = 256,
420 x 560 at 512; bilinear, fill 127), truncated to uint8 and resized to `R x R` with LANCZOS4, a non-uniform
stretch (x 1.219, y 0.914) that the published models were trained on.

Paste back (`restore_face`). The `R x R` face is resized back to the crop size, warped into the frame with the
inverse transform and blended with a soft mask: the crop's all-ones mask warped the same way, eroded 2 x 2
(`E`), eroded again with a `2 w` square where `w = int(sqrt(sum E)) // 20`, Gaussian-blurred (kernel
`2 w + 1`, sigma `0.3 ((k - 1) / 2 - 1) + 0.8`) into `soft`; `out = soft * (E * face) + (1 - soft) * frame`,
truncated to uint8.

Where we differ from the reference (kornia on the GPU; float16 in the version the spec describes, float32 in
some others):
* CPU OpenCV in float32 pixels and float64 matrices. The reference estimates the matrix in float32 and warps
  with a float16 matrix (about 0.25-0.5 px of translation error at 1080p); OpenCV quantises sample positions
  to 1/32 px. Same geometry, sampling convention (pixel centres on integers, kornia's `align_corners=True`)
  and fill; pixel values differ by the reference's own float16 noise.
* The face is resized to the crop size with `cv2.INTER_CUBIC` (Keys a = -0.75, no antialiasing) where the
  reference uses torchvision's antialiased bicubic (a = -0.5, kernel widened when shrinking: x shrinks by 0.82,
  y grows by 1.09 at 256). On a textured test image they differ by about 1 level on average at 256 (0.4 at
  512); torch's antialiased resize costs 7-8x more on the CPU.
* The reference's restore input is the decoded face in [-1, 1], unclamped; ours is the same face as float in
  [0, 255], also unclamped (`LipSyncPipeline(output_type="float")`, what inference passes), or uint8. The
  reference's fill value 127 is therefore applied in [-1, 1] and saturates to white after the clamp; we
  reproduce that (`RESTORE_FILL_VALUE`). Those samples straddle the crop's edge, where `soft` is ~0.
* The WIN (spec 11, Recompute: "Restore"): the reference warps, erodes, blurs and blends at full frame size
  for every frame; we work on the face's region of interest only (the warped crop's bounding box plus a
  margin that keeps every erosion and blur identical to the full-frame computation, see `_paste_roi`), cache
  the soft mask per matrix (ping-pong looping and static shots repeat matrices), and leave every pixel
  outside the ROI untouched. Alignment likewise converts and samples only the frame pixels the crop reads.
  Results equal a full-frame implementation of the same math to within 1 level (OpenCV's fixed-point sample
  positions can fall differently by 1/32 px when the origin moves, and the final truncation can flip).

Frames and faces are RGB (any 3-channel order) uint8 `(h, w, 3)`; matrices are `(2, 3)` float64 mapping frame
pixels to crop pixels.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

# ---- geometry of the crop (spec 2.2 step 6; reference `AlignRestore.__init__`) ----------------------------
TEMPLATE_POINTS_UNITS = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])  # eyebrow, eyebrow, nose
TEMPLATE_BOX_UNITS = (75, 100)  # (w, h) of the crop in template units
PX_PER_UNIT_AT_256 = 2.8  # crop pixels per template unit at R = 256; scales linearly with R
BASE_RESOLUTION = 256

FILL_VALUE = 127  # pixel value where the crop reads outside the frame
BIAS_EMA_PREVIOUS_WEIGHT = 0.2  # bias = 0.2 * previous + 0.8 * current
# The reference fills the *face* warp with 127 too, but in [-1, 1] units; in [0, 255] units that is
# (127 + 1) * 127.5, which the clamp turns into white.
RESTORE_FILL_VALUE = (FILL_VALUE + 1) * 127.5

# ---- soft paste mask (spec 2.2 step 9; reference `AlignRestore.restore_img`) -----------------------------
BORDER_EROSION_PX = 2  # `2 * upscale_factor`, upscale_factor = 1: removes the bilinear fringe
EDGE_WIDTH_DIVISOR = 20  # w_edge = int(sqrt(mask area)) // 20, in pixels
# cv2.erode with an empty kernel (w_edge = 0, faces under ~20 x 20 px) erodes with a 3 x 3 square instead.
EMPTY_KERNEL_EROSION_PX = 3
# Zero-mask band kept around the warped crop in the ROI. Two pixels make the ROI's own borders (+inf for
# cv2.erode, reflect-101 for the blur) see only zeros, as the full frame does; one more absorbs float error.
PASTE_MARGIN_PX = 3
ALIGN_MARGIN_PX = 1  # extra source pixels around the crop's bilinear footprint
PASTE_MASK_CACHE_SIZE = 32  # soft masks kept (one per distinct matrix and frame size; ~1-3 MB each at 1080p)

MAX_DEFAULT_WORKERS = 4  # threads of the shared pool used when a batched call gets no pool


def crop_ratio(resolution: int) -> float:
    """Crop pixels per template unit: `R / 256 * 2.8`."""
    return resolution / BASE_RESOLUTION * PX_PER_UNIT_AT_256


def crop_size(resolution: int) -> tuple[int, int]:
    """`(W, H)` of the crop the frame is warped into: (210, 280) at 256, (420, 560) at 512."""
    ratio = crop_ratio(resolution)
    return int(TEMPLATE_BOX_UNITS[0] * ratio), int(TEMPLATE_BOX_UNITS[1] * ratio)


def template_points(resolution: int) -> np.ndarray:
    """Where the three alignment points land in the crop, `(3, 2)` float64 (x, y) in crop pixels."""
    return TEMPLATE_POINTS_UNITS * crop_ratio(resolution)


def similarity_from_points(points: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping `points` onto `target`.

    The reference's Procrustes variant (spec 2.2 step 6). Returns the `(2, 3)` float64 matrix and both point
    sets centred and divided by their global standard deviation (the "normalised" coordinates the nose bias
    is measured in), each `(n, 2)`.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # n 2
    q = np.asarray(target, dtype=np.float64).reshape(-1, 2)  # n 2
    c1, c2 = p.mean(axis=0), q.mean(axis=0)  # 2
    s1, s2 = (p - c1).std(ddof=1), (q - c2).std(ddof=1)  # torch.std: all elements, unbiased
    if not s1 > 0:
        raise ValueError(f"degenerate alignment points (all equal): {p.tolist()}")
    p_n, q_n = (p - c1) / s1, (q - c2) / s2  # n 2
    u, _, vt = np.linalg.svd(p_n.T @ q_n)  # covariance 2 2 = u diag(s) vt
    v = vt.T
    rotation = v @ u.T  # 2 2, maps p_n onto q_n
    if np.linalg.det(rotation) < 0:  # a reflection: flip the weakest axis
        v[:, -1] = -v[:, -1]
        rotation = v @ u.T
    scaled = (s2 / s1) * rotation  # 2 2
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scaled
    matrix[:, 2] = c2 - scaled @ c1
    return matrix, p_n, q_n


class FaceAligner:
    """Estimates the frame -> crop matrix of consecutive frames of one video, with the reference's smoothing.

    Stateful like the reference's `AlignRestore`: the nose bias of each frame is blended with the previous
    one (`bias = 0.2 * previous + 0.8 * current`). Call `reset()` between videos or shots (the reference never
    does, not even between videos of one preprocessing worker).

    Args:
        resolution: the model's face resolution R (256 for LatentSync 1.5, 512 for 1.6).
        round_points: round the points to integer pixels first, as the reference's `ImageProcessor` does
            (`np.round`, halves to even) before calling `AlignRestore`.
    """

    def __init__(self, resolution: int = BASE_RESOLUTION, round_points: bool = True):
        self.resolution = resolution
        self.round_points = round_points
        self.template = template_points(resolution)  # 3 2
        self.bias: np.ndarray | None = None  # (2,) smoothed nose offset, normalised units

    def matrix(self, points: np.ndarray) -> np.ndarray:
        """`(3, 2)` alignment points (x, y) in frame pixels -> `(2, 3)` float64 frame -> crop matrix.

        Updates the smoothing state."""
        p = np.asarray(points, dtype=np.float64).reshape(3, 2)
        if self.round_points:
            p = np.round(p)
        matrix, p_n, t_n = similarity_from_points(p, self.template)
        bias = t_n[2] - p_n[2]  # 2, nose offset in normalised units
        if self.bias is not None:
            bias = BIAS_EMA_PREVIOUS_WEIGHT * self.bias + (1.0 - BIAS_EMA_PREVIOUS_WEIGHT) * bias
        self.bias = bias
        # The reference adds the normalised offset to the translation in pixels, as is.
        matrix[:, 2] += bias
        return matrix

    def reset(self) -> None:
        """Forget the smoothing state (start of a new video or shot)."""
        self.bias = None


# ---- alignment --------------------------------------------------------------------------------------------


def _align_roi(inverse: np.ndarray, size: tuple[int, int], frame_hw: tuple[int, int]):
    """Frame pixels `(x0, y0, x1, y1)` (exclusive ends) that a crop of `size` = (w, h) reads through the
    crop -> frame matrix `inverse`, clipped to the frame; None if it reads none."""
    w, h = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=np.float64)
    xy = corners @ inverse.T  # 4 2, sample positions of the corner pixels
    lo = np.floor(xy.min(axis=0)).astype(np.int64) - ALIGN_MARGIN_PX
    hi = np.floor(xy.max(axis=0)).astype(np.int64) + 2 + ALIGN_MARGIN_PX  # + the bilinear neighbour
    x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    x1, y1 = min(int(hi[0]), frame_hw[1]), min(int(hi[1]), frame_hw[0])
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def warp_face(frame: np.ndarray, matrix: np.ndarray, resolution: int = BASE_RESOLUTION) -> np.ndarray:
    """Cut the aligned face out of `frame` (h, w, 3) uint8 with the frame -> crop `matrix` (2, 3).

    Bilinear warp into the `W x H` crop with fill 127 where it reads outside the frame, truncated to uint8
    (the reference casts its float warp with `.astype(np.uint8)`), then resized to `(R, R, 3)` uint8 with
    LANCZOS4. Only the frame pixels under the crop are read and converted.
    """
    w, h = crop_size(resolution)
    channels = frame.shape[2]
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))  # 2 3, crop -> frame
    roi = _align_roi(inverse, (w, h), frame.shape[:2])
    if roi is None:  # the crop lies entirely outside the frame
        crop = np.full((h, w, channels), FILL_VALUE, dtype=np.uint8)
    else:
        x0, y0, x1, y1 = roi
        source = frame[y0:y1, x0:x1].astype(np.float32)  # roi_h roi_w c
        shifted = inverse.copy()
        shifted[:, 2] -= (x0, y0)  # crop -> ROI pixels
        crop = cv2.warpAffine(
            source, shifted, (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL_VALUE,) * 4,
        )  # h w c float32
        crop = crop.astype(np.uint8)  # truncation, as the reference
    return cv2.resize(crop, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)  # R R c


# ---- paste back -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PasteMask:
    """The soft mask of one matrix and frame size, in ROI coordinates.

    `roi`: (x0, y0, x1, y1) frame pixels, exclusive ends. `face_weight` = soft * E and `frame_weight` =
    1 - soft, both `(y1 - y0, x1 - x0)` float32, so that `out = face_weight * face + frame_weight * frame`.
    """

    roi: tuple[int, int, int, int]
    face_weight: np.ndarray = field(repr=False)
    frame_weight: np.ndarray = field(repr=False)
    edge_px: int = 0  # w_edge


def _paste_roi(matrix: np.ndarray, crop_wh: tuple[int, int], frame_hw: tuple[int, int]):
    """Frame pixels where the warped crop mask can be non-zero, plus `PASTE_MARGIN_PX`, clipped to the frame.

    A frame pixel p gets mask > 0 only if `matrix @ p` lies in (-1, W) x (-1, H) (bilinear support). Why a
    margin of 2 zero pixels suffices for the ROI computation to equal the full-frame one: the 2 x 2 erosion
    reads offsets {-1, 0}, so E is 0 on the band; any (2w)-square erosion window that crosses a ROI edge
    contains the band, so the eroded mask C is 0 there, as in the full frame; and C is 0 within w pixels of
    a ROI edge (the window reaches the band), so the blur's reflect-101 padding only mirrors zeros.
    Where the ROI is clipped at the frame edge, the ROI and full-frame borders are the same border.
    """
    w, h = crop_wh
    inverse = cv2.invertAffineTransform(matrix)  # 2 3, crop -> frame
    corners = np.array([[-1, -1, 1], [w, -1, 1], [-1, h, 1], [w, h, 1]], dtype=np.float64)
    xy = corners @ inverse.T  # 4 2
    lo = np.floor(xy.min(axis=0)).astype(np.int64) - PASTE_MARGIN_PX
    hi = np.ceil(xy.max(axis=0)).astype(np.int64) + 1 + PASTE_MARGIN_PX
    x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    x1, y1 = min(int(hi[0]), frame_hw[1]), min(int(hi[1]), frame_hw[0])
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def _shift_to_roi(matrix: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """frame -> crop matrix re-based on ROI pixels: `crop = A (q + o) + t` for ROI pixel q at origin o."""
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return shifted


@functools.lru_cache(maxsize=PASTE_MASK_CACHE_SIZE)
def _paste_mask_cached(matrix_bytes: bytes, frame_h: int, frame_w: int, crop_w: int, crop_h: int):
    matrix = np.frombuffer(matrix_bytes, dtype=np.float64).reshape(2, 3)
    roi = _paste_roi(matrix, (crop_w, crop_h), (frame_h, frame_w))
    if roi is None:
        return None
    x0, y0, x1, y1 = roi
    ones = np.ones((crop_h, crop_w), dtype=np.float32)
    mask = cv2.warpAffine(
        ones, _shift_to_roi(matrix, x0, y0), (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )  # roi_h roi_w, the crop's coverage
    # cv2.erode's default border (+inf) and anchor (kernel centre) match kornia's geodesic erosion.
    eroded = cv2.erode(mask, np.ones((BORDER_EROSION_PX, BORDER_EROSION_PX), np.uint8))  # E
    edge = int(math.sqrt(float(eroded.sum(dtype=np.float64)))) // EDGE_WIDTH_DIVISOR  # w_edge, px
    erosion_px = 2 * edge if edge > 0 else EMPTY_KERNEL_EROSION_PX
    centre = cv2.erode(eroded, np.ones((erosion_px, erosion_px), np.uint8))  # C
    blur_px = 2 * edge + 1
    sigma = 0.3 * ((blur_px - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma-for-kernel-size rule, as the reference
    soft = cv2.GaussianBlur(centre, (blur_px, blur_px), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT_101)  # kornia's default "reflect" padding
    face_weight, frame_weight = soft * eroded, 1.0 - soft
    face_weight.setflags(write=False)
    frame_weight.setflags(write=False)
    return PasteMask(roi, face_weight, frame_weight, edge)


def paste_mask(matrix: np.ndarray, frame_hw: tuple[int, int], resolution: int) -> PasteMask | None:
    """The soft paste mask of `matrix` for a frame of `frame_hw` = (h, w) and faces of `resolution`, in ROI
    coordinates; None if the crop lies entirely outside the frame. Cached per (matrix, frame size, R)."""
    crop_w, crop_h = crop_size(resolution)
    key = np.ascontiguousarray(matrix, dtype=np.float64).tobytes()
    return _paste_mask_cached(key, int(frame_hw[0]), int(frame_hw[1]), crop_w, crop_h)


def restore_face(frame: np.ndarray, face: np.ndarray, matrix: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Paste `face` (R, R, 3) (uint8, or float in [0, 255]) back into `frame` (h, w, 3) uint8.

    `matrix` is the frame -> crop matrix the face was aligned with. The face is resized to the crop size,
    warped into the frame's face region and blended through the soft mask (module docstring); the result is
    truncated to uint8. Pixels outside the region are the input's, bit for bit. Returns a new frame unless
    `inplace`, which writes the region into `frame` and returns it.
    """
    out = frame if inplace else frame.copy()
    resolution = face.shape[0]
    mask = paste_mask(matrix, frame.shape[:2], resolution)
    if mask is None:
        return out
    x0, y0, x1, y1 = mask.roi
    crop_w, crop_h = crop_size(resolution)
    crop = cv2.resize(np.asarray(face, dtype=np.float32), (crop_w, crop_h), interpolation=cv2.INTER_CUBIC)
    warped = cv2.warpAffine(
        crop, _shift_to_roi(np.asarray(matrix, dtype=np.float64), x0, y0), (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(RESTORE_FILL_VALUE,) * 4,
    )  # roi_h roi_w c
    np.clip(warped, 0.0, 255.0, out=warped)  # the reference clamps after the warp
    region = frame[y0:y1, x0:x1].astype(np.float32)  # roi_h roi_w c
    blended = mask.face_weight[..., None] * warped + mask.frame_weight[..., None] * region
    out[y0:y1, x0:x1] = blended.astype(np.uint8)  # truncation, as the reference's `.to(torch.uint8)`
    return out


# ---- batched ----------------------------------------------------------------------------------------------

_default_pool: ThreadPoolExecutor | None = None


def _pool(pool: Executor | None) -> Executor:
    """The caller's pool, else a shared one (OpenCV releases the GIL, so threads run warps in parallel)."""
    global _default_pool
    if pool is not None:
        return pool
    if _default_pool is None:
        workers = max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))
        _default_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latentsync-align")
        atexit.register(_default_pool.shutdown, wait=False)
    return _default_pool


def align_frames(
    frames: Sequence[np.ndarray],
    points_list: Sequence[np.ndarray | None],
    aligner: FaceAligner,
    pool: Executor | None = None,
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Align consecutive frames of one video.

    `points_list[i]` is frame i's `(3, 2)` alignment points or None (no face). Matrices are computed in
    order (the smoothing is sequential and cheap), warps in parallel on `pool` (default: a shared thread
    pool). Returns `(faces, matrices)`, lists of length n: `(R, R, 3)` uint8 and `(2, 3)` float64, None for
    frames without a face.
    """
    if len(frames) != len(points_list):
        raise ValueError(f"{len(frames)} frames but {len(points_list)} point sets")
    matrices = [None if points is None else aligner.matrix(points) for points in points_list]
    todo = [i for i, m in enumerate(matrices) if m is not None]
    crops = _pool(pool).map(lambda i: warp_face(frames[i], matrices[i], aligner.resolution), todo)
    faces: list[np.ndarray | None] = [None] * len(frames)
    for i, crop in zip(todo, crops):
        faces[i] = crop
    return faces, matrices


def restore_frames(
    frames: Sequence[np.ndarray],
    faces: Sequence[np.ndarray | None],
    matrices: Sequence[np.ndarray | None],
    pool: Executor | None = None,
    inplace: bool = False,
) -> list[np.ndarray]:
    """`restore_face` over a batch, in parallel on `pool` (default: a shared thread pool).

    A frame whose face or matrix is None is returned as the same object, unchanged."""
    if not len(frames) == len(faces) == len(matrices):
        raise ValueError(f"{len(frames)} frames, {len(faces)} faces, {len(matrices)} matrices")
    todo = [i for i in range(len(frames)) if faces[i] is not None and matrices[i] is not None]
    done = _pool(pool).map(lambda i: restore_face(frames[i], faces[i], matrices[i], inplace=inplace), todo)
    out = list(frames)
    for i, frame in zip(todo, done):
        out[i] = frame
    return out
