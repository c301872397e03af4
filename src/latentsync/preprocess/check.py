"""Step 1: reject source videos that cannot feed the pipeline (spec 6, step 1).

The reference opens each video with decord and deletes it in place when that fails (destructive on the input
folder), and a file that opens but breaks half-way gets through. We never touch the input: a bad video is
rejected, with its reason. A video is bad when it cannot be opened, has no video or no audio stream, is shorter
than `min_duration_s`, or does not decode to its end: every video packet (without the costly RGB conversion)
and the whole audio track are decoded, so an FFmpeg error anywhere, or a stream that stops well before the
duration its container declares (a truncated download), is caught here rather than in a later step.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from ..errors import InputError
from ..media import probe_audio, probe_video
from .base import Item, Step, StepContext, StepResult

VERSION = 1
# A stream that decodes to less than this fraction of the duration its container declares (less a little
# slack for rounding) is truncated; `latentsync.inference` uses the same rule for its input.
TRUNCATED_FRACTION = 0.9
TRUNCATED_SLACK_S = 0.08  # two frames at 25 fps


@dataclasses.dataclass
class DecodeReport:
    """What a full decode of a file found: frame and sample counts, how far each stream got (seconds from its
    first timestamp), and the first FFmpeg error with the time it happened at (None if the decode was clean)."""

    frames: int = 0
    video_s: float = 0.0
    audio_samples: int = 0
    audio_s: float = 0.0
    error: str | None = None
    error_at_s: float = 0.0


def decode_all(path: str | Path) -> DecodeReport:
    """Decode every packet of the first video and first audio stream of `path` in one pass (video frames stay
    in YUV, nothing is converted). Stops at the first FFmpeg error, which the report records."""
    report = DecodeReport()
    with av.open(str(path)) as container:
        streams = [container.streams.video[0]] + list(container.streams.audio[:1])
        streams[0].thread_type = "AUTO"  # frame and slice threads
        first: dict[str, Fraction] = {}
        reached: dict[str, Fraction] = {}  # end of the latest frame, per stream type

        def note(kind: str, frame, duration: Fraction) -> None:
            if frame.pts is None:
                return
            start = frame.pts * frame.time_base
            first.setdefault(kind, start)
            reached[kind] = max(reached.get(kind, start), start + duration)

        try:
            for packet in container.demux(streams):
                for frame in packet.decode():
                    if packet.stream.type == "video":
                        report.frames += 1
                        tick = frame.duration * frame.time_base if frame.duration else Fraction(0)
                        note("video", frame, tick)
                    else:
                        report.audio_samples += frame.samples
                        note("audio", frame, Fraction(frame.samples, frame.sample_rate))
        except av.FFmpegError as e:
            report.error = " ".join(str(getattr(e, "strerror", None) or e).split())[:200]
            report.error_at_s = float(max(reached.values(), default=0))
    report.video_s = float(reached.get("video", 0) - first.get("video", 0))
    report.audio_s = float(reached.get("audio", 0) - first.get("audio", 0))
    return report


def _declared_s(stream, container) -> float | None:
    """The duration a stream's header declares, in seconds (the container's if the stream has none)."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _truncated(decoded_s: float, declared_s: float | None) -> bool:
    return declared_s is not None and decoded_s < TRUNCATED_FRACTION * declared_s - TRUNCATED_SLACK_S


class CheckStep(Step):
    """Reject unreadable, silent, too short or damaged videos; pass the others on with what was measured."""

    name = "check"

    def params(self) -> dict[str, Any]:
        return {"version": VERSION, "min_duration_s": self.config.min_duration_s,
                "truncated_fraction": TRUNCATED_FRACTION}

    def run(self, item: Item, ctx: StepContext) -> StepResult:
        path = Path(item.path)
        try:
            info = probe_video(path)  # opens, finds the video stream, decodes its first frame
        except InputError as e:
            return StepResult.reject(_without_path(e, path))
        facts: dict[str, Any] = {"fps": info.fps, "duration_s": info.duration_s, "width": info.width,
                                 "height": info.height}
        if not info.has_audio:
            return StepResult.reject("no audio stream", **facts)
        try:
            facts["audio_sample_rate"], facts["audio_channels"] = probe_audio(path)
        except InputError as e:
            return StepResult.reject(_without_path(e, path), **facts)
        if info.duration_s < self.config.min_duration_s:
            return StepResult.reject(
                f"too short: {info.duration_s:.1f} s < {self.config.min_duration_s:.1f} s", **facts)

        report = decode_all(path)
        facts["frames"] = report.frames
        if report.error is not None:
            return StepResult.reject(
                f"corrupt: decoding failed at {report.error_at_s:.1f} s ({report.error})", **facts)
        with av.open(str(path)) as container:
            video_declared = _declared_s(container.streams.video[0], container)
            audio_declared = _declared_s(container.streams.audio[0], container)
        if _truncated(report.video_s, video_declared):
            return StepResult.reject(
                f"truncated: video decodes to {report.video_s:.1f} s of {video_declared:.1f} s", **facts)
        if _truncated(report.audio_s, audio_declared):
            return StepResult.reject(
                f"truncated: audio decodes to {report.audio_s:.1f} s of {audio_declared:.1f} s", **facts)
        return StepResult(outputs=[dataclasses.replace(item, meta=item.meta | facts)], metrics=facts)


def _without_path(error: InputError, path: Path) -> str:
    """An InputError's message without its leading "<path>: " (the runner records which item it was)."""
    message, prefix = str(error), f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
