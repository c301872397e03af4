"""Face alignment and paste-back (spec 2.2 steps 6 and 9): the matrix, its smoothing, the warp, and the
region-of-interest restore against a straightforward full-frame implementation of the same math."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from latentsync.face.align import (
    FILL_VALUE,
    RESTORE_FILL_VALUE,
    FaceAligner,
    align_frames,
    crop_size,
    paste_mask,
    restore_face,
    restore_frames,
    similarity_from_points,
    template_points,
    warp_face,
)

FRAME_H, FRAME_W = 480, 640


def smooth_frame(seed: int = 0, h: int = FRAME_H, w: int = FRAME_W) -> np.ndarray:
    """A smooth RGB test image (h, w, 3) uint8: long-wavelength sinusoids with a seeded phase."""
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    channels = [
        128 + 100 * np.sin(x / 41 + phase[0]) * np.cos(y / 29),
        128 + 90 * np.cos(x / 53 + y / 37 + phase[1]),
        128 + 80 * np.sin((x - y) / 47 + phase[2]),
    ]
    return np.stack(channels, axis=-1).astype(np.uint8)


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def points_for(frame_to_crop: np.ndarray, resolution: int = 256) -> np.ndarray:
    """The frame points that `frame_to_crop` maps exactly onto the template."""
    return apply(cv2.invertAffineTransform(frame_to_crop), template_points(resolution))


def oracle_restore(frame: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The reference's restore, written plainly at full frame size (spec 2.2 step 9)."""
    frame_h, frame_w = frame.shape[:2]
    w, h = crop_size(face.shape[0])
    crop = cv2.resize(face.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(crop, matrix, (frame_w, frame_h), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(RESTORE_FILL_VALUE,) * 4)
    warped = np.clip(warped, 0, 255)
    mask = cv2.warpAffine(np.ones((h, w), np.float32), matrix, (frame_w, frame_h), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    eroded = cv2.erode(mask, np.ones((2, 2), np.uint8))
    edge = int(math.sqrt(eroded.sum(dtype=np.float64))) // 20
    centre = cv2.erode(eroded, np.ones((2 * edge, 2 * edge), np.uint8))  # empty kernel: OpenCV uses 3 x 3
    k = 2 * edge + 1
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    soft = cv2.GaussianBlur(centre, (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)[..., None]
    return (soft * (eroded[..., None] * warped) + (1 - soft) * frame.astype(np.float32)).astype(np.uint8)


def outside(roi: tuple[int, int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    keep = np.ones(shape[:2], dtype=bool)
    x0, y0, x1, y1 = roi
    keep[y0:y1, x0:x1] = False
    return keep


# ---- matrix ---------------------------------------------------------------------------------------------


def test_crop_geometry():
    assert crop_size(256) == (210, 280)
    assert crop_size(512) == (420, 560)
    np.testing.assert_allclose(template_points(256), np.array([[17, 20], [58, 20], [37.5, 40]]) * 2.8)


def test_matrix_inverts_an_exact_similarity_without_rotation():
    # No rotation: the normalised point sets coincide, so the nose bias is 0 and M is the similarity itself.
    truth = similarity(0.0, 0.8, -310.0, -95.0)
    matrix = FaceAligner(256, round_points=False).matrix(points_for(truth))
    np.testing.assert_allclose(matrix, truth, atol=1e-9)


def test_matrix_inverts_an_exact_similarity_plus_the_nose_bias():
    truth = similarity(0.3, 1.6, -120.0, 40.0)
    points = points_for(truth)
    matrix = FaceAligner(256, round_points=False).matrix(points)
    np.testing.assert_allclose(matrix[:, :2], truth[:, :2], atol=1e-9)
    # The bias: the nose's offset in normalised coordinates (torch.std: all coordinates, ddof=1).
    p = points - points.mean(axis=0)
    t = template_points(256) - template_points(256).mean(axis=0)
    bias = t[2] / t.std(ddof=1) - p[2] / p.std(ddof=1)
    assert np.abs(bias).max() > 0.05  # non-trivial, so the test would notice ddof=0 or a missing bias
    np.testing.assert_allclose(matrix[:, 2], truth[:, 2] + bias, atol=1e-9)
    np.testing.assert_allclose(apply(matrix, points), template_points(256) + bias, atol=1e-9)


def test_matrix_rounds_points_like_the_reference_and_never_reflects():
    truth = similarity(-0.2, 1.1, -200.0, -50.0)
    points = points_for(truth) + 0.3
    rounded = FaceAligner(256).matrix(points)
    exact = FaceAligner(256, round_points=False).matrix(np.round(points))
    np.testing.assert_allclose(rounded, exact)
    mirrored = points * np.array([-1.0, 1.0]) + np.array([1000.0, 0.0])
    assert np.linalg.det(FaceAligner(256).matrix(mirrored)[:, :2]) > 0


def test_nose_bias_is_smoothed_across_frames_and_reset_clears_it():
    truth = similarity(0.1, 1.2, -150.0, -30.0)
    base = points_for(truth)
    sequence = [base + [[0, 0], [0, 0], [dx, dy]] for dx, dy in [(0, 0), (9, -6), (-7, 11), (0, 0)]]
    aligner = FaceAligner(256, round_points=False)
    previous = None
    for points in sequence:
        fit, p_n, t_n = similarity_from_points(points, template_points(256))
        current = t_n[2] - p_n[2]
        expected = current if previous is None else 0.2 * previous + 0.8 * current
        np.testing.assert_allclose(aligner.matrix(points)[:, 2] - fit[:, 2], expected, atol=1e-12)
        previous = expected
    aligner.reset()
    np.testing.assert_allclose(aligner.matrix(sequence[1]), FaceAligner(256, round_points=False).matrix(sequence[1]))


# ---- warp -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [256, 512])
def test_warp_face_reproduces_the_frame_under_an_identity_matrix(resolution):
    frame = smooth_frame(1, 600, 500)
    w, h = crop_size(resolution)
    face = warp_face(frame, np.array([[1.0, 0, 0], [0, 1.0, 0]]), resolution)
    assert face.shape == (resolution, resolution, 3) and face.dtype == np.uint8
    expected = cv2.resize(frame[:h, :w], (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(face, expected)


def test_warp_face_fills_127_outside_the_frame():
    frame = np.full((400, 400, 3), 200, np.uint8)
    # Crop pixel (x, y) reads frame (x - 105, y): the crop's left half lies outside the frame.
    face = warp_face(frame, np.array([[1.0, 0, 105.0], [0, 1.0, 0]]), 256)
    half = 128
    assert (face[:, : half - 8] == FILL_VALUE).all()
    assert (face[:, half + 8 :] == 200).all()
    # Entirely outside: all fill.
    assert (warp_face(frame, np.array([[1.0, 0, 5000.0], [0, 1.0, 0]]), 256) == FILL_VALUE).all()


def test_warp_face_truncates_like_the_reference():
    # Columns alternate 11, 12; a half-pixel shift samples 11.5 everywhere: truncation gives 11 (rounding,
    # half up or half to even, 12).
    frame = np.empty((400, 400, 3), np.uint8)
    frame[:, 0::2], frame[:, 1::2] = 11, 12
    face = warp_face(frame, np.array([[1.0, 0, 0.5], [0, 1.0, 0]]), 256)
    assert (face[8:-8, 8:-8] == 11).all()


# ---- restore --------------------------------------------------------------------------------------------

RESTORE_CASES = [
    # (resolution, frame -> crop matrix)
    (256, similarity(0.0, 1.0, -200.0, -100.0)),  # well inside the frame
    (256, similarity(0.25, 0.7, -250.0, -60.0)),  # rotated, scaled up in the frame
    (256, similarity(-0.3, 1.3, 60.0, -40.0)),  # cut by the frame's left and top edges
    (512, similarity(0.1, 1.9, -700.0, -200.0)),  # R = 512
    (16, similarity(0.05, 1.0, -300.0, -200.0)),  # a tiny crop: w_edge = 0, OpenCV's 3 x 3 erosion
    # Small faces cut by the frame's edge, where a ROI without its margin of zeros gives other masks.
    (256, similarity(0.0, 2.38, 122.0, -167.0)),
    (256, similarity(0.07, 1.49, 193.0, 147.0)),
]


@pytest.mark.parametrize("resolution,matrix", RESTORE_CASES)
def test_restore_face_equals_the_full_frame_oracle_and_leaves_the_rest_untouched(resolution, matrix):
    frame = smooth_frame(2)
    rng = np.random.default_rng(3)
    face = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)  # harsh: any content
    before = frame.copy()
    out = restore_face(frame, face, matrix)
    np.testing.assert_array_equal(frame, before)  # the input is not modified
    expected = oracle_restore(frame, face, matrix)
    diff = np.abs(out.astype(np.int16) - expected)
    assert diff.max() <= 1, f"max difference {diff.max()}"
    assert (diff > 0).mean() < 1e-3
    roi = paste_mask(matrix, frame.shape[:2], resolution).roi
    keep = outside(roi, frame.shape)
    np.testing.assert_array_equal(out[keep], frame[keep])
    assert (out != frame).any(axis=-1).sum() > 0


def test_restore_face_outside_the_frame_and_inplace():
    frame = smooth_frame(4)
    face = np.zeros((256, 256, 3), np.uint8)
    np.testing.assert_array_equal(restore_face(frame, face, similarity(0, 1.0, 5000.0, 0)), frame)
    target = frame.copy()
    matrix = similarity(0.1, 1.0, -200.0, -100.0)
    result = restore_face(target, face, matrix, inplace=True)
    assert result is target
    np.testing.assert_array_equal(result, restore_face(frame, face, matrix))


def test_soft_mask_is_cached_per_matrix():
    matrix = similarity(0.1, 1.0, -200.0, -100.0)
    first = paste_mask(matrix, (FRAME_H, FRAME_W), 256)
    assert paste_mask(matrix.copy(), (FRAME_H, FRAME_W), 256) is first
    assert paste_mask(matrix, (FRAME_H + 1, FRAME_W), 256) is not first
    assert 0.0 <= first.face_weight.min() and first.face_weight.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("resolution", [256, 512])
def test_warp_then_restore_reproduces_the_frame(resolution):
    frame = smooth_frame(5)
    aligner = FaceAligner(resolution)
    truth = similarity(0.15, 1.1 * resolution / 256, -260.0 * resolution / 256, -90.0 * resolution / 256)
    matrix = aligner.matrix(points_for(truth, resolution))
    out = restore_face(frame, warp_face(frame, matrix, resolution), matrix)
    roi = paste_mask(matrix, frame.shape[:2], resolution).roi
    x0, y0, x1, y1 = roi
    mse = np.mean((out[y0:y1, x0:x1].astype(np.float64) - frame[y0:y1, x0:x1]) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30.0
    keep = outside(roi, frame.shape)
    np.testing.assert_array_equal(out[keep], frame[keep])


# ---- batched --------------------------------------------------------------------------------------------


def test_batched_functions_equal_the_per_frame_ones_and_skip_missing_faces():
    frames = [smooth_frame(s) for s in range(5)]
    base = points_for(similarity(0.1, 1.0, -220.0, -90.0))
    points = [base + s for s in range(5)]
    points[2] = None
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        faces, matrices = align_frames(frames, points, FaceAligner(256), pool=pool)
        reference = FaceAligner(256)
        for i, p in enumerate(points):
            if p is None:
                assert faces[i] is None and matrices[i] is None
                continue
            m = reference.matrix(p)
            np.testing.assert_array_equal(matrices[i], m)
            np.testing.assert_array_equal(faces[i], warp_face(frames[i], m, 256))

        generated = [None if f is None else 255 - f for f in faces]
        restored = restore_frames(frames, generated, matrices, pool=pool)
        assert restored[2] is frames[2]
        for i in (0, 1, 3, 4):
            np.testing.assert_array_equal(restored[i], restore_face(frames[i], generated[i], matrices[i]))
        # Default pool, and a face missing while the matrix is present.
        generated[4] = None
        again = restore_frames(frames, generated, matrices)
        assert again[4] is frames[4]
        np.testing.assert_array_equal(again[0], restored[0])
    finally:
        pool.shutdown()
