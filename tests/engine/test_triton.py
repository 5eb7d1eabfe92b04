"""The single-pass Triton kernel against the float64 formula, on CPU under ``TRITON_INTERPRET=1``.

The interpreter must be switched on before Triton decorates the kernel, so the kernel cases run in
a child process (this file, run as a script); small shapes keep it to seconds. The token order and
its tile lists are plain torch and are tested directly.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stmod.core.st_layout.labels import level_layout, rules_for
from stmod.core.st_layout.modulator import EngineOptions, ModulationPlan
from stmod.core.st_layout.state import EngineState
from stmod.core.st_layout.triton_kernel import key_tiles, token_order
from stmod.core.tokens import TokenSpan
from stmod.core.types import LayoutMasks, ModulationConfig, Region

#: Kernel cases the child runs (it prints how many passed).
CHILD_CASES = 20


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (it comes with torch's CUDA wheels)")
def test_triton_kernel_equals_dense_formula_in_the_interpreter() -> None:
    """Unsorted and sorted tokens, mixed and single-code tiles, one code, many codes, fp16/bf16, the
    processor path — against the float64 formula, in one child."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cases passed: {CHILD_CASES}" in done.stdout, done.stdout


def test_key_tiles_split_single_code_and_mixed_tiles() -> None:
    """Tiles of one code (a ragged end too) go to the fast list with their code, the rest are mixed."""
    codes = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]])
    tiles = key_tiles(codes, 4)
    assert tiles.single.tolist() == [0, 8] and tiles.single_codes.tolist() == [0, 2]
    assert tiles.mixed.tolist() == [4]
    assert key_tiles(torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 3]]), 4).mixed.tolist() == [4, 8]
    assert key_tiles(torch.tensor([[3, 3, 3, 3, 3, 3]]), 4).single.tolist() == [0, 4]  # ragged, one code
    per_item = key_tiles(torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]), 2)  # codes differ per batch item
    assert per_item.single.numel() == 0 and per_item.mixed.tolist() == [0, 2]


def test_token_order_sorts_both_sides_stably() -> None:
    g = torch.Generator().manual_seed(0)
    q_codes, k_codes = torch.randint(0, 5, (1, 300), generator=g), torch.randint(0, 5, (1, 200), generator=g)
    order = token_order(q_codes, k_codes)
    assert torch.equal(q_codes[0, order.queries[0]], q_codes[0].sort(stable=True).values)
    assert torch.equal(k_codes[0, order.keys[0]], order.key_codes[0])
    assert torch.equal(order.queries[0].sort().values, torch.arange(300))  # a permutation
    same = order.queries[0][q_codes[0, order.queries[0]] == 2]
    assert torch.equal(same, same.sort().values)  # stable


def test_sorting_makes_nearly_every_key_tile_single_code() -> None:
    """On the bench layout (16 frames × 32², three moving regions) sorting leaves ≤ P − 1 mixed tiles."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from attention import SPANS, make_inputs

    *_, masks = make_inputs(16, (32, 32), torch.float32, "cpu")
    layout = level_layout(masks, (32, 32), rules=rules_for("videograin"), spans=SPANS)
    codes = layout.self_codes.reshape(1, -1)
    unsorted, order = key_tiles(codes), token_order(codes, codes)
    distinct = int(codes.unique().numel())
    assert order.tiles.mixed.numel() <= distinct - 1 < unsorted.mixed.numel()
    assert order.tiles.single.numel() >= 0.97 * (order.tiles.single.numel() + order.tiles.mixed.numel())


def test_engine_state_sorts_once_per_level_and_window(make_masks) -> None:
    """The state keeps one order per level and (query, key) frames, and a new edit starts afresh."""
    masks = make_masks(3, (64, 64))
    plan = ModulationPlan(masks=LayoutMasks(masks=masks, names=("a", "b", "c")), num_frames=3, latent_size=(8, 8),
                          regions=(Region(name="a", prompt="cat"),), spans=(TokenSpan(1, 2),), config=ModulationConfig())
    state = EngineState(EngineOptions())
    state.prepare(plan, record=False)
    layout = state.level(16, 3, torch.device("cpu"))
    first = state.token_order(layout, [0, 1, 2], [0, 1, 2])
    assert state.token_order(layout, [0, 1, 2], [0, 1, 2]) is first
    window = state.token_order(layout, [1, 2], [0, 1, 2])
    assert window is not first and window.queries.shape == (1, 32) and window.keys.shape == (1, 48)
    state.prepare(plan, record=False)  # a new edit forgets the orders
    assert state.token_order(layout, [0, 1, 2], [0, 1, 2]) is not first


def _kernel_cases(check, dense_formula, random_case, uniform_case) -> int:
    """Long: the list of kernel cases reads best in one place. Returns how many ran."""
    import torch.nn.functional as F

    from stmod.core.st_layout.labels import relation_codes
    from stmod.core.st_layout.triton_kernel import triton_modulated_attention

    n = 0
    for sort in (False, True):  # random codes: every unsorted tile is mixed; sorted, most are single
        n += check(*random_case(2, 3, 50, 37, 8), sort=sort, block_m=16, block_n=16)  # ragged edges
        n += check(*random_case(1, 2, 33, 70, 20, seed=5), sort=sort, block_m=16, block_n=32)  # d not 2^k
    for kind, seed in (("negative", 11), ("positive", 12), ("uniform", 13), ("some-mixed", 14)):
        n += check(*uniform_case(kind, seed), sort=True, block_m=16, block_n=16)
    g = torch.Generator().manual_seed(21)
    q, k, v, _, _, lam = random_case(1, 2, 96, 80, 16, seed=21)
    few_q, few_k = 1 << torch.randint(0, 2, (1, 96), generator=g), 1 << torch.randint(0, 3, (1, 80), generator=g)
    few_q[:, :40] = 3  # a code positive to two of the three key codes
    n += check(q, k, v, few_q, few_k, lam, sort=True, block_m=16, block_n=64, versus_unsorted=True, fast=True)
    n += check(q, k, v, few_q, few_k, lam, sort=True, block_m=16, block_n=16, versus_unsorted=True, fast=True)
    for bits in (1, 0):  # one code: every key positive / every key negative
        n += check(q, k, v, torch.full((1, 96), bits), torch.ones(1, 80, dtype=torch.int64), lam, sort=True,
                   block_m=16, block_n=16, versus_unsorted=True, fast=True)
    many_q, many_k = torch.randint(0, 64, (1, 96), generator=g), torch.randint(0, 64, (1, 80), generator=g)
    n += check(q, k, v, many_q, many_k, lam, sort=True, block_m=16, block_n=16, versus_unsorted=True)
    q2, k2, v2, qb2, kb2, lam2 = random_case(2, 2, 48, 40, 16, seed=6)  # codes per batch item: gathered keys
    n += check(q2, k2, v2, qb2, torch.randint(0, 8, (2, 40), generator=g), lam2, sort=True, block_m=16, block_n=16)
    n += check(q2, k2, v2, qb2[:1].expand(2, -1), qb2[:1, :40], lam2, block_m=16, block_n=16)  # shared codes
    for dtype, tol in ((torch.float16, (5e-3, 5e-3)), (torch.bfloat16, (4e-2, 4e-2))):  # fp32 accumulation
        n += check(q.to(dtype), k.to(dtype), v.to(dtype), few_q, few_k, lam.clamp(0, 1), sort=True, tol=tol,
                   block_m=16, block_n=16)
    q, k, v, qb, kb, lam = random_case(1, 2, 40, 40, 8, seed=3)
    qc, kc, rel = relation_codes(qb, kb)
    out = triton_modulated_attention(q, k, v, strength=torch.zeros(1, 40), query_codes=qc, key_codes=kc,
                                     relation=rel, order=token_order(qc, kc), block_m=16, block_n=16)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
    return n + 1


def _processor_cases() -> int:
    """The engine on the CPU takes the Triton path under the interpreter: its processors, full and
    window focus, equal the float64 reference, and each level and window is sorted once."""
    from conftest import DenseReference, random_masks
    from test_processors import STEP, inputs, layer, plan_for, run_engine

    from stmod.core.types import ModulationConfig

    n = 0
    for temporal in ("full", "window"):
        config = ModulationConfig(temporal=temporal, window_frames=2, window_overlap=1, anchor_frames=1)
        masks = random_masks(3, (128, 128), seed=4)
        attn = layer(False)
        hidden, _ = inputs(6, 64, False)
        with torch.no_grad():
            out, modulator = run_engine(attn, hidden, None, plan_for(masks, (16, 16), config), budget_mb=1, **STEP)
        ref = DenseReference.processor(attn, hidden, None, masks=masks, spans=[(2, 4), (3, 5), None], latent=(16, 16),
                                       config=config, **STEP)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)
        assert len(modulator._state._orders) == (1 if temporal == "full" else 2), modulator._state._orders.keys()
        n += 1
    return n


def _cases() -> None:
    import torch
    from test_attention import dense_formula, random_case, uniform_case

    from stmod.core.st_layout.labels import relation_codes
    from stmod.core.st_layout.triton_kernel import triton_available, triton_modulated_attention

    assert triton_available(torch.device("cpu"))

    def check(q, k, v, qb, kb, lam, *, sort=False, tol=(1e-4, 1e-5), versus_unsorted=False, fast=False,
              **blocks) -> int:
        qc, kc, rel = relation_codes(qb, kb)
        order = token_order(qc, kc) if sort else None
        kw = dict(strength=lam, query_codes=qc, key_codes=kc, relation=rel, **blocks)
        out = triton_modulated_attention(q, k, v, order=order, **kw)
        assert out.dtype == q.dtype and out.shape == (*q.shape[:3], v.shape[-1])
        ref = dense_formula(q.float(), k.float(), v.float(), qb, kb, lam)
        torch.testing.assert_close(out.double(), ref, rtol=tol[0], atol=tol[1])
        if fast:  # sorted, some query blocks and key tiles hold one code: the fast loop runs
            groups = qc[0, order.queries[0]].split(blocks["block_m"])
            assert any(len(c.unique()) == 1 for c in groups)
            assert key_tiles(order.key_codes, blocks["block_n"]).single.numel() > 0
        if versus_unsorted:  # the same sums in another order
            torch.testing.assert_close(out, triton_modulated_attention(q, k, v, **kw), rtol=1e-5, atol=1e-6)
        return 1

    passed = _kernel_cases(check, dense_formula, random_case, uniform_case) + _processor_cases()
    print(f"cases passed: {passed}")


if __name__ == "__main__":
    _cases()
