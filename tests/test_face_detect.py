"""Face backends (InsightFace on tiny ONNX models with crafted outputs, mediapipe on a real photo), backend
loading, face choice and tracking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from face_util import (
    BlobDetector,
    ScriptedBackend,
    anchor_index,
    blob_frame,
    make_face,
    scrfd_outputs,
    write_landmark_centroid,
    write_landmark_constant,
    write_landmark_probe,
    write_scrfd_constant,
    write_scrfd_probe,
)

from latentsync import cli
from latentsync.errors import CheckpointError, ConfigError, InputError
from latentsync.face import Face
from latentsync.cli.infer import job_options
from latentsync.face import detect
from latentsync.face.boxes import iou
from latentsync.face.detect import load_face_backend
from latentsync.face.insightface import (
    InsightFaceBackend,
    alignment_points,
    landmark_input_normalisation,
    onnx_node_names,
)
from latentsync.face.mediapipe import MediapipeBackend
from latentsync.face.tracking import (
    MIN_FACE_SCORE,
    SCENE_CUT_THRESHOLD,
    FaceTracker,
    content_change,
    frame_signature,
    is_valid_face,
    predict_box,
    select_face,
)
from latentsync.inference import InferenceOptions
from latentsync.weights import CheckpointLayout

# ---------------------------------------------------------------------------------------------------------------
# InsightFace backend on crafted models

# A 1024 x 768 frame letterboxes into 512 x 384 of the 512 x 512 detector input: scale 0.5.
FRAME_HW = (768, 1024)


@pytest.fixture
def crafted(tmp_path):
    """SCRFD outputs with: face A (stride 16, 0.9), a duplicate of A (stride 8, 0.8, suppressed by NMS), face
    B (stride 32, 0.7), face C exactly at the 0.5 threshold (kept) and a weak box (0.49, dropped)."""
    outs = scrfd_outputs()
    # A: stride 16, location (10, 8) -> centre (160, 128); distances (2, 3, 2, 4) x 16.
    a = anchor_index(16, 10, 8, 1)
    outs["score_16"][a] = 0.9
    outs["bbox_16"][a] = [2, 3, 2, 4]
    outs["kps_16"][a] = [-1, -1, 1, -1, 0, 0.5, -0.75, 1.5, 0.75, 1.5]
    # Duplicate: stride 8, location (20, 17) -> centre (160, 136); distances (4, 6, 4, 7) x 8.
    d = anchor_index(8, 20, 17, 0)
    outs["score_8"][d] = 0.8
    outs["bbox_8"][d] = [4, 6, 4, 7]
    # B: stride 32, location (12, 8) -> centre (384, 256); distances (1, 1, 1, 2) x 32.
    b = anchor_index(32, 12, 8, 1)
    outs["score_32"][b] = 0.7
    outs["bbox_32"][b] = [1, 1, 1, 2]
    # C: stride 8, location (5, 40) -> centre (40, 320); distances (2, 2, 2, 3) x 8.
    c = anchor_index(8, 5, 40, 1)
    outs["score_8"][c] = 0.5
    outs["bbox_8"][c] = [2, 2, 2, 3]
    # Weak: stride 32, location (2, 2).
    w = anchor_index(32, 2, 2, 0)
    outs["score_32"][w] = 0.49
    det = write_scrfd_constant(tmp_path / "det.onnx", outs)

    lmk = np.zeros((106, 2), np.float32)  # crop units in [-1, 1]: 0 is the box centre
    lmk[[43, 48, 49, 51, 50], 0] = [-0.5, -0.4, -0.3, -0.2, -0.1]  # mean -0.3
    lmk[[43, 48, 49, 51, 50], 1] = -0.2
    lmk[101:106, 0] = 0.35
    lmk[101:106, 1] = [-0.1, -0.2, -0.3, -0.2, -0.1]  # mean -0.18
    lmk[[74, 77, 83, 86], 0] = [0.0, -0.1, 0.1, 0.0]
    lmk[[74, 77, 83, 86], 1] = [0.1, 0.2, 0.2, 0.3]  # mean 0.2
    lmk[0] = [0.9, -0.9]
    landmark = write_landmark_constant(tmp_path / "lmk.onnx", lmk)
    return InsightFaceBackend(det, landmark), lmk


def test_scrfd_decoding_letterbox_nms_and_threshold(crafted):
    backend, _ = crafted
    boxes, scores, kps = backend.detector.detect(np.zeros((*FRAME_HW, 3), np.uint8))
    # Letterbox boxes divided by the scale 0.5, highest score first; the duplicate and the 0.49 box are gone.
    np.testing.assert_allclose(boxes, [[256, 160, 384, 384],  # A: (128, 80, 192, 192) / 0.5
                                       [704, 448, 832, 640],  # B: (352, 224, 416, 320) / 0.5
                                       [48, 608, 112, 688]])  # C: (24, 304, 56, 344) / 0.5
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.5])
    # A's keypoints: centre (160, 128) + offsets x 16, then / 0.5.
    np.testing.assert_allclose(kps[0], [[288, 224], [352, 224], [320, 272], [296, 304], [344, 304]])


def test_landmarks_map_back_through_the_crop(crafted):
    backend, lmk = crafted
    faces = backend.detect(np.zeros((*FRAME_HW, 3), np.uint8))
    assert [f.score for f in faces] == pytest.approx([0.9, 0.7, 0.5])
    # The crop: centre of the box, 192 px = 1.5 x the longer box side; output p in [-1, 1] is crop pixel
    # (p + 1) * 96, so frame = centre + p * 0.75 * longer side.
    a, b = faces[0], faces[1]
    np.testing.assert_allclose(a.box, [256, 160, 384, 384])
    np.testing.assert_allclose(a.landmarks, np.array([320, 272]) + lmk * 0.75 * 224, atol=1e-3)
    np.testing.assert_allclose(b.landmarks, np.array([768, 544]) + lmk * 0.75 * 192, atol=1e-3)
    assert a.landmarks.shape == (106, 2) and a.landmarks.dtype == np.float32
    # Alignment points of A (0.75 x 224 = 168): brow A (320 - 50.4, 272 - 33.6) = (269.6, 238.4) -> (270, 238);
    # brow B (320 + 58.8, 272 - 30.24) = (378.8, 241.76) -> (379, 242); nose (320, 272 + 33.6) -> (320, 306).
    np.testing.assert_array_equal(a.points, [[270, 238], [379, 242], [320, 306]])
    assert a.points.dtype == np.float32


def test_alignment_points_round_half_to_even_like_the_reference():
    lmk = np.zeros((106, 2), np.float32)
    lmk[[43, 48, 49, 51, 50]] = [100.5, 10.5]
    lmk[101:106] = [101.5, 11.5]
    lmk[[74, 77, 83, 86]] = [[10, 20], [11, 21], [10, 20], [11, 21]]  # mean (10.5, 20.5)
    np.testing.assert_array_equal(alignment_points(lmk), [[100, 10], [102, 12], [10, 20]])


def test_alignment_points_round_the_landmarks_first_then_the_means_like_the_reference():
    lmk = np.zeros((106, 2), np.float32)
    # Brow A: rounded first (10, 10, 10, 11, 11) -> mean 10.4 -> 10; the float mean 10.51 would give 11.
    lmk[[43, 48, 49, 51, 50], 0] = [10.45, 10.45, 10.45, 10.6, 10.6]
    # Brow B: rounded first (20, 21, 21, 21, 21) -> 20.8 -> 21; the float mean 20.46 would give 20.
    lmk[101:106, 0] = [19.7, 20.6, 20.6, 20.6, 20.8]
    # Nose: rounded first (10, 10, 10, 11) -> 10.25 -> 10; the float mean 10.575 would give 11.
    lmk[[74, 77, 83, 86], 1] = [10.3, 10.3, 10.3, 11.4]
    points = alignment_points(lmk)
    np.testing.assert_array_equal(points, [[10, 0], [21, 0], [0, 10]])
    float_means = np.round([lmk[[43, 48, 49, 51, 50], 0].mean(), lmk[101:106, 0].mean(), lmk[[74, 77, 83, 86], 1].mean()])
    assert (float_means != [10, 21, 10]).all()  # each group is one where the two orders disagree


def _probe_frame() -> np.ndarray:
    """1024 x 512 RGB: R = G = 255; B carries marks in 2x2 blocks (exact after the 0.5 bilinear resize)."""
    frame = np.zeros((512, 1024, 3), np.uint8)
    frame[..., :2] = 255
    frame[6:8, 200:202, 2] = 255  # -> letterbox (3, 100): score (255 - 127.5) / 128
    frame[20:22, 14:16, 2] = 200  # -> letterbox (10, 7): score (200 - 127.5) / 128 = 0.566
    frame[10:12, 600:602, 2] = 180  # -> (5, 300): (180 - 127.5) / 128 = 0.41, under the threshold
    frame[496:, :, 2] = 255  # letterbox rows 248..255; stretching (no letterbox) would move it to rows 496..511
    return frame


def test_detector_input_is_insightface_preprocessing_of_the_rgb_frame(tmp_path):
    """The detector's stride-8 scores are blob channel 0 rows 0..15, its stride-16 scores channel 0 rows
    508..511. Channel 0 must be the frame's last channel (swapRB on the RGB array as given), normalised as
    (x - 127.5) / 128, letterboxed top-left with zero fill."""
    det = write_scrfd_probe(tmp_path / "det.onnx")
    backend = InsightFaceBackend(det, write_landmark_constant(tmp_path / "lmk.onnx", np.zeros((106, 2))))
    boxes, scores, _ = backend.detector.detect(_probe_frame())
    # Blob index k = row * 512 + col = anchor row; location k // 2 on the 64 x 64 stride-8 grid; box = centre
    # +- 8 px, / 0.5. (3, 100): k 1636 -> location (50, 12) -> centre (400, 96); (10, 7): k 5127 -> (3, 40).
    np.testing.assert_array_equal(boxes, [[784, 176, 816, 208], [32, 624, 64, 656]])
    np.testing.assert_array_equal(scores, np.float32([255 - 127.5, 200 - 127.5]) / 128)


@pytest.mark.parametrize("in_graph_norm", [True, False])
def test_landmark_input_is_the_bgr_crop_with_insightfaces_normalisation(tmp_path, in_graph_norm):
    """The landmark probe returns crop channel 0, row 0 (and the start of row 1). The detector returns one box
    (192, 192, 320, 320) in a 512 x 512 frame: crop scale 192 / (1.5 * 128) = 1, crop pixel (r, c) = frame
    (r + 160, c + 160). With `Sub`/`Mul` nodes first InsightFace feeds raw pixels, else (x - 127.5) / 128."""
    outs = scrfd_outputs()
    i = anchor_index(32, 8, 8, 0)  # centre (256, 256)
    outs["score_32"][i] = 0.9
    outs["bbox_32"][i] = 2  # 64 px on each side
    det = write_scrfd_constant(tmp_path / "det.onnx", outs)
    backend = InsightFaceBackend(det, write_landmark_probe(tmp_path / "lmk.onnx", in_graph_norm=in_graph_norm))
    rows, cols = np.mgrid[:512, :512]
    frame = np.stack([(rows + cols) % 256, (2 * cols) % 256, (3 * cols + rows) % 256], axis=-1).astype(np.uint8)
    (face,) = backend.detect(frame)
    np.testing.assert_array_equal(face.box, [192, 192, 320, 320])
    # Undo the output mapping: frame = (p + 1) * 96 - 96 + 256.
    fed = ((face.landmarks - 256) / 96).ravel()  # (212,)
    blue = np.concatenate([frame[160, 160:352, 2], frame[161, 160:180, 2]]).astype(np.float32)
    expected = blue if in_graph_norm else (blue - 127.5) / 128
    np.testing.assert_allclose(fed, expected, atol=1e-3)


def test_landmark_normalisation_decision_and_node_names(tmp_path):
    path = write_landmark_probe(tmp_path / "lmk.onnx", in_graph_norm=True)
    assert onnx_node_names(path, 8) == ["Sub_flatten", "Mul_slice"]
    assert landmark_input_normalisation(["Sub_0", "Mul_1"]) == (0.0, 1.0)
    assert landmark_input_normalisation(["_minus0", "x", "_mul0"]) == (0.0, 1.0)
    assert landmark_input_normalisation(["conv", "bn_data"]) == (0.0, 1.0)
    assert landmark_input_normalisation(["a", "b", "c", "bn_data"]) == (127.5, 128.0)
    assert landmark_input_normalisation(["Sub_0", "conv"]) == (127.5, 128.0)
    assert landmark_input_normalisation(["x"] * 8 + ["Sub", "Mul"]) == (127.5, 128.0)  # only the first 8


def test_node_names_need_no_external_data_and_name_an_unreadable_file(tmp_path):
    """Only the graph is read: a model whose external tensor data is gone still gives its node names."""
    import onnx

    model = onnx.load(str(write_landmark_probe(tmp_path / "probe.onnx", in_graph_norm=True)))
    path = tmp_path / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="external.data", size_threshold=0)
    (tmp_path / "external.data").unlink()
    assert onnx_node_names(path, 8) == ["Sub_flatten", "Mul_slice"]
    corrupt = tmp_path / "2d106det.onnx"
    corrupt.write_bytes(b"\x08\x07not an onnx model")
    with pytest.raises(CheckpointError, match="2d106det.onnx"):
        onnx_node_names(corrupt, 8)
    with pytest.raises(CheckpointError, match="missing.onnx"):
        onnx_node_names(tmp_path / "missing.onnx", 8)


def test_corrupt_or_wrong_onnx_files_raise_checkpoint_errors(tmp_path):
    good_lmk = write_landmark_constant(tmp_path / "lmk.onnx", np.zeros((106, 2)))
    corrupt = tmp_path / "det_10g.onnx"
    corrupt.write_bytes(b"\x08\x07not an onnx model")
    with pytest.raises(CheckpointError, match="det_10g.onnx"):
        InsightFaceBackend(corrupt, good_lmk)
    # A landmark model where a detector is expected (1 output) and vice versa.
    with pytest.raises(CheckpointError, match="not an SCRFD detector"):
        InsightFaceBackend(good_lmk, good_lmk)
    det = write_scrfd_constant(tmp_path / "det.onnx", scrfd_outputs())
    with pytest.raises(CheckpointError, match="not a 2d106 landmark model"):
        InsightFaceBackend(det, det)
    backend = InsightFaceBackend(det, good_lmk)
    with pytest.raises(InputError):
        backend.detect(np.zeros((64, 64), np.uint8))
    assert backend.detect(np.zeros((64, 64, 3), np.uint8)) == []


# ---------------------------------------------------------------------------------------------------------------
# mediapipe on a real face


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    """Grace Hopper, 512 x 600, one frontal face (ships with matplotlib, a dependency of mediapipe)."""
    import cv2
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


def test_mediapipe_finds_one_face_with_sensible_points(portrait):
    with MediapipeBackend(video=False) as backend:
        faces = backend.detect(portrait)
        assert backend.detect(np.zeros_like(portrait)) == []
    assert len(faces) == 1
    face = faces[0]
    assert face.landmarks.shape == (468, 2) and face.points.shape == (3, 2) and face.points.dtype == np.float32
    np.testing.assert_array_equal(face.points, np.round(face.points))
    (ax, ay), (bx, by), (nx, ny) = face.points
    assert ax < nx < bx  # brow A on the image's left, the nose between the brows
    assert ay < ny and by < ny  # brows above the nose
    x1, y1, x2, y2 = face.box
    assert x1 < face.points[:, 0].min() and face.points[:, 0].max() < x2
    assert y1 < face.points[:, 1].min() and face.points[:, 1].max() < y2
    # Plausible proportions: brow centres ~ 0.3-0.6 face widths apart, nose ~ 0.1-0.35 face heights below.
    assert 0.3 < (bx - ax) / face.width < 0.6
    assert 0.1 < (ny - (ay + by) / 2) / face.height < 0.35
    assert 150 < face.width < 300 and is_valid_face(face)


def test_mediapipe_points_mirror_with_the_image(portrait):
    with MediapipeBackend(video=False) as backend:
        (face,) = backend.detect(portrait)
        (mirrored,) = backend.detect(np.ascontiguousarray(portrait[:, ::-1]))
    w = portrait.shape[1]
    expected = face.points[[1, 0, 2]].copy()  # the brows swap sides
    expected[:, 0] = w - expected[:, 0]
    np.testing.assert_allclose(mirrored.points, expected, atol=3)


def test_mediapipe_whole_frame_video_mode_tracks_and_resets(portrait):
    """The former backend (`full_range=False`): in video mode the second frame's landmarks come from the tracked
    region, not a fresh detection (so they differ slightly on the same image); reset() starts over. Static mode
    repeats itself."""
    with MediapipeBackend(video=True, full_range=False) as backend:
        assert not callable(getattr(backend, "refine", None))  # it tracks on its own
        first = backend.detect(portrait)
        second = backend.detect(portrait)
        backend.reset()
        third = backend.detect(portrait)
    with MediapipeBackend(video=False, full_range=False) as backend:
        static = [backend.detect(portrait) for _ in range(2)]
    assert len(first) == len(second) == len(third) == 1
    assert not np.array_equal(second[0].landmarks, first[0].landmarks)
    np.testing.assert_allclose(second[0].points, first[0].points, atol=5)
    np.testing.assert_array_equal(third[0].landmarks, first[0].landmarks)
    np.testing.assert_array_equal(static[1][0].landmarks, static[0][0].landmarks)
    np.testing.assert_array_equal(static[0][0].landmarks, first[0].landmarks)


def test_mediapipe_full_range_is_repeatable_and_refines_in_a_predicted_box(portrait):
    """The default path gives the same landmarks for the same frame (video or not: nothing is tracked inside
    mediapipe), with the detector's score; `refine` finds the face from a box moved off it and agrees with
    detection to a pixel or two, and finds nothing in an empty frame."""
    with MediapipeBackend(video=True) as backend:
        (a,), (b,) = backend.detect(portrait), backend.detect(portrait)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        assert MIN_FACE_SCORE < a.score < 1.0
        hint = make_face(*(a.box + np.array([12, -9, 12, -9])), score=0.77)
        refined = backend.refine(portrait, hint)
        assert refined.score == 0.77
        np.testing.assert_allclose(refined.points, a.points, atol=2)
        assert backend.refine(np.zeros_like(portrait), hint) is None


# ---------------------------------------------------------------------------------------------------------------
# load_face_backend


def _write_buffalo(root: Path) -> CheckpointLayout:
    layout = CheckpointLayout(root)
    write_scrfd_constant(layout.insightface_det, scrfd_outputs())
    write_landmark_constant(layout.insightface_landmarks, np.zeros((106, 2)))
    return layout


def test_load_face_backend(tmp_path):
    empty = tmp_path / "empty"
    backend = load_face_backend("auto", empty)
    assert isinstance(backend, MediapipeBackend)
    backend.close()
    with pytest.raises(CheckpointError) as err:
        load_face_backend("insightface", empty)
    layout = CheckpointLayout(empty)
    assert str(layout.insightface_det.absolute()) in str(err.value)
    assert str(layout.insightface_landmarks.absolute()) in str(err.value)

    full = tmp_path / "full"
    _write_buffalo(full)
    assert isinstance(load_face_backend("auto", full), InsightFaceBackend)
    assert isinstance(load_face_backend("insightface", full), InsightFaceBackend)
    with pytest.raises(ConfigError):
        load_face_backend("dlib", full)


def test_load_face_backend_auto_needs_both_files(tmp_path):
    layout = _write_buffalo(tmp_path)
    layout.insightface_landmarks.unlink()
    backend = load_face_backend("auto", tmp_path)
    assert isinstance(backend, MediapipeBackend)
    backend.close()


def test_the_former_import_path_gives_the_same_objects():
    """`latentsync.face.detect` was the home of everything the backends and tracking define; it re-exports
    them (the objects themselves, not copies) for code written against it."""
    from latentsync.face import boxes, insightface, mediapipe, tracking

    homes = (boxes, insightface, mediapipe, tracking)
    for name in detect.__all__:
        if name == "load_face_backend":
            continue
        assert any(name in vars(m) and getattr(m, name) is getattr(detect, name) for m in homes), name
    assert detect.MediapipeBackend is MediapipeBackend and detect.FaceTracker is FaceTracker


# ---------------------------------------------------------------------------------------------------------------
# Choice and tracking


def test_is_valid_face_thresholds():
    assert is_valid_face(make_face(0, 0, 50, 80, score=0.5))  # every bound inclusive
    assert not is_valid_face(make_face(0, 0, 49, 80))
    assert not is_valid_face(make_face(0, 0, 50, 79))
    assert not is_valid_face(make_face(0, 0, 50, 80, score=0.49))
    assert is_valid_face(make_face(0, 0, 150, 100))  # w / h = 1.5
    assert not is_valid_face(make_face(0, 0, 152, 100))
    assert is_valid_face(make_face(0, 0, 50, 250))  # w / h = 0.2
    assert not is_valid_face(make_face(0, 0, 50, 251))


def test_select_face_rules():
    shape = (400, 1000, 3)
    left = make_face(50, 100, 150, 250)  # area 15000, centre (100, 175)
    middle = make_face(450, 120, 530, 240)  # area 9600, centre (490, 180)
    right = make_face(800, 50, 950, 250)  # area 30000
    tiny = make_face(480, 150, 520, 200)  # invalid (40 wide), exactly at the centre
    faces = [right, tiny, middle, left]
    assert select_face(faces, "largest", shape) is right
    assert select_face(faces, "center", shape) is middle
    assert select_face(faces, 0, shape) is left
    assert select_face(faces, "1", shape) is middle  # a CLI string
    assert select_face(faces, 2, shape) is right
    assert select_face(faces, 3, shape) is None
    assert select_face([tiny], "largest", shape) is None
    assert select_face([], "center", shape) is None
    for bad in ("biggest", -1, True):
        with pytest.raises(ConfigError):
            select_face(faces, bad, shape)


def test_iou():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_tracker_follows_the_face_when_another_grows_larger():
    frame = np.zeros((400, 1000, 3), np.uint8)
    # A (left) starts larger and shrinks; B (right) grows past it; A keeps being followed.
    script = [
        [make_face(100, 100, 250, 300), make_face(700, 120, 800, 250)],
        [make_face(700, 110, 820, 270), make_face(105, 105, 245, 290)],
        [make_face(690, 100, 850, 300), make_face(110, 110, 240, 280)],
    ]
    tracker = FaceTracker(ScriptedBackend(script), rule="largest")
    followed = [tracker.track(frame) for _ in script]
    assert [float(f.box[0]) for f in followed] == [100, 105, 110]
    assert script[2][0].area > script[2][1].area  # B is the larger one by then


def test_tracker_reacquires_after_loss_and_passes_frames_without_faces():
    frame = np.zeros((400, 1000, 3), np.uint8)
    a = make_face(100, 100, 250, 300)
    b = make_face(700, 120, 800, 250)
    script = [
        [a, b],
        [],  # no face
        [make_face(40, 100, 120, 200)],  # valid, but IoU with A's last box 2000 / 36000 < 0.3
        [make_face(300, 100, 310, 300), b],  # the left face is gone, a 10 px sliver is invalid
        [b, make_face(100, 100, 250, 300)],
    ]
    tracker = FaceTracker(ScriptedBackend(script), rule="largest", iou_threshold=0.3)
    assert tracker.track(frame) is a
    assert tracker.track(frame) is None  # passed through unchanged
    third = tracker.track(frame)  # no overlap with A's last box: re-acquired by the rule
    assert third is script[2][0]
    assert tracker.track(frame) is b  # lost again: re-acquired (the only valid face)
    assert tracker.track(frame) is b  # and followed, although the returning A is larger
    tracker.reset()
    assert tracker.box is None and tracker.backend.resets == 1
    with tracker:
        pass
    assert tracker.backend.closed


def test_tracker_rule_n_and_no_valid_face():
    frame = np.zeros((400, 1000, 3), np.uint8)
    left, right = make_face(100, 100, 250, 300), make_face(700, 120, 800, 250)
    tracker = FaceTracker(ScriptedBackend([[right, left], [make_face(0, 0, 10, 10)]]), rule=1)
    assert tracker.track(frame) is right
    assert tracker.track(frame) is None
    with pytest.raises(ConfigError):
        FaceTracker(ScriptedBackend([]), rule="smallest")


# ---------------------------------------------------------------------------------------------------------------
# Tracking with landmarks between detections (detect_every > 1)


def _spy(obj, name: str) -> list:
    """Wrap `obj.name` so that every call appends to the returned list."""
    calls: list = []
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return calls


def _run(tracker: FaceTracker, frames, spy: list) -> tuple[list, list[int]]:
    """The tracked faces and the indices of the frames on which `spy` was called."""
    faces, hits = [], []
    for i, frame in enumerate(frames):
        before = len(spy)
        faces.append(tracker.track(frame))
        if len(spy) > before:
            hits.append(i)
    return faces, hits


def _assert_same_face(a: Face, b: Face) -> None:
    np.testing.assert_array_equal(a.box, b.box)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    np.testing.assert_array_equal(a.points, b.points)
    assert a.score == b.score


@pytest.fixture
def blob_backend(tmp_path) -> InsightFaceBackend:
    """InsightFace with the real Landmark106 path on a landmark model that follows a bright rectangle, and a
    detector that boxes it."""
    det = write_scrfd_constant(tmp_path / "det.onnx", scrfd_outputs())
    backend = InsightFaceBackend(det, write_landmark_centroid(tmp_path / "lmk.onnx"))
    backend.detector = BlobDetector()
    return backend


def moving_blob(t: int) -> np.ndarray:
    return blob_frame(150 + 10 * t, 100 + 5 * t)


def test_predict_box_moves_and_scales_with_the_landmarks():
    ref = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float64)
    box = np.array([-5, -5, 15, 15], np.float32)
    np.testing.assert_array_equal(predict_box(box, ref, ref), box)
    np.testing.assert_allclose(predict_box(box, ref, ref * 2 + [100, 50]), [90, 40, 130, 80])
    # A rotation keeps the RMS distances: the box turns into no smaller one.
    c, s = np.cos(0.3), np.sin(0.3)
    turned = (ref - 5) @ np.array([[c, -s], [s, c]]) + 5
    np.testing.assert_allclose(predict_box(box, ref, turned), box, atol=1e-5)


def test_tracker_detects_every_n_frames_and_runs_landmarks_on_every_frame(tmp_path):
    outs = scrfd_outputs()
    i = anchor_index(32, 8, 8, 0)
    outs["score_32"][i] = 0.9
    outs["bbox_32"][i] = [2, 3, 2, 3]  # box (192, 160, 320, 352) in a 512 x 512 frame
    lmk = np.stack([np.linspace(-0.6, 0.6, 106), 0.5 * np.sin(np.arange(106))], axis=1)
    backend = InsightFaceBackend(write_scrfd_constant(tmp_path / "det.onnx", outs),
                                 write_landmark_constant(tmp_path / "lmk.onnx", lmk))
    frame = np.zeros((512, 512, 3), np.uint8)
    expected = backend.detect(frame)[0]
    detector, landmarks = _spy(backend.detector, "detect"), _spy(backend.landmarker, "get")
    tracker = FaceTracker(backend, detect_every=3)
    faces, detected = _run(tracker, [frame] * 8, detector)
    assert detected == [0, 3, 6]
    assert len(landmarks) == 8  # one face: once per frame, detected or not
    for face in faces:  # a still face: the predicted box is the detection's, bit for bit
        _assert_same_face(face, expected)
    tracker.reset()  # forgets the track: the next frame is detected
    assert _run(tracker, [frame] * 2, detector)[1] == [0]


def test_tracker_follows_a_moving_face_with_landmarks_only(blob_backend):
    frames = [moving_blob(t) for t in range(12)]
    tracker = FaceTracker(blob_backend, detect_every=6)
    faces, detected = _run(tracker, frames, _spy(blob_backend.detector, "detect"))
    assert detected == [0, 6]
    per_frame = [blob_backend.detect(f)[0] for f in frames]
    for t, (face, ref) in enumerate(zip(faces, per_frame)):
        # The landmarks found in the predicted box are those found in this frame's detection box ...
        np.testing.assert_allclose(face.landmarks, ref.landmarks, atol=0.5)
        np.testing.assert_allclose(face.points, ref.points, atol=1)
        np.testing.assert_allclose(face.points - faces[0].points, [[10 * t, 5 * t]] * 3, atol=1.5)
        assert face.score == pytest.approx(0.9)
        if t not in detected:
            # ... and the predicted box is where the previous frame's landmarks put the face: the previous
            # frame's detection box (10 px right and 5 down per frame), not the last detection's.
            np.testing.assert_allclose(face.box, per_frame[t - 1].box, atol=1)


def test_tracker_detects_on_the_frame_the_track_is_lost(blob_backend):
    a, b = (100, 100), (450, 300)
    frames = [blob_frame(*a)] * 3 + [blob_frame(*b)] * 2 + [blob_frame(*b) * 0] + [blob_frame(*b)] * 2
    tracker = FaceTracker(blob_backend, detect_every=10)
    faces, detected = _run(tracker, frames, _spy(blob_backend.detector, "detect"))
    # Frame 3: the face jumped out of the crop (the landmarks collapse); frame 5: it is gone (no face, and no
    # track to follow on frame 6).
    assert detected == [0, 3, 5, 6]
    b_box = blob_backend.detect(frames[3])[0].box
    np.testing.assert_array_equal(faces[3].box, b_box)
    np.testing.assert_allclose(faces[4].box, b_box, atol=1)
    assert faces[5] is None and faces[6] is not None and faces[7] is not None


class _LandmarkScript:
    """A backend with `refine`: one detected face with landmarks `base`, refined landmarks from `moves`."""

    name = "script"

    def __init__(self, box, base: np.ndarray, moves):
        self.box, self.base, self.moves = np.float32(box), np.float32(base), list(moves)
        self.detections = 0

    def detect(self, frame):
        self.detections += 1
        return [Face(box=self.box.copy(), score=0.9, landmarks=self.base.copy(), points=np.zeros((3, 2)))]

    def refine(self, frame, face):
        landmarks = self.moves.pop(0)(self.base).astype(np.float32)
        return Face(box=np.float32(face.box), score=face.score, landmarks=landmarks, points=np.zeros((3, 2)))


@pytest.mark.parametrize("move, lost", [
    pytest.param(lambda p: p + [-20, 0], False, id="40px-outside"),  # under TRACK_MAX_OUTSIDE x 200 = 50 px
    pytest.param(lambda p: p + [-40, 0], True, id="60px-outside"),  # although the extents overlap (IoU 0.67)
    pytest.param(lambda p: p + [0, 60], False, id="iou-0.54"),  # extents (200 - 60) / (200 + 60)
    pytest.param(lambda p: p + [0, 80], True, id="iou-0.43"),  # under TRACK_MIN_EXTENT_IOU
    pytest.param(lambda p: p * [1, 0.2], True, id="collapsed"),
    pytest.param(lambda p: p * np.nan, True, id="nan"),
])
def test_tracker_track_loss_checks(move, lost):
    frame = np.zeros((600, 800, 3), np.uint8)
    xs, ys = np.meshgrid(np.linspace(-20, 180, 14), np.linspace(100, 300, 8))  # at the left edge, 20 px out
    base = np.stack([xs.ravel(), ys.ravel()], axis=1)[:106]
    backend = _LandmarkScript([-30, 80, 190, 320], base, [move])
    tracker = FaceTracker(backend, detect_every=5)
    tracker.track(frame)
    tracker.track(frame)
    assert backend.detections == (2 if lost else 1)


def test_tracker_detects_again_at_a_scene_cut():
    xs, ys = np.meshgrid(np.linspace(300, 350, 14), np.linspace(300, 380, 8))
    base = np.stack([xs.ravel(), ys.ravel()], axis=1)[:106]
    backend = _LandmarkScript([299, 299, 351, 381], base, [lambda p: p] * 8)  # the landmarks never move
    rng = np.random.default_rng(0)
    shot_a = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    shot_b = np.full((600, 800, 3), (30, 160, 60), np.uint8)
    grain = [np.clip(shot_a.astype(int) + rng.integers(-8, 9, shot_a.shape), 0, 255).astype(np.uint8)
             for _ in range(3)]  # the same shot with sensor noise: no cut
    tracker = FaceTracker(backend, detect_every=10)
    for frame in [shot_a, *grain, shot_b, shot_b, shot_a]:
        tracker.track(frame)
    assert backend.detections == 3  # the first frame, and each of the two cuts
    assert content_change(frame_signature(shot_a), frame_signature(grain[0])) < 2
    assert content_change(frame_signature(shot_a), frame_signature(shot_b)) > SCENE_CUT_THRESHOLD


def test_tracker_loses_a_face_that_shrinks_below_the_size_filter():
    frame = np.zeros((600, 800, 3), np.uint8)
    xs, ys = np.meshgrid(np.linspace(300, 350, 14), np.linspace(300, 380, 8))
    base = np.stack([xs.ravel(), ys.ravel()], axis=1)[:106]
    centre = base.mean(axis=0)
    shrink = [lambda p, k=k: centre + (p - centre) * 0.9 ** k for k in (1, 2)]  # IoU 0.81 a frame: followed
    backend = _LandmarkScript([299, 299, 351, 381], base, shrink)  # 52 x 82: just valid
    tracker = FaceTracker(backend, detect_every=5)
    tracker.track(frame)
    assert tracker.track(frame).width == pytest.approx(52)  # the box of frame 0's landmarks
    assert backend.detections == 1
    tracker.track(frame)  # this box, 0.9 x 52 wide, is under the 50 px of `is_valid_face`: detected instead
    assert backend.detections == 2


def test_tracker_detect_every_1_is_the_per_frame_path(blob_backend):
    frames = [moving_blob(t) for t in range(6)]
    refined = _spy(blob_backend, "refine")
    assert FaceTracker(blob_backend).detect_every == 1
    for tracker in (FaceTracker(blob_backend), FaceTracker(blob_backend, detect_every=1)):
        faces, detected = _run(tracker, frames, _spy(blob_backend.detector, "detect"))
        assert detected == list(range(6)) and not refined
        for face, frame in zip(faces, frames):
            _assert_same_face(face, blob_backend.detect(frame)[0])
    # A backend without `refine` (mediapipe tracks on its own) is asked to detect on every frame.
    face = make_face(100, 100, 250, 300)
    scripted = ScriptedBackend([[face]] * 3)
    tracker = FaceTracker(scripted, detect_every=3)
    assert [tracker.track(frames[0]) for _ in range(3)] == [face] * 3 and scripted.calls == 3
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ConfigError):
            FaceTracker(blob_backend, detect_every=bad)


def test_cli_detect_every_reaches_inference_options():
    parser = cli.build_parser()
    base = ["infer", "--video", "a", "--audio", "b", "--out", "c"]
    args = parser.parse_args(base + ["--detect-every", "4", "--quiet"])
    assert args.detect_every == 4
    assert parser.parse_args(base).detect_every == InferenceOptions().detect_every
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--detect-every", "0"])

    assert job_options(args).detect_every == 4  # the options the job then runs with
