"""Encoding RGB frames (and the user's sound) to an H.264 file in one pass, replacing the destination atomically."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, VideoReformatter

from ..defaults import DEFAULT_CRF, DEFAULT_PRESET
from ..errors import InputError
from ..fileio import remove_stale_temporaries, temporary_name
from .audio import AAC_BIT_RATE_PER_CHANNEL_BPS, AAC_FRAME_SAMPLES, AUDIO_CODEC, AudioFeed
from .streams import reason
from .timing import DEFAULT_FPS, as_fraction, round_near_inf

# Output containers by file extension (FFmpeg muxer names). MP4 and MOV get `+faststart`: the index (moov)
# is moved to the front so players can start before the whole file has arrived.
CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
FASTSTART_FORMATS = {"mp4", "mov"}
VIDEO_CODEC = "libx264"
VIDEO_PIX_FMT = "yuv420p"  # 4:2:0, the format every player decodes; needs even width and height
CHROMA_SUBSAMPLING = 2  # 4:2:0 halves the chroma planes in both directions
# Temporary output names: `.<name>.<pid>-<random hex>.partial<ext>` next to the destination (`fileio`).
PARTIAL_TOKEN_BYTES = 4
PARTIAL_NAME_ATTEMPTS = 100
NEW_FILE_MODE = 0o666  # under the umask: the finished file gets the permissions of any new file, not 0600


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


def _create_partial(path: Path) -> Path:
    """Create (exclusively) a hidden temporary file next to `path`, keeping its extension; first remove the
    ones of the same name that a killed run left (`fileio.remove_stale_temporaries`)."""
    remove_stale_temporaries(path.parent, path.name)
    for _ in range(PARTIAL_NAME_ATTEMPTS):
        tmp = temporary_name(path, f".partial{path.suffix}", PARTIAL_TOKEN_BYTES)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, NEW_FILE_MODE))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not find a free temporary name")


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
        self.fps = as_fraction(fps)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if audio_duration_s is not None and audio_duration_s < 0:
            raise ValueError(f"audio_duration_s must be >= 0, got {audio_duration_s}")
        fmt = check_output_path(self.path)
        folder = self.path.parent
        self._audio = AudioFeed(audio) if audio is not None else None
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
            raise ValueError(f"the encoders rejected crf={crf!r}, preset={preset!r} ({reason(e)})") from None

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
        target = round_near_inf(Fraction(seconds) * self._audio.rate)
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
