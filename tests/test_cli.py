"""The command line itself: `--help` is quick because listing the options loads no heavy library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "cv2", "av", "numpy", "gradio", "diffusers", "whisper", "mediapipe", "onnxruntime")
COMMANDS = ["", "infer", "batch", "demo", "app", "download", "preprocess", "train", "eval"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_loads_no_heavy_library(command):
    code = (
        "import json, sys\n"
        "from latentsync import cli\n"
        "try:\n"
        f"    cli.main({(command.split() + ['--help'])!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    status, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == 0 and loaded == [], (command, loaded)
