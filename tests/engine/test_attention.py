"""Modulated attention kernels: exactness, chunking, memory shape, and what modulation does."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from stmod.core.st_layout.kernels import (
    modulated_attention,
    modulated_attention_explicit,
    modulated_attention_few_keys,
    row_extrema,
    uniform_rows,
)
from stmod.core.st_layout.labels import relation_codes

KERNELS = [modulated_attention, modulated_attention_explicit, modulated_attention_few_keys]


def random_case(b: int, h: int, lq: int, lk: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) * 1.5 for n in (lq, lk, lk))
    query_bits = torch.randint(0, 8, (b, lq), generator=g)
    key_bits = torch.randint(0, 8, (1, lk), generator=g)
    strength = torch.rand(b, lq, generator=g) * 1.4 - 0.2  # includes λ < 0 and λ > 1 (official overlaps)
    return q, k, v, query_bits, key_bits, strength


def dense_formula(q, k, v, query_bits, key_bits, strength):
    """The literal equation in float64 with a dense R."""
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    r = ((query_bits[:, :, None] & key_bits[:, None, :]) != 0)[:, None].double()
    mx, mn = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True)
    lam = strength.double()[:, None, :, None]
    s2 = s + r * lam * (mx - s) - (1 - r) * lam * (s - mn)
    return torch.softmax(s2, -1) @ v.double()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("budget", [3000, 1 << 30], ids=["many-chunks", "one-chunk"])
def test_kernel_equals_dense_formula(kernel, budget: int) -> None:
    """Both kernels equal the float64 dense formula, whatever the chunking."""
    q, k, v, qb, kb, lam = random_case(2, 3, 50, 37, 8)
    qc, kc, rel = relation_codes(qb, kb)
    out = kernel(q, k, v, strength=lam, query_codes=qc, key_codes=kc, relation=rel, budget_bytes=budget)
    torch.testing.assert_close(out.double(), dense_formula(q, k, v, qb, kb, lam), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_strength_is_sdpa(kernel) -> None:
    """λ = 0 everywhere gives plain SDPA."""
    q, k, v, qb, kb, _ = random_case(1, 2, 40, 40, 8, seed=3)
    qc, kc, rel = relation_codes(qb, kb)
    out = kernel(q, k, v, strength=torch.zeros(1, 40), query_codes=qc, key_codes=kc, relation=rel)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)


def uniform_case(kind: str, seed: int):
    """Fresh random inputs whose query rows are all-negative, all-positive or mixed over the keys.

    Key bits are 1, 2 or 4; query bits 0 (negative to every key), 7 (positive to every key), or one
    bit (mixed); ``kind`` picks which rows are present.
    """
    g = torch.Generator().manual_seed(seed)
    q, k, v, _, _, lam = random_case(2, 3, 60, 45, 8, seed=seed)
    key_bits = 1 << torch.randint(0, 3, (1, 45), generator=g)
    choices = {"negative": [0], "positive": [7], "uniform": [0, 7], "some-mixed": [0, 7, 1, 2, 4]}[kind]
    pick = torch.tensor(choices)[torch.randint(0, len(choices), (1, 60), generator=g)]
    return q, k, v, pick.expand(2, 60).contiguous(), key_bits, lam


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["negative", "positive", "uniform", "some-mixed"])
@pytest.mark.parametrize("seed", [11, 12])
def test_uniform_relation_rows_equal_dense_formula(kernel, kind: str, seed: int) -> None:
    """Rows negative or positive to every key (no extrema needed) still equal the float64 formula."""
    q, k, v, qb, kb, lam = uniform_case(kind, seed)
    qc, kc, rel = relation_codes(qb, kb)
    out = kernel(q, k, v, strength=lam, query_codes=qc, key_codes=kc, relation=rel, budget_bytes=4000)
    torch.testing.assert_close(out.double(), dense_formula(q, k, v, qb, kb, lam), rtol=1e-4, atol=1e-5)


def test_uniform_rows_finds_rows_without_extrema() -> None:
    """All-negative, all-positive and λ = 0 rows are uniform; a row mixed in one batch item is not."""
    relation = torch.tensor([[False, False], [True, True], [True, False]])
    codes = torch.tensor([[0, 1, 2, 2], [0, 1, 2, 0]])
    strength = torch.tensor([[0.3, 0.3, 0.3, 0.0], [0.3, 0.3, 0.0, 0.3]])
    found = uniform_rows(strength, codes, torch.tensor([[0, 1]]), relation)
    assert found.tolist() == [True, True, False, True]
    # Only key code 1 present: code 2's row is all-negative over the keys there are.
    assert uniform_rows(strength, codes, torch.tensor([[1, 1]]), relation).all()


def test_row_extrema_are_per_query_rows() -> None:
    """Row max/min are over all keys of each query row, in any chunking."""
    q, k, *_ = random_case(2, 2, 33, 21, 4, seed=4)
    mx, mn = row_extrema(q, k, budget_bytes=200)
    s = q @ k.transpose(-1, -2) / 2
    torch.testing.assert_close(mx, s.amax(-1))
    torch.testing.assert_close(mn, s.amin(-1))


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any ATen op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_full_score_matrix_is_materialised() -> None:
    """A 8-frame × 256-token video: no tensor of our code comes near (F·N)² elements."""
    length = 8 * 256
    q, k, v, qb, _, lam = random_case(1, 2, length, length, 8, seed=5)
    qc, kc, rel = relation_codes(qb)
    with LargestTensor() as probe:
        modulated_attention(q, k, v, strength=lam.clamp(0, 1), query_codes=qc, key_codes=kc, relation=rel,
                            budget_bytes=64 * 1024)
    assert probe.largest <= length * length // 32


def explicit_probs(q, k, lam, qc, kc, rel):
    plain, modulated = torch.zeros(q.shape[0], q.shape[1], q.shape[2], k.shape[2]), None
    modulated = torch.zeros_like(plain)

    def sink(a: int, z: int, p: torch.Tensor, m: torch.Tensor) -> None:
        plain[:, :, a:z], modulated[:, :, a:z] = p, m
    modulated_attention_explicit(q, k, k, strength=lam, query_codes=qc, key_codes=kc, relation=rel,
                                 budget_bytes=5000, on_probs=sink)
    return plain, modulated


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_modulation_moves_token_mass_into_its_region(seed: int) -> None:
    """Each local-prompt token gains mass at every pixel of its region and loses mass outside it."""
    g = torch.Generator().manual_seed(seed)
    n, t = 64, 10
    region = torch.randint(0, 3, (1, n), generator=g)  # 0: no mask, 1, 2: two disjoint regions
    pixel_bits = torch.where(region > 0, 1 << (region - 1), torch.zeros_like(region))
    text_bits = torch.zeros(1, t, dtype=torch.int64)
    text_bits[0, 2], text_bits[0, 5] = 1, 2  # one token per local prompt
    q, k = torch.randn(1, 4, n, 8, generator=g) * 2, torch.randn(1, 4, t, 8, generator=g) * 2
    qc, kc, rel = relation_codes(pixel_bits, text_bits)
    plain, modulated = explicit_probs(q, k, torch.full((1, n), 0.9), qc, kc, rel)
    for token, label in ((2, 1), (5, 2)):
        inside, outside = region[0] == label, (region[0] > 0) & (region[0] != label)
        assert torch.all(modulated[0, :, inside, token] > plain[0, :, inside, token])
        assert modulated[0, :, outside, token].sum() < plain[0, :, outside, token].sum()


def test_self_modulation_raises_same_region_mass() -> None:
    """Every query in a region puts more attention on keys of its own region (all frames)."""
    g = torch.Generator().manual_seed(7)
    length = 3 * 16
    region = torch.randint(0, 3, (1, length), generator=g)
    bits = torch.where(region > 0, 1 << (region - 1), torch.zeros_like(region))
    q, k = torch.randn(1, 2, length, 8, generator=g) * 2, torch.randn(1, 2, length, 8, generator=g) * 2
    qc, kc, rel = relation_codes(bits)
    plain, modulated = explicit_probs(q, k, torch.full((1, length), 0.27), qc, kc, rel)
    same = (region[0][:, None] == region[0][None, :]) & (region[0][:, None] > 0)
    rows = region[0] > 0
    gain = (modulated[0] * same).sum(-1) - (plain[0] * same).sum(-1)
    assert torch.all(gain[:, rows] > 0)


def test_bfloat16_inputs_keep_their_dtype() -> None:
    """Half-precision inputs give half-precision outputs close to the float32 result."""
    q, k, v, qb, kb, lam = random_case(1, 2, 64, 64, 16, seed=9)
    qc, kc, rel = relation_codes(qb, kb)
    lam = lam.clamp(0, 1)
    ref = modulated_attention(q, k, v, strength=lam, query_codes=qc, key_codes=kc, relation=rel)
    for kernel in KERNELS:
        out = kernel(q.bfloat16(), k.bfloat16(), v.bfloat16(), strength=lam, query_codes=qc, key_codes=kc,
                     relation=rel)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
