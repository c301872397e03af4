"""Step 4: cut each shot into segments of 5-10 s (spec 6, step 4).

The reference stream-copies with ffmpeg's segment muxer (`-segment_time 5`), so cuts land on the next keyframe
after 5 s: segment lengths depend on the encoder's GOP, and the skip check never matches. We cut on exact
frame boundaries instead: a shot of d seconds becomes floor(d / 5) segments of equal length (each in [5, 10) s),
as time ranges of the resampled file; the alignment step decodes each once. A shot shorter than 5 s is kept
whole if it lasts at least `min_segment_s`.
"""

from __future__ import annotations

import math
from typing import Any

from ..media import probe_video
from .base import Item, Step, StepContext, StepResult

VERSION = 1
# Times are multiples of 1/fps held in floats: a time within this many frames of a frame boundary is on it.
FRAME_EPS = 1e-6


def segment_bounds(start_s: float, end_s: float, fps: float, min_s: float, max_s: float,
                   min_keep_s: float) -> list[tuple[float, float]]:
    """Split the shot [start_s, end_s) into contiguous (start, end) segments on the 1/fps frame grid.

    Only whole frames inside the shot count (the shot's bounds are rounded inwards to the grid). With d seconds
    of whole frames: d >= min_s gives n = floor(d / min_s) segments of equal length to within a frame, each
    in [min_s, 2 min_s) and so shorter than `max_s` (which must be >= 2 min_s); min_keep_s <= d < min_s gives
    one segment; a shorter shot gives [].
    """
    if fps <= 0 or min_s <= 0 or max_s < 2 * min_s:
        raise ValueError(f"need fps > 0 and 0 < 2 * min_s <= max_s, got fps={fps}, min_s={min_s}, max_s={max_s}")
    first = math.ceil(start_s * fps - FRAME_EPS)
    stop = math.floor(end_s * fps + FRAME_EPS)
    frames = stop - first
    min_frames = math.ceil(min_s * fps - FRAME_EPS)  # whole frames, so every segment lasts at least min_s
    if frames < min_frames:
        return [(first / fps, stop / fps)] if frames > 0 and frames >= min_keep_s * fps - FRAME_EPS else []
    n = frames // min_frames
    # Boundary k at round(k * frames / n) (integer arithmetic): lengths differ by at most one frame.
    bounds = [first + (2 * k * frames + n) // (2 * n) for k in range(n + 1)]
    return [(a / fps, b / fps) for a, b in zip(bounds, bounds[1:])]


class SegmentStep(Step):
    """Cut a shot (a time range) into segment items (time ranges); reject a shot that is too short."""

    name = "segments"

    def params(self) -> dict[str, Any]:
        c = self.config
        return {"version": VERSION, "video_fps": c.video_fps, "segment_min_s": c.segment_min_s,
                "segment_max_s": c.segment_max_s, "min_segment_s": c.min_segment_s}

    def run(self, item: Item, ctx: StepContext) -> StepResult:
        c = self.config
        end_s = item.end_s
        if end_s is None:  # a whole file: its length as measured by the resample step, else its header
            end_s = item.meta.get("duration_s") or probe_video(item.path).duration_s
        duration_s = end_s - item.start_s
        bounds = segment_bounds(item.start_s, end_s, c.video_fps, c.segment_min_s, c.segment_max_s,
                                c.min_segment_s)
        if not bounds:
            return StepResult.reject(f"too short: {duration_s:.2f} s < {c.min_segment_s:.1f} s",
                                     duration_s=duration_s)
        outputs = [item.child(f"seg{k:02d}", start_s=a, end_s=b, meta=item.meta | {"segment": k})
                   for k, (a, b) in enumerate(bounds)]
        return StepResult(outputs=outputs, metrics={"segments": len(outputs), "duration_s": duration_s})
