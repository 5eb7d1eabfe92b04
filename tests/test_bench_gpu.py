"""bench/gpu.sh is ready to run: valid bash, without a GPU one line and exit status 0, and the attention
variants of its kernel table run (in Triton's interpreter) and agree."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_without_a_gpu_says_so_in_one_line() -> None:
    script = ROOT / "bench" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # hide any GPU
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], done.stdout


def test_gpu_script_fits_its_budget_and_predicts_a_32_frame_edit() -> None:
    """Every step has a timeout, together at most 8 minutes; the memory step predicts and measures 32
    frames on CUDA with the estimate's bench, whose command line parses here."""
    text = (ROOT / "bench" / "gpu.sh").read_text()
    steps = [line for line in text.splitlines() if '"$PY" bench/' in line and not line.lstrip().startswith("#")]
    assert steps and all(line.startswith("timeout ") for line in steps)
    assert sum(int(re.match(r"timeout (\d+)", line).group(1)) for line in steps) <= 480
    memory = next(line for line in steps if "bench/memory.py" in line)
    assert "--cuda" in memory and re.search(r"--frames [0-9 ]*\b32\b", memory)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--cuda" in done.stdout


def test_wan_row_runs_on_the_cpu_with_the_tiny_config() -> None:
    """The wan step of bench/gpu.sh (1.3B config on CUDA) runs end to end with ``--tiny`` on the CPU and prints a
    predicted-vs-measured row for every phase."""
    text = (ROOT / "bench" / "gpu.sh").read_text()
    line = next(line for line in text.splitlines() if '"$PY" bench/wan.py' in line)
    assert line.startswith("timeout ") and "--frames 17 33" in line and "--height 480 --width 832" in line
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "wan.py"), "--tiny", "--frames", "5", "--height", "64",
                           "--width", "64", "--steps", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| tiny | 5 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["encode", "inversion", "denoising", "decoding"]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_attention_kernel_variants_of_the_gpu_table_agree_in_the_interpreter() -> None:
    """The variants bench/gpu.sh times (two-pass, Triton as the tokens come, Triton sorted) run and agree
    on a small input of the bench layout (on the CPU under ``TRITON_INTERPRET=1``)."""
    code = """
import sys, torch
sys.path.insert(0, "bench")
from attention import OURS, make_inputs, prepare, run
q, k, v, masks = make_inputs(2, (8, 8), torch.float32, "cpu")
base = run("two-pass", q, k, v, prepare("two-pass", masks, "cpu", torch.float32), 1 << 20)
for name in ("triton", "triton-sorted"):
    with torch.no_grad():
        out = run(name, q, k, v, prepare(name, masks, "cpu", torch.float32), 1 << 20)
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-5)
print("variants agree:", sorted(OURS))
"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "triton-sorted" in done.stdout
    assert "--cuda-kernels" in (ROOT / "bench" / "gpu.sh").read_text()
