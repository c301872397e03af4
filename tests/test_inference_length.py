"""Output length when the video and the audio differ: `--loop` for a shorter video, `--trim` for a longer one.

The clips have a face in their first frames (a job needs one) and distinct faceless frames after: those pass
through untouched, so each output frame shows which source frame it came from."""

from __future__ import annotations

import dataclasses
import re

import av
import numpy as np
import pytest

from latentsync.audio import num_video_frames
from latentsync.demo import load_portrait, synth_speech
from latentsync.errors import OptionError
from latentsync.inference import InferenceOptions
from latentsync.job import loop_index, pingpong_index
from latentsync.media import VideoReader, VideoWriter, write_wav

FAST = InferenceOptions(steps=1, guidance=1.0)
WITH_FACE = 4  # source frames 0-3 show the portrait; the rest are faceless and each different


def faceless(i: int, shape) -> np.ndarray:
    return np.full(shape, 40 + 5 * i, np.uint8)


def write_clip(path, n: int):
    portrait = np.ascontiguousarray(load_portrait()[::2, ::2])  # a small frame: a quick test
    h, w = portrait.shape[:2]
    with VideoWriter(path, w, h, fps=25) as writer:
        for i in range(n):
            writer.write(portrait if i < WITH_FACE else faceless(i, portrait.shape))
    return path


def frames_for(seconds: float) -> int:
    return num_video_frames((int(seconds * 16_000) // 160) // 2)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("length") / "short.mp4", 10)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("speech") / "speech.wav", synth_speech(0.8), 16_000)


def test_loop_index_modes():
    assert [pingpong_index(j, 3) for j in range(8)] == [0, 1, 2, 2, 1, 0, 0, 1]
    assert [loop_index(j, 3, "pingpong") for j in range(8)] == [0, 1, 2, 2, 1, 0, 0, 1]
    assert [loop_index(j, 3, "repeat") for j in range(8)] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert [loop_index(j, 3, "freeze") for j in range(8)] == [0, 1, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("loop", ["pingpong", "repeat", "freeze"])
def test_a_shorter_video_is_looped_as_asked(lipsync, short_clip, speech, loop):
    frames = []
    result = lipsync.process(short_clip, speech, frames.append, dataclasses.replace(FAST, loop=loop))
    source = list(VideoReader(short_clip).frames())
    assert result.frames == len(frames) == frames_for(0.8) == 22
    shown = [loop_index(j, len(source), loop) for j in range(len(frames))]
    checked = [j for j in range(len(frames)) if shown[j] >= WITH_FACE]
    assert len(checked) > 10
    for j in checked:
        assert np.array_equal(frames[j], source[shown[j]]), (loop, j, shown[j])
    assert result.frames_without_face == len(checked)


def test_a_longer_video_is_cut_to_the_audio_or_kept_whole(lipsync, tmp_path, speech):
    clip = write_clip(tmp_path / "long.mp4", 40)
    source = list(VideoReader(clip).frames())
    cut = []
    assert lipsync.process(clip, speech, cut.append, FAST).frames == len(cut) == 22  # the reference's
    kept = []
    whole = InferenceOptions(steps=1, guidance=1.0, trim="video")
    assert lipsync.process(clip, speech, kept.append, whole).frames == len(kept) == 40
    for j in range(WITH_FACE, 40):  # every frame, in order, past the speech too
        assert np.array_equal(kept[j], source[j])
    # Written: the speech, then silence to the end of the video.
    out = tmp_path / "whole.mp4"
    result = lipsync.run(clip, speech, out, whole, progress=False)
    assert result.frames == 40
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        sound = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio)])
        assert abs(float(audio.duration * audio.time_base) - 40 / 25) < 0.05
    rate = 16_000
    assert np.abs(sound[int(0.1 * rate): int(0.7 * rate)]).max() > 0.05  # the speech
    assert np.abs(sound[int(0.9 * rate):]).max() < 1e-3  # the silence after it


@pytest.mark.parametrize("field, value, words", [
    ("steps", 0, "at least 1"), ("guidance", 0.5, "at least 1"), ("crf", 99, "from 0 to 51"),
    ("face", "left", "unknown face rule"), ("preset", "quick", "must be one of"), ("loop", "bounce", "pingpong"),
    ("trim", "both", "audio, video"), ("face_threshold", 1.5, "between 0 and 1"),
    ("min_face_fraction", -0.1, "between 0 and 1"), ("scheduler", "euler", "ddim"), ("detect_every", 0, "at least 1"),
    ("batch_chunks", 1.5, "whole number"), ("deepcache", -1, "0 (off)"), ("audio_window", "sliding", "overlap"),
])
def test_every_option_is_checked_before_anything_runs(lipsync, short_clip, speech, field, value, words):
    options = InferenceOptions(**{field: value})
    with pytest.raises(OptionError, match=re.escape(words)) as caught:
        options.check()
    assert caught.value.option == field
    calls = []
    with pytest.raises(OptionError):
        lipsync.process(short_clip, speech, calls.append, options)
    assert calls == []
