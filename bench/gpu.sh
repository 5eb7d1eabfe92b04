#!/usr/bin/env bash
# GPU benchmarks of issue 15 on one CUDA machine, in under 8 minutes (each step has its own timeout):
#   1. attention kernels in fp16 — plain SDPA, our two-pass kernel, the Triton kernel on the tokens as
#      they come and sorted by region code (as the engine runs it) — at
#      16 frames x 64x64 and 32 frames x 32x32 latents (bench/attention.py --cuda-kernels);
#   2. a random-weight full-size SD 1.5 + ControlNet edit, 16 frames at 512x512, 50 + 50 steps:
#      time per phase and peak GPU memory (bench/edit.py --full-sd15).
# Without a GPU it says so in one line and exits 0. Usage: bash bench/gpu.sh  (PYTHON=... to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "bench/gpu.sh: no CUDA GPU available (torch.cuda.is_available() is False): nothing measured"
    exit 0
fi
export HF_HUB_OFFLINE=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
"$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not installed (the Triton rows fail)"
echo "== attention kernels (fp16) =="
timeout 150 "$PY" bench/attention.py --cuda-kernels --repeats 5 || { echo "attention kernels failed or timed out"; status=1; }
echo "== full-size SD 1.5 + ControlNet edit, random weights, 16 frames 512x512, 50+50 steps =="
timeout 300 "$PY" bench/edit.py --full-sd15 --frames 16 --steps 50 --size 512 || { echo "edit failed or timed out"; status=1; }
exit $status
