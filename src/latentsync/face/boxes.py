"""Box geometry shared by the face backends and the tracker: overlap, non-maximum suppression, extents.

Boxes are (x1, y1, x2, y2) in frame pixels."""

from __future__ import annotations

import numpy as np


def iou(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when they do not overlap."""
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a)
    bx1, by1, bx2, by2 = (float(v) for v in box_b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def nms(dets: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS as InsightFace's SCRFD does it: rows of `dets` (x1, y1, x2, y2, score), areas with +1 px;
    a box is dropped when its overlap with a kept, higher-scoring box exceeds `threshold`. Kept row indices."""
    x1, y1, x2, y2, scores = (dets[:, j] for j in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[np.where(overlap <= threshold)[0]]
    return keep



def landmark_extent(landmarks: np.ndarray) -> np.ndarray:
    """The box (4,) float64 x1, y1, x2, y2 spanned by landmarks (k, 2)."""
    lmk = np.asarray(landmarks, dtype=np.float64)
    return np.concatenate([lmk.min(axis=0), lmk.max(axis=0)])
