"""Step 3: split each resampled video into shots (spec 6, step 3).

The reference runs the PySceneDetect command line (`detect-adaptive --threshold 2 split-video`), which
re-encodes every shot to its own file, and its skip check looks for a file that never exists, so the stage
reruns every time. We call PySceneDetect's library with the same detector and write nothing: a shot is a time
range of the resampled file (`Item.start_s`/`end_s`, on the 25 fps frame grid), and the alignment step decodes
each final segment once.
"""

from __future__ import annotations

import os
from typing import Any

import av
from scenedetect import AdaptiveDetector, SceneManager, open_video

from .base import Item, Step, StepContext, StepResult

VERSION = 1


def detect_shots(path: str | os.PathLike, fps: float, adaptive_threshold: float,
                 min_scene_frames: int) -> list[tuple[int, int]]:
    """The shots of a constant-rate video as (first frame, end frame exclusive) at `fps`, in order and
    contiguous from frame 0 to the last; one shot for a video without a cut, [] for one without frames.

    PySceneDetect's AdaptiveDetector (the reference's `detect-adaptive`) with its default window, decoded with
    the PyAV backend and downscaled automatically (to about 256 pixels wide) before scoring.
    """
    video = open_video(os.fspath(path), backend="pyav")
    # Opening it restored FFmpeg's default log callback for the whole process (PySceneDetect's PyAV backend
    # does so unless output is suppressed, which risks deadlocks with threaded decoding): quiet it again, or
    # every later encode prints x264's statistics.
    av.logging.set_level(None)
    manager = SceneManager()  # auto_downscale is on by default
    manager.add_detector(AdaptiveDetector(adaptive_threshold=adaptive_threshold, min_scene_len=min_scene_frames))
    manager.detect_scenes(video=video)
    scenes = manager.get_scene_list(start_in_scene=True)  # FrameTimecodes from the first frame's time
    return [(round(start.seconds * fps), round(end.seconds * fps)) for start, end in scenes]


class ShotStep(Step):
    """One item per shot of the resampled video: a time range, no file."""

    name = "shots"

    def params(self) -> dict[str, Any]:
        return {"version": VERSION, "video_fps": self.config.video_fps,
                "shot_adaptive_threshold": self.config.shot_adaptive_threshold,
                "shot_min_scene_frames": self.config.shot_min_scene_frames}

    def run(self, item: Item, ctx: StepContext) -> StepResult:
        fps = self.config.video_fps
        shots = detect_shots(item.path, fps, self.config.shot_adaptive_threshold, self.config.shot_min_scene_frames)
        # An item that is already a stretch of its file keeps to it.
        first = round(item.start_s * fps)
        last = round(item.end_s * fps) if item.end_s is not None else None
        ranges = []
        for start, end in shots:
            start, end = max(start, first), end if last is None else min(end, last)
            if end > start:
                ranges.append((start, end))
        if not ranges:
            return StepResult.reject("no frames", shots=0)
        outputs = [
            item.child(f"shot{k:03d}", start_s=start / fps, end_s=end / fps, meta=item.meta | {"shot": k})
            for k, (start, end) in enumerate(ranges)
        ]
        return StepResult(outputs=outputs, metrics={"shots": len(outputs), "frames": ranges[-1][1] - ranges[0][0]})
