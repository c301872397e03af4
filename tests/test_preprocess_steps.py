"""Data-pipeline steps 1-4: check, resample, shots, segments. All clips are generated here, tiny and short."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from latentsync.config import PreprocessConfig
from latentsync.demo import load_portrait
from latentsync.media import VideoReader, VideoWriter, decode_audio, probe_video, write_wav
from latentsync.preprocess import resample as resample_module
from latentsync.preprocess.base import Item, StepContext
from latentsync.preprocess.check import CheckStep
from latentsync.preprocess.resample import ResampleStep, resample_video
from latentsync.preprocess.segments import SegmentStep, segment_bounds
from latentsync.preprocess.shots import ShotStep, detect_shots

WIDTH, HEIGHT = 128, 160  # small, and below PySceneDetect's auto-downscale width: scored at full size
AUDIO_RATE_HZ = 44_100
OUT_RATE_HZ = 16_000
AAC_FRAME = 1024  # the decoded AAC track ends on a whole frame: up to this many samples of padding
CUT_FRAME = 50
CONFIG = PreprocessConfig()


# ---- clip generation ------------------------------------------------------------------------------------------
def portrait_frames(n: int, cut: int | None = None, seed: int = 0):
    """The demo portrait with a little noise per frame (a static talking head); after `cut`, a green field."""
    rng = np.random.default_rng(seed)
    portrait = cv2.resize(load_portrait(), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    field = np.full_like(portrait, (40, 190, 70))
    for i in range(n):
        image = portrait if cut is None or i < cut else field
        yield np.clip(image + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)


def tone(seconds: float, rate: int = AUDIO_RATE_HZ) -> np.ndarray:
    """(n, 2): 440 Hz on the left, 1 kHz on the right."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)], axis=1)


def write_clip(path: Path, seconds: float, fps: float = 25, audio: bool = True, cut: int | None = None) -> Path:
    """An H.264 MP4 with the portrait frames and (optionally) a stereo 44.1 kHz AAC tone, via VideoWriter."""
    wav = None
    if audio:
        wav = write_wav(path.with_suffix(".wav"), tone(seconds), AUDIO_RATE_HZ)
    with VideoWriter(path, WIDTH, HEIGHT, fps=fps, audio=wav) as writer:
        for image in portrait_frames(round(seconds * fps), cut):
            writer.write(image)
    return path


def write_raw_clip(path: Path, pts_ms: list[int], audio_start_s: float = 0.0, audio_s: float = 0.0) -> Path:
    """An MP4 with frames at the given times (ms) and, if `audio_s`, a stereo AAC tone starting at
    `audio_start_s` (written with PyAV directly: VideoWriter only makes constant-rate, aligned files)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25, options={"crf": "18", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        sound = container.add_stream("aac", rate=AUDIO_RATE_HZ, layout="stereo") if audio_s else None
        for pts, image in zip(pts_ms, portrait_frames(len(pts_ms))):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            planar = np.ascontiguousarray(tone(audio_s).T, dtype=np.float32)  # (2, n)
            first = round(audio_start_s * AUDIO_RATE_HZ)
            for i in range(0, planar.shape[1], AAC_FRAME):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, i : i + AAC_FRAME]),
                                                   format="fltp", layout="stereo")
                frame.sample_rate, frame.time_base = AUDIO_RATE_HZ, Fraction(1, AUDIO_RATE_HZ)
                frame.pts = first + i
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def packet_ends(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [p.pos + p.size for p in container.demux() if p.size]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    good = write_clip(root / "good.mp4", 3.0)
    data = good.read_bytes()
    broken = root / "broken.mp4"  # cut mid-packet: FFmpeg reports invalid data
    broken.write_bytes(data[: int(len(data) * 0.6)])
    cut_at = [end for end in packet_ends(good) if end < len(data) * 0.5][-1]
    short_read = root / "short_read.mp4"  # cut on a packet boundary: the streams just stop early
    short_read.write_bytes(data[:cut_at])
    text = root / "notes.mp4"
    text.write_text("not a video\n")
    return {
        "good": good,
        "fps30": write_clip(root / "fps30.mp4", 3.0, fps=30),
        "silent": write_clip(root / "silent.mp4", 3.0, audio=False),
        "short": write_clip(root / "short.mp4", 1.0),
        "broken": broken,
        "short_read": short_read,
        "text": text,
        "cut": write_clip(root / "cut.mp4", 4.0, cut=CUT_FRAME),
    }


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def item_for(path: Path, **meta) -> Item:
    return Item(id=path.name, path=str(path), meta=meta)


def video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files (atomic_write's `.name.<hex>.mp4`) under `folder`."""
    return [p.name for p in folder.rglob(".*")]


# ---- 1. check -------------------------------------------------------------------------------------------------
def test_check_accepts_a_good_clip_and_measures_it(clips, tmp_path):
    before = snapshot(clips["good"])
    item = item_for(clips["good"], source="kept")
    result = CheckStep(CONFIG).run(item, StepContext(tmp_path))
    assert result.rejected is None
    [out] = result.outputs
    assert (out.id, out.path, out.start_s, out.end_s) == (item.id, item.path, 0.0, None)
    meta = out.meta
    assert meta["source"] == "kept"  # earlier facts are carried on
    assert (meta["fps"], meta["width"], meta["height"], meta["frames"]) == (25.0, WIDTH, HEIGHT, 75)
    assert meta["duration_s"] == pytest.approx(3.0, abs=0.05)
    assert (meta["audio_sample_rate"], meta["audio_channels"]) == (AUDIO_RATE_HZ, 2)
    assert snapshot(clips["good"]) == before
    assert list(tmp_path.iterdir()) == []  # a check writes nothing


@pytest.mark.parametrize("name, reason", [
    ("silent", "no audio stream"),
    ("short", "too short: 1.0 s < 2.0 s"),
    ("broken", "corrupt: decoding failed at"),
    ("short_read", "truncated: "),
    ("text", "not a readable audio or video file"),
])
def test_check_rejects_with_a_reason_and_keeps_the_file(clips, tmp_path, name, reason):
    path = clips[name]
    before = snapshot(path)
    result = CheckStep(CONFIG).run(item_for(path), StepContext(tmp_path))
    assert result.outputs == []
    assert result.rejected.startswith(reason), result.rejected
    assert "\n" not in result.rejected and str(path) not in result.rejected
    assert snapshot(path) == before  # rejected, never deleted or rewritten (the reference deletes it)


def test_check_reports_what_it_measured_on_rejection(clips, tmp_path):
    broken = CheckStep(CONFIG).run(item_for(clips["broken"]), StepContext(tmp_path))
    assert 0 < broken.metrics["frames"] < 75 and broken.metrics["fps"] == 25.0
    at = float(broken.rejected.split(" at ")[1].split(" s")[0])
    assert 0.5 < at < 3.0
    short_read = CheckStep(CONFIG).run(item_for(clips["short_read"]), StepContext(tmp_path))
    assert 0 < short_read.metrics["frames"] < 50
    silent = CheckStep(CONFIG).run(item_for(clips["silent"]), StepContext(tmp_path))
    assert silent.metrics["width"] == WIDTH and "audio_sample_rate" not in silent.metrics
    missing = CheckStep(CONFIG).run(item_for(tmp_path / "gone.mp4"), StepContext(tmp_path))
    assert missing.rejected == "file not found"


def test_check_min_duration_comes_from_the_config(clips, tmp_path):
    lenient = CheckStep(PreprocessConfig(min_duration_s=0.5))
    assert lenient.run(item_for(clips["short"]), StepContext(tmp_path)).rejected is None
    assert lenient.params() != CheckStep(CONFIG).params() and "version" in lenient.params()


# ---- 2. resample ----------------------------------------------------------------------------------------------
def assert_audio_16k_mono(path: Path, expected_s: float) -> np.ndarray:
    """The track is AAC, 16 kHz, mono, and lasts `expected_s` plus at most the AAC end padding (the source's
    and ours: FFmpeg's MP4 muxer does not record where the last frame's padding starts)."""
    with av.open(str(path)) as container:
        [stream] = container.streams.audio
        assert (stream.codec_context.name, stream.rate, stream.codec_context.layout.nb_channels) == ("aac", 16_000, 1)
    samples = decode_audio(path, OUT_RATE_HZ)
    expected = expected_s * OUT_RATE_HZ
    assert expected - 2 <= len(samples) <= expected + 2 * AAC_FRAME, len(samples) / OUT_RATE_HZ
    return samples


def test_resample_copies_a_25fps_source_byte_for_byte(clips, tmp_path):
    src = clips["good"]
    before = snapshot(src)
    result = ResampleStep(CONFIG).run(item_for(src, fps=25.0), StepContext(tmp_path))
    [out] = result.outputs
    dst = Path(out.path)
    assert dst == tmp_path / "good.mp4.mp4" and out.id == "good.mp4"  # ctx.output_path keeps the source name
    assert result.metrics["copied"] is True and out.meta["resampled"] == "copied"
    assert video_packets(dst) == video_packets(src)  # remuxed, not re-encoded
    assert (out.meta["fps"], out.meta["frames"], out.meta["duration_s"]) == (25.0, 75, 3.0)
    assert VideoReader(dst).count() == 75
    samples = assert_audio_16k_mono(dst, 3.0)
    # The tone survives the downmix: 440 Hz and 1 kHz both present in the mono track.
    spectrum = np.abs(np.fft.rfft(samples[: OUT_RATE_HZ]))
    assert spectrum[440] > 50 * np.median(spectrum) and spectrum[1000] > 50 * np.median(spectrum)
    assert snapshot(src) == before
    assert leftovers(tmp_path) == []


def test_resample_reencodes_other_rates_to_25fps(clips, tmp_path):
    src = clips["fps30"]
    before = snapshot(src)
    item = Item(id="speaker1/fps30.mp4", path=str(src), meta={"fps": 30.0})
    result = ResampleStep(CONFIG).run(item, StepContext(tmp_path))
    [out] = result.outputs
    dst = Path(out.path)
    assert dst == tmp_path / "speaker1" / "fps30.mp4.mp4" and dst.is_file()  # the id's folders are made
    assert result.metrics["copied"] is False and "not constant 25 fps" in result.metrics["reason"]
    assert out.meta["resampled"] == "re-encoded" and out.meta["source_fps"] == 30.0
    expected = VideoReader(src).count()  # the fps-filter rule: 90 frames at 30 fps -> 75 at 25 fps
    assert expected == 75 and out.meta["frames"] == expected and VideoReader(dst).count() == expected
    info = probe_video(dst)
    assert (info.fps, info.width, info.height) == (25.0, WIDTH, HEIGHT)
    first = next(VideoReader(dst).frames()).astype(int)
    assert np.abs(first - next(VideoReader(src).frames()).astype(int)).mean() < 3
    assert_audio_16k_mono(dst, 3.0)
    assert snapshot(src) == before
    assert leftovers(tmp_path) == []


def test_resample_reencodes_a_variable_rate_source_that_averages_25fps(tmp_path):
    # 30 ms and 50 ms frames alternate: 25 fps on average (OpenCV would say 25), but not on the 25 fps grid.
    pts = [sum(30 if k % 2 == 0 else 50 for k in range(i)) for i in range(50)]
    src = write_raw_clip(tmp_path / "vfr.mp4", pts, audio_s=2.0)
    result = resample_video(src, tmp_path / "out" / "vfr.mp4")
    assert result["copied"] is False and result["reason"].startswith("not constant 25 fps")
    assert result["frames"] == VideoReader(src).count()


def test_resample_puts_late_audio_after_silence(tmp_path):
    src = write_raw_clip(tmp_path / "late.mp4", [40 * i for i in range(50)], audio_start_s=0.5, audio_s=1.5)
    result = resample_video(src, tmp_path / "out.mp4")
    assert result["copied"] is True
    samples = decode_audio(tmp_path / "out.mp4", OUT_RATE_HZ)
    lead = OUT_RATE_HZ // 2
    assert np.abs(samples[: lead - 400]).max() < 0.01  # silence until the audio's own start, 0.5 s in
    assert np.abs(samples[lead + 400 : lead + 4000]).max() > 0.2
    assert result["audio_duration_s"] == pytest.approx(2.0, abs=AAC_FRAME / AUDIO_RATE_HZ + 0.01)


def test_resample_trims_audio_that_starts_before_the_picture(tmp_path):
    # The first frame is shown at 0.3 s, the sound starts at 0: its first 0.3 s go with no frame.
    src = write_raw_clip(tmp_path / "early.mp4", [300 + 40 * i for i in range(50)], audio_s=2.3)
    result = resample_video(src, tmp_path / "out.mp4")
    assert result["copied"] is True
    assert result["audio_duration_s"] == pytest.approx(2.0, abs=AAC_FRAME / AUDIO_RATE_HZ + 0.01)
    # What is left starts 0.3 s into the 440 Hz + 1 kHz tone: its phase there, not at 0.
    samples = decode_audio(tmp_path / "out.mp4", OUT_RATE_HZ)
    t = 0.3 + np.arange(2000, 2400) / OUT_RATE_HZ
    expected = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1000 * t)) / 2  # the downmix
    assert np.corrcoef(samples[2000:2400], expected)[0, 1] > 0.9
    # Both streams start at 0 in the output: players, not only our readers, see them in sync.
    for kind in ("video", "audio"):
        with av.open(str(tmp_path / "out.mp4")) as container:
            assert next(container.decode(**{kind: 0})).pts == 0, kind


def test_resample_output_is_atomic(clips, tmp_path, monkeypatch):
    dst = tmp_path / "deep" / "clip.mp4"
    dst.parent.mkdir()
    dst.write_bytes(b"previous")
    calls = 0
    original = resample_module._MonoAacTrack.mux_until

    def failing(self, seconds):
        nonlocal calls
        calls += 1
        if calls == 10:
            raise RuntimeError("killed mid-write")
        return original(self, seconds)

    monkeypatch.setattr(resample_module._MonoAacTrack, "mux_until", failing)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        resample_video(clips["good"], dst)
    assert dst.read_bytes() == b"previous"  # the final name never holds a partial file
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    resample_video(clips["good"], dst)
    assert VideoReader(dst).count() == 75 and leftovers(tmp_path) == []


def test_resample_step_rejects_an_unreadable_source(clips, tmp_path):
    result = ResampleStep(CONFIG).run(item_for(clips["text"]), StepContext(tmp_path))
    assert result.rejected.startswith("not a readable audio or video file")
    assert list(tmp_path.iterdir()) == []


def test_resample_force_reencode_gives_the_same_frames(clips, tmp_path):
    result = resample_video(clips["good"], tmp_path / "enc.mp4", allow_copy=False)
    assert result["copied"] is False and result["frames"] == 75
    assert video_packets(tmp_path / "enc.mp4") != video_packets(clips["good"])


# ---- 3. shots -------------------------------------------------------------------------------------------------
def test_shots_finds_the_hard_cut(clips, tmp_path):
    src = clips["cut"]
    before = snapshot(src)
    item = item_for(src, fps=25.0)
    result = ShotStep(CONFIG).run(item, StepContext(tmp_path))
    assert result.metrics["shots"] == 2
    first, second = result.outputs
    assert (first.id, second.id) == ("cut.mp4#shot000", "cut.mp4#shot001")
    assert first.start_s == 0.0 and first.end_s == second.start_s and second.end_s == 4.0
    assert abs(first.end_s * 25 - CUT_FRAME) <= 2
    assert first.end_s * 25 == round(first.end_s * 25)  # on the frame grid
    assert first.path == second.path == str(src) and second.meta["fps"] == 25.0 and second.meta["shot"] == 1
    assert snapshot(src) == before and list(tmp_path.iterdir()) == []  # virtual shots: no files


def test_shots_of_an_uncut_clip_is_the_whole_clip(clips, tmp_path):
    result = ShotStep(CONFIG).run(item_for(clips["good"]), StepContext(tmp_path))
    [shot] = result.outputs
    assert (shot.id, shot.start_s, shot.end_s) == ("good.mp4#shot000", 0.0, 3.0)
    assert result.metrics["shots"] == 1


def test_shots_threshold_matters(clips):
    # An impossible threshold finds no cut: the detector really is configured from the step's config.
    assert detect_shots(clips["cut"], 25, adaptive_threshold=300.0, min_scene_frames=15) == [(0, 100)]


# ---- 4. segments ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("duration, count", [
    (1.9, 0), (2.0, 1), (4.96, 1), (5.0, 1), (9.99, 1), (10.0, 2), (12.0, 2), (14.99, 2), (15.0, 3), (60.04, 12),
])
@pytest.mark.parametrize("start", [0.0, 7.32])
def test_segment_bounds(duration, count, start):
    fps = 25
    end = start + duration
    bounds = segment_bounds(start, end, fps, 5.0, 10.0, 2.0)
    assert len(bounds) == count
    if not bounds:
        return
    assert bounds[0][0] == pytest.approx(start)
    frames = [(round(a * fps), round(b * fps)) for a, b in bounds]
    for (a, b), (fa, fb) in zip(bounds, frames):
        assert a == pytest.approx(fa / fps, abs=1e-9) and b == pytest.approx(fb / fps, abs=1e-9)  # on the grid
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(bounds, bounds[1:]))  # contiguous
    assert bounds[-1][1] <= end + 1e-9 and end - bounds[-1][1] < 1 / fps  # covers the shot, never past it
    lengths = [fb - fa for fa, fb in frames]
    if duration >= 5.0:
        assert all(125 <= n < 250 for n in lengths), lengths  # each segment in [5, 10) s
        assert max(lengths) - min(lengths) <= 1  # equal to within a frame
    else:
        assert lengths == [math.floor(duration * fps + 1e-6)]


def test_segment_bounds_rounds_an_off_grid_shot_inwards():
    assert segment_bounds(0.01, 5.05, 25, 5.0, 10.0, 2.0) == [(0.04, 5.04)]
    assert segment_bounds(0.01, 5.03, 25, 5.0, 10.0, 2.0) == [(0.04, 5.0)]  # 4.96 s of whole frames: kept whole
    with pytest.raises(ValueError):
        segment_bounds(0.0, 20.0, 25, 5.0, 8.0, 2.0)  # max < 2 min: floor(d / min) pieces could exceed max


def test_segment_step_items(tmp_path):
    step = SegmentStep(CONFIG)
    shot = Item("a/b.mp4#shot001", "/data/b.mp4", start_s=4.0, end_s=16.0, meta={"fps": 25.0, "shot": 1})
    result = step.run(shot, StepContext(tmp_path))
    assert [(o.id, o.start_s, o.end_s) for o in result.outputs] == [
        ("a/b.mp4#shot001#seg00", 4.0, 10.0), ("a/b.mp4#shot001#seg01", 10.0, 16.0)]
    assert all(o.path == "/data/b.mp4" and o.meta["shot"] == 1 for o in result.outputs)
    assert result.outputs[1].meta["segment"] == 1 and result.metrics["segments"] == 2
    short = step.run(Item("c.mp4#shot000", "/data/c.mp4", 0.0, 1.88), StepContext(tmp_path))
    assert short.outputs == [] and short.rejected == "too short: 1.88 s < 2.0 s"
    whole = step.run(Item("d.mp4", "/data/d.mp4", meta={"duration_s": 11.0}), StepContext(tmp_path))
    assert [(o.start_s, o.end_s) for o in whole.outputs] == [(0.0, 5.52), (5.52, 11.0)]
    assert list(tmp_path.iterdir()) == []


def test_steps_params_name_their_settings():
    for step, keys in [(CheckStep, {"min_duration_s"}), (ResampleStep, {"video_fps", "audio_sample_rate"}),
                       (ShotStep, {"shot_adaptive_threshold", "shot_min_scene_frames"}),
                       (SegmentStep, {"segment_min_s", "segment_max_s", "min_segment_s"})]:
        params = step(CONFIG).params()
        assert keys <= params.keys() and isinstance(params["version"], int)
    assert ShotStep(PreprocessConfig(shot_adaptive_threshold=3.0)).params() != ShotStep(CONFIG).params()


def test_shot_detection_leaves_ffmpeg_quiet(tmp_path, capfd):
    """PySceneDetect restores FFmpeg's default logging when it opens a video; later encodes must stay silent."""
    import av

    from latentsync.media import VideoWriter
    from latentsync.preprocess.shots import detect_shots

    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, 64, 64) as writer:
        for i in range(30):
            writer.write(np.full((64, 64, 3), 8 * i, np.uint8))
    detect_shots(clip, 25, 2.0, 15)
    assert av.logging.get_level() is None
    capfd.readouterr()
    with VideoWriter(tmp_path / "after.mp4", 64, 64) as writer:
        for i in range(5):
            writer.write(np.zeros((64, 64, 3), np.uint8))
    assert "libx264" not in capfd.readouterr().err
