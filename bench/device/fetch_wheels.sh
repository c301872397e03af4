#!/usr/bin/env bash
# Run HERE (with PyPI reachable), before a GPU session's device run: puts into ./.whl (git-ignored) the packages
# the GPU machine's image lacks for bench/gpu_inference.py: diffusers and PyAV (wheels, at the versions of our
# .venv) and openai-whisper (a source archive: it has no wheel; its code is pure Python). About 43 MB: the device
# tool carries at most 64 MiB. Everything else (torch, onnx, onnxruntime, opencv, einops, numba, tiktoken, ...)
# is on that image (the device tool's KINDS.md lists it); it has no mediapipe, hence `--faces synthetic`.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
mkdir -p .whl
download=(python3 -m pip download -q --no-deps -d .whl)
wheel=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"${download[@]}" "${wheel[@]}" "diffusers==$($py -c 'import diffusers; print(diffusers.__version__)')" \
    "av==$($py -c 'import av; print(av.__version__)')"
"${download[@]}" --no-binary=:all: openai-whisper==20250625
du -sh .whl
ls .whl
