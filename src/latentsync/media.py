"""Reading and writing media with PyAV (FFmpeg's libraries in-process; no `ffmpeg` binary, no shell).

Audio: `decode_audio` turns any file FFmpeg can read (a WAV, an MP3, the audio track of an MP4, ...) into
mono float32 samples at a chosen rate. It reproduces what the reference gets from
`ffmpeg -i FILE -ac 1 -ar 16000 -f s16le -` followed by `/ 32768` (Whisper's `load_audio`): FFmpeg's own
resampler converts to signed 16-bit mono at the target rate, then we scale to [-1, 1).

Problems a user can cause (a missing file, a file that is not media, a video without sound, an empty track)
raise `InputError` with one line naming the file.
"""

from __future__ import annotations

import os
import tempfile
import wave
from pathlib import Path

import numpy as np

from .errors import InputError

DEFAULT_SAMPLE_RATE_HZ = 16_000  # Whisper and the SyncNet mel both work at 16 kHz
S16_FULL_SCALE = 32_768.0  # int16 -> float: the divisor Whisper's load_audio uses
S16_MAX = 32_767
S16_BYTES = 2


def decode_audio(path: str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE_HZ) -> np.ndarray:
    """The first audio track of `path` as mono float32 samples at `sample_rate` Hz, shape (n,).

    Works for audio files and for videos with an audio track. Raises `InputError` (naming the file) if the
    file is missing, is not a readable media file, has no audio track, or holds no samples.
    """
    import av  # deferred: PyAV loads the FFmpeg libraries

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(pcm.shape[1])
            w.setsampwidth(S16_BYTES)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _s16_mono(frame) -> np.ndarray:
    """(n,) int16 samples of a packed s16 mono frame."""
    return frame.to_ndarray().reshape(-1)  # (1, n) -> (n,)


def _reason(e: BaseException) -> str:
    """A short, single-line description of an FFmpeg error."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:200]
