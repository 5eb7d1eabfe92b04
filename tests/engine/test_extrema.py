"""The bf16-screened row extrema equal the float64 max/min of the scores (CPUs with native bf16)."""

from __future__ import annotations

import pytest
import torch

from stmod.core.st_layout import extrema
from stmod.core.st_layout.extrema import chunk_length, screened_row_extrema

pytestmark = pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="no native bf16 on this CPU")


def _reference(qs: torch.Tensor, ks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = qs.double() @ ks.double().transpose(1, 2)
    return s.amax(-1), s.amin(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block", [1 << 14, 1 << 24], ids=["many-blocks", "one-block"])
def test_screened_extrema_equal_float64(seed: int, block: int) -> None:
    """Fresh random q, k (scores spread as in attention): max and min to fp32 rounding, any blocking."""
    g = torch.Generator().manual_seed(seed)
    qs, ks = torch.randn(3, 200, 40, generator=g) * 1.5, torch.randn(3, 1024, 40, generator=g)
    mx, mn = screened_row_extrema(qs, ks, block)
    ref_mx, ref_mn = _reference(qs, ks)
    torch.testing.assert_close(mx.double(), ref_mx, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(mn.double(), ref_mn, rtol=1e-6, atol=1e-5)


def test_near_ties_fall_back_to_fp32_and_stay_exact() -> None:
    """Keys that are nearly all the same make every chunk a candidate: the block is redone in fp32."""
    calls = []
    real = extrema._exact_pick

    def spy(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 1, 16, generator=g)
    ks = base + 1e-4 * torch.randn(2, 1024, 16, generator=g)
    qs = torch.randn(2, 64, 16, generator=g)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extrema, "_exact_pick", spy)
        mx, mn = screened_row_extrema(qs, ks, 1 << 20)
    assert calls and all(c is None for c in calls)  # every block took the fp32 fallback
    ref_mx, ref_mn = _reference(qs, ks)
    torch.testing.assert_close(mx.double(), ref_mx, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(mn.double(), ref_mn, rtol=1e-6, atol=1e-5)


def test_chunk_length_divides_the_keys() -> None:
    assert chunk_length(16384) == extrema.CHUNK == 512
    assert chunk_length(1024) == 128 and chunk_length(576) == 64
    assert chunk_length(100) is None and chunk_length(256) is None  # too few keys to screen


def test_modulated_attention_with_screened_extrema_equals_dense_formula() -> None:
    """The two-pass kernel on keys long enough to be screened still equals the float64 formula."""
    from stmod.core.st_layout.kernels import modulated_attention
    from stmod.core.st_layout.labels import relation_codes

    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) * 1.5 for n in (96, 1024, 1024))
    qb, kb = torch.randint(0, 8, (1, 96), generator=g), torch.randint(0, 8, (1, 1024), generator=g)
    lam = torch.rand(1, 96, generator=g)
    assert chunk_length(1024) is not None
    qc, kc, rel = relation_codes(qb, kb)
    out = modulated_attention(q, k, v, strength=lam, query_codes=qc, key_codes=kc, relation=rel, use_triton=False)
    s = q.double() @ k.double().transpose(-1, -2) / 4  # the literal formula in float64, dense R
    r = ((qb[:, :, None] & kb[:, None, :]) != 0)[:, None].double()
    mx, mn, lm = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True), lam.double()[:, None, :, None]
    ref = torch.softmax(s + r * lm * (mx - s) - (1 - r) * lm * (s - mn), -1) @ v.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
