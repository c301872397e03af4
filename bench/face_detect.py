"""How often faces in wide shots are found, how well their alignment points sit, and what that costs per
frame (issue "Faces in real footage").

Clips are made in memory from the packaged portrait (`latentsync.demo.wide_shot_frame`, 25 fps, no encoding),
in 1280 x 720 and 1920 x 1080 frames:

(a) "still": one face alone, off centre (its centre at 30% / 40% of the frame), at each face width
    (32, 40, 48, 64, 80, 120 and 200 px);
(b) "moving": the same, drifting slowly (20 px/s right, 8 px/s down);
(c) "group still" / "group moving": five copies of 66-76 px (every other one mirrored) spread over the frame.

Each backend runs the way inference runs it: `FaceTracker(backend, rule="largest", detect_every=5,
limits=INFERENCE_FILTER)`, reset between clips. A frame counts as found when the tracked face's box centre lies
within half a face width of a pasted face's centre; a tracked face near none is "false". The alignment error
is the distance of each of the three points from where the full-resolution portrait's points (mediapipe's face
mesh on the 600 x 512 image) land under the paste's affine: a measure of consistency with the large face, not
of anatomical truth. A second instance of each backend runs `detect` on every frame: its cost is the raw
per-frame detection cost, and "all %" is the share of the pasted faces it finds (boxes passing
INFERENCE_FILTER). For the tracked face, "same" is the share of found frames on the placement of the first
found frame; in the groups that should be the largest face.

Backends: "mediapipe (before)" (`MediapipeBackend(video=True, full_range=False)`: the face mesh on the whole
frame with its own short-range detector), "mediapipe (now)" (`MediapipeBackend()`: the full-range detector on
the frame and its tiles, the face mesh on a crop, `refine` between detections), and InsightFace. Without the
real buffalo_l files (offline here), InsightFace runs on tiny ONNX models of the same signatures with constant
outputs (`tests/face_util.py`): one fixed detection and fixed landmarks, so every step of its path runs
(letterbox, SCRFD decoding and NMS, the landmark crop, tracking between detections) but the networks' own
time is not in it. Only its cost at 1080p is reported then; with `--insightface DIR` (a folder holding
det_10g.onnx and 2d106det.onnx) it is measured like the others.

Baseline: "mediapipe (before)"; the summary gives each backend's cost per 1080p frame against it.

    .venv/bin/python bench/face_detect.py [--frames 25] [--widths 32 48 ...] [--quick] [--insightface DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from latentsync.demo import DEMO_FPS, PORTRAIT_FACE_BOX, Placement, load_portrait, wide_shot_frame
from latentsync.face.insightface import InsightFaceBackend
from latentsync.face.mediapipe import MediapipeBackend
from latentsync.face.tracking import INFERENCE_FILTER, FaceTracker
from latentsync.inference import DEFAULT_DETECT_EVERY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import face_util  # noqa: E402  (tiny ONNX models with InsightFace's signatures)

SIZES = ((1280, 720), (1920, 1080))
COST_SIZE = (1920, 1080)  # the frame size of the cost summary
WIDTHS = (32, 40, 48, 64, 80, 120, 200)  # px, face box width of the pasted portrait
QUICK_WIDTHS = (32, 120)
DEFAULT_FRAMES = 25  # per clip: one second at 25 fps
QUICK_FRAMES = 5
SOLO_AT = (0.30, 0.40)  # the lone face's centre, fractions of the frame's width and height
DRIFT = (20.0, 8.0)  # px/s, a slow pan
# The group: (face width px, centre as fractions of the frame, mirrored). Copies are 2.5x their face width
# wide and 3x tall, so at these spacings no copy covers another's face in a 720p frame.
GROUP = (
    (68, 0.12, 0.35, False),
    (72, 0.31, 0.65, True),
    (66, 0.50, 0.35, False),
    (76, 0.69, 0.65, True),  # the largest: the one rule "largest" should pick
    (70, 0.88, 0.35, False),
)
MATCH_RADIUS = 0.5  # a box centre within this many face widths of a pasted face's centre is that face
PERCENTILE = 95
RULE = "largest"
FACE_CENTRE = np.array([(PORTRAIT_FACE_BOX[0] + PORTRAIT_FACE_BOX[2]) / 2,
                        (PORTRAIT_FACE_BOX[1] + PORTRAIT_FACE_BOX[3]) / 2, 1.0])  # portrait px, homogeneous
MIRRORED_POINTS = [1, 0, 2]  # a mirrored copy shows the first brow on the image's right
# The synthetic SCRFD's one detection: a stride-32 anchor at grid cell (5, 4), a 64 px box of the 512 px input.
SYNTHETIC_STRIDE, SYNTHETIC_CELL, SYNTHETIC_SCORE = 32, (5, 4), 0.9
SYNTHETIC_LANDMARK_SPREAD = 0.4  # of the landmark crop's half side: a face-sized ring of fixed points


@dataclass
class Clip:
    size: tuple[int, int]
    scene: str
    width: str  # the face width, for the table
    placements: list[Placement]
    largest: int  # index of the placement rule "largest" should pick


@dataclass
class Tally:
    """What one backend did on one clip."""

    frames: int = 0
    found: int = 0  # tracked face on a pasted face
    false: int = 0  # tracked face on none
    errors: list[float] = field(default_factory=list)  # px, per alignment point
    relative: list[float] = field(default_factory=list)  # error / face width
    tracked: list[int] = field(default_factory=list)  # placement of each found frame
    misses: Counter = field(default_factory=Counter)  # FaceTracker.miss of frames without a face
    faces: int = 0  # pasted faces over all frames
    faces_detected: int = 0  # of those, found by `detect`
    track_s: float = 0.0
    detect_s: float = 0.0


class Runner:
    """One backend under test: a tracker as inference sets it up, and a second instance for raw `detect`."""

    def __init__(self, name: str, make_backend, accuracy: bool = True):
        self.name = name
        self.accuracy = accuracy  # False: cost only (synthetic weights detect nothing real)
        self.tracker = FaceTracker(make_backend(), rule=RULE, detect_every=DEFAULT_DETECT_EVERY,
                                   limits=INFERENCE_FILTER)
        self.detector = make_backend()
        self.reset_detector = getattr(self.detector, "reset", lambda: None)

    def warm_up(self, frame: np.ndarray) -> None:
        """Start the graphs and sessions (mediapipe builds them on first use) outside the timings."""
        self.tracker.track(frame)
        self.detector.detect(frame)

    def run(self, clip: Clip, frames: list[tuple[np.ndarray, list[np.ndarray]]], truth: np.ndarray) -> Tally:
        self.tracker.reset()
        self.reset_detector()
        tally = Tally()
        widths = np.array([p.width for p in clip.placements])
        for frame, affines in frames:
            centres = np.array([m @ FACE_CENTRE for m in affines])  # (faces, 2) px
            t0 = time.perf_counter()
            face = self.tracker.track(frame)
            t1 = time.perf_counter()
            found = self.detector.detect(frame)
            t2 = time.perf_counter()
            tally.track_s += t1 - t0
            tally.detect_s += t2 - t1
            tally.frames += 1
            tally.faces += len(clip.placements)
            tally.faces_detected += len({nearest(f.box, centres, widths) for f in found
                                         if INFERENCE_FILTER.accepts(f)} - {None})
            if face is None:
                tally.misses[self.tracker.miss] += 1
                continue
            k = nearest(face.box, centres, widths)
            if k is None:
                tally.false += 1
                continue
            m, place = affines[k], clip.placements[k]
            expected = truth @ m[:, :2].T + m[:, 2]  # (3, 2) px
            if place.mirror:
                expected = expected[MIRRORED_POINTS]
            errors = np.linalg.norm(np.asarray(face.points, np.float64) - expected, axis=1)
            tally.found += 1
            tally.errors.extend(errors)
            tally.relative.extend(errors / place.width)
            tally.tracked.append(k)
        return tally

    def close(self) -> None:
        self.tracker.close()
        self.detector.close()


def nearest(box: np.ndarray, centres: np.ndarray, widths: np.ndarray) -> int | None:
    """The pasted face whose centre is nearest the box centre, if within MATCH_RADIUS of its width; else None."""
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    distance = np.linalg.norm(centres - centre, axis=1)
    k = int(np.argmin(distance))
    return k if distance[k] <= MATCH_RADIUS * widths[k] else None


def make_clips(size: tuple[int, int], widths: tuple[int, ...]) -> list[Clip]:
    w, h = size
    x, y = SOLO_AT[0] * w, SOLO_AT[1] * h
    clips = []
    for width in widths:
        clips.append(Clip(size, "still", str(width), [Placement(width, x, y)], 0))
        clips.append(Clip(size, "moving", str(width), [Placement(width, x, y, *DRIFT)], 0))
    for scene, drift in (("group still", (0.0, 0.0)), ("group moving", DRIFT)):
        group = [Placement(gw, fx * w, fy * h, *drift, mirror=mirror) for gw, fx, fy, mirror in GROUP]
        label = f"{min(g[0] for g in GROUP)}-{max(g[0] for g in GROUP)}"
        clips.append(Clip(size, scene, label, group, int(np.argmax([g[0] for g in GROUP]))))
    return clips


def portrait_points() -> np.ndarray:
    """The alignment points (3, 2) of the full-resolution portrait: the ground truth for every pasted copy."""
    with MediapipeBackend(video=False, full_range=False) as backend:
        faces = backend.detect(load_portrait())
    if len(faces) != 1:
        raise SystemExit(f"expected one face in the packaged portrait, found {len(faces)}")
    return np.asarray(faces[0].points, np.float64)


def write_synthetic_insightface(folder: Path) -> tuple[Path, Path]:
    """det_10g.onnx / 2d106det.onnx stand-ins: one fixed detection, fixed face-shaped landmarks."""
    outputs = face_util.scrfd_outputs()
    cx, cy = SYNTHETIC_CELL
    outputs[f"score_{SYNTHETIC_STRIDE}"][face_util.anchor_index(SYNTHETIC_STRIDE, cx, cy, 0)] = SYNTHETIC_SCORE
    det = face_util.write_scrfd_constant(folder / "det_10g.onnx", outputs)
    lmk = face_util.write_landmark_constant(folder / "2d106det.onnx",
                                            face_util.BLOB_TEMPLATE * SYNTHETIC_LANDMARK_SPREAD)
    return det, lmk


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row(runner: Runner, clip: Clip, tally: Tally) -> str:
    n = tally.frames
    errors = np.array(tally.errors)
    mean = float(errors.mean()) if len(errors) else None
    p95 = float(np.percentile(errors, PERCENTILE)) if len(errors) else None
    relative = 100 * float(np.mean(tally.relative)) if tally.relative else None
    notes = [f"{reason} x{count}" for reason, count in tally.misses.most_common()]
    if tally.tracked:
        same = 100 * np.mean(np.array(tally.tracked) == tally.tracked[0])
        if len(clip.placements) > 1:
            which = "the largest" if tally.tracked[0] == clip.largest else f"not the largest (#{tally.tracked[0]})"
            notes.append(f"same {same:.0f}%, {which}")
        elif same < 100:
            notes.append(f"same {same:.0f}%")
    return (f"{runner.name:20s} {clip.width:>6s} {clip.scene:13s} {100 * tally.found / n:7.1f} {tally.false:5d} "
            f"{fmt(mean, '6.2f'):>6s} {fmt(p95, '6.2f'):>6s} {fmt(relative, '6.1f'):>6s} "
            f"{100 * tally.faces_detected / tally.faces:6.1f} {1000 * tally.track_s / n:8.1f} "
            f"{1000 * tally.detect_s / n:9.1f}  {'; '.join(notes)}")


HEADER = (f"{'backend':20s} {'width':>6s} {'scene':13s} {'found%':>7s} {'false':>5s} {'err px':>6s} "
          f"{'p95 px':>6s} {'err %w':>6s} {'all %':>6s} {'track ms':>8s} {'detect ms':>9s}  notes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=None, help=f"frames per clip (default {DEFAULT_FRAMES})")
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="face widths, px (default all six)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK_FRAMES} frames per clip, widths {QUICK_WIDTHS}")
    parser.add_argument("--insightface", type=Path, default=None, metavar="DIR",
                        help="a folder with the real det_10g.onnx and 2d106det.onnx (default: synthetic models)")
    args = parser.parse_args()
    n = args.frames or (QUICK_FRAMES if args.quick else DEFAULT_FRAMES)
    widths = tuple(args.widths or (QUICK_WIDTHS if args.quick else WIDTHS))
    if args.insightface is not None:
        missing = [name for name in ("det_10g.onnx", "2d106det.onnx") if not (args.insightface / name).is_file()]
        if missing:
            parser.error(f"--insightface {args.insightface}: missing {', '.join(missing)}")

    from latentsync import stderr_filter

    stderr_filter.install()  # mediapipe's start-up notices

    truth = portrait_points()
    workdir = tempfile.TemporaryDirectory(prefix="latentsync-bench-")
    if args.insightface is not None:
        det, lmk = args.insightface / "det_10g.onnx", args.insightface / "2d106det.onnx"
        insightface_name, real = "insightface", True
    else:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # the constant landmark model's unused node is reported
        det, lmk = write_synthetic_insightface(Path(workdir.name))
        insightface_name, real = "insightface (synth)", False
    runners = [
        Runner("mediapipe (before)", lambda: MediapipeBackend(video=True, full_range=False)),
        Runner("mediapipe (now)", lambda: MediapipeBackend()),
        Runner(insightface_name, lambda: InsightFaceBackend(det, lmk), accuracy=real),
    ]
    providers = runners[2].detector.detector.session.get_providers()
    print(f"{n} frames per clip at {DEMO_FPS:g} fps, FaceTracker(rule={RULE!r}, detect_every={DEFAULT_DETECT_EVERY}, "
          f"INFERENCE_FILTER: boxes from {INFERENCE_FILTER.min_width:g} px), {os.cpu_count()} CPU cores, "
          f"cv2 threads {cv2.getNumThreads()}, onnxruntime {providers[0]}")
    print(f"ground truth: the full portrait's alignment points {truth.astype(int).tolist()} under each paste's affine")
    if not real:
        print("insightface: synthetic ONNX models (constant outputs) stand in for buffalo_l; its detection rate "
              "needs the real det_10g.onnx and 2d106det.onnx, not available offline (--insightface DIR); only its "
              "cost at 1080p is reported, without the networks' own time")
    warm, _ = wide_shot_frame(COST_SIZE, [Placement(120, *(f * s for f, s in zip(SOLO_AT, COST_SIZE)))])
    for runner in runners:
        runner.warm_up(warm)

    cost = {runner.name: [0, 0.0, 0.0] for runner in runners}  # frames, track s, detect s at COST_SIZE
    for size in SIZES:
        print(f"\n{size[0]}x{size[1]}")
        print(HEADER)
        lines: dict[str, list[str]] = {runner.name: [] for runner in runners}
        for clip in make_clips(size, widths):
            frames = [wide_shot_frame(size, clip.placements, i / DEMO_FPS) for i in range(n)]
            for runner in runners:
                if not runner.accuracy and size != COST_SIZE:
                    continue
                tally = runner.run(clip, frames, truth)
                if runner.accuracy:
                    lines[runner.name].append(row(runner, clip, tally))
                if size == COST_SIZE:
                    cost[runner.name][0] += tally.frames
                    cost[runner.name][1] += tally.track_s
                    cost[runner.name][2] += tally.detect_s
        for runner in runners:
            for line in lines[runner.name]:
                print(line)
    for runner in runners:
        runner.close()
    workdir.cleanup()

    print(f"\ncost per frame at {COST_SIZE[0]}x{COST_SIZE[1]}, all its clips "
          f"(track: FaceTracker, detect_every={DEFAULT_DETECT_EVERY}; detect: backend.detect on every frame)")
    print(f"{'backend':20s} {'frames':>6s} {'track ms':>9s} {'x before':>9s} {'detect ms':>10s} {'x before':>9s}")
    base_frames, base_track, base_detect = cost[runners[0].name]
    for runner in runners:
        frames, track_s, detect_s = cost[runner.name]
        note = "  (synthetic models: without the networks' time)" if not runner.accuracy else ""
        print(f"{runner.name:20s} {frames:6d} {1000 * track_s / frames:9.1f} "
              f"{(track_s / frames) / (base_track / base_frames):9.1f} {1000 * detect_s / frames:10.1f} "
              f"{(detect_s / frames) / (base_detect / base_frames):9.1f}{note}")
    now_frames, now_track, now_detect = cost[runners[1].name]
    print(f"now vs before at 1080p: tracking {(now_track / now_frames) / (base_track / base_frames):.1f}x the time "
          f"per frame, detection {(now_detect / now_frames) / (base_detect / base_frames):.1f}x")


if __name__ == "__main__":
    main()
