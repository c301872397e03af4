"""The command line's options: help for every one, the original's flags as aliases, checks before any loading."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest

from latentsync import cli
from latentsync.cli.options import ORIGINAL_FLAGS
from latentsync.demo import UNET_CONFIG_NAME, synth_speech
from latentsync.media import probe_video, write_wav


def every_option(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_option(sub, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, parser, action


def test_every_option_of_every_subcommand_has_help_and_shows_its_default():
    missing = []
    for path, parser, action in every_option(cli.build_parser()):
        if action.help == argparse.SUPPRESS:
            continue
        name = " ".join(path) + " " + (action.option_strings[0] if action.option_strings else action.dest)
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        if not text or (shown and "default" not in text):
            missing.append(name)
    assert missing == []


ORIGINAL_LINE = ["--video_path", "v.mp4", "--audio_path", "a.wav", "--video_out_path", "o.mp4",
                 "--inference_steps", "7", "--guidance_scale", "2.0", "--seed", "3", "--unet_config_path", "u.yaml",
                 "--inference_ckpt_path", "unet.pt", "--enable_deepcache", "--temp_dir", "temp"]
OUR_LINE = ["--video", "v.mp4", "--audio", "a.wav", "--out", "o.mp4", "--steps", "7", "--guidance", "2.0",
            "--seed", "3", "--unet-config", "u.yaml", "--unet", "unet.pt", "--deepcache"]


def test_the_originals_flags_are_aliases_of_ours_and_stay_out_of_help(capsys):
    parser = cli.build_parser()
    theirs = vars(parser.parse_args(["infer", *ORIGINAL_LINE]))
    ours = vars(parser.parse_args(["infer", *OUR_LINE]))
    assert theirs.pop("temp_dir") == "temp" and ours.pop("temp_dir") is None  # accepted, and unused
    assert theirs == ours and ours["deepcache"] == 3 and ours["steps"] == 7
    assert set(ORIGINAL_FLAGS) <= {flag for flag in ORIGINAL_LINE if flag.startswith("--")}  # each one tried
    for command in ("infer", "demo", "app"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        usage, _, rest = text.partition("\n\n")
        options = rest[rest.index("options:"):]  # the listing, after the description (which names them once)
        assert [flag for flag in ORIGINAL_FLAGS if flag in usage + options and flag != "--seed"] == [], command


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from test_inference import write_clip  # the faces clip of the end-to-end tests

    folder = tmp_path_factory.mktemp("cli-options")
    return write_clip(folder / "clip.mp4", n=12, faceless_frames=()), write_wav(folder / "s.wav", synth_speech(0.6),
                                                                                 16_000)


@pytest.mark.parametrize("flag, value, words", [
    ("--face", "left", "largest, center or N"), ("--guidance", "0.5", "at least 1"), ("--crf", "99", "from 0 to 51"),
    ("--loop", "bounce", "invalid choice"), ("--face-threshold", "0", "--face-threshold: "),
])
def test_unusable_options_are_refused_before_any_model_loads(media, tmp_path, capsys, flag, value, words):
    video, audio = media
    out = tmp_path / "o.mp4"
    argv = ["infer", "--video", str(video), "--audio", str(audio), "--out", str(out), "--checkpoints",
            str(tmp_path / "no weights here"), flag, value]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and "latentsync_unet.pt" not in err  # the option, not the missing weights
    assert list(tmp_path.iterdir()) == []


def test_a_unet_outside_the_checkpoints_folder(checkpoints, media, tmp_path):
    """`--unet PATH` (the original's `--inference_ckpt_path`): the folder's Whisper and VAE, the user's UNet."""
    video, audio = media
    folder = tmp_path / "weights"
    shutil.copytree(checkpoints, folder)
    unet = tmp_path / "my_unet.pt"
    (folder / "latentsync_unet.pt").rename(unet)
    common = ["--checkpoints", str(folder), "--device", "cpu", "--steps", "1", "--guidance", "1", "--quiet"]
    out = tmp_path / "out.mp4"
    assert cli.main(["infer", "--video_path", str(video), "--audio_path", str(audio), "--video_out_path", str(out),
                     "--unet_config_path", str(checkpoints / UNET_CONFIG_NAME), "--inference_ckpt_path", str(unet),
                     *common]) == 0
    assert probe_video(out).frames_at(25) == 17
    reference = tmp_path / "reference.mp4"
    assert cli.main(["infer", "--video", str(video), "--audio", str(audio), "--out", str(reference),
                     "--unet-config", str(checkpoints / UNET_CONFIG_NAME), "--checkpoints", str(checkpoints),
                     *common[2:]]) == 0
    from latentsync.media import VideoReader

    assert all(np.array_equal(a, b) for a, b in zip(VideoReader(out).frames(), VideoReader(reference).frames()))
    assert cli.main(["infer", "--video", str(video), "--audio", str(audio), "--out", str(tmp_path / "x.mp4"),
                     "--unet", str(tmp_path / "absent.pt"), "--unet-config", str(checkpoints / UNET_CONFIG_NAME),
                     *common]) == 2
