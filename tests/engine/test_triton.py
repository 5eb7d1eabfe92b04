"""The single-pass Triton kernel against the float64 formula, on CPU under ``TRITON_INTERPRET=1``.

The interpreter must be switched on before Triton decorates the kernel, so the cases run in a
child process (this file, run as a script); small shapes keep it to a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (it comes with torch's CUDA wheels)")


def test_triton_kernel_equals_dense_formula_in_the_interpreter() -> None:
    """Random, all-negative/all-positive rows, λ = 0, shared labels, odd sizes, fp16 — in one child."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cases passed: 9" in done.stdout, done.stdout


def _cases() -> None:
    import torch
    import torch.nn.functional as F
    from test_attention import dense_formula, random_case, uniform_case

    from stmod.core.st_layout.labels import relation_codes
    from stmod.core.st_layout.triton_kernel import triton_available, triton_modulated_attention

    assert triton_available(torch.device("cpu"))
    passed = 0

    def check(q, k, v, qb, kb, lam, *, tol=(1e-4, 1e-5), **blocks):
        nonlocal passed
        qc, kc, rel = relation_codes(qb, kb)
        out = triton_modulated_attention(q, k, v, strength=lam, query_codes=qc, key_codes=kc, relation=rel, **blocks)
        assert out.dtype == q.dtype and out.shape == (*q.shape[:3], v.shape[-1])
        ref = dense_formula(q.float(), k.float(), v.float(), qb, kb, lam)
        torch.testing.assert_close(out.double(), ref, rtol=tol[0], atol=tol[1])
        passed += 1

    check(*random_case(2, 3, 50, 37, 8), block_m=16, block_n=16)  # tiles with ragged edges
    check(*random_case(1, 2, 33, 70, 20, seed=5), block_m=16, block_n=32)  # head dim not a power of 2
    for kind, seed in (("negative", 11), ("positive", 12), ("uniform", 13), ("some-mixed", 14)):
        check(*uniform_case(kind, seed), block_m=16, block_n=16)
    q, k, v, qb, kb, lam = random_case(1, 2, 40, 40, 8, seed=3)
    qc, kc, rel = relation_codes(qb, kb)
    out = triton_modulated_attention(q, k, v, strength=torch.zeros(1, 40), query_codes=qc, key_codes=kc,
                                     relation=rel, block_m=16, block_n=16)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
    passed += 1
    q, k, v, qb, _, lam = random_case(2, 2, 48, 48, 16, seed=6)  # one code book shared by the batch
    check(q, k, v, qb[:1].expand(2, -1), qb[:1], lam, block_m=16, block_n=16)
    q, k, v, qb, kb, lam = random_case(1, 2, 32, 32, 16, seed=7)
    check(q.half(), k.half(), v.half(), qb, kb, lam.clamp(0, 1), tol=(0.02, 0.02), block_m=16, block_n=16)
    print(f"cases passed: {passed}")


if __name__ == "__main__":
    _cases()
