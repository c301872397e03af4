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
