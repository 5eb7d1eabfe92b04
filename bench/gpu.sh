#!/usr/bin/env bash
# GPU benchmarks of issue 15 on one CUDA machine, in under 8 minutes (each step has its own timeout):
#   1. attention kernels in fp16 — plain SDPA, our two-pass kernel, the Triton kernel on the tokens as
#      they come and sorted by region code (as the engine runs it) — at
#      16 frames x 64x64 and 32 frames x 32x32 latents (bench/attention.py --cuda-kernels);
#   2. a random-weight full-size SD 1.5 + ControlNet edit, 16 frames at 512x512, 50 + 50 steps:
#      time per phase and peak GPU memory (bench/edit.py --full-sd15);
#   3. predicted (stmod-run check's estimate) against measured peak GPU memory and seconds per phase of
#      the same model at 16 and 32 frames 512x512, 10 + 10 steps (the peak does not depend on the steps;
#      the seconds per step do not either): bench/memory.py --cuda, reusing step 2's model folder;
#   4. wan: Wan 2.1's 1.3B transformer (bf16) and VAE (fp32) with random weights at 17 and 33 frames 480x832,
#      predicted against measured peak GPU memory and seconds per phase / step (2 inversion and 2 modulated
#      denoising steps after a warm-up): bench/wan.py; a row is printed as soon as it is measured.
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
WORK=$(mktemp -d -t stmod-gpu-XXXXXX)
timeout 90 "$PY" bench/attention.py --cuda-kernels --repeats 5 || { echo "attention kernels failed or timed out"; status=1; }
echo "== full-size SD 1.5 + ControlNet edit, random weights, 16 frames 512x512, 50+50 steps =="
timeout 180 "$PY" bench/edit.py --full-sd15 --frames 16 --steps 50 --size 512 --work "$WORK" || { echo "edit failed or timed out"; status=1; }
echo "== predicted vs measured GPU memory and phase seconds, SD 1.5 + ControlNet, 16 and 32 frames 512x512, 10+10 steps =="
timeout 120 "$PY" bench/memory.py --cuda --backbone sd15 --frames 16 32 --size 512 --steps 10 --work "$WORK" || { echo "memory bench failed or timed out"; status=1; }
echo "== wan: Wan 2.1 1.3B config, random weights, 17 and 33 frames 480x832, predicted vs measured =="
timeout 90 "$PY" bench/wan.py --frames 17 33 --height 480 --width 832 --steps 2 --json "$WORK/wan.json" || { echo "wan bench failed or timed out"; status=1; }
exit $status
