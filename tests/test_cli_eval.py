"""`latentsync eval ...` end to end through the command line, with random-weight checkpoints written in the
published formats and generated clips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync import cli
from latentsync.demo import make_talking_clip, synth_speech
from latentsync.media import VideoWriter, write_wav
from latentsync.models.syncnet import load_syncnet, save_syncnet_checkpoint
from latentsync.models.syncnet_v2 import SyncNetV2


@pytest.fixture(scope="module")
def talking(tmp_path_factory) -> Path:
    """A 2.8 s clip of the portrait with a sound track (a face track needs more than 50 frames)."""
    folder = tmp_path_factory.mktemp("eval")
    silent = make_talking_clip(folder / "silent.mp4", seconds=2.8)
    speech = write_wav(folder / "speech.wav", synth_speech(2.8), 16_000)
    out = folder / "talk.mp4"
    from latentsync.media import VideoReader

    with VideoWriter(out, 512, 600, audio=speech) as writer:
        for frame in VideoReader(silent).frames():
            writer.write(frame)
    return out


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_sync_scores_videos_and_reports_bad_ones(talking, tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetV2().state_dict(), checkpoint)  # the published file is a raw state dict
    missing = tmp_path / "absent.mp4"
    code, out, _ = run_cli(capsys, "eval", "sync", str(talking), str(missing), "--checkpoint", str(checkpoint),
                           "--face-backend", "mediapipe", "--device", "cpu", "--json")
    result = json.loads(out)
    good, bad = result["videos"]
    assert code == 2  # one video could not be scored
    assert len(good["tracks"]) == 1 and all(math.isfinite(good[k]) for k in ("lse_d", "lse_c"))
    assert bad["error"] and "not found" in bad["error"] and str(missing) in bad["error"]
    assert result["mean"]["videos"] == 1


def test_eval_sync_without_weights_names_the_file(talking, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "sync", str(talking), "--checkpoints", str(tmp_path))
    assert code == 2 and "syncnet_v2.model" in err and "\n" not in err.strip()


def test_eval_frames(talking, capsys):
    code, out, _ = run_cli(capsys, "eval", "frames", str(talking), str(talking), "--json")
    result = json.loads(out.replace("Infinity", "1e999"))
    assert code == 0 and result["frames"] == 70 and result["ssim"] == pytest.approx(1.0)


def test_eval_syncnet_accuracy(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_syncnet_checkpoint(load_syncnet("tiny/syncnet"), tmp_path / "stable_syncnet.pt")
    data = tmp_path / "clips" / "speaker"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        audio = write_wav(tmp_path / f"a{k}.wav", synth_speech(2.5, seed=k), 16_000)
        with VideoWriter(data / f"clip{k}.mp4", 256, 256, audio=audio) as writer:
            for _ in range(62):
                writer.write(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    code, out, _ = run_cli(capsys, "eval", "syncnet-accuracy", "--config", "tiny/syncnet", "--checkpoint",
                           str(checkpoint), "--data", str(tmp_path / "clips"), "--samples", "8", "--batch-size", "4",
                           "--device", "cpu", "--json")
    result = json.loads(out)
    assert code == 0 and 0.0 <= result["accuracy"] <= 1.0
    assert result["num_samples"] == 8 == result["positives"] + result["negatives"] and result["clips"] == 2


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for command in ("infer", "demo", "eval", "download"):
        assert command in out


def test_eval_fid_without_weights_names_file_and_source(talking, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "fid", str(talking.parent), str(talking.parent),
                           "--checkpoints", str(tmp_path))
    err = err.strip()
    assert code == 2 and "\n" not in err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "github.com/mseitzer/pytorch-fid" in err
