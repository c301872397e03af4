"""Never harm an input, never leave debris: outputs that are inputs refused, SIGTERM as clean as Ctrl-C, stale
temporaries of killed runs removed (never a running writer's), devices that are not there named in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from latentsync import cli
from latentsync.errors import InputError
from latentsync.fileio import atomic_write, stale_temporaries
from latentsync.media import VideoWriter


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_an_output_that_is_an_input_is_refused(tmp_path, capsys):
    video, audio = tmp_path / "talk.mp4", tmp_path / "speech.mp4"
    video.write_bytes(b"the user's video")
    audio.write_bytes(b"the user's audio")
    (tmp_path / "link.mp4").symlink_to(video)
    os.link(audio, tmp_path / "hard.mp4")
    for out, culprit in ((video, "video"), (tmp_path / "link.mp4", "video"), (tmp_path / "hard.mp4", "audio"),
                         (tmp_path / "." / "talk.mp4", "video")):
        code = cli.main(["infer", "--video", str(video), "--audio", str(audio), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and f"same file as the {culprit}" in err, (out, err)
    assert video.read_bytes() == b"the user's video" and audio.read_bytes() == b"the user's audio"


def test_preprocess_refuses_nested_folders(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    for out in (raw, raw / "clips", tmp_path):
        code = cli.main(["preprocess", str(raw), str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "output folder" in err and str(out) in err, (out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"] and not any(raw.iterdir())


def test_devices_that_are_not_there_are_named_before_anything_runs(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    code = cli.main(["demo", "--workdir", str(tmp_path / "demo"), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "'cuda' is not available" in err and "available here: cpu" in err
    assert not (tmp_path / "demo").exists()  # nothing written before the check


def test_stale_temporaries_of_dead_writers_go_and_live_ones_stay(tmp_path):
    out = tmp_path / "out.mp4"
    stale = tmp_path / f".out.mp4.{dead_pid()}-deadbeef.partial.mp4"
    live_writer = subprocess.Popen(["sleep", "60"])
    try:
        live = tmp_path / f".out.mp4.{live_writer.pid}-cafebabe.partial.mp4"
        other = tmp_path / f".other.mp4.{dead_pid()}-deadbeef.partial.mp4"  # another output's: not this one's
        for path in (stale, live, other):
            path.write_bytes(b"half a video")
        with VideoWriter(out, 64, 64, fps=25) as writer:
            for _ in range(3):
                writer.write(np.zeros((64, 64, 3), np.uint8))
        assert out.is_file() and not stale.exists() and live.exists() and other.exists()
        # atomic_write, the same way; and a folder-wide sweep (what a rerun of preprocess or train does).
        state = tmp_path / "state.pt"
        orphan = tmp_path / f".state.pt.{dead_pid()}-0123456789ab.tmp"
        orphan.write_bytes(b"half a state")
        with atomic_write(state) as tmp:
            tmp.write_bytes(b"a state")
        assert state.read_bytes() == b"a state" and not orphan.exists()
        assert stale_temporaries(tmp_path) == [other]
    finally:
        live_writer.kill()
        live_writer.wait()


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    """A real `latentsync demo` process, stopped with SIGTERM while its output is being written."""
    work = tmp_path / "demo"
    process = subprocess.Popen([sys.executable, "-m", "latentsync", "demo", "--workdir", str(work),
                                "--seconds", "4", "--steps", "20", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(work.glob(".demo.mp4.*.partial.mp4")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the demo never started writing"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err and "Traceback" not in err
    assert not (work / "demo.mp4").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # no partial file left


def test_a_torn_metrics_line_is_dropped_and_a_bad_one_elsewhere_is_named(tmp_path, caplog):
    import json
    import logging

    from latentsync.training.log import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    with caplog.at_level(logging.WARNING):
        MetricsLog(tmp_path, resume_step=2)
    assert "cut off" in caplog.text
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    path.write_text('{"step": 1, "loss": 0.5}\nnot json\n{"step": 2, "loss": 0.4}\n')
    with pytest.raises(InputError, match="line 2 is not a JSON record"):
        MetricsLog(tmp_path, resume_step=2)
