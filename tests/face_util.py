"""Tiny ONNX models with the signatures of InsightFace's `det_10g.onnx` (SCRFD) and `2d106det.onnx`, whose
outputs are either crafted constants (to hand-compute what the decoders must return) or slices of the network
input (to check the preprocessing fed to the network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from latentsync.face import Face

DET_SIZE = 512
STRIDES = (8, 16, 32)
ANCHORS = 2
OPSET = 13
IR_VERSION = 8  # old enough for any onnxruntime that supports opset 13


def num_anchors(stride: int, det_size: int = DET_SIZE) -> int:
    return (det_size // stride) ** 2 * ANCHORS


def anchor_index(stride: int, x: int, y: int, anchor: int, det_size: int = DET_SIZE) -> int:
    """Row of the SCRFD outputs for the anchor at grid location (x, y) of `stride`."""
    return (y * (det_size // stride) + x) * ANCHORS + anchor


def _const(name: str, value: np.ndarray, node_name: str | None = None) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=node_name or f"const_{name}",
                            value=numpy_helper.from_array(np.asarray(value, dtype=np.float32)))


def _save(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _det_io(outputs_shapes):
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in outputs_shapes]
    return image, outs


def scrfd_outputs(det_size: int = DET_SIZE) -> dict[str, np.ndarray]:
    """Zero score maps, unit box distances and zero keypoint offsets for every stride, in output order."""
    outs = {}
    for s in STRIDES:
        outs[f"score_{s}"] = np.zeros((num_anchors(s, det_size), 1), np.float32)
    for s in STRIDES:
        outs[f"bbox_{s}"] = np.ones((num_anchors(s, det_size), 4), np.float32)
    for s in STRIDES:
        outs[f"kps_{s}"] = np.zeros((num_anchors(s, det_size), 10), np.float32)
    return outs


def write_scrfd_constant(path: Path, outputs: dict[str, np.ndarray]) -> Path:
    """An SCRFD-shaped model (image input `[1, 3, ?, ?]`, 9 outputs in InsightFace's order) returning `outputs`."""
    nodes = [_const(name, value) for name, value in outputs.items()]
    image, outs = _det_io([(name, value.shape) for name, value in outputs.items()])
    return _save(path, nodes, [image], outs)


def write_scrfd_probe(path: Path, det_size: int = DET_SIZE) -> Path:
    """An SCRFD-shaped model whose stride-8 scores are the first values of its input blob (channel 0, rows
    0..15) and whose stride-16 scores are the last values of channel 0 (its bottom rows); boxes are 1 x stride
    around each anchor, other scores zero."""
    n8, n16 = num_anchors(8, det_size), num_anchors(16, det_size)
    plane = det_size * det_size
    outs = scrfd_outputs(det_size)
    nodes = [
        helper.make_node("Flatten", ["input.1"], ["flat"], axis=0, name="flatten"),
        helper.make_node("Slice", ["flat", "s8_start", "s8_end", "axis1"], ["s8_flat"], name="slice8"),
        helper.make_node("Reshape", ["s8_flat", "s8_shape"], ["score_8"], name="reshape8"),
        helper.make_node("Slice", ["flat", "s16_start", "s16_end", "axis1"], ["s16_flat"], name="slice16"),
        helper.make_node("Reshape", ["s16_flat", "s16_shape"], ["score_16"], name="reshape16"),
    ]
    inits = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in [
        ("s8_start", [0]), ("s8_end", [n8]), ("s16_start", [plane - n16]), ("s16_end", [plane]), ("axis1", [1]),
        ("s8_shape", [n8, 1]), ("s16_shape", [n16, 1])]]
    nodes += [_const(name, value) for name, value in outs.items() if name not in ("score_8", "score_16")]
    image, out_info = _det_io([(name, value.shape) for name, value in outs.items()])
    return _save(path, nodes, [image], out_info, inits)


def _lmk_io():
    image = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 192, 192])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])
    return image, out


def write_landmark_constant(path: Path, values: np.ndarray, in_graph_norm: bool = True) -> Path:
    """A 2d106-shaped model (input `[None, 3, 192, 192]`, output (1, 212)) returning `values` (106, 2).

    `in_graph_norm`: name the first nodes `Sub...`/`Mul...` as InsightFace looks for (then it feeds raw pixels).
    """
    first, second = ("Sub_0", "Mul_1") if in_graph_norm else ("const_a", "const_b")
    nodes = [_const("unused", np.zeros(1), node_name=first),
             _const("fc1", np.asarray(values, np.float32).reshape(1, 212), node_name=second)]
    image, out = _lmk_io()
    return _save(path, nodes, [image], [out])


def write_landmark_probe(path: Path, in_graph_norm: bool = True) -> Path:
    """A 2d106-shaped model whose output is the first 212 values of its input blob (channel 0, row 0 and the
    start of row 1 of the crop)."""
    first, second = ("Sub_flatten", "Mul_slice") if in_graph_norm else ("flatten", "slice")
    nodes = [helper.make_node("Flatten", ["data"], ["flat"], axis=1, name=first),
             helper.make_node("Slice", ["flat", "start", "end", "axis1"], ["fc1"], name=second)]
    inits = [numpy_helper.from_array(np.array(v, np.int64), name)
             for name, v in [("start", [0]), ("end", [212]), ("axis1", [1])]]
    image, out = _lmk_io()
    return _save(path, nodes, [image], [out], inits)


# Landmark layout of `write_landmark_centroid`, in units of the blob's spread: a ring of 106 points with the
# alignment groups of the 2d106 layout at a brow's, the other brow's and the nose's places.
BLOB_TEMPLATE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 106, endpoint=False)),
                          np.sin(np.linspace(0, 2 * np.pi, 106, endpoint=False))], axis=1).astype(np.float32)
BLOB_TEMPLATE[[43, 48, 49, 51, 50]] = [-0.5, -0.4]
BLOB_TEMPLATE[101:106] = [0.5, -0.4]
BLOB_TEMPLATE[[74, 77, 83, 86]] = [0.0, 0.3]
BLOB_EPS = 1e-6  # total mass of an empty crop, so that it maps all points to the crop's corner, not to NaN


def write_landmark_centroid(path: Path, template: np.ndarray = BLOB_TEMPLATE) -> Path:
    """A 2d106-shaped model that follows a bright blob: an ideal landmark model for a synthetic "face".

    Its 106 points are `template` (106, 2) scaled by the blob's spread (the RMS distance of crop channel 0's
    mass from its centroid, per axis) and placed at that centroid, so they follow the blob's position and size
    whatever the box it is given (while the blob is inside the crop). An empty crop puts every point on the
    crop's top-left corner. In-graph normalisation names: it sees raw pixels, weighted / 255.
    """
    size = 192
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    half = size // 2  # Landmark106 maps output p to crop pixel (p + 1) * half
    nodes = [
        helper.make_node("Slice", ["data", "c0", "c1", "axis1"], ["ch"], name="Sub_channel"),  # n 1 s s
        helper.make_node("Mul", ["ch", "inv255"], ["w"], name="Mul_weight"),
        helper.make_node("ReduceSum", ["w"], ["w_sum"], name="sum_w"),  # 1 1 1 1
        helper.make_node("Add", ["w_sum", "eps"], ["mass"], name="mass"),
    ]
    for axis, grid in (("x", cols), ("y", rows)):
        nodes += [
            _const(f"grid_{axis}", grid[None, None]),
            helper.make_node("Mul", ["w", f"grid_{axis}"], [f"wg_{axis}"], name=f"wg_{axis}"),
            helper.make_node("ReduceSum", [f"wg_{axis}"], [f"sum_{axis}"], name=f"sum_{axis}"),
            helper.make_node("Div", [f"sum_{axis}", "mass"], [f"c_{axis}"], name=f"c_{axis}"),  # 1 1 1 1
            helper.make_node("Sub", [f"grid_{axis}", f"c_{axis}"], [f"d_{axis}"], name=f"d_{axis}"),
            helper.make_node("Mul", [f"d_{axis}", f"d_{axis}"], [f"d2_{axis}"], name=f"d2_{axis}"),
            helper.make_node("Mul", ["w", f"d2_{axis}"], [f"wd2_{axis}"], name=f"wd2_{axis}"),
            helper.make_node("ReduceSum", [f"wd2_{axis}"], [f"var_{axis}"], name=f"var_{axis}"),
        ]
    nodes += [
        helper.make_node("Add", ["var_x", "var_y"], ["var_xy"], name="var_xy"),
        helper.make_node("Div", ["var_xy", "mass"], ["var2"], name="var2"),
        helper.make_node("Mul", ["var2", "halfc"], ["var"], name="var"),
        helper.make_node("Sqrt", ["var"], ["spread4"], name="spread4"),
        helper.make_node("Reshape", ["spread4", "shape11"], ["spread"], name="spread"),  # 1 1
        helper.make_node("Concat", ["c_x", "c_y"], ["c4"], axis=3, name="c4"),  # 1 1 1 2
        helper.make_node("Reshape", ["c4", "shape12"], ["centre"], name="centre"),  # 1 2
        _const("template", template),
        helper.make_node("Mul", ["template", "spread"], ["offsets"], name="offsets"),  # 106 2
        helper.make_node("Add", ["offsets", "centre"], ["pts"], name="pts"),  # 106 2, crop pixels
        helper.make_node("Div", ["pts", "halfsize"], ["pts_half"], name="pts_half"),
        helper.make_node("Sub", ["pts_half", "one"], ["p"], name="p"),
        helper.make_node("Reshape", ["p", "shape_out"], ["fc1"], name="out"),  # 1 212
    ]
    inits = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in [
        ("c0", [0]), ("c1", [1]), ("axis1", [1]), ("shape11", [1, 1]), ("shape12", [1, 2]),
        ("shape_out", [1, 212])]]
    inits += [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in [
        ("inv255", 1 / 255), ("eps", BLOB_EPS), ("halfc", 0.5), ("halfsize", float(half)), ("one", 1.0)]]
    image, out = _lmk_io()
    return _save(path, nodes, [image], [out], inits)


class BlobDetector:
    """Stands in for `ScrfdDetector`: one box around the frame's bright pixels (channel 0 > 127), grown by
    `pad` of its size on each side, score 0.9; nothing in a dark frame. Counts its calls."""

    def __init__(self, pad: float = 0.1):
        self.pad = pad
        self.calls = 0

    def detect(self, frame: np.ndarray):
        self.calls += 1
        ys, xs = np.nonzero(frame[:, :, 0] > 127)
        if len(xs) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        px, py = self.pad * (x2 - x1), self.pad * (y2 - y1)
        box = np.array([[x1 - px, y1 - py, x2 + px, y2 + py]], np.float32)
        return box, np.array([0.9], np.float32), None


def blob_frame(x: int, y: int, w: int = 100, h: int = 130, shape=(480, 640)) -> np.ndarray:
    """A black RGB frame with a white w x h rectangle (the synthetic face) at top-left (x, y)."""
    frame = np.zeros((*shape, 3), np.uint8)
    frame[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = 255
    return frame


def make_face(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Face:
    """A synthetic face with only a box and a score that matter."""
    return Face(box=np.array([x1, y1, x2, y2], np.float32), score=score,
                landmarks=np.zeros((106, 2), np.float32), points=np.zeros((3, 2), np.float32))


class ScriptedBackend:
    """A face backend that returns a scripted list of faces per call."""

    name = "scripted"

    def __init__(self, frames: list[list[Face]]):
        self.frames = list(frames)
        self.calls = 0
        self.resets = 0
        self.closed = False

    def detect(self, frame: np.ndarray) -> list[Face]:
        faces = self.frames[self.calls]
        self.calls += 1
        return faces

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True
