"""Step 2: resample every source to 25 fps video and 16 kHz mono audio (spec 6, step 2).

The reference runs `ffmpeg -c:v copy -ar 16000` when OpenCV reports 25 fps and `ffmpeg -r 25 -ar 16000`
otherwise. We do the same in-process with PyAV, with a stricter test for the copy: OpenCV's rate is the
container's average, so a variable-rate file averaging 25 fps would be copied with its irregular timing. We
copy only when every frame lies on a 25 fps grid (read from the packet timestamps, without decoding), the codec
fits in MP4 and no display rotation has to be applied; the packets are then remuxed byte for byte. Anything
else is decoded and converted to a constant 25 fps exactly like `latentsync.media.VideoReader` (FFmpeg's fps
filter rule, upright frames) and encoded with libx264.

Audio is always decoded, downmixed to mono and resampled to 16 kHz by FFmpeg's resampler (what `-ac 1 -ar
16000` does), and encoded as AAC. Its first sample is placed at the first video frame's time: a track that
starts later is padded with silence, one that starts earlier is trimmed, so sample 0 of `decode_audio` of the
result goes with frame 0 of `VideoReader` (later steps rely on it to measure the sync offset).
"""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, VideoReformatter

from ..defaults import DEFAULT_CRF, FPS, SAMPLE_RATE_HZ
from ..errors import InputError
from ..fileio import atomic_write
from ..media import (
    AAC_FRAME_SAMPLES,
    AUDIO_CODEC,
    CHROMA_SUBSAMPLING,
    DEFAULT_PRESET,
    FASTSTART_FORMATS,
    VIDEO_CODEC,
    VIDEO_PIX_FMT,
    VideoReader,
    check_output_path,
    probe_video,
)
from .base import Item, Step, StepContext, StepResult

VERSION = 1
RESAMPLE_CRF = DEFAULT_CRF  # libx264 quality of re-encoded sources: visually lossless (spec 11: the reference's)
AAC_BIT_RATE_BPS = 64_000  # mono 16 kHz speech: transparent at 64 kb/s
# Codecs the MP4 muxer stores as they are: their packets can be remuxed without decoding.
MP4_COPY_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"})
# A frame "is on the 25 fps grid" when its timestamp gap to the next frame is one period within this fraction
# of a period (containers with a 1 ms time base store 40 ms exactly; odd time bases round by up to one tick).
CFR_TOLERANCE = Fraction(1, 50)


def resample_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fps: float = FPS,
    audio_rate: int = SAMPLE_RATE_HZ,
    crf: int = RESAMPLE_CRF,
    preset: str = DEFAULT_PRESET,
    allow_copy: bool = True,
) -> dict[str, Any]:
    """Write `dst` (.mp4, .mov or .mkv) from `src`: video at a constant `fps`, audio mono at `audio_rate` Hz.

    The video packets are copied unchanged when `src` already runs at a constant `fps` in a codec MP4 holds and
    needs no rotation (and `allow_copy`); otherwise the video is decoded, converted to `fps` (VideoReader's rule)
    and encoded with libx264 at `crf`. The audio is always re-encoded (AAC mono, aligned to the first frame).
    A source without audio gives a video-only file. `dst` is written atomically: a failure, or a killed
    process, never leaves a partial file under its name. `src` is only read.

    Returns {"copied", "reason" (why not copied, "" if copied), "fps", "frames", "duration_s", "width",
    "height", "audio_sample_rate", "audio_duration_s"}. Raises InputError (one line naming the file) for an
    unreadable source.
    """
    src, dst = Path(src), Path(dst)
    rate = Fraction(fps).limit_denominator(1_000_000)
    info = probe_video(src)  # InputError for a missing, unreadable or video-less file
    scan = _scan_video_packets(src)
    reason = _copy_blocker(scan, rate, info.rotation) if allow_copy else "copy disabled"
    dst.parent.mkdir(parents=True, exist_ok=True)
    fmt = check_output_path(dst)
    if reason is None:
        try:
            return _write(src, dst, fmt, rate, audio_rate, crf, preset, scan, copy=True)
        except av.FFmpegError as e:  # the muxer refused the stream as it is: encode it instead
            reason = f"stream copy failed ({_reason(e)})"
    result = _write(src, dst, fmt, rate, audio_rate, crf, preset, scan, copy=False)
    return result | {"reason": reason}


@dataclasses.dataclass(frozen=True)
class _PacketScan:
    """What the packets of the first video stream say, without decoding: codec, time base, sorted pts."""

    codec: str
    time_base: Fraction
    pts: list[int]
    untimed: int  # packets without a timestamp

    @property
    def start_s(self) -> Fraction:
        return self.pts[0] * self.time_base if self.pts else Fraction(0)


def _scan_video_packets(path: Path) -> _PacketScan:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.size > 0]
            timed = sorted(t for t in pts if t is not None)
            return _PacketScan(stream.codec_context.name, Fraction(stream.time_base), timed, len(pts) - len(timed))
    except av.FFmpegError as e:
        raise InputError(f"{path}: corrupt video data ({_reason(e)})") from None


def _copy_blocker(scan: _PacketScan, fps: Fraction, rotation: int) -> str | None:
    """Why the packets cannot be copied as they are into a constant-`fps` MP4, or None if they can."""
    if scan.codec not in MP4_COPY_CODECS:
        return f"codec {scan.codec} is re-encoded"
    if rotation:
        return f"rotated by {rotation} degrees"
    if scan.untimed or len(scan.pts) < 2:
        return "frames without timestamps"
    period = 1 / (fps * scan.time_base)  # one frame in time-base ticks
    for a, b in zip(scan.pts, scan.pts[1:]):
        if abs((b - a) - period) > CFR_TOLERANCE * period:
            gap_ms, at_s = float((b - a) * scan.time_base) * 1000, float(a * scan.time_base)
            return f"not constant {float(fps):g} fps (a {gap_ms:.1f} ms frame at {at_s:.2f} s)"
    return None


def _write(src: Path, dst: Path, fmt: str, fps: Fraction, audio_rate: int, crf: int, preset: str,
           scan: _PacketScan, copy: bool) -> dict[str, Any]:
    with atomic_write(dst, suffix=dst.suffix) as tmp:
        options = {"movflags": "+faststart"} if fmt in FASTSTART_FORMATS else {}
        out = av.open(str(tmp), mode="w", format=fmt, container_options=options)
        video = audio = None
        try:
            if copy:
                video = _CopiedVideo(out, src, fps, scan)
            else:
                video = _EncodedVideo(out, src, fps, crf, preset)
            audio = _MonoAacTrack(out, src, audio_rate, video_start_s=scan.start_s)
            out.start_encoding()
            for shown_until_s in video.mux_all():
                audio.mux_until(shown_until_s)  # keep the streams interleaved
            audio.finish()
        except BaseException:
            # The partial file is deleted by atomic_write; a failing trailer write must not hide the cause.
            for close in (getattr(video, "close", None), getattr(audio, "close", None), out.close):
                try:
                    if close is not None:
                        close()
                except Exception:
                    pass
            raise
        video.close()
        audio.close()
        out.close()  # writes the index (and moves it to the front for +faststart)
    return {
        "copied": copy, "reason": "", "fps": float(fps), "frames": video.frames,
        "duration_s": float(video.frames / fps), "width": video.width, "height": video.height,
        "audio_sample_rate": audio_rate if audio.present else None,
        "audio_duration_s": audio.duration_s if audio.present else None,
    }


class _CopiedVideo:
    """The source's video packets, remuxed unchanged."""

    def __init__(self, out, src: Path, fps: Fraction, scan: _PacketScan):
        self._src = av.open(str(src))
        self._in = self._src.streams.video[0]
        self._out = out
        self._stream = out.add_stream_from_template(self._in)
        self._scan = scan
        self.fps = fps
        self.width, self.height = self._in.codec_context.width, self._in.codec_context.height
        self.frames = 0

    def mux_all(self):
        """Mux every packet; yields, after each, how far (seconds from the first frame) the video has got."""
        try:
            start = self._scan.pts[0]
            for packet in self._src.demux(self._in):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                # The output starts at 0, as an encoded one does (the MP4 muxer then also records the audio
                # encoder's priming samples so that decoders drop them; it does not for a track starting later).
                packet.pts -= start
                if packet.dts is not None:
                    packet.dts -= start
                shown_until = packet.pts * self._in.time_base + 1 / self.fps
                packet.stream = self._stream
                self._out.mux(packet)
                self.frames += 1
                yield shown_until
        except av.FFmpegError as e:
            if self.frames == 0:
                raise  # the muxer refused the first packet: the caller falls back to encoding
            message = f"{self._src.name}: corrupt video data after {self.frames} packets ({_reason(e)})"
            raise InputError(message) from None

    def close(self) -> None:
        self._src.close()


class _EncodedVideo:
    """The source decoded at a constant rate by VideoReader (upright RGB) and encoded with libx264, as
    `latentsync.media.VideoWriter` encodes (yuv420p, BT.709 tags, odd sizes padded by one pixel)."""

    def __init__(self, out, src: Path, fps: Fraction, crf: int, preset: str):
        self._reader = VideoReader(src, fps=fps)
        self.fps = fps
        self.width, self.height = self._reader.width, self._reader.height
        self._pad_w, self._pad_h = self.width % CHROMA_SUBSAMPLING, self.height % CHROMA_SUBSAMPLING
        stream = out.add_stream(VIDEO_CODEC, rate=fps, options={"crf": str(crf), "preset": preset})
        stream.width, stream.height = self.width + self._pad_w, self.height + self._pad_h
        stream.pix_fmt = VIDEO_PIX_FMT
        stream.codec_context.time_base = 1 / fps
        stream.codec_context.colorspace = int(Colorspace.ITU709)
        stream.codec_context.color_primaries = int(ColorPrimaries.BT709)
        stream.codec_context.color_trc = int(ColorTrc.BT709)
        stream.codec_context.color_range = int(ColorRange.MPEG)
        self._out, self._stream = out, stream
        self._images = self._reader.frames()
        self.frames = 0

    def close(self) -> None:
        self._images.close()  # closes the reader's file

    def mux_all(self):
        to_yuv = VideoReformatter()
        for image in self._images:  # (h, w, 3) uint8
            if self._pad_w or self._pad_h:
                image = np.pad(image, ((0, self._pad_h), (0, self._pad_w), (0, 0)), mode="edge")
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            yuv = to_yuv.reformat(rgb, format=VIDEO_PIX_FMT, dst_colorspace=Colorspace.ITU709,
                                  dst_color_range=ColorRange.MPEG)
            yuv.pts, yuv.time_base = self.frames, 1 / self.fps
            self._out.mux(self._stream.encode(yuv))
            self.frames += 1
            yield self.frames / self.fps
        self._out.mux(self._stream.encode(None))  # flush the encoder's look-ahead
        if self.frames == 0:
            raise InputError(f"{self._reader.path}: no video frame could be decoded")


class _MonoAacTrack:
    """The source's first audio track, decoded, downmixed to mono, resampled and encoded as AAC, from the time
    of the first video frame (`video_start_s`, source clock) on; written from time 0 of the output."""

    def __init__(self, out, src: Path, rate: int, video_start_s: Fraction):
        self.rate = rate
        self._src = av.open(str(src))
        self.present = bool(self._src.streams.audio)
        self._written = 0  # samples encoded so far
        self.duration_s = 0.0
        if not self.present:
            return
        self._in = self._src.streams.audio[0]
        self._frames = self._src.decode(self._in)
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        self._pending: list[np.ndarray] = []  # resampled (n,) float32 chunks not yet encoded
        self._skip: int | None = None  # samples still to drop (> 0) before the first video frame
        self._video_start_s = video_start_s
        self._exhausted = False
        self._out = out
        self._stream = out.add_stream(AUDIO_CODEC, rate=rate, layout="mono")
        self._stream.bit_rate = AAC_BIT_RATE_BPS

    def mux_until(self, seconds: Fraction) -> None:
        """Encode whole AAC frames while they end before `seconds` (from the first video frame)."""
        if self.present:
            self._encode(target=round(seconds * self.rate), final=False)

    def finish(self) -> None:
        """Encode what is left of the track and flush the encoder."""
        if not self.present:
            return
        self._encode(target=None, final=True)
        self._out.mux(self._stream.encode(None))
        self.duration_s = self._written / self.rate

    def close(self) -> None:
        self._src.close()

    def _encode(self, target: int | None, final: bool) -> None:
        while target is None or self._written + AAC_FRAME_SAMPLES <= target:
            have = sum(len(c) for c in self._pending)
            while have < AAC_FRAME_SAMPLES and not self._exhausted:
                have += self._decode_more()
            if have == 0 or (have < AAC_FRAME_SAMPLES and not final):
                return
            joined = np.concatenate(self._pending)
            chunk, rest = joined[:AAC_FRAME_SAMPLES], joined[AAC_FRAME_SAMPLES:]
            self._pending = [rest] if len(rest) else []
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.time_base = self.rate, Fraction(1, self.rate)
            frame.pts = self._written
            self._out.mux(self._stream.encode(frame))
            self._written += len(chunk)

    def _decode_more(self) -> int:
        """Decode one more source frame into `_pending`; returns the number of samples added."""
        try:
            frame = next(self._frames, None)
        except av.FFmpegError as e:
            raise InputError(f"{self._src.name}: corrupt audio track ({_reason(e)})") from None
        if frame is None:
            self._exhausted = True
        elif self._skip is None:  # the first frame: align the track to the first video frame
            start_s = Fraction(frame.pts) * frame.time_base if frame.pts is not None else self._video_start_s
            offset = round((start_s - self._video_start_s) * self.rate)
            if offset > 0:
                self._pending.append(np.zeros(offset, np.float32))
            self._skip = max(0, -offset)
        added = 0
        for out in self._resampler.resample(frame):  # None flushes the resampler's delay line
            samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)  # (1, n) -> (n,)
            if self._skip:
                dropped = min(self._skip, len(samples))
                samples, self._skip = samples[dropped:], self._skip - dropped
            if len(samples):
                self._pending.append(samples)
                added += len(samples)
        return added


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:200]


class ResampleStep(Step):
    """Resample a checked source to `video_fps` and `audio_sample_rate` mono (stream copy when possible)."""

    name = "resample"

    def params(self) -> dict[str, Any]:
        return {"version": VERSION, "video_fps": self.config.video_fps,
                "audio_sample_rate": self.config.audio_sample_rate, "crf": RESAMPLE_CRF,
                "aac_bit_rate": AAC_BIT_RATE_BPS}

    def run(self, item: Item, ctx: StepContext) -> StepResult:
        dst = ctx.output_path(item)
        try:
            result = resample_video(item.path, dst, fps=self.config.video_fps,
                                    audio_rate=self.config.audio_sample_rate)
        except InputError as e:
            return StepResult.reject(_without_path(str(e), item.path))
        meta = {
            "source_fps": item.meta.get("fps"),
            "fps": result["fps"], "frames": result["frames"], "duration_s": result["duration_s"],
            "width": result["width"], "height": result["height"],
            "audio_sample_rate": result["audio_sample_rate"], "audio_channels": 1,
            "resampled": "copied" if result["copied"] else "re-encoded",
        }
        metrics = {"copied": result["copied"], "reason": result["reason"], "frames": result["frames"],
                   "duration_s": result["duration_s"], "audio_duration_s": result["audio_duration_s"]}
        return StepResult(outputs=[dataclasses.replace(item, path=str(dst), meta=item.meta | meta)], metrics=metrics)


def _without_path(message: str, path: str) -> str:
    """An InputError's message without its leading "<path>: " (the runner records which item it was)."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
