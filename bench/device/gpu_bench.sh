#!/usr/bin/env bash
# Run ON THE GPU MACHINE (the device tool), from the repository root, with `.whl` carried (fetch_wheels.sh):
#   command: bash bench/device/gpu_bench.sh [gpu_inference.py options]     carry: [".whl"]     timeout_s: 590
# Installs the carried packages into /tmp/site, prints the machine, runs bench/gpu_inference.py with synthetic
# face models (the image has no mediapipe) and a time budget (BUDGET_S, default 420 s: no new variant starts
# after it), then bench/vram_estimate.py for 1.6 beside it, and with TRAIN=1 bench/train.py --full (issue 4's
# stage-2 step time and peak memory at 256 px). Figures and logs land in $OUT (gpu.json, gpu.log).
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
tar -xzf .whl/openai_whisper-*.tar.gz -C /tmp && cp -r /tmp/openai_whisper-*/whisper /tmp/site/ || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, av, whisper; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'av', av.__version__, 'cuda', torch.cuda.is_available())" || exit 1
python3 bench/gpu_inference.py --faces synthetic --work /tmp/bench --json "$out/gpu.json" \
    --budget-s "${BUDGET_S:-420}" "$@" 2>&1 | grep -v "CleanUnusedInitializers" | tee "$out/gpu.log"
python3 bench/vram_estimate.py --version 1.6 2>&1 | tee -a "$out/gpu.log"
if [ "${TRAIN:-0}" = 1 ]; then
    python3 bench/train.py --full --resolution 256 --steps 4 2>&1 | tee -a "$out/gpu.log"
fi
