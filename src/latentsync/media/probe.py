"""What a video is, read from its header and first frame: size as displayed, rate, duration, sound, rotation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .rotation import frame_rotation, upright_size
from .streams import first_video_frame, header_duration_s, open_media, require_file, video_stream
from .timing import DEFAULT_FPS, as_fraction, round_near_inf


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learns about a video without decoding it all.

    `width` and `height` are the displayed size (rotation applied). `fps` is the source's average frame rate,
    `rotation` the display-matrix angle in degrees counter-clockwise (0, 90, 180 or 270; see `rotate_upright`).
    """

    path: Path
    width: int
    height: int
    fps: float
    duration_s: float
    has_audio: bool
    rotation: int

    def frames_at(self, fps: float = DEFAULT_FPS) -> int:
        """Estimated number of frames at a constant `fps`: round(duration_s * fps).

        An estimate from the container's duration; `VideoReader.count` gives the exact number.
        """
        return round_near_inf(Fraction(self.duration_s) * as_fraction(fps))


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, rate, duration, audio presence and rotation of the video at `path`.

    Reads the container header and decodes the first frame (the display matrix travels with frames).
    Raises `InputError` (naming the file) if it is missing, not a readable media file, has no video stream,
    or holds no decodable frame.
    """
    path = require_file(path)
    with open_media(path) as container:
        stream = video_stream(container, path)
        first = first_video_frame(container, stream, path)
        rotation = frame_rotation(first)
        width, height = upright_size(first, rotation)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        duration_s = header_duration_s(container, stream) or 0.0
        return VideoInfo(
            path=path, width=width, height=height, fps=float(rate) if rate else 0.0, duration_s=duration_s,
            has_audio=bool(container.streams.audio), rotation=rotation,
        )
