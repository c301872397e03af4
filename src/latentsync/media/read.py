"""Streaming decode of a video to upright RGB frames at a constant frame rate, through FFmpeg's `fps` filter."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ..errors import InputError
from .rotation import frame_rotation, rotate_upright, upright_size
from .streams import first_video_frame, open_media, reason, require_file, video_stream
from .timing import DEFAULT_FPS, as_fraction, round_near_inf

# When a seek lands on a keyframe after the wanted frame (possible: containers index keyframes by decode
# time), step back this far and double the step until it does not.
SEEK_BACKOFF_S = 1.0


class VideoReader:
    """Streaming decode of a video to upright RGB uint8 frames at a constant frame rate.

    Frame-rate conversion is FFmpeg's own `fps` filter (libavfilter/vf_fps.c, through PyAV's filter graph)
    with its defaults (`round=near`, `eof_action=round`), fed the timestamps the `ffmpeg` command line feeds
    it (fftools/ffmpeg_dec.c), so:

    * An input frame with presentation time p goes to output slot round((p - p0) * fps), halves away from
      zero, where p0 is the first decoded frame's time (so the first frame is slot 0). A frame without a
      timestamp gets the previous one's plus its duration.
    * Output frame k is the latest input frame (in decode order) whose slot is <= k: gaps are filled by
      repeating a frame, and of several frames in one slot only the last is shown.
    * The output ends where the input does: at slot round((p_last + d_last - p0) * fps), exclusive, where
      d_last is the last frame's duration (its container duration, else the gap to the frame before it,
      else 1 / average rate): FFmpeg signals end of stream at p_last + d_last. So the last frame is shown for
      its own duration, and a 25 fps constant-rate source comes out frame for frame.

    (`ffmpeg -r 25` as an output option uses the command line's own `-fps_mode cfr` logic instead of this
    filter; it tolerates up to about 0.6 frame of timestamp jitter before dropping or repeating, so on very
    irregular sources the two can pick a neighbouring frame. The filter's rule is exact and reproducible.)

    Frames are rotated upright from the display matrix (as ffmpeg's autorotate does; see `rotation` for why
    on the RGB image), decoded with FFmpeg's frame/slice threads, and converted to RGB with the colour matrix
    the stream declares. Memory does not grow with the video's length. A reader can be iterated any number
    of times; each `frames` call opens the file anew.

    Damaged files: frames decoded before the damage are yielded; if FFmpeg then reports an error,
    `InputError` names the file and how many frames came out; if FFmpeg just stops (a truncated file), the
    video ends there.
    """

    def __init__(self, path: str | os.PathLike, fps: float = DEFAULT_FPS):
        self.path = require_file(path)
        self.fps = as_fraction(fps)
        with open_media(self.path) as container:
            stream = video_stream(container, self.path)
            first = first_video_frame(container, stream, self.path)
            self._time_base = stream.time_base
            rate = stream.average_rate or stream.guessed_rate
            self._average_rate = Fraction(rate) if rate else None
        self._origin = first.pts if first.pts is not None else 0  # p0, in stream time-base ticks
        self.rotation = frame_rotation(first)
        self.width, self.height = upright_size(first, self.rotation)
        self._slots_per_tick = self._time_base * self.fps  # stream ticks -> output slots

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Upright RGB uint8 frames (h, w, 3) with output indices start, ..., stop - 1 (or to the end).

        Yields exactly what a full decode yields at those indices. For start > 0 it seeks to a keyframe at or
        before the frame shown at `start` instead of decoding from the beginning, so cost grows with
        stop - start plus at most one group of pictures. Each yielded array is the caller's to keep.
        """
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        return self._output(start, stop, rgb=True)

    def count(self) -> int:
        """The exact number of output frames, found by decoding the whole video.

        Costs a full decode, without the RGB conversion and rotation: about 10 s per minute of 1080p H.264 on
        two CPU cores (bench/media.py). `probe_video(path).frames_at(fps)` is a free estimate from the
        container's duration.
        """
        return sum(1 for _ in self._output(0, None, rgb=False))

    # ---- internals --------------------------------------------------------------------------------------
    def _open(self):
        container = open_media(self.path)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads
        return container, stream

    def _output(self, start: int, stop: int | None, rgb: bool) -> Iterator:
        """Output frames start..stop-1: RGB arrays if `rgb`, else the filter's frames."""
        if stop is not None and stop <= start:
            return
        container, stream = self._open()
        try:
            timed = self._timed_from(container, stream, start) if start > 0 else None
            if timed is None:  # from the beginning, or no usable keyframe before `start`
                if start > 0:
                    container.close()
                    container, stream = self._open()
                timed = self._timed(self._decoded(container, stream))
            # One converter for the whole pass: swscale then sets up its context once, not per frame (~15%).
            # PyAV's converter rather than `scale,format=rgb24` in the graph: lavfi's scale, even with PyAV's
            # `flags=bilinear`, gives other pixels for BT.2020 10-bit (PQ, HLG) sources, up to 41 levels
            # (measured), so the frames would change.
            to_rgb = VideoReformatter()
            image = None  # the RGB of the frame being shown, kept while the filter repeats it
            for frame, repeated in _constant_rate(timed, stream.time_base, self.fps):
                index = frame.pts  # the fps filter's output time base is 1 / fps: its timestamps are indices
                if stop is not None and index >= stop:
                    return
                if index >= start:
                    if not rgb:
                        yield frame
                    else:
                        if image is None:
                            image = rotate_upright(to_rgb.reformat(frame, format="rgb24").to_ndarray(),
                                                   self.rotation)
                        # Shown again next: hand out a copy and keep the pristine array for the repeat.
                        yield image.copy() if repeated else image
                if not repeated:
                    image = None
        finally:
            container.close()

    def _decoded(self, container, stream) -> Iterator:
        """Decoded frames in decode-output order; FFmpeg errors become one-line InputErrors."""
        count = 0
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    count += 1
                    yield frame
        except av.FFmpegError as e:
            raise InputError(
                f"{self.path}: corrupt video data after {count} decoded frames ({reason(e)})"
            ) from None

    def _timed(self, frames: Iterator) -> Iterator:
        """The frames with the timestamps the ffmpeg command line gives the fps filter (fftools/ffmpeg_dec.c):
        `pts` counted from p0, missing ones extrapolated from the previous frame, and every `duration` set,
        since the filter graph signals end of stream at the last frame's pts + duration."""
        last_pts, last_duration = None, 0
        for frame in frames:
            pts = frame.pts
            if pts is None:
                pts = last_pts + last_duration if last_pts is not None else self._origin
            last_duration = self._duration_estimate(frame, pts, last_pts, last_duration)
            last_pts = pts
            frame.pts, frame.duration = pts - self._origin, last_duration
            yield frame

    def _duration_estimate(self, frame, pts: int, last_pts: int | None, last_duration: int) -> int:
        """How long `frame` is shown, in ticks; FFmpeg's order of preference for containers with timestamps."""
        if frame.duration and frame.duration > 0:
            return frame.duration
        if last_pts is not None and pts > last_pts:
            return pts - last_pts
        if self._average_rate:
            ticks = round(1 / (self._average_rate * self._time_base))
            if ticks > 0:
                return ticks
        return max(last_duration, 1)

    def _timed_from(self, container, stream, start: int) -> Iterator | None:
        """Timed frames from a keyframe whose slot is <= `start`, or None to decode from the start.

        After a seek the decoder restarts at a keyframe K. Every later frame decodes as in a full decode, and
        since K's slot is <= start, the frame shown at `start` is K or a later one. Frames the decoder outputs
        before K (leading pictures of an open GOP) may lack references and are skipped.

        The fps filter then starts its output at K's slot, not at 0. Its slots are absolute (the timestamps
        are counted from p0 as in a full decode), and from K on it holds the same frames as in a full decode,
        so every output from `start` on is the same frame: measured equal to a full decode for every start
        index of constant-rate (24, 25, 30, 60, 30000/1001 fps; with and without B-frames; MP4, MKV, MPEG-TS
        with p0 > 0) and variable-rate test clips.
        """
        # The latest timestamp still in a slot <= start: slot < start + 1/2, i.e. (p - p0) < (start + 1/2) / rate.
        target = self._origin + math.ceil((start + Fraction(1, 2)) / self._slots_per_tick) - 1
        step = max(1, round(SEEK_BACKOFF_S / self._time_base))
        while target > self._origin:
            try:
                container.seek(target, stream=stream, backward=True)
            except av.FFmpegError:
                return None
            timed = self._timed(self._decoded(container, stream))
            for frame in timed:
                if round_near_inf(frame.pts * self._slots_per_tick) > start:
                    break  # passed `start` without a keyframe: seek further back
                if frame.key_frame:
                    return itertools.chain([frame], timed)
            target -= step
            step *= 2
        return None


def _fps_graph(first, time_base: Fraction, fps: Fraction) -> av.filter.Graph:
    """buffer -> fps -> buffersink for frames like `first`, in `time_base`; outputs are in 1 / fps."""
    graph = av.filter.Graph()
    graph.link_nodes(
        graph.add_buffer(width=first.width, height=first.height, format=first.format, time_base=time_base),
        graph.add("fps", f"fps={fps.numerator}/{fps.denominator}:round=near:eof_action=round"),
        graph.add("buffersink"),
    )
    graph.configure()
    return graph


def _pulled(graph: av.filter.Graph) -> Iterator:
    """The frames the graph has ready."""
    while True:
        try:
            yield graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return


def _same_picture(a, b) -> bool:
    """Whether two of the fps filter's outputs are one input frame: a repeat is a new reference to the same
    buffer (`av_frame_clone`). Only meaningful while both are alive, so that the buffer cannot be reused."""
    return a.planes[0].buffer_ptr == b.planes[0].buffer_ptr


def _constant_rate(timed: Iterator, time_base: Fraction, fps: Fraction) -> Iterator[tuple[object, bool]]:
    """(output frame, whether the next output repeats it) from FFmpeg's fps filter fed the `timed` frames.

    The output's `pts` is its index. The graph is built for the first frame's size and pixel format; frames
    that change size mid-stream pass through it unchanged, as the filter only retimes them.
    """
    graph, held = None, None
    for frame in itertools.chain(timed, [None]):
        if graph is None:
            if frame is None:  # no frames at all
                return
            graph = _fps_graph(frame, time_base, fps)
        graph.push(frame)  # None: end of stream, at the last frame's pts + duration
        for out in _pulled(graph):
            if held is not None:
                yield held, _same_picture(held, out)
            held = out
    if held is not None:
        yield held, False
