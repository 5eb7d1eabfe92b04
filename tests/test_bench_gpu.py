"""bench/gpu.sh is ready to run: valid bash, and without a GPU one line and exit status 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
