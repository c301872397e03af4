"""Faces in real footage: small faces in wide shots and group shots (mediapipe's full-range detector on tiles,
the face mesh on an enlarged crop), the job's detection threshold, and the line saying why frames had no face.

Scenes are the packaged portrait pasted into larger frames at known places (`demo.wide_shot_frame`), so where
each face is, and which one was chosen, is known exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from latentsync import cli
from latentsync.demo import Placement, load_portrait, make_wide_shot_clip, synth_speech, wide_shot_frame
from latentsync.errors import ConfigError, InputError
from latentsync.face.insightface import InsightFaceBackend, ScrfdDetector
from latentsync.face.mediapipe import MediapipeBackend
from latentsync.face.tracking import INFERENCE_FILTER, MISS_NONE, MISS_RULE, MISS_SMALL, FaceTracker
from latentsync.inference import DEFAULT_DETECT_EVERY, InferenceOptions
from latentsync.media import VideoReader, write_wav

from face_util import ScriptedBackend, anchor_index, make_face, scrfd_outputs, write_landmark_constant, \
    write_scrfd_constant

FAST = InferenceOptions(steps=2, guidance=1.5)


@pytest.fixture(scope="module")
def portrait_points() -> np.ndarray:
    """The portrait's alignment points at full size (the face mesh on the whole image, as before)."""
    with MediapipeBackend(video=False, full_range=False) as backend:
        (face,) = backend.detect(load_portrait())
    return face.points


def placed(points: np.ndarray, transform: np.ndarray, mirror: bool = False) -> np.ndarray:
    """Where the portrait's points are in a frame (a mirrored copy's brows swap sides)."""
    out = points @ transform[:, :2].T + transform[:, 2]
    return out[[1, 0, 2]] if mirror else out


def track_scene(size, placements, frames: int, rule="largest", detect_every=DEFAULT_DETECT_EVERY):
    """The inference tracker (its face filter, detection every few frames) over a generated scene: per frame,
    the followed face or None, and the placements' transforms."""
    faces, transforms = [], []
    with FaceTracker(MediapipeBackend(), rule=rule, detect_every=detect_every, limits=INFERENCE_FILTER) as tracker:
        for i in range(frames):
            frame, placed_now = wide_shot_frame(size, placements, i / 25)
            faces.append(tracker.track(frame))
            transforms.append(placed_now)
    return faces, transforms


@pytest.mark.parametrize("size, width", [((1280, 720), 80), ((1920, 1080), 40)])
def test_small_faces_of_wide_shots_are_found_and_aligned(size, width, portrait_points):
    """An 80 px face in 720p and a 40 px face in 1080p, off centre and drifting, are followed in (nearly)
    every frame, with the alignment points within a few percent of the face's width of where they are."""
    w, h = size
    scene = [Placement(width, 0.3 * w, 0.4 * h, dx=20, dy=8)]
    faces, transforms = track_scene(size, scene, frames=25)
    found = [f for f in faces if f is not None]
    assert len(found) >= 0.9 * len(faces)
    errors = [np.abs(f.points - placed(portrait_points, m[0])).max() for f, m in zip(faces, transforms) if f]
    assert np.percentile(errors, 95) < 0.06 * width + 1


def test_the_whole_frame_mesh_missed_them(portrait_points):
    """The case this fixes: the former backend (the mesh's short-range detector on the whole frame) finds no
    80 px face in a 720p frame, the default one does."""
    frame, _ = wide_shot_frame((1280, 720), [Placement(80, 400, 300)])
    with MediapipeBackend(video=False, full_range=False) as before, MediapipeBackend(video=False) as now:
        assert before.detect(frame) == []
        assert len(now.detect(frame)) == 1


GROUP = [Placement(74, 110, 170), Placement(66, 320, 150, mirror=True), Placement(68, 530, 170),
         Placement(70, 110, 330, mirror=True), Placement(66, 320, 320), Placement(68, 530, 330, mirror=True)]


def test_a_group_shot_finds_everyone_and_follows_the_chosen_face():
    """Six faces of about 70 px around a 640 x 440 table: all six are found, and `largest` follows the same
    person (the 74 px one) in at least 95 % of the frames, never another."""
    frame, transforms = wide_shot_frame((640, 440), GROUP)
    with MediapipeBackend(video=False) as backend:
        faces = backend.detect(frame)
    centres = np.array([[p.x, p.y] for p in GROUP])
    found = {int(np.argmin(np.hypot(*(centres - (f.box[:2] + f.box[2:]) / 2).T))) for f in faces}
    assert found == set(range(6))

    followed, _ = track_scene((640, 440), GROUP, frames=25)
    chosen = [int(np.argmin(np.hypot(*(centres - (f.box[:2] + f.box[2:]) / 2).T))) for f in followed if f]
    assert len(chosen) >= 0.95 * len(followed) and set(chosen) == {0}

    # An index rule picks the N-th from the left; a number beyond the faces present says so.
    third, _ = track_scene((640, 440), GROUP, frames=3, rule=2, detect_every=1)
    assert all(abs((f.box[0] + f.box[2]) / 2 - 320) < 40 for f in third)
    with FaceTracker(MediapipeBackend(), rule=7, limits=INFERENCE_FILTER) as tracker:
        assert tracker.track(frame) is None and tracker.miss == MISS_RULE


def test_the_tracker_says_why_a_frame_has_no_face():
    small = make_face(10, 10, 30, 34)  # 20 x 24: under the inference filter's 24 px
    tracker = FaceTracker(ScriptedBackend([[], [small], [make_face(0, 0, 60, 80)]]), limits=INFERENCE_FILTER)
    frame = np.zeros((100, 100, 3), np.uint8)
    assert tracker.track(frame) is None and tracker.miss == MISS_NONE
    assert tracker.track(frame) is None and tracker.miss == MISS_SMALL
    assert tracker.track(frame) is not None and tracker.miss is None


# ---------------------------------------------------------------------------------------------------------------
# Thresholds


def test_the_threshold_decides_which_detections_count(tmp_path):
    """Both backends take a detection threshold: InsightFace's SCRFD keeps scores from it, mediapipe's
    detectors too (the portrait's face scores about 0.9: a threshold of 0.99 loses it)."""
    outputs = scrfd_outputs()
    outputs["score_8"][anchor_index(8, 20, 20, 0)] = 0.4
    path = write_scrfd_constant(tmp_path / "det.onnx", outputs)
    assert len(ScrfdDetector(path).detect(np.zeros((512, 512, 3), np.uint8))[1]) == 0
    assert len(ScrfdDetector(path, threshold=0.3).detect(np.zeros((512, 512, 3), np.uint8))[1]) == 1
    lmk = write_landmark_constant(tmp_path / "lmk.onnx", np.zeros((106, 2)))
    assert InsightFaceBackend(path, lmk, threshold=0.3).detector.threshold == 0.3

    portrait = load_portrait()
    with MediapipeBackend(video=False) as usual, MediapipeBackend(video=False, threshold=0.99) as strict:
        assert len(usual.detect(portrait)) == 1 and strict.detect(portrait) == []
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ConfigError):
            MediapipeBackend(threshold=bad)


def test_cli_face_options_reach_the_job():
    parser = cli.build_parser()
    base = ["infer", "--video", "a", "--audio", "b", "--out", "c"]
    args = parser.parse_args(base + ["--face-threshold", "0.3", "--min-face-fraction", "0.9"])
    assert (args.face_threshold, args.min_face_fraction) == (0.3, 0.9)
    defaults = parser.parse_args(base)
    assert (defaults.face_threshold, defaults.min_face_fraction) == (0.5, 0.0)
    for flag, value in (("--face-threshold", "2"), ("--min-face-fraction", "-1"), ("--face-threshold", "x")):
        with pytest.raises(SystemExit):
            parser.parse_args(base + [flag, value])


# ---------------------------------------------------------------------------------------------------------------
# Whole jobs


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wide")


@pytest.fixture(scope="module")
def speech(work) -> Path:
    return write_wav(work / "speech.wav", synth_speech(1.0, seed=3), 16_000)


def test_a_wide_shot_is_lip_synced_in_nearly_every_frame(lipsync, work, speech):
    """A 1280 x 720 presenter with an 80 px face off centre: the mouth is regenerated in at least 95 % of the
    frames (each changed around the mouth), and nothing far from the face changes."""
    video, transforms = make_wide_shot_clip(work / "wide.mp4", (1280, 720), [Placement(80, 420, 290, dx=15)],
                                            seconds=1.0)
    frames: list[np.ndarray] = []
    result = lipsync.process(video, speech, frames.append, FAST)
    source = list(VideoReader(video).frames())
    assert result.frames_without_face <= 0.05 * result.frames
    synced = 0
    for i, out in enumerate(frames[:len(source)]):
        centre = transforms[i][0] @ np.array([264, 300, 1.0])  # the portrait's mouth
        x, y = (int(v) for v in centre)
        diff = np.abs(out.astype(int) - source[i].astype(int))
        synced += diff[y - 8:y + 8, x - 15:x + 15].mean() > 3
        far = np.ones(diff.shape[:2], bool)
        far[max(0, y - 120):y + 80, max(0, x - 100):x + 100] = False
        assert diff[far].max() == 0
    assert synced >= 0.95 * len(source)


def test_missing_faces_are_explained_and_can_fail_the_job(lipsync, work, speech, caplog, tmp_path):
    """A clip whose face leaves the shot half way: the summary says how many frames had no face and why, a
    warning says so while the job runs, and `min_face_fraction` turns it into an error with no output left."""
    placements = [Placement(150, 200, 300, dx=1400)]  # out of the 1280 px frame after about half a second
    video, _ = make_wide_shot_clip(work / "leaving.mp4", (1280, 720), placements, seconds=1.0)
    with caplog.at_level(logging.WARNING, logger="latentsync.inference"):
        result = lipsync.process(video, speech, lambda frame: None, FAST)
    assert 0.2 * result.frames < result.frames_without_face < 0.8 * result.frames
    assert result.missed == {"no face found": result.frames_without_face}
    assert result.missing_summary() == (f"{result.frames_without_face} without a face, kept as they were: "
                                        f"{result.frames_without_face} with no face found")
    assert any("have no face to sync" in r.getMessage() for r in caplog.records)

    out = tmp_path / "out.mp4"
    with pytest.raises(InputError, match=r"leaving\.mp4: \d+ of \d+ frames have no face to sync: .* at least 90%"):
        lipsync.run(video, speech, out, InferenceOptions(steps=2, min_face_fraction=0.9), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_low_threshold_warns_that_such_faces_are_unusual(lipsync, work, speech, caplog):
    video, _ = make_wide_shot_clip(work / "short.mp4", (640, 360), [Placement(90, 320, 180)], seconds=0.4)
    with caplog.at_level(logging.WARNING, logger="latentsync.inference"):
        result = lipsync.process(video, speech, lambda frame: None, InferenceOptions(steps=1, face_threshold=0.3))
    assert result.frames_without_face == 0
    assert any("not what the models were trained on" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError):
        lipsync.process(video, speech, lambda frame: None, InferenceOptions(face_threshold=0))
