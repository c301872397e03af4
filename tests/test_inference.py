"""End to end with tiny random-weight models on a generated clip of a real face (the portrait matplotlib
ships): lengths, the audio track, what changes and what must not, and every kind of bad input."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from latentsync import cli
from latentsync.audio import num_video_frames
from latentsync.demo import UNET_CONFIG_NAME, load_portrait, synth_speech
from latentsync.errors import InputError
from latentsync.face.mediapipe import MediapipeBackend
from latentsync.inference import InferenceOptions, LipSync
from latentsync.job import pingpong_index
from latentsync.media import VideoReader, VideoWriter, probe_video, write_wav

SOURCE_FRAMES = 40
FACELESS = range(15, 22)  # source frames showing no face
FAST = InferenceOptions(steps=2, guidance=1.5)


def moving_portrait(i: int) -> np.ndarray:
    import cv2

    image = load_portrait()
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 3 * np.sin(i / 6), 1.0)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def faceless(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return np.full((600, 512, 3), 90, np.uint8) + rng.integers(0, 20, (600, 512, 3), dtype=np.uint8)


def write_clip(path: Path, n: int = SOURCE_FRAMES, faceless_frames=FACELESS, audio: Path | None = None) -> Path:
    with VideoWriter(path, 512, 600, fps=25, audio=audio) as writer:
        for i in range(n):
            writer.write(faceless(i) if i in faceless_frames else moving_portrait(i))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inference")


@pytest.fixture(scope="module")
def clip(work) -> Path:
    return write_clip(work / "clip.mp4")


@pytest.fixture(scope="module")
def speech(work) -> Path:
    """2.2 s of speech-like sound at 44.1 kHz stereo: longer than the clip (1.6 s), so the video ping-pongs."""
    mono = synth_speech(2.2, sample_rate=44_100)
    return write_wav(work / "speech.wav", np.stack([mono, 0.5 * mono], axis=1), 44_100)


@pytest.fixture(scope="module")
def progress_events() -> list[tuple[str, int, int]]:
    return []


@pytest.fixture(scope="module")
def processed(lipsync, clip, speech, progress_events):
    frames: list[np.ndarray] = []
    result = lipsync.process(clip, speech, frames.append, FAST, progress=lambda *e: progress_events.append(e))
    return result, frames


def test_progress_callback_reports_each_stage(processed, progress_events):
    """A callable `progress` hears the audio stage, then every output frame of the lip-sync stage, in order."""
    result, _ = processed
    stages = [stage for stage, _, _ in progress_events]
    assert stages[:2] == ["audio features", "audio features"] and set(stages[2:]) == {"lip sync"}
    frames = [(done, total) for stage, done, total in progress_events if stage == "lip sync"]
    assert frames[0] == (0, result.frames) and frames[-1] == (result.frames, result.frames)
    assert all(a[0] < b[0] for a, b in zip(frames, frames[1:]))  # one call per chunk, each further on


def expected_frame_count(audio_seconds: float) -> int:
    n50 = (int(audio_seconds * 16_000) // 160) // 2
    return num_video_frames(n50)


def test_length_follows_the_audio_and_the_video_ping_pongs(processed, clip):
    result, frames = processed
    assert result.frames == len(frames) == expected_frame_count(2.2) == 57
    source = list(VideoReader(clip).frames())
    assert len(source) == SOURCE_FRAMES
    # Output 40.. replays the clip backwards: 39, 38, ...; a faceless source frame comes back untouched.
    for j in (40, 41, 56):
        i = pingpong_index(j, SOURCE_FRAMES)
        assert i == 2 * SOURCE_FRAMES - 1 - j
        if i in FACELESS:
            assert np.array_equal(frames[j], source[i])


def test_frames_without_a_face_are_passed_through(processed, clip):
    result, frames = processed
    source = list(VideoReader(clip).frames())
    assert result.frames_without_face == len(FACELESS)  # the backward pass (40..56) does not reach 15..21
    for i in FACELESS:
        assert np.array_equal(frames[i], source[i])


def test_only_the_face_region_changes_and_the_mouth_does(processed, clip):
    _, frames = processed
    source = list(VideoReader(clip).frames())
    with MediapipeBackend(video=False) as backend:
        for i in (0, 8, 30):
            (face,) = backend.detect(source[i])
            x1, y1, x2, y2 = face.box
            changed = np.any(frames[i] != source[i], axis=-1)
            ys, xs = np.nonzero(changed)
            w, h = x2 - x1, y2 - y1
            # The pasted crop reaches from the brows to below the chin; nothing outside a margin around it moves.
            assert xs.min() >= x1 - 0.35 * w and xs.max() <= x2 + 0.35 * w
            assert ys.min() >= y1 - 0.35 * h and ys.max() <= y2 + 0.6 * h
            assert changed.mean() < 0.3
            mouth = (slice(int(y1 + 0.7 * h), int(y2)), slice(int(x1 + 0.3 * w), int(x2 - 0.3 * w)))
            diff = np.abs(frames[i][mouth].astype(int) - source[i][mouth].astype(int)).mean()
            assert diff > 5  # regenerated by the (untrained) network


def test_run_writes_25_fps_video_with_the_users_audio(lipsync, clip, speech, work, processed):
    out = work / "out.mp4"
    result = lipsync.run(clip, speech, out, FAST, progress=False)
    assert result.output == out and result.frames == 57
    info = probe_video(out)
    assert (info.width, info.height, info.fps) == (512, 600, 25)
    assert info.has_audio
    written = list(VideoReader(out).frames())
    assert len(written) == 57
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        # The user's own track: 44.1 kHz stereo, not the 16 kHz mono copy the model hears.
        assert (stream.codec_context.sample_rate, stream.codec_context.channels) == (44_100, 2)
        assert abs(float(stream.duration * stream.time_base) - 57 / 25) < 0.05
    # Within encoding noise of what process() produced, faceless frames included.
    _, frames = processed
    for j in (0, FACELESS[0], 50):
        assert np.abs(written[j].astype(int) - frames[j].astype(int)).mean() < 3


def test_jobs_are_reproducible(lipsync, clip, speech, processed):
    frames: list[np.ndarray] = []
    lipsync.process(clip, speech, frames.append, FAST)
    assert all(np.array_equal(a, b) for a, b in zip(frames, processed[1]))


def test_batching_chunks_gives_the_same_video(lipsync, clip, speech, processed):
    frames: list[np.ndarray] = []
    lipsync.process(clip, speech, frames.append, InferenceOptions(steps=2, guidance=1.5, batch_chunks=3))
    assert len(frames) == len(processed[1])
    diff = np.stack([np.abs(a.astype(int) - b.astype(int)) for a, b in zip(frames, processed[1])])
    assert diff.max() <= 3 and diff.mean() < 0.01  # float noise of other batch shapes, rounded to uint8


def test_channels_last_weights_give_the_same_video(checkpoints, clip, speech, processed):
    nhwc = LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", audio_cache=False,
                   channels_last=True)
    assert nhwc.pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.pipeline.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    frames: list[np.ndarray] = []
    nhwc.process(clip, speech, frames.append, FAST)
    assert len(frames) == len(processed[1])
    diff = np.stack([np.abs(a.astype(int) - b.astype(int)) for a, b in zip(frames, processed[1])])
    assert diff.max() <= 3 and diff.mean() < 0.01  # other kernels' float rounding, to uint8


def test_low_memory_mode_gives_the_same_video(checkpoints, clip, speech, processed, monkeypatch):
    import latentsync.inference as inference

    monkeypatch.setattr(inference, "LOW_MEMORY_FEED_FORWARD_ROWS", 100)  # tiny latents: slices must still happen
    low = LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", audio_cache=False,
                  offload=True)
    assert low.pipeline.vae_offload is not None and low.audio_encoder._offload is not None
    options = dataclasses.replace(FAST, low_memory=True)
    assert options.sampling().split_guidance and options.sampling().feed_forward_rows == 100
    frames: list[np.ndarray] = []
    low.process(clip, speech, frames.append, options)
    assert len(frames) == len(processed[1])
    diff = np.stack([np.abs(a.astype(int) - b.astype(int)) for a, b in zip(frames, processed[1])])
    assert diff.max() <= 3 and diff.mean() < 0.01  # other batch shapes' float rounding, to uint8


def test_concurrent_jobs_on_one_lipsync_keep_their_own_settings(lipsync, clip, speech, processed, monkeypatch):
    """Two jobs at once on one LipSync, one with the low-memory feed-forward slices and progress bars, one
    without: each sees only its own settings, gives the frames it gives alone, and the models keep none."""
    import threading

    import latentsync.inference as inference
    from latentsync.models import attention

    monkeypatch.setattr(inference, "LOW_MEMORY_FEED_FORWARD_ROWS", 100)
    low = dataclasses.replace(FAST, low_memory=True)
    alone_low: list[np.ndarray] = []
    lipsync.process(clip, speech, alone_low.append, low)
    seen: dict[str, set] = {}
    ff = next(m for m in lipsync.pipeline.unet.modules() if isinstance(m, attention.FeedForward))
    hook = ff.register_forward_pre_hook(lambda *_: seen.setdefault(threading.current_thread().name, set()).add(
        getattr(attention._thread_settings, "feed_forward_rows", 0)))
    results: dict[str, list] = {"low": [], "plain": []}
    errors = []

    def job(name, options, progress):
        try:
            lipsync.process(clip, speech, results[name].append, options, progress=progress)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=job, args=("low", low, True), name="low"),
               threading.Thread(target=job, args=("plain", FAST, False), name="plain")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        hook.remove()
    assert not errors, errors
    assert seen == {"low": {100}, "plain": {0}}
    assert all(np.array_equal(a, b) for a, b in zip(results["low"], alone_low))
    assert all(np.array_equal(a, b) for a, b in zip(results["plain"], processed[1]))
    assert lipsync.audio_encoder.progress is False  # the progress bar was the job's, not the encoder's
    assert not any(getattr(m, "max_rows", 0) for m in lipsync.pipeline.unet.modules())


def test_running_out_of_memory_is_one_line_with_what_to_change(lipsync, clip, speech, tmp_path, monkeypatch):
    from latentsync.errors import ResourceError

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(lipsync, "pipeline", _Raising(lipsync.pipeline, exhausted))
    out = tmp_path / "out.mp4"
    with pytest.raises(ResourceError) as caught:
        lipsync.run(clip, speech, out, dataclasses.replace(FAST, batch_chunks=2), progress=False)
    message = str(caught.value)
    assert "\n" not in message and "ran out of host memory" in message
    assert "--batch-chunks 1 (now 2)" in message and "--low-memory" in message
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written is left

    def broken(*args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(lipsync, "pipeline", _Raising(lipsync.pipeline.inner, broken))
    with pytest.raises(RuntimeError, match="some other failure"):  # a bug keeps its traceback
        lipsync.process(clip, speech, lambda frame: None, FAST)


class _Raising:
    """A pipeline whose calls fail with `fail`; everything else is the wrapped pipeline's."""

    def __init__(self, inner, fail):
        self.inner, self.fail = inner, fail

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        return self.fail(*args, **kwargs)


def test_a_still_image_is_animated_for_the_whole_audio(lipsync, work):
    import cv2

    still = work / "portrait.png"
    portrait = load_portrait()
    cv2.imwrite(str(still), cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR))
    audio = write_wav(work / "one_second.wav", synth_speech(1.0), 16_000)
    frames: list[np.ndarray] = []
    result = lipsync.process(still, audio, frames.append, FAST)
    assert result.frames == len(frames) == expected_frame_count(1.0) and result.frames_without_face == 0
    with MediapipeBackend(video=False) as backend:
        (face,) = backend.detect(portrait)
    x1, y1, x2, y2 = face.box
    w, h = x2 - x1, y2 - y1
    changed = np.stack([np.abs(f.astype(int) - portrait.astype(int)).max(axis=2) > 8 for f in frames])
    assert changed.any(axis=(1, 2)).all()  # every frame has its face regenerated ...
    ys, xs = np.nonzero(changed.any(axis=0))  # ... and nothing outside a margin around the face
    assert xs.min() >= x1 - 0.35 * w and xs.max() <= x2 + 0.35 * w
    assert ys.min() >= y1 - 0.35 * h and ys.max() <= y2 + 0.6 * h
    assert len({f.tobytes() for f in frames}) > 1  # following the audio, not one frame repeated


def test_audio_shorter_than_the_video_cuts_it(lipsync, clip, work):
    short = write_wav(work / "short.wav", synth_speech(1.0), 16_000)
    frames: list[np.ndarray] = []
    result = lipsync.process(clip, short, frames.append, FAST)
    assert result.frames == len(frames) == expected_frame_count(1.0) == 27


def test_silent_audio_is_accepted_with_one_line_saying_so(lipsync, clip, work, caplog):
    import logging

    silent = write_wav(work / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    frames: list[np.ndarray] = []
    with caplog.at_level(logging.WARNING, logger="latentsync"):
        result = lipsync.process(clip, silent, frames.append, FAST)
    assert result.frames == len(frames) == 27
    lines = [r.getMessage() for r in caplog.records if "silent" in r.getMessage()]
    assert len(lines) == 1 and str(silent) in lines[0] and "\n" not in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="latentsync"):
        lipsync.process(clip, write_wav(work / "quiet.wav", synth_speech(1.0), 16_000), frames.append, FAST)
    assert not [r for r in caplog.records if "silent" in r.getMessage()]


# --------------------------------------------------------------------------------------------------------
# The command line, and bad input
# --------------------------------------------------------------------------------------------------------


def infer(checkpoints: Path, video, audio, out, *extra: str) -> list[str]:
    return ["infer", "--video", str(video), "--audio", str(audio), "--out", str(out), "--checkpoints",
            str(checkpoints), "--unet-config", str(checkpoints / UNET_CONFIG_NAME), "--device", "cpu",
            "--steps", "1", "--quiet", *extra]


def test_paths_with_spaces_and_non_ascii_work(checkpoints, clip, speech, tmp_path):
    folder = tmp_path / "my vidéos ü"
    folder.mkdir()
    video, audio = folder / "talk ü.mp4", folder / "voix é.wav"
    shutil.copy(clip, video)
    shutil.copy(speech, audio)
    out = folder / "synced ü.mp4"
    assert cli.main(infer(checkpoints, video, audio, out)) == 0
    assert probe_video(out).has_audio


def test_cli_low_memory_offloads_and_splits(checkpoints, clip, speech, tmp_path, monkeypatch):
    seen = {}
    run = LipSync.run

    def spy(self, video, audio, out, options, progress=True):
        seen.update(offload=self.pipeline.vae_offload is not None, low_memory=options.low_memory)
        return run(self, video, audio, out, options, progress)

    monkeypatch.setattr(LipSync, "run", spy)
    out = tmp_path / "low.mp4"
    assert cli.main(infer(checkpoints, clip, speech, out, "--low-memory")) == 0
    assert seen == {"offload": True, "low_memory": True} and probe_video(out).has_audio


def make_bad_inputs(tmp: Path, clip: Path, speech: Path) -> dict[str, tuple[list, str]]:
    """name -> ((video, audio, out), text the one-line error must contain besides the culprit's path)."""
    text = tmp / "notes.mp4"
    text.write_text("not a video")
    silent = write_clip(tmp / "silent.mp4", n=10)  # a video without an audio track
    empty = write_wav(tmp / "empty.wav", np.zeros(0, np.float32))
    truncated = tmp / "truncated.mp4"
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    nofaces = write_clip(tmp / "nofaces.mp4", n=12, faceless_frames=range(12))
    out = tmp / "out.mp4"
    return {
        "missing video": ((tmp / "absent.mp4", speech, out), "not found"),
        "missing audio": ((clip, tmp / "absent.wav", out), "not found"),
        "unreadable video": ((text, speech, out), "not a readable"),
        "truncated video": ((truncated, speech, out), "trunc"),
        "no video stream": ((speech, speech, out), "no video"),
        "no audio stream": ((clip, silent, out), "no audio"),
        "empty audio": ((clip, empty, out), "empty"),
        "output folder missing": ((clip, speech, tmp / "nowhere" / "out.mp4"), "does not exist"),
        "output is a folder": ((clip, speech, tmp), "is a folder"),
        "bad output extension": ((clip, speech, tmp / "out.avi"), "extension"),
        "no face anywhere": ((nofaces, speech, out), "no face"),
    }


def test_bad_inputs_fail_in_one_line_with_status_2_and_no_output(checkpoints, clip, speech, tmp_path, capsys):
    cases = make_bad_inputs(tmp_path, clip, speech)
    before = set(tmp_path.iterdir())
    for name, ((video, audio, out), fragment) in cases.items():
        code = cli.main(infer(checkpoints, video, audio, out))
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert "\n" not in err and err.startswith("latentsync infer: error: "), (name, err)
        assert fragment in err, (name, err)
        culprit = {"missing audio": audio, "no audio stream": audio, "empty audio": audio}.get(name, video)
        if name.startswith("output") or name == "bad output extension":
            culprit = out if name != "output folder missing" else out.parent
        assert str(culprit) in err, (name, err)
        assert set(tmp_path.iterdir()) == before, name  # nothing written, not even a temporary file


def test_the_vae_is_called_with_the_slice_chosen_from_the_memory_estimate(lipsync, clip, speech, processed):
    from latentsync.estimate import choose_vae_slice

    sampling = lipsync.sampling_for(FAST)
    expected = choose_vae_slice(lipsync.unet_config, dtype=lipsync.dtype, sampling=FAST.sampling(),
                                vae_config=dict(lipsync.pipeline.vae.config))
    assert sampling.vae_slice == expected
    vae = lipsync.pipeline.vae
    sizes = []
    hooks = [m.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
             for m in (vae.encoder, vae.decoder)]
    try:
        frames: list[np.ndarray] = []
        lipsync.process(clip, speech, frames.append, FAST)
    finally:
        for h in hooks:
            h.remove()
    assert max(sizes) == (expected or 16) and not vae.use_slicing  # sliced once, by us
    assert all(np.array_equal(a, b) for a, b in zip(frames, processed[1]))


def test_a_mask_image_is_used_for_the_job(lipsync, clip, speech, processed, tmp_path, capsys):
    import cv2

    from latentsync.face.mask import published_mask_image

    cv2.imwrite(str(tmp_path / "published.png"), published_mask_image())
    frames: list[np.ndarray] = []
    lipsync.process(clip, speech, frames.append, dataclasses.replace(FAST, mask=tmp_path / "published.png"))
    assert all(np.array_equal(a, b) for a, b in zip(frames, processed[1]))  # the same mask, the same video
    larger = published_mask_image().copy()
    larger[60:95, 9:247] = 0  # the cheeks up to the eyes
    cv2.imwrite(str(tmp_path / "larger.png"), larger)
    frames.clear()
    lipsync.process(clip, speech, frames.append, dataclasses.replace(FAST, mask=tmp_path / "larger.png"))
    assert len(frames) == len(processed[1])
    assert not all(np.array_equal(a, b) for a, b in zip(frames, processed[1]))
    # An unusable mask: one line naming it, status 2, before any work and with nothing written.
    (tmp_path / "grey.png").write_bytes(b"")
    out = tmp_path / "out.mp4"
    assert cli.main(infer(lipsync.checkpoints, clip, speech, out, "--mask", str(tmp_path / "grey.png"))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "grey.png") in err and "not a readable" in err
    assert not out.exists()
    with pytest.raises(InputError, match="mask image not found"):
        lipsync.run(clip, speech, out, dataclasses.replace(FAST, mask=tmp_path / "absent.png"))
    assert not out.exists()


def test_failed_job_keeps_an_existing_output(lipsync, tmp_path, speech):
    out = tmp_path / "previous.mp4"
    out.write_bytes(b"an earlier result")
    nofaces = write_clip(tmp_path / "nofaces.mp4", n=12, faceless_frames=range(12))
    with pytest.raises(InputError, match="no face found in any frame"):
        lipsync.run(nofaces, speech, out, FAST, progress=False)
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nofaces.mp4", "previous.mp4"]  # no temporary file


def test_missing_weights_are_named_before_anything_runs(tmp_path, clip, speech, capsys):
    code = cli.main(["infer", "--video", str(clip), "--audio", str(speech), "--out", str(tmp_path / "o.mp4"),
                     "--checkpoints", str(tmp_path / "empty"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "latentsync_unet.pt" in err and "latentsync download" in err
