"""Video I/O with PyAV: constant-rate conversion like FFmpeg's fps filter, seeking, rotation, the atomic H.264
writer with the user's audio, and the errors a user can cause. All clips are generated here and tiny."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pytest

from latentsync.errors import InputError
from latentsync.media import (
    VideoReader,
    VideoWriter,
    probe_video,
    rotate_upright,
    write_wav,
)

WIDTH, HEIGHT = 64, 48
OUT_FPS = 25
LEVEL_STEP = 8  # gray step between frame codes: survives H.264 at low CRF with a wide margin
LEVELS = 32  # codes per half: top half carries index % 32, bottom half index // 32
GOP = 12  # small GOP so that seeks land on keyframes well inside the clip
AUDIO_RATE_HZ = 44_100
AAC_FRAME_SAMPLES = 1024
MS = Fraction(1, 1000)


# ---- clip generation ----------------------------------------------------------------------------------------
def code_image(i: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(h, w, 3) uint8 whose two halves' gray levels encode the index i."""
    image = np.empty((height, width, 3), np.uint8)
    image[: height // 2] = (i % LEVELS) * LEVEL_STEP
    image[height // 2 :] = (i // LEVELS) * LEVEL_STEP
    return image


def decode_code(image: np.ndarray) -> int:
    half = image.shape[0] // 2
    return round(image[:half].mean() / LEVEL_STEP) + LEVELS * round(image[half:].mean() / LEVEL_STEP)


def tones(seconds: float, rate: int = AUDIO_RATE_HZ) -> np.ndarray:
    """(n, 2): 440 Hz on the left, 1 kHz on the right."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)], axis=1)


def make_clip(path, n=None, fps=OUT_FPS, pts_ms=None, size=(WIDTH, HEIGHT), gop=GOP, rotation=None,
              audio=None, image=code_image):
    """An H.264 MP4 (or MKV) of frames `image(i)`: n frames at `fps`, or frames at the times `pts_ms` (VFR).

    `rotation` sets a display matrix (degrees counter-clockwise); `audio` (n, 2) adds a stereo AAC track.
    """
    width, height = size
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt, video.gop_size = width, height, "yuv420p", gop
        if rotation is not None:
            video.set_display_rotation(rotation)
        if pts_ms is not None:
            video.codec_context.time_base = MS
        sound = None
        if audio is not None:
            sound = c.add_stream("aac", rate=AUDIO_RATE_HZ, layout="stereo")
        count = len(pts_ms) if pts_ms is not None else n
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(image(i, width, height), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], MS
            c.mux(video.encode(frame))
        c.mux(video.encode(None))
        if sound is not None:
            planar = np.ascontiguousarray(audio.T, dtype=np.float32)
            for first in range(0, planar.shape[1], AAC_FRAME_SAMPLES):
                chunk = np.ascontiguousarray(planar[:, first : first + AAC_FRAME_SAMPLES])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE_HZ, first, Fraction(1, AUDIO_RATE_HZ)
                c.mux(sound.encode(frame))
            c.mux(sound.encode(None))
    return path


def source_times(path) -> tuple[list[Fraction], Fraction]:
    """Presentation times (s) of the decoded frames and the last frame's duration (s), read from the file."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        return [f.pts * stream.time_base for f in frames], frames[-1].duration * stream.time_base


def expected_sources(times: list[Fraction], last_duration: Fraction, fps: int = OUT_FPS) -> list[int]:
    """The source index shown in each output frame, by the fps-filter rule written out directly."""
    def nearest(x: Fraction) -> int:  # halves away from zero (x >= 0 here)
        return math.floor(x + Fraction(1, 2))

    slots = [nearest((t - times[0]) * fps) for t in times]
    end = nearest((times[-1] + last_duration - times[0]) * fps)
    return [max(i for i, s in enumerate(slots) if s <= k) for k in range(end)]


def read_codes(reader: VideoReader, *args) -> list[int]:
    return [decode_code(f) for f in reader.frames(*args)]


# ---- reading ------------------------------------------------------------------------------------------------
def test_25fps_source_comes_back_frame_for_frame(tmp_path):
    path = make_clip(tmp_path / "cfr.mp4", n=70)
    reader = VideoReader(path)
    frames = list(reader.frames())
    assert all(f.shape == (HEIGHT, WIDTH, 3) and f.dtype == np.uint8 for f in frames)
    assert [decode_code(f) for f in frames] == list(range(70))
    assert reader.count() == 70
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.rotation, info.has_audio) == (WIDTH, HEIGHT, 25.0, 0, False)
    assert info.frames_at(25) == 70


@pytest.mark.parametrize("fps, n", [(30, 47), (24, 37), (60, 60)])
def test_other_rates_follow_the_fps_filter(tmp_path, fps, n):
    path = make_clip(tmp_path / f"{fps}.mp4", n=n, fps=fps)
    times, last = source_times(path)
    expected = expected_sources(times, last)
    reader = VideoReader(path)
    codes = []
    for frame in reader.frames():
        codes.append(decode_code(frame))
        frame[:] = 255  # each yielded array is the caller's: scribbling on it must not change a repeat
    assert codes == expected
    assert reader.count() == len(expected)
    # Spot checks of the rule by hand: 30 -> 25 fps drops every sixth source frame (slot 3 holds sources 3
    # and 4; the later one wins); 24 -> 25 fps shows source 11 twice (slots 11 and 12); 60 -> 25 ends at slot
    # round(60/60 * 25) = 25: the last source frame (slot round(59/60 * 25) = 25) is never shown.
    if fps == 30:
        assert expected[:6] == [0, 1, 2, 4, 5, 6] and len(expected) == round(47 * 25 / 30)
    if fps == 24:
        assert expected[10:14] == [10, 11, 11, 12] and len(expected) == round(37 * 25 / 24)
    if fps == 60:
        assert len(expected) == 25 and 59 not in expected


def test_variable_frame_rate_source(tmp_path):
    rng = np.random.default_rng(0)
    pts_ms = np.cumsum(rng.integers(15, 75, size=50)).tolist()  # 15-75 ms apart: both drops and repeats
    pts_ms = [p - pts_ms[0] for p in pts_ms]
    path = make_clip(tmp_path / "vfr.mp4", pts_ms=pts_ms, fps=30)
    times, last = source_times(path)
    assert times == [p * MS for p in pts_ms]  # the container kept the irregular times
    expected = expected_sources(times, last)
    assert len(set(expected)) < 50 and len(expected) > len(set(expected))  # the clip exercises both cases
    reader = VideoReader(path)
    assert read_codes(reader) == expected
    assert read_codes(reader, 17, 40) == expected[17:40]


def test_frames_slice_equals_full_decode_and_seeks(tmp_path, monkeypatch):
    path = make_clip(tmp_path / "gop.mp4", n=120, fps=30)  # 100 output frames, keyframe every 12 sources
    reader = VideoReader(path)
    full = read_codes(reader)
    assert len(full) == 100
    for start, stop in [(0, 5), (1, 2), (9, 31), (37, 38), (50, None), (88, 100), (99, 150), (100, None)]:
        assert read_codes(reader, start, stop) == full[start:stop], (start, stop)

    decoded = 0
    original = VideoReader._decoded

    def counting(self, container, stream):
        nonlocal decoded
        for frame in original(self, container, stream):
            decoded += 1
            yield frame

    monkeypatch.setattr(VideoReader, "_decoded", counting)
    assert read_codes(reader, 90, 95) == full[90:95]
    assert decoded <= 2 * GOP  # one group of pictures plus the slice, not the 108 sources before it


def test_rotation_metadata_is_applied(tmp_path):
    def marked(i, width, height):  # a white block at the top-left corner
        image = np.zeros((height, width, 3), np.uint8)
        image[:8, :8] = 255
        return image

    # Display matrix 90 degrees counter-clockwise: the top-left corner ends up bottom-left, portrait.
    path = make_clip(tmp_path / "rotated.mp4", n=5, rotation=90, image=marked)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (HEIGHT, WIDTH, 90)
    frame = next(VideoReader(path).frames())
    assert frame.shape == (WIDTH, HEIGHT, 3) and frame.flags["C_CONTIGUOUS"]
    assert frame[-8:, :8].mean() > 200 and frame[:8, :8].mean() < 50

    # The phone case, -90: the top-left corner ends up top-right.
    path = make_clip(tmp_path / "phone.mp4", n=5, rotation=-90, image=marked)
    assert probe_video(path).rotation == 270
    frame = next(VideoReader(path).frames())
    assert frame.shape == (WIDTH, HEIGHT, 3) and frame[:8, -8:].mean() > 200


def test_rotate_upright_on_arrays():
    image = np.arange(6).reshape(2, 3, 1)  # [[0 1 2], [3 4 5]]
    assert rotate_upright(image, 0) is image
    assert rotate_upright(image, 90)[..., 0].tolist() == [[2, 5], [1, 4], [0, 3]]  # counter-clockwise
    assert rotate_upright(image, -90)[..., 0].tolist() == [[3, 0], [4, 1], [5, 2]]  # clockwise
    assert rotate_upright(image, 180)[..., 0].tolist() == [[5, 4, 3], [2, 1, 0]]
    assert rotate_upright(image, 270)[..., 0].tolist() == rotate_upright(image, -90)[..., 0].tolist()
    assert rotate_upright(image, 45) is image  # not a right angle: ignored, as ffmpeg does


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_file_yields_a_prefix_then_stops_or_names_the_file(tmp_path, damage):
    path = tmp_path / "whole.mp4"
    with VideoWriter(path, WIDTH, HEIGHT, crf=12, preset="ultrafast") as writer:  # faststart: index first
        for i in range(60):
            writer.write(code_image(i))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if damage == "truncated":  # FFmpeg just finds the end of the file
        data = data[:middle]
    else:  # a burst of garbage inside the frame data: FFmpeg reports invalid data
        data[middle : middle + 200] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    codes, error = [], None
    try:
        for frame in VideoReader(damaged).frames():
            codes.append(decode_code(frame))
    except InputError as e:
        error = str(e)
    assert 0 < len(codes) < 60 and codes == list(range(len(codes)))
    if error is not None:
        assert error.startswith(str(damaged)) and "corrupt" in error and "\n" not in error


# ---- writing ------------------------------------------------------------------------------------------------
def smooth_image(i: int, width: int, height: int) -> np.ndarray:
    """Coloured gradients that move with i: colour conversion errors show, block artefacts stay small."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 80 * np.sin(x / width * np.pi + i / 5)
    g = 128 + 80 * np.cos(y / height * np.pi)
    b = 60 + 120 * (x + y) / (width + height)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def read_audio(path) -> tuple[np.ndarray, int, int, str]:
    """(channels, n) float samples, rate, channel count and codec of the first audio stream."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        chunks = [f.to_ndarray() for f in c.decode(stream)]
        return np.concatenate(chunks, axis=1), stream.rate, stream.channels, stream.codec_context.name


@pytest.mark.parametrize("source_kind", ["wav", "mp4"])
def test_writer_video_and_source_audio(tmp_path, source_kind):
    seconds = 2.0
    if source_kind == "wav":
        source = write_wav(tmp_path / "voice.wav", tones(seconds), AUDIO_RATE_HZ)
    else:  # the audio track of a video file
        source = make_clip(tmp_path / "talk.mkv", n=10, audio=tones(seconds))
    frames = [smooth_image(i, WIDTH, HEIGHT) for i in range(30)]
    audio_duration_s = 1.3
    out = tmp_path / "out.mp4"
    with VideoWriter(out, WIDTH, HEIGHT, audio=source, audio_duration_s=audio_duration_s) as writer:
        for frame in frames:
            writer.write(frame)

    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        video = c.streams.video[0]
        assert video.codec_context.name == "h264" and video.average_rate == 25 and video.frames == 30
        assert (video.width, video.height) == (WIDTH, HEIGHT)
    decoded = list(VideoReader(out).frames())
    assert len(decoded) == 30
    errors = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(decoded, frames)]
    assert max(errors) < 3

    samples, rate, channels, codec = read_audio(out)
    assert (codec, rate, channels) == ("aac", AUDIO_RATE_HZ, 2)  # the source's rate and layout, not 16 kHz mono
    assert abs(samples.shape[1] - audio_duration_s * AUDIO_RATE_HZ) <= AAC_FRAME_SAMPLES
    # Both tones made it, each on its own channel.
    for channel, tone_hz in [(0, 440), (1, 1000)]:
        spectrum = np.abs(np.fft.rfft(samples[channel, : AUDIO_RATE_HZ]))
        assert abs(np.argmax(spectrum) - tone_hz) <= 1


def test_writer_interleaves_audio_as_it_writes(tmp_path):
    # Longer than the muxer's own 10 s interleaving window, so only encoding audio along with the video
    # keeps the file interleaved (and the muxer's buffer small).
    seconds, frames = 13, 13 * OUT_FPS
    source = write_wav(tmp_path / "long.wav", tones(seconds), AUDIO_RATE_HZ)
    out = tmp_path / "long.mp4"
    with VideoWriter(out, WIDTH, HEIGHT, preset="ultrafast", audio=source) as writer:
        for i in range(frames):
            writer.write(code_image(i))
    with av.open(str(out)) as c:
        order = [p.stream.type for p in c.demux() if p.size]
    assert order.count("video") == frames
    audio_at = [i for i, kind in enumerate(order) if kind == "audio"]
    assert audio_at[0] < 10 and max(np.diff(audio_at)) < 10  # never more than a few video packets apart


def test_writer_pads_audio_to_the_video_duration_and_odd_sizes(tmp_path):
    source = write_wav(tmp_path / "short.wav", tones(0.4), AUDIO_RATE_HZ)
    out = tmp_path / "odd.mkv"
    width, height = WIDTH - 1, HEIGHT - 1
    frames = [smooth_image(i, width, height) for i in range(25)]
    with VideoWriter(out, width, height, audio=source) as writer:  # audio defaults to the video's 1 s
        for frame in frames:
            writer.write(frame)
    decoded = list(VideoReader(out).frames())
    assert len(decoded) == 25 and decoded[0].shape == (HEIGHT, WIDTH, 3)  # padded to even
    crop = decoded[0][:height, :width].astype(int)
    assert np.abs(crop - frames[0]).mean() < 3
    # The pad repeats the last row and column.
    assert np.abs(decoded[0][-1, :width].astype(int) - frames[0][-1]).mean() < 6
    assert np.abs(decoded[0][:height, -1].astype(int) - frames[0][:, -1]).mean() < 6
    samples, rate, _, _ = read_audio(out)
    assert abs(samples.shape[1] - AUDIO_RATE_HZ) <= AAC_FRAME_SAMPLES
    assert np.abs(samples[:, int(0.6 * rate) :]).max() < 0.01  # silence after the 0.4 s source


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "result.mp4"

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with VideoWriter(out, WIDTH, HEIGHT) as writer:
            writer.write(code_image(0))
            raise Boom
    assert list(tmp_path.iterdir()) == []

    out.write_bytes(b"previous result")
    with pytest.raises(Boom):
        with VideoWriter(out, WIDTH, HEIGHT) as writer:
            writer.write(code_image(0))
            assert len(list(tmp_path.iterdir())) == 2  # the previous file and the hidden partial one
            raise Boom
    assert list(tmp_path.iterdir()) == [out] and out.read_bytes() == b"previous result"

    with pytest.raises(ValueError):  # a frame of the wrong size is a bug in the caller; still no file
        with VideoWriter(out, WIDTH, HEIGHT) as writer:
            writer.write(np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))
    assert out.read_bytes() == b"previous result"

    with VideoWriter(out, WIDTH, HEIGHT) as writer:  # a successful close replaces it
        writer.write(code_image(3))
    assert list(tmp_path.iterdir()) == [out] and read_codes(VideoReader(out)) == [3]


def test_writer_rejects_bad_destinations(tmp_path):
    with pytest.raises(InputError, match=r"clip\.avi.*unsupported output extension"):
        VideoWriter(tmp_path / "clip.avi", WIDTH, HEIGHT)
    with pytest.raises(InputError, match="no such folder.*does not exist"):
        VideoWriter(tmp_path / "no such folder" / "out.mp4", WIDTH, HEIGHT)
    # /proc refuses new files even to root, for whom permission bits do not count.
    with pytest.raises(InputError, match="/proc"):
        VideoWriter("/proc/out.mp4", WIDTH, HEIGHT)
    with pytest.raises(InputError, match=r"missing\.wav.*not found"):
        VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=tmp_path / "missing.wav")
    silent = make_clip(tmp_path / "silent.mp4", n=3)
    with pytest.raises(InputError, match=r"silent\.mp4.*no audio"):
        VideoWriter(tmp_path / "out.mp4", WIDTH, HEIGHT, audio=silent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silent.mp4"]


# ---- errors and paths ---------------------------------------------------------------------------------------
def test_reader_errors_name_the_file_in_one_line(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    voice = write_wav(tmp_path / "voice.wav", tones(0.2), AUDIO_RATE_HZ)
    cases = [(tmp_path / "missing.mp4", "missing.mp4.*not found"), (text, "notes.mp4.*not a readable"),
             (voice, "voice.wav.*no video stream")]
    for opener in (probe_video, VideoReader):
        for path, message in cases:
            with pytest.raises(InputError, match=message) as info:
                opener(path)
            assert "\n" not in str(info.value)


def test_paths_with_spaces_and_non_ascii(tmp_path):
    folder = tmp_path / "mes vidéos ☺"
    folder.mkdir()
    source = write_wav(folder / "voix off – été.wav", tones(0.5), AUDIO_RATE_HZ)
    out = folder / "résultat final 口型.mp4"
    with VideoWriter(out, WIDTH, HEIGHT, audio=source) as writer:
        for i in range(5):
            writer.write(code_image(i))
    assert read_codes(VideoReader(out)) == list(range(5))
    assert probe_video(out).has_audio
    assert sorted(p.name for p in folder.iterdir()) == sorted([source.name, out.name])


def test_writer_audio_can_start_inside_the_track_or_after_silence(tmp_path):
    """A segment of a longer file takes its own stretch of the sound; a negative start delays the sound."""
    from latentsync.media import decode_audio, write_wav

    rate = 16_000
    t = np.arange(3 * rate) / rate
    tone = np.where(t < 1.0, 0.0, 0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # silent first second
    wav = write_wav(tmp_path / "tone.wav", tone, rate)
    frames = [np.full((64, 64, 3), 128, np.uint8)] * 25  # 1 s of video
    for start, expect_sound in ((1.0, True), (0.0, False), (-0.5, False)):
        out = tmp_path / f"start_{start}.mp4"
        with VideoWriter(out, 64, 64, audio=wav, audio_start_s=start) as writer:
            for f in frames:
                writer.write(f)
        samples = decode_audio(out)
        loud = np.abs(samples[: rate // 2]).mean() > 0.05
        assert loud == expect_sound, start
    # Delayed by 1.5 s: the tone (from 1.0 s of the file) starts at 2.5 s, after this 1 s clip ends.
    with VideoWriter(tmp_path / "late.mp4", 64, 64, audio=wav, audio_start_s=-1.5, audio_duration_s=3.0) as w:
        for f in frames * 3:
            w.write(f)
    late = decode_audio(tmp_path / "late.mp4")
    assert np.abs(late[: int(2.4 * rate)]).mean() < 0.01 and np.abs(late[int(2.6 * rate):]).mean() > 0.05
