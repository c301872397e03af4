"""The reference's face stack without the `insightface` package: InsightFace's `buffalo_l` SCRFD detector
(`det_10g.onnx`) and 106-point landmark model (`2d106det.onnx`) on onnxruntime (spec 2.2 step 6).

`InsightFaceBackend` reproduces `FaceAnalysis(allowed_modules=["detection", "landmark_2d_106"])` with
`prepare(ctx_id, det_size=(512, 512))`, including the reference's quirk of handing InsightFace RGB frames:
InsightFace expects BGR and swaps the channels itself (`cv2.dnn.blobFromImage(..., swapRB=True)`), so the
networks see the frame in BGR order. We apply InsightFace's preprocessing to the array as given, so the
landmarks are those the published models were trained against (spec 12).

Facts taken from InsightFace 0.7.x (github.com/deepinsight/insightface, `python-package/insightface/`):
`model_zoo/scrfd.py` (preprocessing, strides, anchors, decoding, NMS), `model_zoo/landmark.py` (crop, input
normalisation decision, output mapping), `utils/face_align.py` (`transform`, the crop's similarity matrix),
`app/face_analysis.py` (`det_thresh=0.5`, `max_num=0`). The models' signatures (`det_10g.onnx` input
`[1, 3, '?', '?']` normalised with 127.5/128; `2d106det.onnx` input `[None, 3, 192, 192]` with mean 0, std 1)
are what `FaceAnalysis` prints when it loads `buffalo_l`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np

from ..errors import CheckpointError
from . import Face, check_frame
from .boxes import nms
from .tracking import check_threshold

# ---------------------------------------------------------------------------------------------------------------
# The reference's alignment points (spec 2.2 step 6, LatentSync `utils/image_processor.py`).

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

PathLike = Union[str, Path]


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
# onnxruntime sessions and the onnx graph


def _default_providers() -> list[str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """CheckpointError naming `path`, with the first line of the reader's message."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(f"{path.absolute()} is not a readable ONNX model: {detail}")


def _session(path: PathLike, providers: Sequence[str] | None):
    """An onnxruntime session for `path`, or CheckpointError naming the file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing ONNX model: {path.absolute()}")
    try:
        return ort.InferenceSession(str(path), providers=list(providers or _default_providers()))
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise _unreadable(path, e) from e


def onnx_node_names(path: PathLike, count: int) -> list[str]:
    """The names of the first `count` nodes of an ONNX model's graph, or CheckpointError naming the file.

    InsightFace decides the landmark model's input normalisation from these names and reads them, as we do,
    with the `onnx` package (onnxruntime does not expose node names). Imported here so that the mediapipe
    backend, and `import latentsync`, do not need it; external tensor data is not loaded, only the graph.
    """
    import onnx
    from google.protobuf.message import DecodeError  # what onnx.load raises for a file that is not a model

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as e:
        raise _unreadable(path, e) from e
    return [node.name for node in model.graph.node[:count]]


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
    above `threshold` (InsightFace's `DET_SCORE_THRESHOLD` by default), maps them back by the letterbox scale
    and keeps the NMS survivors (IoU `NMS_IOU_THRESHOLD`, InsightFace's +1 pixel areas), highest score first.
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
        frame = check_frame(frame)
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
        frame = check_frame(frame)
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
        frame = check_frame(frame)
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
