"""Opening an input file and finding its streams, with the one-line `InputError`s a user can cause (a missing
file, a file that is not media, a missing track, an undecodable stream). Shared by the rest of the package."""

from __future__ import annotations

import os
from pathlib import Path

import av

from ..errors import InputError

REASON_MAX_CHARS = 200  # an FFmpeg message is cut here so that an error stays one readable line


def reason(e: BaseException) -> str:
    """A short, single-line description of an FFmpeg error."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:REASON_MAX_CHARS]


def require_file(path: str | os.PathLike) -> Path:
    """`path` as a Path if it is an existing file, else `InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    return path


def open_media(path: Path):
    """An input container, or `InputError` if FFmpeg cannot read the file."""
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable audio or video file ({reason(e)})") from None


def audio_stream(container, path: Path):
    """The first audio stream, or `InputError` if there is none."""
    if not container.streams.audio:
        raise InputError(f"{path}: has no audio track")
    return container.streams.audio[0]


def video_stream(container, path: Path):
    """The first video stream, or `InputError` if there is none or FFmpeg has no decoder for it."""
    if not container.streams.video:
        raise InputError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise InputError(f"{path}: unsupported video codec")
    return stream


def first_video_frame(container, stream, path: Path):
    """The first decoded frame of `stream`, or `InputError` if there is none."""
    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as e:
        raise InputError(f"{path}: corrupt video stream ({reason(e)})") from None
    raise InputError(f"{path}: the video stream has no decodable frame")


def header_duration_s(container, stream) -> float | None:
    """Seconds of `stream` as the headers give it: the stream's own duration, else the container's; None when
    neither says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base  # microseconds
    return None
