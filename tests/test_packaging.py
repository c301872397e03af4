"""What a new user gets from a plain `pip install` of this checkout, in a fresh virtual environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the pinned CPU build the README installs first


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "LATENTSYNC_"))}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=900, **kwargs)


def test_a_plain_pip_install_runs_the_demo(tmp_path):
    """`pip install <checkout>` declares every runtime dependency (Whisper included) without downgrading numpy;
    the one it cannot declare, mediapipe, is named by the demo in one line with the command that installs it,
    and after that command the demo runs."""
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    python, latentsync = venv / "bin" / "python", venv / "bin" / "latentsync"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for requirement in (TORCH, ROOT):
        installed = run(*pip, requirement)
        assert installed.returncode == 0, installed.stderr[-3000:]
    numpy = run(python, "-c", "import numpy; print(numpy.__version__)")
    assert int(numpy.stdout.split(".")[0]) >= 2  # no silent downgrade

    demo = [latentsync, "demo", "--workdir", tmp_path / "demo", "--seconds", "1", "--steps", "1", "--guidance", "1",
            "--quiet"]
    first = run(*demo)
    lines = first.stderr.strip().splitlines()
    assert first.returncode == 2 and len(lines) == 1 and "Traceback" not in first.stderr, first.stderr[-3000:]
    command = lines[0].split("run `")[1].split("`")[0]
    assert command == "pip install --no-deps mediapipe==0.10.21"
    fixed = run(python, "-m", *command.split())  # the pip of that environment
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    second = run(*demo)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "demo" / "demo.mp4").stat().st_size > 0
    assert int(run(python, "-c", "import numpy; print(numpy.__version__)").stdout.split(".")[0]) >= 2
