"""Audio decoding with PyAV: rates, channels, containers, awkward paths and the errors a user can cause."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from latentsync.errors import InputError
from latentsync.media import decode_audio, write_wav

SOURCE_RATE_HZ = 44_100
TARGET_RATE_HZ = 16_000
SECONDS = 2
AAC_FRAME_SAMPLES = 1024  # samples per AAC frame
VIDEO_FPS = 25
VIDEO_SIZE = 64
# AAC adds encoder delay/padding of about one frame at each end; allow two frames' worth.
AAC_LENGTH_TOLERANCE = 2 * AAC_FRAME_SAMPLES * TARGET_RATE_HZ // SOURCE_RATE_HZ


def stereo_tones(seconds: float = SECONDS, rate: int = SOURCE_RATE_HZ) -> np.ndarray:
    """(n, 2): 440 Hz at 0.5 on the left, 1 kHz at 0.3 on the right."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)], axis=1)


def write_mp4(path, audio: np.ndarray | None, video_frames: int = SECONDS * VIDEO_FPS):
    """An MP4 with MPEG-4 video and, if `audio` (n, 2) is given, a stereo AAC track."""
    with av.open(str(path), "w") as c:
        video = c.add_stream("mpeg4", rate=VIDEO_FPS)
        video.width = video.height = VIDEO_SIZE
        video.pix_fmt = "yuv420p"
        sound = None
        if audio is not None:
            sound = c.add_stream("aac", rate=SOURCE_RATE_HZ)
            sound.layout = "stereo"
        for i in range(video_frames):
            frame = av.VideoFrame.from_ndarray(np.full((VIDEO_SIZE, VIDEO_SIZE, 3), i % 256, np.uint8), format="rgb24")
            c.mux(video.encode(frame))
        if sound is not None:
            planar = np.ascontiguousarray(audio.T, dtype=np.float32)  # (2, n)
            for first in range(0, planar.shape[1], AAC_FRAME_SAMPLES):
                chunk = np.ascontiguousarray(planar[:, first : first + AAC_FRAME_SAMPLES])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate = SOURCE_RATE_HZ
                frame.pts = first
                frame.time_base = fractions.Fraction(1, SOURCE_RATE_HZ)
                c.mux(sound.encode(frame))
            c.mux(sound.encode(None))
        c.mux(video.encode(None))
    return path


def test_wav_44k_stereo_to_16k_mono(tmp_path):
    path = write_wav(tmp_path / "stereo.wav", stereo_tones(), SOURCE_RATE_HZ)
    samples = decode_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.shape[0] == SECONDS * TARGET_RATE_HZ
    # The downmix averages the channels: peak about (0.5 + 0.3) / 2, and both tones survive the resampling.
    assert 0.35 < np.abs(samples).max() < 0.45
    spectrum = np.abs(np.fft.rfft(samples))
    freqs = np.fft.rfftfreq(samples.shape[0], 1 / TARGET_RATE_HZ)
    assert set(np.round(freqs[np.argsort(spectrum)[-2:]])) == {440.0, 1000.0}


def test_decode_keeps_rate_when_asked(tmp_path):
    mono = stereo_tones()[:, 0]
    path = write_wav(tmp_path / "mono.wav", mono, SOURCE_RATE_HZ)
    samples = decode_audio(path, sample_rate=SOURCE_RATE_HZ)
    # Same rate, same channel count: the s16 values come back exactly.
    expected = np.clip(np.round(mono * 32768), -32768, 32767) / 32768
    np.testing.assert_array_equal(samples, expected.astype(np.float32))


def test_mp4_with_aac_audio(tmp_path):
    path = write_mp4(tmp_path / "clip.mp4", stereo_tones())
    samples = decode_audio(path)
    assert abs(samples.shape[0] - SECONDS * TARGET_RATE_HZ) <= AAC_LENGTH_TOLERANCE
    middle = samples[TARGET_RATE_HZ // 2 : 3 * TARGET_RATE_HZ // 2]
    assert 0.3 < np.abs(middle).max() < 0.5


def test_path_with_spaces_and_non_ascii(tmp_path):
    folder = tmp_path / "mes vidéos ☺"
    folder.mkdir()
    path = write_wav(folder / "voix off – été.wav", stereo_tones(0.5), SOURCE_RATE_HZ)
    assert decode_audio(path).shape == (TARGET_RATE_HZ // 2,)


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(InputError, match="missing.wav.*not found"):
        decode_audio(missing)

    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n" * 20)
    with pytest.raises(InputError, match="notes.wav.*not a readable"):
        decode_audio(text)

    silent_video = write_mp4(tmp_path / "silent video.mp4", audio=None)
    with pytest.raises(InputError, match="silent video.mp4.*no audio"):
        decode_audio(silent_video)

    empty = write_wav(tmp_path / "empty.wav", np.zeros(0), TARGET_RATE_HZ)
    with pytest.raises(InputError, match="empty.wav.*empty"):
        decode_audio(empty)


def test_error_messages_are_one_line(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("x")
    with pytest.raises(InputError) as info:
        decode_audio(text)
    assert "\n" not in str(info.value)


def test_write_wav_is_atomic_and_validates(tmp_path):
    path = write_wav(tmp_path / "x.wav", np.zeros(160), TARGET_RATE_HZ)
    assert [p.name for p in tmp_path.iterdir()] == ["x.wav"]
    assert decode_audio(path).shape == (160,)
    with pytest.raises(ValueError):
        write_wav(tmp_path / "y.wav", np.zeros((2, 3, 4)), TARGET_RATE_HZ)
