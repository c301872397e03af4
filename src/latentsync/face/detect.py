"""Face detection and landmarks (two backends), face choice and frame-to-frame tracking.

Backends (both implement `latentsync.face.FaceBackend`; frames are RGB uint8 `(h, w, 3)`):

* `InsightFaceBackend`: what the reference uses (spec 2.2 step 6), InsightFace's `buffalo_l` SCRFD detector
  (`det_10g.onnx`) and 106-point landmark model (`2d106det.onnx`) run through onnxruntime, without the
  `insightface` package. It reproduces `FaceAnalysis(allowed_modules=["detection", "landmark_2d_106"])` with
  `prepare(ctx_id, det_size=(512, 512))`, including the reference's quirk of handing InsightFace RGB frames:
  InsightFace expects BGR and swaps the channels itself (`cv2.dnn.blobFromImage(..., swapRB=True)`), so the
  networks see the frame in BGR order. We apply InsightFace's preprocessing to the array as given, so the
  landmarks are those the published models were trained against (spec 12).
* `MediapipeBackend`: mediapipe's full-range face detector (on the frame and on tiles of it, for small faces in
  wide shots) and its 468-point face mesh on an enlarged crop around each face; the models ship inside the
  mediapipe wheel, so it works with no downloaded file. Its landmarks are mapped onto the same three alignment
  points.

Facts taken from InsightFace 0.7.x (github.com/deepinsight/insightface, `python-package/insightface/`):
`model_zoo/scrfd.py` (preprocessing, strides, anchors, decoding, NMS), `model_zoo/landmark.py` (crop, input
normalisation decision, output mapping), `utils/face_align.py` (`transform`, the crop's similarity matrix),
`app/face_analysis.py` (`det_thresh=0.5`, `max_num=0`). The models' signatures (`det_10g.onnx` input
`[1, 3, '?', '?']` normalised with 127.5/128; `2d106det.onnx` input `[None, 3, 192, 192]` with mean 0, std 1)
are what `FaceAnalysis` prints when it loads `buffalo_l`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np

from ..errors import CheckpointError, ConfigError, InputError, LatentSyncError
from . import Face, FaceBackend

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# The reference's face filter and alignment points (spec 2.2 step 6, LatentSync `utils/face_detector.py` and
# `utils/image_processor.py`).

MIN_FACE_WIDTH = 50  # px, box width
MIN_FACE_HEIGHT = 80  # px, box height
MIN_ASPECT = 0.2  # box width / height
MAX_ASPECT = 1.5
MIN_FACE_SCORE = 0.5
# Inference accepts smaller faces than the reference's filter (whose 50 x 80 px minimum is meant for training
# data): a face's box from this many px on each side is synced (40 px faces of wide shots have boxes of about
# 40 x 48). Below it the landmarks are too coarse for a steady crop.
MIN_SYNC_FACE = 24

# Indices into the 2d106 layout: the mean of each group is one alignment point, in this order.
BROW_A_106 = (43, 48, 49, 51, 50)  # the brow on the image's left of an upright face (template x = 17)
BROW_B_106 = (101, 102, 103, 104, 105)  # the brow on the image's right (template x = 58)
NOSE_106 = (74, 77, 83, 86)  # lower nose (template point 3)
NUM_LANDMARKS_106 = 106

# ---------------------------------------------------------------------------------------------------------------
# InsightFace constants (model_zoo/scrfd.py, model_zoo/landmark.py, app/face_analysis.py).

DEFAULT_DET_SIZE = 512  # px; LatentSync's `prepare(det_size=(512, 512))` (640 before its commit 36ca2a3)
DET_SCORE_THRESHOLD = 0.5  # FaceAnalysis.prepare(det_thresh=0.5)
NMS_IOU_THRESHOLD = 0.4  # SCRFD.nms_thresh
DET_INPUT_MEAN = 127.5  # SCRFD.input_mean
DET_INPUT_STD = 128.0  # SCRFD.input_std
# SCRFD output layouts by output count: (strides, anchors per location, has keypoints). The outputs come as
# all score maps, then all box maps, then all keypoint maps, each in stride order.
SCRFD_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),  # det_10g.onnx
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
LANDMARK_CROP_MARGIN = 1.5  # crop side = 1.5 x the longer side of the detection box
LANDMARK_NODES_INSPECTED = 8  # Landmark.__init__ looks at the first 8 graph nodes ...
LANDMARK_BN_DATA_NODES = 3  # ... and for a `bn_data` node among the first 3
LANDMARK_3D_OUTPUT_SIZE = 3000  # outputs this long are (x, y, z) triplets (Landmark.get)

ONNX_MODEL_GRAPH_FIELD = 7  # ModelProto.graph (onnx/onnx.proto)
ONNX_GRAPH_NODE_FIELD = 1  # GraphProto.node
ONNX_NODE_NAME_FIELD = 3  # NodeProto.name

# ---------------------------------------------------------------------------------------------------------------
# Mediapipe face mesh -> the 2d106 alignment points.

# The three alignment points on the mesh: mesh index groups, one per 2d106 index in `BROW_A_106`,
# `BROW_B_106` order and `NOSE_106` order (see `MediapipeBackend` for the correspondence and its sources).
MESH_BROW_A = ((46, 70), (63,), (105,), (66,), (107,))  # 43, 48, 49, 51, 50
MESH_BROW_B = ((276, 300), (336,), (296,), (334,), (293,))  # 101, 102, 103, 104, 105
MESH_NOSE = ((195,), (129,), (358,), (4,))  # 74, 77, 83, 86
MESH_NUM_LANDMARKS = 468  # without the iris points (refine_landmarks=False)
# The mesh spans hairline to chin and tragus to tragus: already about a detector box. Annotated detector
# boxes (WIDER FACE, SCRFD's training set) leave some slack around the visible face, so the landmark extent is
# grown by this fraction of its width (height) on the left and right (top and bottom).
MESH_BOX_MARGIN = 0.05
MESH_MIN_DETECTION_CONFIDENCE = 0.5
MESH_MIN_TRACKING_CONFIDENCE = 0.5  # mediapipe's default
# Small faces. The face mesh's own detector is mediapipe's short-range model (a 128 px input, for faces that
# fill much of a selfie): on a whole 720p frame it misses faces under about 150 px. The full-range detector
# (`FaceDetection(model_selection=1)`, a 192 px input) finds a face reliably from about 16 px of its input, so
# on the whole frame from about 16/192 of the frame's longer side (160 px at 1080p). It also runs on square
# tiles of `DETECT_TILE` px, which find faces from about 12-16 px of the input (32-43 px of the tile: in
# `bench/face_detect.py` every 32 px face of its scenes) and overlap by the largest face the
# whole-frame pass may miss (times 1.3, a face's height over its width), so such a face lies wholly inside one.
# A tile's detection that touches one of its inner edges is a cut face (the neighbouring tile has all of it).
# Tiles of 448 px cost 1.8x the time at 1080p (32 tiles, not 15) and find no more 32-40 px faces.
FULL_RANGE_INPUT = 192
FULL_RANGE_MIN_FACE = 16  # px of the detector's input
DETECT_TILE = 512
TILE_EDGE = 2.0  # px: a box this close to a tile's inner edge is cut by it
DETECT_NMS_IOU = 0.3  # detections of one face from the frame and from tiles
# The face mesh runs on a square crop of MESH_CROP_MARGIN x the box's longer side around its centre, resampled
# to MESH_CROP_SIZE px: the face fills half of it whatever its size in the frame, as the mesh's own detector
# and landmark model (192 px) expect; small faces are enlarged (bilinear), large ones reduced (area).
MESH_CROP_SIZE = 256
MESH_CROP_MARGIN = 2.0
MESH_MAX_FACES_PER_CROP = 3  # neighbours in a group shot may enter a crop: the mesh nearest its centre is kept
SAME_FACE_IOU = 0.5  # two meshes whose boxes overlap this much are one face found twice
DEFAULT_MAX_FACES = 8

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
PathLike = Union[str, Path]


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InputError(f"face detection needs an RGB uint8 frame (h, w, 3), got {frame.dtype} {frame.shape}")
    return frame


def alignment_points(landmarks_106: np.ndarray) -> np.ndarray:
    """The reference's three alignment points from 106 landmarks: (3, 2) float32 holding integers.

    As the reference (spec 2.2 step 4): the landmarks are first rounded to integers (`np.round`, half to
    even), then the means of `BROW_A_106`, `BROW_B_106` and `NOSE_106` are taken (float64, as numpy's mean of
    integers) and rounded again. Averaging the float landmarks and rounding once puts a point 1 px off in
    about half the frames of a real clip.
    """
    lmk = np.round(np.asarray(landmarks_106, dtype=np.float32)).astype(np.int64)  # 106 2, integers
    groups = (BROW_A_106, BROW_B_106, NOSE_106)
    points = np.stack([lmk[list(g)].mean(axis=0) for g in groups])  # (3, 2) float64
    return np.round(points).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# onnxruntime helpers


def _default_providers() -> list[str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: PathLike, providers: Sequence[str] | None):
    """An onnxruntime session for `path`, or CheckpointError naming the file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing ONNX model: {path.absolute()}")
    try:
        return ort.InferenceSession(str(path), providers=list(providers or _default_providers()))
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path.absolute()} is not a readable ONNX model: {detail}") from e


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: memoryview, start: int, end: int):
    """(field number, start, end) of every length-delimited field of one protobuf message; others skipped."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:  # varint
            _, pos = _read_varint(buf, pos)
        elif wire_type == 1:  # 64-bit
            pos += 8
        elif wire_type == 2:  # length-delimited
            length, pos = _read_varint(buf, pos)
            yield field, pos, pos + length
            pos += length
        elif wire_type == 5:  # 32-bit
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    if pos != end:
        raise ValueError("truncated protobuf message")


def onnx_node_names(path: PathLike, count: int) -> list[str]:
    """The names of the first `count` nodes of an ONNX model's graph, read from the protobuf directly.

    InsightFace decides the landmark model's input normalisation from these names (it uses the `onnx` package,
    which is not a runtime dependency of ours; onnxruntime does not expose node names).
    """
    path = Path(path)
    try:
        buf = memoryview(path.read_bytes())
        names: list[str] = []
        for field, start, end in _proto_fields(buf, 0, len(buf)):
            if field != ONNX_MODEL_GRAPH_FIELD:
                continue
            for gfield, gstart, gend in _proto_fields(buf, start, end):
                if gfield != ONNX_GRAPH_NODE_FIELD:
                    continue
                name = ""
                for nfield, nstart, nend in _proto_fields(buf, gstart, gend):
                    if nfield == ONNX_NODE_NAME_FIELD:
                        name = bytes(buf[nstart:nend]).decode("utf-8", errors="replace")
                names.append(name)
                if len(names) == count:
                    return names
        return names
    except (OSError, IndexError, ValueError) as e:
        raise CheckpointError(f"{path.absolute()} is not a readable ONNX model: {e}") from e


def landmark_input_normalisation(node_names: Sequence[str]) -> tuple[float, float]:
    """(mean, std) that InsightFace's `Landmark` uses for a model whose first graph nodes have these names.

    Models that normalise inside the graph (a `Sub`/`_minus` and a `Mul`/`_mul` node among the first 8, or a
    `bn_data` node among the first 3) get raw pixels (0, 1); the others (x - 127.5) / 128.
    """
    find_sub = find_mul = False
    for i, name in enumerate(node_names[:LANDMARK_NODES_INSPECTED]):
        if name.startswith("Sub") or name.startswith("_minus"):
            find_sub = True
        if name.startswith("Mul") or name.startswith("_mul"):
            find_mul = True
        if i < LANDMARK_BN_DATA_NODES and name == "bn_data":
            find_sub = find_mul = True
    return (0.0, 1.0) if find_sub and find_mul else (127.5, 128.0)


def _blob(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """`cv2.dnn.blobFromImage(image, 1 / std, size, (mean,) * 3, swapRB=True)` at the image's own size.

    OpenCV computes (float32(x) - mean) * (1 / std) in float32; so do we. swapRB reverses the channel order
    of the array as given: the reference's RGB frames reach the networks as BGR.
    """
    x = image[:, :, ::-1].astype(np.float32)  # h w c, channels reversed
    x = (x - np.float32(mean)) * np.float32(1.0 / std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # 1 c h w


# ---------------------------------------------------------------------------------------------------------------
# SCRFD


class ScrfdDetector:
    """InsightFace's SCRFD face detector (`det_10g.onnx`) on onnxruntime, as `insightface.model_zoo.SCRFD`.

    `detect(frame)` letterboxes the frame into `det_size` x `det_size` (aspect kept, top-left aligned, zero
    fill, `cv2.resize` bilinear), normalises it, decodes every stride's anchors (centre + distances x stride)
    above `threshold` (InsightFace's `DET_SCORE_THRESHOLD` by default), maps them back by the letterbox scale and keeps the NMS survivors (IoU
    `NMS_IOU_THRESHOLD`, InsightFace's +1 pixel areas), highest score first.
    """

    def __init__(self, path: PathLike, det_size: int = DEFAULT_DET_SIZE, providers: Sequence[str] | None = None,
                 threshold: float = DET_SCORE_THRESHOLD):
        self.path = Path(path)
        self.threshold = check_threshold(threshold)
        self.session = _session(path, providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) not in SCRFD_LAYOUTS:
            raise CheckpointError(
                f"{self.path.absolute()} is not an SCRFD detector: expected one image input and "
                f"{'/'.join(map(str, SCRFD_LAYOUTS))} outputs, got {len(inputs)} input(s) and {len(outputs)} outputs"
            )
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        self.strides, self.num_anchors, self.use_kps = SCRFD_LAYOUTS[len(outputs)]
        # Outputs with a batch axis come as (1, n, k) (SCRFD "batched" models).
        self.batched = len(outputs[0].shape) == 3
        height, width = inputs[0].shape[2:4]
        if isinstance(height, int) and isinstance(width, int):
            # A model exported with a fixed size keeps it; InsightFace ignores det_size then.
            self.input_size = (width, height)
        else:
            self.input_size = (int(det_size), int(det_size))
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}

    def _anchor_centers(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centers:
            ys, xs = np.mgrid[:height, :width]
            centers = np.stack([xs, ys], axis=-1).astype(np.float32) * stride  # (h, w, 2) x, y in px
            centers = centers.reshape(-1, 2)
            # Anchors at one location are consecutive: index k -> location k // num_anchors.
            self._centers[key] = np.repeat(centers, self.num_anchors, axis=0)  # (h * w * a, 2)
        return self._centers[key]

    def letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """The detector's input image (input_h, input_w, 3) uint8 and the scale from frame to it."""
        in_w, in_h = self.input_size
        im_ratio = float(frame.shape[0]) / frame.shape[1]
        model_ratio = float(in_h) / in_w
        if im_ratio > model_ratio:
            new_h = in_h
            new_w = int(new_h / im_ratio)
        else:
            new_w = in_w
            new_h = int(new_w * im_ratio)
        det_scale = float(new_h) / frame.shape[0]
        canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h))
        return canvas, det_scale

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Boxes (n, 4) x1 y1 x2 y2, scores (n,), keypoints (n, 5, 2) or None; float32, frame pixels."""
        frame = _check_frame(frame)
        image, det_scale = self.letterbox(frame)
        blob = _blob(image, DET_INPUT_MEAN, DET_INPUT_STD)  # 1 3 H W
        outs = self.session.run(self.output_names, {self.input_name: blob})
        if self.batched:
            outs = [o[0] for o in outs]
        in_h, in_w = blob.shape[2:]
        n = len(self.strides)
        scores_all, boxes_all, kps_all = [], [], []
        for i, stride in enumerate(self.strides):
            scores = outs[i]  # (k, 1)
            dist = outs[i + n] * stride  # (k, 4) left, top, right, bottom
            centers = self._anchor_centers(in_h // stride, in_w // stride, stride)  # (k, 2)
            keep = np.where(scores >= self.threshold)[0]
            boxes = np.stack([centers[:, 0] - dist[:, 0], centers[:, 1] - dist[:, 1],
                              centers[:, 0] + dist[:, 2], centers[:, 1] + dist[:, 3]], axis=-1)
            scores_all.append(scores[keep].reshape(-1, 1))
            boxes_all.append(boxes[keep])
            if self.use_kps:
                offsets = outs[i + 2 * n] * stride  # (k, 10) x0 y0 x1 y1 ...
                kps = offsets.reshape(len(offsets), -1, 2) + centers[:, None, :]  # (k, 5, 2)
                kps_all.append(kps[keep])
        scores = np.vstack(scores_all).ravel()
        order = scores.argsort()[::-1]
        boxes = np.vstack(boxes_all) / det_scale
        dets = np.hstack([boxes, scores[:, None]]).astype(np.float32, copy=False)[order]
        keep = nms(dets, NMS_IOU_THRESHOLD)
        dets = dets[keep]
        kps = None
        if self.use_kps:
            kps = (np.vstack(kps_all) / det_scale).astype(np.float32, copy=False)[order][keep]
        return dets[:, :4], dets[:, 4], kps


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


# ---------------------------------------------------------------------------------------------------------------
# 2d106


class Landmark106:
    """InsightFace's 106-point landmark model (`2d106det.onnx`) on onnxruntime, as `model_zoo.Landmark`.

    For a detection box: a similarity crop around the box centre (scale `size / (1.5 * max(w, h))`, no
    rotation, `cv2.warpAffine` bilinear with zero border) at the model's input size (192), the same
    normalisation decision as InsightFace, and the output (1, 212) in [-1, 1] crop units mapped back:
    `(p + 1) * size // 2` through the inverse crop transform.
    """

    def __init__(self, path: PathLike, providers: Sequence[str] | None = None):
        self.path = Path(path)
        self.session = _session(path, providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else ()
        out_shape = outputs[0].shape if len(outputs) == 1 else ()
        if (len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3] or len(out_shape) != 2
                or out_shape[1] != 2 * NUM_LANDMARKS_106):
            raise CheckpointError(
                f"{self.path.absolute()} is not a 2d106 landmark model: expected one (n, 3, s, s) input and one "
                f"(n, {2 * NUM_LANDMARKS_106}) output, got inputs {[i.shape for i in inputs]} and outputs "
                f"{[o.shape for o in outputs]}"
            )
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_size = int(shape[2])
        self.input_mean, self.input_std = landmark_input_normalisation(
            onnx_node_names(path, LANDMARK_NODES_INSPECTED))

    def crop_matrix(self, box: np.ndarray) -> np.ndarray:
        """(2, 3) float64 affine from frame to crop pixels (InsightFace `face_align.transform`, rotation 0)."""
        x1, y1, x2, y2 = (float(v) for v in box)
        # Precision as in the reference (NumPy 1.26): sums and differences of the float32 box coordinates are
        # float32; anything mixed with a Python number is promoted to float64.
        w, h = float(np.float32(x2) - np.float32(x1)), float(np.float32(y2) - np.float32(y1))
        cx, cy = float(np.float32(x2) + np.float32(x1)) / 2, float(np.float32(y2) + np.float32(y1)) / 2
        scale = self.input_size / (max(w, h) * LANDMARK_CROP_MARGIN)
        half = self.input_size / 2
        return np.array([[scale, 0.0, half - cx * scale], [0.0, scale, half - cy * scale]], dtype=np.float64)

    def get(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The 106 landmarks (106, 2) float32, frame pixels, of the face in `box`."""
        m = self.crop_matrix(box)
        crop = cv2.warpAffine(frame, m, (self.input_size, self.input_size), borderValue=0.0)  # s s 3
        blob = _blob(crop, self.input_mean, self.input_std)  # 1 3 s s
        pred = self.session.run([self.output_name], {self.input_name: blob})[0][0]  # (212,)
        pred = pred.reshape(-1, 3 if pred.shape[0] >= LANDMARK_3D_OUTPUT_SIZE else 2)[-NUM_LANDMARKS_106:]
        pred = pred.astype(np.float32)
        pred[:, :2] += 1
        pred[:, :2] *= self.input_size // 2  # crop pixels
        inv = cv2.invertAffineTransform(m)  # (2, 3)
        pts = pred[:, :2].astype(np.float64) @ inv[:, :2].T + inv[:, 2]
        return pts.astype(np.float32)


class InsightFaceBackend:
    """The reference's face stack: SCRFD `det_10g.onnx` + `2d106det.onnx` (InsightFace `buffalo_l`).

    `detect(frame)` returns every face SCRFD keeps (highest score first) with its 106 landmarks and the
    reference's three alignment points. `providers`: onnxruntime execution providers (default: CUDA when
    onnxruntime has it, else CPU). `threshold`: SCRFD's score threshold (the reference's 0.5).
    """

    name = "insightface"

    def __init__(self, detector_path: PathLike, landmark_path: PathLike, det_size: int = DEFAULT_DET_SIZE,
                 providers: Sequence[str] | None = None, threshold: float = DET_SCORE_THRESHOLD):
        self.detector = ScrfdDetector(detector_path, det_size=det_size, providers=providers, threshold=threshold)
        self.landmarker = Landmark106(landmark_path, providers=providers)

    def detect(self, frame: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 frame (h, w, 3), highest detection score first."""
        frame = _check_frame(frame)
        boxes, scores, _ = self.detector.detect(frame)
        faces = []
        for box, score in zip(boxes, scores):
            landmarks = self.landmarker.get(frame, box)
            faces.append(Face(box=box.astype(np.float32), score=float(score), landmarks=landmarks,
                              points=alignment_points(landmarks)))
        return faces

    def refine(self, frame: np.ndarray, face: Face) -> Face:
        """`face` followed into `frame` by the landmark model alone, without running the detector.

        `face.box` is where to look (a box predicted from earlier frames, see `FaceTracker`); the result has
        that box, `face.score` (the score of the detection the track started from), and the 106 landmarks and
        alignment points found in that box. Whether the face is still there is the caller's check.
        """
        frame = _check_frame(frame)
        box = np.asarray(face.box, dtype=np.float32).copy()
        landmarks = self.landmarker.get(frame, box)
        return Face(box=box, score=float(face.score), landmarks=landmarks, points=alignment_points(landmarks))

    def reset(self) -> None:
        """Nothing to reset: InsightFace keeps no state between frames."""

    def close(self) -> None:
        """Release the onnxruntime sessions."""
        self.detector.session = None
        self.landmarker.session = None

    def __enter__(self) -> InsightFaceBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# mediapipe


def mesh_alignment_points(mesh: np.ndarray) -> np.ndarray:
    """The three alignment points from 468 mesh landmarks (see the table above), rounded: (3, 2) float32."""
    mesh = np.asarray(mesh, dtype=np.float32)
    points = [np.mean([mesh[list(g)].mean(axis=0) for g in groups], axis=0)
              for groups in (MESH_BROW_A, MESH_BROW_B, MESH_NOSE)]
    return np.round(np.stack(points)).astype(np.float32)


def mesh_box(mesh: np.ndarray) -> np.ndarray:
    """A detector-like box (4,) float32 around mesh landmarks: their extent grown by `MESH_BOX_MARGIN`."""
    lo, hi = mesh.min(axis=0), mesh.max(axis=0)
    pad = (hi - lo) * MESH_BOX_MARGIN
    return np.concatenate([lo - pad, hi + pad]).astype(np.float32)


class MediapipeBackend:
    """mediapipe's face detection and face mesh (468 points), the backend that needs no downloaded file.

    By default (`full_range=True`) faces are found by mediapipe's full-range detector, on the whole frame and on
    overlapping tiles of it (`DETECT_TILE`), so faces from about 40 px wide are found in 720p and 1080p frames;
    the face mesh then runs on an enlarged crop around each face (`MESH_CROP_SIZE`) and its landmarks are
    mapped back to the frame. `score` is the detector's confidence; `threshold` (the reference's 0.5) is the
    least the detectors accept. `refine(frame, face)` runs the mesh alone in a box predicted from earlier frames,
    so `FaceTracker(detect_every=N)` follows a face between detections, as with InsightFace.

    `full_range=False` is the former backend: the face mesh on the whole frame, with its own short-range
    detector (faces that fill much of the frame; it misses those under about a fifth of a 720p frame's width),
    in tracking mode when `video` (consecutive calls are frames of one video: call `reset()` between videos), and
    a score of 1.0 (the mesh reports none).

    `box`: the mesh extent grown by `MESH_BOX_MARGIN` on every side. The three alignment points are the mesh
    points listed below, at the same anatomical places as the 2d106 points the reference uses. Use as a context
    manager or call `close()` to stop mediapipe's graphs.

    Which 2d106 points the reference uses, and the mesh points standing in for them:

    The 2d106 markup is "ordered by point names" (insightface `alignment/coordinate_reg/README.md`). Sorting the
    names of a Face++-style 106-point markup alphabetically reproduces the geometric order that DeepFaceLive
    (iperov, `InsightFace2D106`, `_lmrk_fix`) restores from the model's output, which identifies every index:
      43..51  one brow: 43 outer corner, 44-47 lower edge and lower inner corner, 48-51 upper edge with the
              upper inner corner (50); [43, 48, 49, 51, 50] is its upper contour from outer to inner corner,
              i.e. iBUG-68 points 17-21.
      97..105 the other brow: 101 outer corner, 102-105 upper edge from the inner corner outwards, 97-100 lower
              edge; [101..105] is its upper contour, iBUG-68 points 22-26.
      72..86  nose: 72-74 bridge top to bottom, 75-79 / 81-85 the two side contours top to bottom, 80 the
              bottom centre, 86 the tip; 77 and 83 are the middle of each side contour (the widest point of
              each nostril wing).
    Mesh indices for the same anatomical points (mediapipe `FACEMESH_RIGHT_EYEBROW` / `FACEMESH_LEFT_EYEBROW`,
    whose "right" brow appears on the image's left, and the canonical mesh's nose midline 168-6-197-195-5-4-1):

      2d106 point                      mesh               why
      43  brow A outer corner          mean(46, 70)       the mesh brow has a separate upper and lower outer end
      48  brow A upper, outer quarter  63
      49  brow A upper, middle         105
      51  brow A upper, inner quarter  66
      50  brow A upper inner corner    107
      102 brow B upper inner corner    336
      103 brow B upper, inner quarter  296
      104 brow B upper, middle         334
      105 brow B upper, outer quarter  293
      101 brow B outer corner          mean(276, 300)
      74  nose bridge, lowest point    195                between iBUG 28 (mesh 197) and 29 (mesh 5)
      77  nostril wing, widest (A)     129                the alar crest
      83  nostril wing, widest (B)     358
      86  nose tip                     4                  the centre of the nose ball in a frontal view

    The mean of each group of mesh points stands for its 2d106 point; the mean of those is the alignment point,
    rounded as the reference rounds.
    """

    name = "mediapipe"

    def __init__(self, max_faces: int = DEFAULT_MAX_FACES, video: bool = True, full_range: bool = True,
                 threshold: float = MESH_MIN_DETECTION_CONFIDENCE, tile: int = DETECT_TILE):
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as e:
            raise LatentSyncError(f"the mediapipe face backend needs mediapipe 0.10.21 ({e})") from e
        self.max_faces = max_faces
        self.video = video
        self.full_range = full_range
        self.threshold = check_threshold(threshold)
        self.tile = int(tile)
        self._detector = None
        if full_range:
            self._detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=self.threshold)
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=full_range or not video,  # crops move from frame to frame: nothing to track
            max_num_faces=MESH_MAX_FACES_PER_CROP if full_range else max_faces,
            refine_landmarks=False,
            min_detection_confidence=self.threshold,
            min_tracking_confidence=MESH_MIN_TRACKING_CONFIDENCE,
        )
        if not full_range:
            self.refine = None  # the mesh tracks on its own in video mode

    def _check_open(self, frame: np.ndarray) -> np.ndarray:
        frame = _check_frame(frame)
        if self._mesh is None:
            raise RuntimeError("MediapipeBackend is closed")
        return frame

    def _meshes(self, image: np.ndarray) -> list[np.ndarray]:
        """Every face mesh (468, 2) float32 the face mesh finds in `image`, in its pixels."""
        h, w = image.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(image))
        # mediapipe reports x, y normalised by the image width and height.
        scale = np.array([w, h], dtype=np.float32)
        return [np.array([(p.x, p.y) for p in found.landmark[:MESH_NUM_LANDMARKS]], dtype=np.float32) * scale
                for found in result.multi_face_landmarks or []]

    def _face(self, mesh: np.ndarray, score: float) -> Face:
        return Face(box=mesh_box(mesh), score=score, landmarks=mesh, points=mesh_alignment_points(mesh))

    def detect(self, frame: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 frame (h, w, 3), highest detection score first."""
        frame = self._check_open(frame)
        if not self.full_range:
            return [self._face(mesh, 1.0) for mesh in self._meshes(frame)]
        faces: list[Face] = []
        for box, score in zip(*self.find_boxes(frame)):
            mesh = self._mesh_in(frame, box)
            if mesh is None:
                continue
            face = self._face(mesh, float(score))
            if all(iou(face.box, other.box) < SAME_FACE_IOU for other in faces):
                faces.append(face)
            if len(faces) == self.max_faces:
                break
        return faces

    def find_boxes(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The full-range detector's boxes (n, 4) float32 and scores (n,), on the frame and its tiles, one box
        per face (NMS), highest score first."""
        h, w = frame.shape[:2]
        found = [self._detections(frame, 0, 0, inner=())]
        smallest_whole = FULL_RANGE_MIN_FACE / FULL_RANGE_INPUT * max(h, w)
        if smallest_whole > FULL_RANGE_MIN_FACE / FULL_RANGE_INPUT * self.tile * 1.5:  # tiles find smaller faces
            overlap = min(self.tile // 2, int(np.ceil(smallest_whole * 1.3)))  # a face's height over its width
            for y0 in _tile_starts(h, self.tile, overlap):
                for x0 in _tile_starts(w, self.tile, overlap):
                    tile = frame[y0:y0 + self.tile, x0:x0 + self.tile]
                    inner = [side for side, cut in (("left", x0 > 0), ("top", y0 > 0),
                                                    ("right", x0 + self.tile < w), ("bottom", y0 + self.tile < h))
                             if cut]
                    found.append(self._detections(tile, x0, y0, inner))
        dets = np.concatenate(found) if found else np.zeros((0, 5), np.float32)
        if not len(dets):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        dets = dets[nms(dets, DETECT_NMS_IOU)]
        return dets[:, :4], dets[:, 4]

    def _detections(self, image: np.ndarray, x0: int, y0: int, inner: Sequence[str]) -> np.ndarray:
        """The detector's (n, 5) x1 y1 x2 y2 score in frame pixels for `image` at (x0, y0) of the frame, without
        boxes cut by one of its `inner` edges."""
        h, w = image.shape[:2]
        result = self._detector.process(np.ascontiguousarray(image))
        rows = []
        for detection in result.detections or []:
            b = detection.location_data.relative_bounding_box
            x1, y1, x2, y2 = b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h
            cut = (("left" in inner and x1 <= TILE_EDGE) or ("top" in inner and y1 <= TILE_EDGE)
                   or ("right" in inner and x2 >= w - TILE_EDGE) or ("bottom" in inner and y2 >= h - TILE_EDGE))
            if not cut and b.width > 0 and b.height > 0:
                rows.append((x1 + x0, y1 + y0, x2 + x0, y2 + y0, detection.score[0]))
        return np.array(rows, dtype=np.float32).reshape(-1, 5)

    def _mesh_in(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """The face mesh (468, 2) float32, frame pixels, of the face in `box`: the mesh nearest the centre of a
        crop around it (see `MESH_CROP_MARGIN`), or None when the mesh finds no face there."""
        x1, y1, x2, y2 = (float(v) for v in box)
        side = MESH_CROP_MARGIN * max(x2 - x1, y2 - y1)
        if not side > 0:
            return None
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        size = MESH_CROP_SIZE
        scale = size / side
        if scale >= 1:  # enlarge, bilinear
            m = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]])
            crop = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        else:  # the crop at the frame's resolution, then reduced with area averaging (no aliasing)
            n = int(np.ceil(side))
            m = np.array([[1.0, 0, n / 2 - cx], [0, 1.0, n / 2 - cy]])
            crop = cv2.resize(cv2.warpAffine(frame, m, (n, n), flags=cv2.INTER_LINEAR, borderValue=0), (size, size),
                              interpolation=cv2.INTER_AREA)
            scale = size / n
            m = m * scale
        meshes = self._meshes(crop)
        if not meshes:
            return None
        mesh = min(meshes, key=lambda p: float(np.hypot(*(p.mean(axis=0) - size / 2))))
        inv = cv2.invertAffineTransform(m)  # crop -> frame
        return (mesh.astype(np.float64) @ inv[:, :2].T + inv[:, 2]).astype(np.float32)

    def refine(self, frame: np.ndarray, face: Face) -> Face | None:
        """`face` followed into `frame` by the face mesh alone, in `face.box` (predicted from earlier frames);
        the result keeps `face.score`. None when the mesh finds no face there."""
        frame = self._check_open(frame)
        mesh = self._mesh_in(frame, face.box)
        return None if mesh is None else self._face(mesh, float(face.score))

    def reset(self) -> None:
        """Forget the tracked faces (start of another video)."""
        if self._mesh is not None:
            self._mesh.reset()

    def close(self) -> None:
        """Stop mediapipe's graphs; the backend cannot be used afterwards."""
        for graph in (self._mesh, self._detector):
            if graph is not None:
                graph.close()
        self._mesh = self._detector = None

    def __enter__(self) -> MediapipeBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` px over `length` px, overlapping by at least `overlap`, the last flush
    with the end."""
    if length <= tile:
        return [0]
    count = int(np.ceil((length - tile) / (tile - overlap))) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_face_backend(name: str = "auto", checkpoints: PathLike | None = None,
                      threshold: float = MIN_FACE_SCORE) -> FaceBackend:
    """The face backend called `name`: "insightface", "mediapipe", or "auto", detecting faces from a score of
    `threshold` (the reference's 0.5).

    "auto" is InsightFace (the published face stack) when both `auxiliary/models/buffalo_l/det_10g.onnx` and
    `2d106det.onnx` are in the checkpoints folder (default: `latentsync.weights.default_checkpoints_dir()`),
    else mediapipe. "insightface" without those files raises CheckpointError naming them.
    """
    from ..weights import CheckpointLayout, default_checkpoints_dir

    layout = CheckpointLayout(Path(checkpoints) if checkpoints is not None else default_checkpoints_dir())
    if name == "auto":
        have = layout.is_present("insightface_det") and layout.is_present("insightface_landmarks")
        name = "insightface" if have else "mediapipe"
        log.info("face backend: %s", name)
    if name == "insightface":
        det, lmk = layout.require("insightface_det", "insightface_landmarks")
        return InsightFaceBackend(det, lmk, threshold=threshold)
    if name == "mediapipe":
        return MediapipeBackend(threshold=threshold)
    raise ConfigError(f"unknown face backend {name!r}; expected auto, insightface or mediapipe")


# ---------------------------------------------------------------------------------------------------------------
# Choice and tracking


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


def iou(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when they do not overlap."""
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a)
    bx1, by1, bx2, by2 = (float(v) for v in box_b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0


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


def landmark_extent(landmarks: np.ndarray) -> np.ndarray:
    """The box (4,) float64 x1, y1, x2, y2 spanned by landmarks (k, 2)."""
    lmk = np.asarray(landmarks, dtype=np.float64)
    return np.concatenate([lmk.min(axis=0), lmk.max(axis=0)])


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
