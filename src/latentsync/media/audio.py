"""Sound: decoding any file FFmpeg reads to mono float samples, probing it, writing WAVs, and `AudioFeed`, the
user's own track read in order at its own rate and layout for muxing as AAC.

`decode_audio` reproduces what the reference gets from `ffmpeg -i FILE -ac 1 -ar 16000 -f s16le -` followed
by `/ 32768` (Whisper's `load_audio`): FFmpeg's own resampler converts to signed 16-bit mono at the target
rate, then we scale to [-1, 1).
"""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from ..defaults import SAMPLE_RATE_HZ
from ..errors import InputError
from ..fileio import atomic_write
from .streams import audio_stream, header_duration_s, open_media, reason, require_file

DEFAULT_SAMPLE_RATE_HZ = SAMPLE_RATE_HZ
S16_FULL_SCALE = 32_768.0  # int16 -> float: the divisor Whisper's load_audio uses
S16_MAX = 32_767
S16_BYTES = 2
AUDIO_CODEC = "aac"
AAC_BIT_RATE_PER_CHANNEL_BPS = 96_000  # 192 kb/s for stereo: transparent for speech and music
AAC_FRAME_SAMPLES = 1024  # samples per channel in one AAC frame
# FFmpeg's AAC encoder writes only these channel layouts natively (aacenctab.h); others are downmixed to stereo.
AAC_LAYOUTS = {"mono", "stereo", "3.0", "4.0", "5.0", "5.1", "7.1"}
AAC_FALLBACK_LAYOUT = "stereo"
AAC_FALLBACK_RATE_HZ = 48_000  # used only when the source rate is not one AAC can signal


def decode_audio(path: str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE_HZ) -> np.ndarray:
    """The first audio track of `path` as mono float32 samples at `sample_rate` Hz, shape (n,).

    Works for audio files and for videos with an audio track. Raises `InputError` (naming the file) if the
    file is missing, is not a readable media file, has no audio track, or holds no samples.
    """
    path = require_file(path)
    with open_media(path) as container:
        stream = audio_stream(container, path)
        # FFmpeg's resampler does the rate conversion and the downmix, as the ffmpeg command line would.
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks.extend(_s16_mono(f) for f in resampler.resample(frame))
            # The resampler holds back a few samples of filter delay until flushed.
            chunks.extend(_s16_mono(f) for f in resampler.resample(None))
        except av.FFmpegError as e:
            raise InputError(f"{path}: corrupt audio track ({reason(e)})") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    if samples.size == 0:
        raise InputError(f"{path}: the audio track is empty")
    return samples.astype(np.float32) / np.float32(S16_FULL_SCALE)


def probe_audio(path: str | os.PathLike) -> tuple[int, int]:
    """(sample rate, channels) of the first audio track of `path`, after decoding its first samples: a cheap
    check that the file is usable, for failing fast before a long job. Raises InputError like `decode_audio`."""
    path = require_file(path)
    with open_media(path) as container:
        stream = audio_stream(container, path)
        try:
            for frame in container.decode(stream):
                if frame.samples > 0:
                    return frame.sample_rate, len(frame.layout.channels)
        except av.FFmpegError as e:
            raise InputError(f"{path}: corrupt audio track ({reason(e)})") from None
    raise InputError(f"{path}: the audio track is empty")


def audio_duration_s(path: str | os.PathLike) -> float:
    """Seconds of the first audio track of `path`: from the stream or container header, or by decoding it when
    neither says. Raises InputError (naming the file) like `probe_audio`."""
    path = require_file(path)
    with open_media(path) as container:
        stream = audio_stream(container, path)
        seconds = header_duration_s(container, stream)
        if seconds is not None:
            return seconds
        samples, rate = 0, 0
        try:
            for frame in container.decode(stream):
                samples, rate = samples + frame.samples, frame.sample_rate
        except av.FFmpegError as e:
            raise InputError(f"{path}: corrupt audio track ({reason(e)})") from None
        return samples / rate if rate else 0.0


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


class AudioFeed:
    """The first audio track of a file as planar float32 samples, read in order, at the track's own rate and
    layout (or the nearest AAC can carry: `rate`, `layout`, `channels`).

    The sound source of `VideoWriter` and `shift_audio`. Raises `InputError` (naming the file) if it is
    missing, unreadable, has no audio track or an empty one. Call `close()` when done.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = require_file(path)
        self._container = open_media(self.path)
        self._closed = False
        try:
            stream = audio_stream(self._container, self.path)
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
        channels = first.layout.nb_channels
        if layout not in AAC_LAYOUTS:
            layout = {1: "mono", 2: "stereo"}.get(channels, AAC_FALLBACK_LAYOUT)
        self.layout = layout
        self.channels = av.AudioLayout(layout).nb_channels
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self._pending = [self._planar(f) for f in self._resampler.resample(first)]
        self._exhausted = False

    def _decode(self, stream) -> Iterator:
        try:
            yield from self._container.decode(stream)
        except av.FFmpegError as e:
            raise InputError(f"{self.path}: corrupt audio track ({reason(e)})") from None

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
        """Close the source file (idempotent)."""
        if not self._closed:
            self._closed = True
            self._container.close()
