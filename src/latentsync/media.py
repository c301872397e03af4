"""Reading and writing media with PyAV (FFmpeg's libraries in-process; no `ffmpeg` binary, no shell).

Audio: `decode_audio` turns any file FFmpeg can read (a WAV, an MP3, the audio track of an MP4, ...) into
mono float32 samples at a chosen rate. It reproduces what the reference gets from
`ffmpeg -i FILE -ac 1 -ar 16000 -f s16le -` followed by `/ 32768` (Whisper's `load_audio`): FFmpeg's own
resampler converts to signed 16-bit mono at the target rate, then we scale to [-1, 1).

Video: `probe_video` reads a video's size, rate, duration and rotation; `VideoReader` streams upright RGB
frames converted to a constant frame rate exactly as FFmpeg's `fps` filter would, and can start anywhere by
seeking; `VideoWriter` encodes RGB frames to H.264 in one pass, muxes the user's own audio (its rate and
channels, as AAC) and replaces the destination atomically. Memory does not grow with the video's length.

Problems a user can cause (a missing file, a file that is not media, a video without sound, an empty track,
an output folder that cannot be written) raise `InputError` with one line naming the file or folder.
"""

from __future__ import annotations

import itertools
import math
import os
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, VideoReformatter

from .defaults import DEFAULT_CRF, DEFAULT_PRESET, FPS, SAMPLE_RATE_HZ, X264_PRESETS  # noqa: F401 - media's own
from .errors import InputError
from .fileio import atomic_write, remove_stale_temporaries, temporary_name

DEFAULT_SAMPLE_RATE_HZ = SAMPLE_RATE_HZ
S16_FULL_SCALE = 32_768.0  # int16 -> float: the divisor Whisper's load_audio uses
S16_MAX = 32_767
S16_BYTES = 2


def decode_audio(path: str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE_HZ) -> np.ndarray:
    """The first audio track of `path` as mono float32 samples at `sample_rate` Hz, shape (n,).

    Works for audio files and for videos with an audio track. Raises `InputError` (naming the file) if the
    file is missing, is not a readable media file, has no audio track, or holds no samples.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable audio or video file ({_reason(e)})") from None
    with container:
        if not container.streams.audio:
            raise InputError(f"{path}: has no audio track")
        stream = container.streams.audio[0]
        # FFmpeg's resampler does the rate conversion and the downmix, as the ffmpeg command line would.
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks.extend(_s16_mono(f) for f in resampler.resample(frame))
            # The resampler holds back a few samples of filter delay until flushed.
            chunks.extend(_s16_mono(f) for f in resampler.resample(None))
        except av.FFmpegError as e:
            raise InputError(f"{path}: corrupt audio track ({_reason(e)})") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    if samples.size == 0:
        raise InputError(f"{path}: the audio track is empty")
    return samples.astype(np.float32) / np.float32(S16_FULL_SCALE)


def probe_audio(path: str | os.PathLike) -> tuple[int, int]:
    """(sample rate, channels) of the first audio track of `path`, after decoding its first samples: a cheap
    check that the file is usable, for failing fast before a long job. Raises InputError like `decode_audio`."""
    path = _require_file(path)
    with _open_media(path) as container:
        stream = _audio_stream(container, path)
        try:
            for frame in container.decode(stream):
                if frame.samples > 0:
                    return frame.sample_rate, len(frame.layout.channels)
        except av.FFmpegError as e:
            raise InputError(f"{path}: corrupt audio track ({_reason(e)})") from None
    raise InputError(f"{path}: the audio track is empty")


def write_wav(path: str | os.PathLike, samples, sample_rate: int = DEFAULT_SAMPLE_RATE_HZ) -> Path:
    """Write float samples in [-1, 1] as a 16-bit PCM WAV; `samples` is (n,) mono or (n, channels).

    Values outside [-1, 1] are clipped. The file is written under a temporary name and renamed into place.
    """
    path = Path(path)
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]  # (n,) -> (n, 1)
    if data.ndim != 2:
        raise ValueError(f"samples must be (n,) or (n, channels), got shape {data.shape}")
    # (n, c) interleaved int16, scaled the way load_audio divides (x * 32768), clipped to the int16 range.
    pcm = np.clip(np.round(data * S16_FULL_SCALE), -S16_FULL_SCALE, S16_MAX).astype("<i2")
    with atomic_write(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(S16_BYTES)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return path


def _s16_mono(frame) -> np.ndarray:
    """(n,) int16 samples of a packed s16 mono frame."""
    return frame.to_ndarray().reshape(-1)  # (1, n) -> (n,)


def _reason(e: BaseException) -> str:
    """A short, single-line description of an FFmpeg error."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:200]


# ---------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------

DEFAULT_FPS = FPS  # Whisper chunks and SyncNet windows are laid out at 25 fps
# Output containers by file extension (FFmpeg muxer names). MP4 and MOV get `+faststart`: the index (moov)
# is moved to the front so players can start before the whole file has arrived.
CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
FASTSTART_FORMATS = {"mp4", "mov"}
VIDEO_CODEC = "libx264"
VIDEO_PIX_FMT = "yuv420p"  # 4:2:0, the format every player decodes; needs even width and height
CHROMA_SUBSAMPLING = 2  # 4:2:0 halves the chroma planes in both directions
AUDIO_CODEC = "aac"
AAC_BIT_RATE_PER_CHANNEL_BPS = 96_000  # 192 kb/s for stereo: transparent for speech and music
AAC_FRAME_SAMPLES = 1024  # samples per channel in one AAC frame
# FFmpeg's AAC encoder writes only these channel layouts natively (aacenctab.h); others are downmixed to stereo.
AAC_LAYOUTS = {"mono", "stereo", "3.0", "4.0", "5.0", "5.1", "7.1"}
AAC_FALLBACK_LAYOUT = "stereo"
AAC_FALLBACK_RATE_HZ = 48_000  # used only when the source rate is not one AAC can signal
# Display-matrix angles within this many degrees of a multiple of 90 are applied; others are ignored, as
# ffmpeg's autorotate does (fftools: it only inserts transpose/flip filters near 90, 180, 270 degrees).
ROTATION_TOLERANCE_DEG = 1.0
QUARTER_TURN_DEG = 90
FULL_TURN_DEG = 360
# When a seek lands on a keyframe after the wanted frame (possible: containers index keyframes by decode
# time), step back this far and double the step until it does not.
SEEK_BACKOFF_S = 1.0
# Output rates given as floats (25.0, 29.97) are turned into exact fractions with at most this denominator;
# NTSC rates such as 30000/1001 come out exactly.
FPS_MAX_DENOMINATOR = 1_000_000
# Temporary output names: `.<name>.<pid>-<random hex>.partial<ext>` next to the destination (`fileio`).
PARTIAL_TOKEN_BYTES = 4
PARTIAL_NAME_ATTEMPTS = 100


def _round_near_inf(x: Fraction) -> int:
    """Round to the nearest integer, halves away from zero: FFmpeg's AV_ROUND_NEAR_INF (fps `round=near`)."""
    magnitude = math.floor(abs(x) + Fraction(1, 2))
    return magnitude if x >= 0 else -magnitude


def _as_fraction(fps) -> Fraction:
    """An exact frame rate from an int, float or Fraction."""
    rate = Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _quarter_turns(degrees: float) -> int:
    """Counter-clockwise quarter turns (0-3) for a display-matrix angle, 0 if it is not a right angle."""
    turns = round(degrees / QUARTER_TURN_DEG)
    if abs(degrees - turns * QUARTER_TURN_DEG) > ROTATION_TOLERANCE_DEG:
        return 0
    return turns % (FULL_TURN_DEG // QUARTER_TURN_DEG)


def rotate_upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """Apply a display rotation to a decoded (h, w, c) image, as ffmpeg's autorotate does.

    `rotation` is the angle of the stream's display matrix in degrees counter-clockwise (what FFmpeg's
    `av_display_rotation_get` and PyAV's `VideoFrame.rotation` return; a phone held upright typically records
    -90). Only multiples of 90 are applied. Returns a C-contiguous array (a copy unless `rotation` is 0).
    Mirroring in the display matrix is not applied.
    """
    turns = _quarter_turns(rotation)
    if turns == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=turns))  # rot90 turns counter-clockwise for k > 0


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
        return _round_near_inf(Fraction(self.duration_s) * _as_fraction(fps))


def audio_duration_s(path: str | os.PathLike) -> float:
    """Seconds of the first audio track of `path`: from the stream or container header, or by decoding it when
    neither says. Raises InputError (naming the file) like `probe_audio`."""
    path = _require_file(path)
    with _open_media(path) as container:
        stream = _audio_stream(container, path)
        seconds = _header_duration_s(container, stream)
        if seconds is not None:
            return seconds
        samples, rate = 0, 0
        try:
            for frame in container.decode(stream):
                samples, rate = samples + frame.samples, frame.sample_rate
        except av.FFmpegError as e:
            raise InputError(f"{path}: corrupt audio track ({_reason(e)})") from None
        return samples / rate if rate else 0.0


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, rate, duration, audio presence and rotation of the video at `path`.

    Reads the container header and decodes the first frame (the display matrix travels with frames).
    Raises `InputError` (naming the file) if it is missing, not a readable media file, has no video stream,
    or holds no decodable frame.
    """
    path = _require_file(path)
    with _open_media(path) as container:
        stream = _video_stream(container, path)
        first = _first_video_frame(container, stream, path)
        rotation = _quarter_turns(first.rotation) * QUARTER_TURN_DEG
        width, height = first.width, first.height
        if rotation % (2 * QUARTER_TURN_DEG):
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        duration_s = _header_duration_s(container, stream) or 0.0
        return VideoInfo(
            path=path, width=width, height=height, fps=float(rate) if rate else 0.0, duration_s=duration_s,
            has_audio=bool(container.streams.audio), rotation=rotation,
        )


class VideoReader:
    """Streaming decode of a video to upright RGB uint8 frames at a constant frame rate.

    Frame-rate conversion follows FFmpeg's `fps` filter with its defaults (`round=near`, `eof_action=round`),
    given the timestamps the `ffmpeg` command line feeds it:

    * An input frame with presentation time p goes to output slot round((p - p0) * fps), halves away from
      zero, where p0 is the first decoded frame's time (so the first frame is slot 0).
    * Output frame k is the latest input frame (in decode order) whose slot is <= k: gaps are filled by
      repeating a frame, and of several frames in one slot only the last is shown.
    * The output ends where the input does: at slot round((p_last + d_last - p0) * fps), exclusive, where
      d_last is the last frame's duration (its container duration, else the gap to the frame before it,
      else 1 / average rate): FFmpeg signals end of stream at p_last + d_last. So the last frame is shown for
      its own duration, and a 25 fps constant-rate source comes out frame for frame.

    (`ffmpeg -r 25` as an output option uses the command line's own `-fps_mode cfr` logic instead of this
    filter; it tolerates up to about 0.6 frame of timestamp jitter before dropping or repeating, so on very
    irregular sources the two can pick a neighbouring frame. The filter's rule is exact and reproducible.)

    Frames are rotated upright from the display matrix (as ffmpeg's autorotate does), decoded with FFmpeg's
    frame/slice threads, and converted to RGB with the colour matrix the stream declares. Memory does not grow
    with the video's length. A reader can be iterated any number of times; each `frames` call opens the
    file anew.

    Damaged files: frames decoded before the damage are yielded; if FFmpeg then reports an error,
    `InputError` names the file and how many frames came out; if FFmpeg just stops (a truncated file), the
    video ends there.
    """

    def __init__(self, path: str | os.PathLike, fps: float = DEFAULT_FPS):
        self.path = _require_file(path)
        self.fps = _as_fraction(fps)
        with _open_media(self.path) as container:
            stream = _video_stream(container, self.path)
            first = _first_video_frame(container, stream, self.path)
            self._time_base = stream.time_base
            rate = stream.average_rate or stream.guessed_rate
            self._average_rate = Fraction(rate) if rate else None
        self._origin = first.pts if first.pts is not None else 0  # p0, in stream time-base ticks
        self.rotation = _quarter_turns(first.rotation) * QUARTER_TURN_DEG
        self.width, self.height = first.width, first.height
        if self.rotation % (2 * QUARTER_TURN_DEG):
            self.width, self.height = self.height, self.width
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
    def _slot(self, pts: int) -> int:
        return _round_near_inf((pts - self._origin) * self._slots_per_tick)

    def _output(self, start: int, stop: int | None, rgb: bool) -> Iterator:
        """Output frames start..stop-1: RGB arrays if `rgb`, else the raw decoded frames."""
        if stop is not None and stop <= start:
            return
        container = _open_media(self.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads
            if start > 0:
                timed = self._timed_from(container, stream, start)
                if timed is None:  # no usable keyframe before `start`: decode from the beginning
                    container.close()
                    container = _open_media(self.path)
                    stream = container.streams.video[0]
                    stream.thread_type = "AUTO"
                    timed = self._timed(self._decoded(container, stream))
            else:
                timed = self._timed(self._decoded(container, stream))
            # One converter for the whole pass: swscale then sets up its context once, not per frame (~15%).
            to_rgb = VideoReformatter()
            converted_for, image = None, None
            for index, frame, repeated in _constant_rate(timed):
                if stop is not None and index >= stop:
                    return
                if index < start:
                    continue
                if not rgb:
                    yield frame
                    continue
                if frame is not converted_for:
                    converted_for = frame
                    image = rotate_upright(to_rgb.reformat(frame, format="rgb24").to_ndarray(), self.rotation)
                # A frame shown again next: hand out a copy and keep the pristine array for the repeat.
                yield image.copy() if repeated else image
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
                f"{self.path}: corrupt video data after {count} decoded frames ({_reason(e)})"
            ) from None

    def _timed(self, frames: Iterator) -> Iterator[tuple[int, object]]:
        """(slot, frame) for each frame, then (end slot, None) once the frames run out.

        Missing timestamps are extrapolated from the previous frame, and the end of stream is the last
        frame's time plus its duration, as FFmpeg's decoder wrapper does (fftools/ffmpeg_dec.c).
        """
        last_pts, last_duration = None, 0
        for frame in frames:
            pts = frame.pts
            if pts is None:
                pts = last_pts + last_duration if last_pts is not None else self._origin
            last_duration = self._duration_estimate(frame, pts, last_pts, last_duration)
            last_pts = pts
            yield self._slot(pts), frame
        if last_pts is not None:
            yield self._slot(last_pts + last_duration), None

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
        """(slot, frame) pairs from a keyframe whose slot is <= `start`, or None to decode from the start.

        After a seek the decoder restarts at a keyframe K. Every later frame decodes as in a full decode, and
        since K's slot is <= start, the frame shown at `start` is K or a later one. Frames the decoder outputs
        before K (leading pictures of an open GOP) may lack references and are skipped.
        """
        # The latest timestamp still in a slot <= start: slot < start + 1/2, i.e. (p - p0) < (start + 1/2) / rate.
        target = self._origin + math.ceil((start + Fraction(1, 2)) / self._slots_per_tick) - 1
        step = max(1, round(SEEK_BACKOFF_S / self._time_base))
        while target > self._origin:
            try:
                container.seek(target, stream=stream, backward=True)
            except av.FFmpegError:
                return None
            frames = self._decoded(container, stream)
            timed = self._timed(frames)
            for slot, frame in timed:
                if frame is None or slot > start:
                    break  # passed `start` without a keyframe: seek further back
                if frame.key_frame:
                    return itertools.chain([(slot, frame)], timed)
            target -= step
            step *= 2
        return None


def _constant_rate(timed: Iterator[tuple[int, object]]) -> Iterator[tuple[int, object, bool]]:
    """(output index, frame, repeated next) at a constant rate from (slot, frame) pairs ending in (end, None).

    FFmpeg's fps filter (libavfilter/vf_fps.c): it holds the current frame and its successor; the current
    frame is output at `next` while the successor's slot is > next, then the successor takes over (so a
    frame whose successor shares its slot is never output). At end of stream the current frame is repeated
    up to the end slot, exclusive. The first frame's slot starts the output. The flag says whether the next
    output is this same frame again.
    """
    held, next_index = None, 0
    for slot, frame in timed:
        if held is None:
            if frame is None:  # no frames at all
                return
            held, next_index = frame, slot
            continue
        while next_index < slot:  # `slot` is the successor's, or the end of stream
            yield next_index, held, next_index + 1 < slot
            next_index += 1
        if frame is None:
            return
        held = frame


def check_output_path(path: str | os.PathLike) -> str:
    """The container format for an output video `path`, or InputError (one line) when it cannot be written:
    an unsupported extension, a folder in its place, a missing or unwritable folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a file name")
    fmt = CONTAINER_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unsupported output extension {path.suffix!r} (use {', '.join(CONTAINER_FORMATS)})")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: output folder is not writable")
    return fmt


class VideoWriter:
    """Encode RGB frames (and optionally the user's audio) to an H.264 file in one pass, atomically.

    Video: libx264, yuv420p, constant quality `crf` (18: visually lossless), `preset`, constant `fps`. RGB is
    converted with the BT.709 matrix (limited range) and the stream is tagged BT.709, so players show the
    colours that were written. yuv420p needs even sizes: an odd width or height is padded by one pixel,
    repeating the last column or row, so the file is up to one pixel larger than `width` x `height`.

    Audio (optional): the first audio track of `audio` (any audio or video file FFmpeg reads) at its own
    sample rate and channel layout (AAC cannot carry every rate or layout: others become 48 kHz / stereo),
    trimmed or padded with silence to `audio_duration_s` (default: the video's duration, frames / fps),
    encoded as AAC at 96 kb/s per channel and interleaved with the video as frames are written.
    `audio_start_s` starts the sound that far into the track (a segment of a longer file) or, when negative,
    after that much silence (delaying the sound relative to the picture).

    The container comes from the extension of `path`: .mp4, .mov (both with `+faststart`) or .mkv. The file
    is written under a hidden temporary name in the destination folder and renamed onto `path` only by a
    successful `close()` (or the end of a `with` block); an exception inside the block, or a failed close,
    deletes the temporary file and leaves `path` as it was. Use it as a context manager (or call `close()`
    / `discard()`): an abandoned writer leaves its temporary file behind.

    Raises `InputError` before any work for an unsupported extension, a missing or unwritable destination
    folder, or an unusable audio file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float = DEFAULT_FPS,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        audio: str | os.PathLike | None = None,
        audio_duration_s: float | None = None,
        audio_start_s: float = 0.0,
    ):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps = _as_fraction(fps)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if audio_duration_s is not None and audio_duration_s < 0:
            raise ValueError(f"audio_duration_s must be >= 0, got {audio_duration_s}")
        fmt = check_output_path(self.path)
        folder = self.path.parent
        self._audio = _AudioFeed(audio) if audio is not None else None
        if self._audio is not None and audio_start_s:
            self._audio.start_at(audio_start_s)
        self._audio_duration_s = audio_duration_s
        self._frames_written = 0
        self._closed = False
        self._container = None
        self._tmp: Path | None = None
        try:
            self._tmp = _create_partial(self.path)
        except OSError as e:
            if self._audio is not None:
                self._audio.close()
            raise InputError(f"{folder}: cannot write in the output folder ({e.strerror or e})") from None
        try:
            self._open(fmt, crf, preset)
        except BaseException:
            self.discard()
            raise

    def _open(self, fmt: str, crf: int, preset: str) -> None:
        options = {"movflags": "+faststart"} if fmt in FASTSTART_FORMATS else {}
        self._container = av.open(str(self._tmp), mode="w", format=fmt, container_options=options)
        # Encoded size: yuv420p needs even dimensions.
        self._coded_width = self.width + self.width % CHROMA_SUBSAMPLING
        self._coded_height = self.height + self.height % CHROMA_SUBSAMPLING
        video = self._container.add_stream(VIDEO_CODEC, rate=self.fps, options={"crf": str(crf), "preset": preset})
        video.width, video.height, video.pix_fmt = self._coded_width, self._coded_height, VIDEO_PIX_FMT
        video.codec_context.time_base = 1 / self.fps
        # Tag what `write` converts with, so players do not guess (they guess BT.601 for SD, BT.709 for HD).
        video.codec_context.colorspace = int(Colorspace.ITU709)
        video.codec_context.color_primaries = int(ColorPrimaries.BT709)
        video.codec_context.color_trc = int(ColorTrc.BT709)
        video.codec_context.color_range = int(ColorRange.MPEG)
        self._video = video
        self._to_yuv = VideoReformatter()  # one swscale context for all frames
        self._sound = None
        if self._audio is not None:
            sound = self._container.add_stream(AUDIO_CODEC, rate=self._audio.rate, layout=self._audio.layout)
            sound.bit_rate = AAC_BIT_RATE_PER_CHANNEL_BPS * self._audio.channels
            self._sound = sound
            self._samples_encoded = 0
        # Open the encoders and write the header now, so a bad `preset` or `crf` fails here, not mid-job.
        try:
            self._container.start_encoding()
        except av.FFmpegError as e:
            raise ValueError(f"the encoders rejected crf={crf!r}, preset={preset!r} ({_reason(e)})") from None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    @property
    def frames_written(self) -> int:
        """Number of frames passed to `write` so far."""
        return self._frames_written

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame of shape (height, width, 3)."""
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        image = np.asarray(frame)
        if image.dtype != np.uint8 or image.shape != (self.height, self.width, 3):
            raise ValueError(
                f"expected a uint8 frame of shape {(self.height, self.width, 3)}, got {image.dtype} {image.shape}"
            )
        pad_h, pad_w = self._coded_height - self.height, self._coded_width - self.width
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        yuv = self._to_yuv.reformat(
            rgb, format=VIDEO_PIX_FMT, dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        yuv.pts = self._frames_written
        yuv.time_base = 1 / self.fps
        self._container.mux(self._video.encode(yuv))
        self._frames_written += 1
        if self._sound is not None:
            # Keep the audio level with the video so the muxer can interleave without buffering.
            until = self._frames_written / self.fps
            if self._audio_duration_s is not None:
                until = min(until, Fraction(self._audio_duration_s))
            self._encode_audio_until(until)

    def close(self) -> Path:
        """Finish both streams, close the file and rename it onto `path`. Returns `path`.

        Raises ValueError (and keeps nothing) if no frame was written.
        """
        if self._closed:
            return self.path
        try:
            if self._frames_written == 0:
                raise ValueError(f"{self.path}: no frames were written")
            self._container.mux(self._video.encode(None))  # flush the encoder's look-ahead
            if self._sound is not None:
                duration = self._audio_duration_s
                video_duration = self._frames_written / self.fps
                self._encode_audio_until(Fraction(duration) if duration is not None else video_duration)
                self._container.mux(self._sound.encode(None))
            self._container.close()
            self._closed = True
            if self._audio is not None:
                self._audio.close()  # before the rename: `audio` may be the very file being replaced
            os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        """Abandon the file: close everything and delete the temporary file; `path` is left untouched."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; a failing trailer write does not matter
                pass
        if self._audio is not None:
            self._audio.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def _encode_audio_until(self, seconds: Fraction) -> None:
        """Encode source audio (then silence) until `seconds` of it have been encoded."""
        target = _round_near_inf(Fraction(seconds) * self._audio.rate)
        while self._samples_encoded < target:
            n = min(AAC_FRAME_SAMPLES, target - self._samples_encoded)
            chunk = self._audio.read(n)
            if chunk.shape[1] < n:  # the source ended: pad with silence
                chunk = np.pad(chunk, ((0, 0), (0, n - chunk.shape[1])))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self._audio.layout)
            frame.sample_rate = self._audio.rate
            frame.pts = self._samples_encoded
            frame.time_base = Fraction(1, self._audio.rate)
            self._container.mux(self._sound.encode(frame))
            self._samples_encoded += n


class _AudioFeed:
    """The first audio track of a file as planar float32 samples, read in order, at the track's own rate and
    layout (or the nearest AAC can carry)."""

    def __init__(self, path: str | os.PathLike):
        self.path = _require_file(path)
        self._container = _open_media(self.path)
        self._closed = False
        try:
            if not self._container.streams.audio:
                raise InputError(f"{self.path}: has no audio track")
            stream = self._container.streams.audio[0]
            self._decoded = self._decode(stream)
            first = next(self._decoded, None)
            if first is None:
                raise InputError(f"{self.path}: the audio track is empty")
        except BaseException:
            self._container.close()
            raise
        rate = first.sample_rate
        self.rate = rate if rate in av.Codec(AUDIO_CODEC, "w").audio_rates else AAC_FALLBACK_RATE_HZ
        layout = first.layout.name
        self.channels = first.layout.nb_channels
        if layout not in AAC_LAYOUTS:
            layout = {1: "mono", 2: "stereo"}.get(self.channels, AAC_FALLBACK_LAYOUT)
        self.layout = layout
        self.channels = av.AudioLayout(layout).nb_channels
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self._pending = [self._planar(f) for f in self._resampler.resample(first)]
        self._exhausted = False

    def _decode(self, stream) -> Iterator:
        try:
            yield from self._container.decode(stream)
        except av.FFmpegError as e:
            raise InputError(f"{self.path}: corrupt audio track ({_reason(e)})") from None

    @staticmethod
    def _planar(frame) -> np.ndarray:
        return frame.to_ndarray().astype(np.float32, copy=False)  # fltp -> (channels, n)

    def start_at(self, seconds: float) -> None:
        """Begin `seconds` into the track (skipping what comes before), or, for a negative value, with that
        much silence before the track's first sample (which delays the sound)."""
        n = int(round(abs(seconds) * self.rate))
        if seconds < 0:
            self._pending.insert(0, np.zeros((self.channels, n), np.float32))
            return
        while n > 0:
            skipped = self.read(min(n, self.rate))
            if skipped.shape[1] == 0:
                break
            n -= skipped.shape[1]

    def read(self, n: int) -> np.ndarray:
        """Up to `n` next samples per channel, (channels, m); m < n only at the end of the track."""
        have = sum(a.shape[1] for a in self._pending)
        while have < n and not self._exhausted:
            frame = next(self._decoded, None)
            out = self._resampler.resample(frame)  # None flushes the resampler's delay line
            if frame is None:
                self._exhausted = True
            for f in out:
                a = self._planar(f)
                self._pending.append(a)
                have += a.shape[1]
        if not self._pending:
            return np.zeros((self.channels, 0), np.float32)
        joined = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
        taken, rest = joined[:, :n], joined[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        return np.ascontiguousarray(taken)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()


def _create_partial(path: Path) -> Path:
    """Create (exclusively) a hidden temporary file next to `path`, keeping its extension; first remove the
    ones of the same name that a killed run left (`fileio.remove_stale_temporaries`)."""
    remove_stale_temporaries(path.parent, path.name)
    for _ in range(PARTIAL_NAME_ATTEMPTS):
        tmp = temporary_name(path, f".partial{path.suffix}", PARTIAL_TOKEN_BYTES)
        try:
            # 0o666 under the umask: the finished file gets the permissions of any new file, not 0600.
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not find a free temporary name")


def _require_file(path: str | os.PathLike) -> Path:
    """`path` as a Path if it is an existing file, else `InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    return path


def _open_media(path: Path):
    """An input container, or `InputError` if FFmpeg cannot read the file."""
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable audio or video file ({_reason(e)})") from None


def _audio_stream(container, path: Path):
    if not container.streams.audio:
        raise InputError(f"{path}: has no audio track")
    return container.streams.audio[0]


def _header_duration_s(container, stream) -> float | None:
    """Seconds of `stream` as the headers give it: the stream's own duration, else the container's; None when
    neither says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base  # microseconds
    return None


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise InputError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise InputError(f"{path}: unsupported video codec")
    return stream


def _first_video_frame(container, stream, path: Path):
    """The first decoded frame of `stream`, or `InputError` if there is none."""
    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as e:
        raise InputError(f"{path}: corrupt video stream ({_reason(e)})") from None
    raise InputError(f"{path}: the video stream has no decodable frame")
