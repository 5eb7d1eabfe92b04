"""The engine's attention processors against the literal dense reference and stock diffusers."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from stmod.core.st_layout.modulator import EngineOptions, ModulationPlan, STLayoutModulator
from stmod.core.tokens import TokenSpan
from stmod.core.types import LayoutMasks, ModulationConfig, Region

C, TEXT_DIM, TEXT_LEN = 16, 12, 77
#: mask a ↔ "red cat" at tokens 2..4, mask b ↔ tokens 3..5 (overlapping spans), mask c: no region
#: (or, with ``empty_prompt``, a region whose local prompt is empty).
NAMES = ("a", "b", "c")
REGIONS = (Region(name="a", prompt="red cat"), Region(name="b", prompt="cat dog"))
SPANS = (TokenSpan(2, 4), TokenSpan(3, 5))
MASK_SPANS = [(2, 4), (3, 5), None]


class Holder(torch.nn.Module, AttentionMixin):
    """A model with one attention layer, so processors are installed the way a UNet gets them."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.attn = attn


def layer(cross: bool, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(query_dim=C, heads=2, dim_head=8, cross_attention_dim=TEXT_DIM if cross else None)


def inputs(rows: int, tokens: int, cross: bool, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, tokens, C, generator=g) * 2
    text = torch.randn(rows, TEXT_LEN, TEXT_DIM, generator=g) * 2 if cross else None
    return hidden, text


def plan_for(masks: torch.Tensor, latent: tuple[int, int], config: ModulationConfig, *,
             empty_prompt: bool = False) -> ModulationPlan:
    extra = ((Region(name="c", prompt=""),), (None,)) if empty_prompt else ((), ())
    return ModulationPlan(
        masks=LayoutMasks(masks=masks, names=NAMES), num_frames=masks.shape[0], latent_size=latent,
        regions=REGIONS + extra[0], spans=SPANS + extra[1], config=config,
    )


def run_engine(
    attn: Attention, hidden: torch.Tensor, text: torch.Tensor | None, plan: ModulationPlan, *,
    budget_mb: float = 0.01, record: bool = False, **step: Any,
) -> tuple[torch.Tensor, STLayoutModulator]:
    modulator = STLayoutModulator(EngineOptions(budget_mb=budget_mb, record_attention=record))
    modulator.prepare(plan)
    with modulator.install(Holder(attn)):
        out = attn(hidden, encoder_hidden_states=text, **modulator.call_kwargs(**step))
    return out, modulator


STEP = dict(phase="denoise", step_index=0, timestep=981, branches=("uncond", "cond"))
CASES = [  # (frames, latent, level r: grid = latent / 2^r)
    (1, (8, 8), 1), (2, (8, 12), 1), (4, (8, 8), 1), (2, (8, 12), 0), (2, (8, 8), 2), (4, (4, 6), 0),
]


@pytest.mark.parametrize("empty_prompt", [False, True], ids=["c-without-region", "c-empty-prompt"])
@pytest.mark.parametrize("preset", ["videograin", "paper"])
@pytest.mark.parametrize(("frames", "latent", "level"), CASES)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_matches_dense_reference(dense, make_masks, preset: str, frames: int, latent: tuple[int, int],
                                 level: int, cross: bool, empty_prompt: bool) -> None:
    """The processor equals the literal float64 method on random inputs (both CFG branches)."""
    masks = make_masks(frames, (latent[0] * 8, latent[1] * 8), seed=frames + level)
    config = ModulationConfig(preset=preset)
    grid = (latent[0] // 2**level, latent[1] // 2**level)
    attn = layer(cross)
    hidden, text = inputs(2 * frames, grid[0] * grid[1], cross, seed=level)
    out, _ = run_engine(attn, hidden, text, plan_for(masks, latent, config, empty_prompt=empty_prompt), **STEP)
    ref = dense.processor(attn, hidden, text, masks=masks, spans=MASK_SPANS, latent=latent, config=config, **STEP)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("temporal", ["per-frame", "sparse-causal"])
@pytest.mark.parametrize("preset", ["videograin", "paper"])
@pytest.mark.parametrize("frames", [1, 4])
def test_temporal_variants_match_reference(dense, make_masks, temporal: str, preset: str, frames: int) -> None:
    """``per-frame`` and ``sparse-causal`` self-attention equal the reference."""
    latent = (8, 12)
    masks = make_masks(frames, (64, 96), seed=3)
    config = ModulationConfig(preset=preset, temporal=temporal)
    attn = layer(False)
    hidden, _ = inputs(2 * frames, 24, False)
    out, _ = run_engine(attn, hidden, None, plan_for(masks, latent, config), **STEP)
    ref = dense.processor(attn, hidden, None, masks=masks, spans=MASK_SPANS, latent=latent, config=config, **STEP)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)


def test_area_downsampling_matches_reference(dense, make_masks) -> None:
    """``mask_downsample='area'`` keeps tokens at least half covered, as the reference does."""
    config = ModulationConfig(preset="paper", mask_downsample="area")
    masks = make_masks(2, (64, 64), seed=5)
    attn = layer(True)
    hidden, text = inputs(4, 16, True)
    out, _ = run_engine(attn, hidden, text, plan_for(masks, (8, 8), config), **STEP)
    ref = dense.processor(attn, hidden, text, masks=masks, spans=MASK_SPANS, latent=(8, 8), config=config, **STEP)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)


def stock_video(attn: Attention, hidden: torch.Tensor, branches: int) -> torch.Tensor:
    """Stock ``AttnProcessor2_0`` with each branch's frames concatenated into one sequence."""
    rows, n, c = hidden.shape
    video = hidden.reshape(branches, -1, c)
    return AttnProcessor2_0()(attn, video).reshape(rows, n, c)


@pytest.mark.parametrize(
    "change",
    [dict(self_strength=0.0, cross_strength=0.0), dict(start_step=3, end_step=9), dict(end_step=0)],
    ids=["strength-0", "before-window", "empty-window"],
)
@pytest.mark.parametrize("frames", [1, 4])
def test_unmodulated_equals_stock(make_masks, change: dict[str, Any], frames: int) -> None:
    """Strength 0 or a step outside the window gives stock SDPA (self: over the whole video)."""
    masks = make_masks(frames, (64, 64))
    plan = plan_for(masks, (8, 8), ModulationConfig(**change))
    for cross in (False, True):
        attn = layer(cross)
        hidden, text = inputs(2 * frames, 16, cross)
        out, _ = run_engine(attn, hidden, text, plan, **STEP)
        stock = AttnProcessor2_0()(attn, hidden, text) if cross else stock_video(attn, hidden, 2)
        torch.testing.assert_close(out, stock, rtol=1e-5, atol=1e-6)


def test_per_frame_unmodulated_equals_stock_per_frame(make_masks) -> None:
    """``per-frame`` mode with strength 0 equals the stock processor applied to each frame."""
    plan = plan_for(make_masks(4, (64, 64)), (8, 8), ModulationConfig(temporal="per-frame", self_strength=0.0))
    attn = layer(False)
    hidden, _ = inputs(8, 16, False)
    out, _ = run_engine(attn, hidden, None, plan, **STEP)
    torch.testing.assert_close(out, AttnProcessor2_0()(attn, hidden), rtol=1e-5, atol=1e-6)


def test_without_step_info_is_stock_exactly(make_masks) -> None:
    """With no ``stmod_step`` (a stock pipeline call) the output is bit-identical to ``AttnProcessor2_0``."""
    modulator = STLayoutModulator()
    modulator.prepare(plan_for(make_masks(4, (64, 64)), (8, 8), ModulationConfig()))
    for cross in (False, True):
        attn = layer(cross)
        hidden, text = inputs(8, 16, cross)
        stock = AttnProcessor2_0()(attn, hidden, text)
        with modulator.install(Holder(attn)):
            out = attn(hidden, encoder_hidden_states=text)
        assert torch.equal(out, stock)


def test_inversion_is_spatiotemporal_but_unmodulated(make_masks) -> None:
    """During inversion self-attention spans all frames and nothing is modulated."""
    plan = plan_for(make_masks(4, (64, 64)), (8, 8), ModulationConfig())
    attn = layer(False)
    hidden, _ = inputs(4, 16, False)
    out, _ = run_engine(attn, hidden, None, plan, phase="invert", step_index=0, timestep=981, branches=("cond",))
    torch.testing.assert_close(out, stock_video(attn, hidden, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "self_branch", "self_half", "cross_half"),
    [("videograin", None, 0, 1), ("paper", None, 1, 1), ("videograin", "cond", 1, 1), ("paper", "uncond", 0, 1)],
)
def test_preset_modulates_the_right_cfg_half(make_masks, preset: str, self_branch: str | None, self_half: int,
                                             cross_half: int) -> None:
    """videograin: self on the uncond half, cross on the cond half; paper: both on the cond half;
    ``self_branch`` moves self-attention's modulation to the branch it names, leaving cross-attention's."""
    frames = 2
    masks = make_masks(frames, (64, 64))
    on = plan_for(masks, (8, 8), ModulationConfig(preset=preset, self_branch=self_branch))
    off = plan_for(masks, (8, 8), ModulationConfig(preset=preset, self_branch=self_branch, end_step=0))
    for cross, half in ((False, self_half), (True, cross_half)):
        attn = layer(cross)
        hidden, text = inputs(2 * frames, 16, cross)
        a, _ = run_engine(attn, hidden, text, on, **STEP)
        b, _ = run_engine(attn, hidden, text, off, **STEP)
        changed = [(a[i * frames:(i + 1) * frames] - b[i * frames:(i + 1) * frames]).abs().max().item() for i in (0, 1)]
        assert changed[half] > 1e-3
        other = slice((1 - half) * frames, (2 - half) * frames)
        torch.testing.assert_close(a[other], b[other])


def test_window_bounds(make_masks) -> None:
    """Steps start_step ≤ i < end_step are modulated; the steps just outside are not."""
    plan = plan_for(make_masks(2, (64, 64)), (8, 8), ModulationConfig(start_step=2, end_step=5))
    attn = layer(True)
    hidden, text = inputs(4, 16, True)
    stock = AttnProcessor2_0()(attn, hidden, text)
    for index, modulated in ((1, False), (2, True), (4, True), (5, False)):
        out, _ = run_engine(attn, hidden, text, plan, **{**STEP, "step_index": index})
        assert (not torch.allclose(out, stock, atol=1e-5)) == modulated, index


def test_finest_layers_unmodulated_in_videograin_only(make_masks) -> None:
    """Layers finer than (h/2)·(w/2) tokens are left alone by videograin and modulated by paper."""
    masks = make_masks(2, (64, 96))
    attn = layer(True)
    hidden, text = inputs(4, 96, True)
    stock = AttnProcessor2_0()(attn, hidden, text)
    grain, _ = run_engine(attn, hidden, text, plan_for(masks, (8, 12), ModulationConfig()), **STEP)
    paper, _ = run_engine(attn, hidden, text, plan_for(masks, (8, 12), ModulationConfig(preset="paper")), **STEP)
    torch.testing.assert_close(grain, stock, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(paper, stock, atol=1e-4)
    # modulate_finest overrides the preset both ways: videograin's finest layers modulated, paper's left stock
    finest, _ = run_engine(attn, hidden, text, plan_for(masks, (8, 12), ModulationConfig(modulate_finest=True)),
                           **STEP)
    assert not torch.allclose(finest, stock, atol=1e-4)
    kept, _ = run_engine(attn, hidden, text,
                         plan_for(masks, (8, 12), ModulationConfig(preset="paper", modulate_finest=False)), **STEP)
    torch.testing.assert_close(kept, stock, rtol=1e-5, atol=1e-6)


def test_switches_disable_each_attention_type(make_masks) -> None:
    """``modulate_self=False`` / ``modulate_cross=False`` leave that attention type unmodulated."""
    masks = make_masks(2, (64, 64))
    for cross, switch in ((False, "modulate_self"), (True, "modulate_cross")):
        attn = layer(cross)
        hidden, text = inputs(4, 16, cross)
        out, _ = run_engine(attn, hidden, text, plan_for(masks, (8, 8), ModulationConfig(**{switch: False})), **STEP)
        stock = AttnProcessor2_0()(attn, hidden, text) if cross else stock_video(attn, hidden, 2)
        torch.testing.assert_close(out, stock, rtol=1e-5, atol=1e-6)


def test_recorder_reports_more_mass_inside_with_modulation(make_masks) -> None:
    """Recorded maps: each local prompt's mass inside its region is higher with modulation."""
    masks = make_masks(2, (64, 64))
    attn = layer(True)
    hidden, text = inputs(4, 16, True)
    plan = plan_for(masks, (8, 8), ModulationConfig(preset="paper"))
    _, modulator = run_engine(attn, hidden, text, plan, record=True, **STEP)
    recorder = modulator.recorder
    assert recorder is not None and recorder.regions == ("a", "b") and recorder.grids == [(4, 4)]
    for region, fractions in recorder.summary().items():
        assert 0 <= fractions["plain"] < fractions["modulated"] <= 1, region
    assert recorder.region_map("a", modulated=True).shape == (2, 4, 4)
    with pytest.raises(KeyError, match="no local prompt"):
        recorder.mass_inside("c", modulated=True)


def test_batch_not_matching_branches_is_an_error(make_masks) -> None:
    """A batch that is not len(branches) × frames is rejected with a clear message."""
    plan = plan_for(make_masks(2, (64, 64)), (8, 8), ModulationConfig())
    attn = layer(False)
    hidden, _ = inputs(3, 16, False)
    with pytest.raises(ValueError, match="CFG branches"):
        run_engine(attn, hidden, None, plan, **STEP)
    with pytest.raises(ValueError, match="frames per CFG branch"):
        run_engine(attn, inputs(6, 16, False)[0], None, plan, **STEP)


def test_plan_rejects_region_without_mask(make_masks) -> None:
    """A region whose name has no mask is a LayoutError naming it."""
    from stmod.core.errors import LayoutError

    with pytest.raises(LayoutError, match="'z' has no mask"):
        attrs.evolve(plan_for(make_masks(1, (64, 64)), (8, 8), ModulationConfig()),
                     regions=(Region(name="z", prompt=""),), spans=(None,))


def test_without_plan_attention_is_spatiotemporal_and_plain() -> None:
    """Before any plan (e.g. inversion ahead of a K-Means layout) self-attention spans the video, cross is stock."""
    modulator = STLayoutModulator()
    for cross in (False, True):
        attn = layer(cross)
        hidden, text = inputs(4, 16, cross)
        with modulator.install(Holder(attn)):
            out = attn(hidden, encoder_hidden_states=text, **modulator.call_kwargs(**STEP))
        stock = AttnProcessor2_0()(attn, hidden, text) if cross else stock_video(attn, hidden, 2)
        torch.testing.assert_close(out, stock, rtol=1e-5, atol=1e-6)


def test_recorder_summary_ignores_unmodulated_layers(make_masks) -> None:
    """Maps are recorded in every layer, but summaries use the layers where cross-attention was modulated."""
    plan = plan_for(make_masks(2, (64, 96)), (8, 12), ModulationConfig())  # videograin: 8×12 layer unmodulated
    modulator = STLayoutModulator(EngineOptions(budget_mb=0.01, record_attention=True))
    modulator.prepare(plan)
    attn = layer(True)
    with modulator.install(Holder(attn)):
        for tokens in (96, 24):
            hidden, text = inputs(4, tokens, True)
            attn(hidden, encoder_hidden_states=text, **modulator.call_kwargs(**STEP))
    recorder = modulator.recorder
    assert recorder.grids == [(8, 12), (4, 6)] and recorder.modulated_grids == [(4, 6)]
    fine = recorder.mass_inside("a", modulated=True, grid=(8, 12))
    assert fine == recorder.mass_inside("a", modulated=False, grid=(8, 12))
    assert recorder.mass_inside("a", modulated=True) == recorder.mass_inside("a", modulated=True, grid=(4, 6))
    assert recorder.region_map("a", modulated=True).shape == (2, 4, 6)


@pytest.mark.parametrize("preset", ["videograin", "paper"])
@pytest.mark.parametrize(("frames", "length", "overlap", "anchors"),
                         [(5, 2, 1, 1), (6, 3, 0, 0), (7, 4, 2, 2), (4, 3, 1, 0)])
def test_window_matches_reference(dense, make_masks, preset: str, frames: int, length: int, overlap: int,
                                  anchors: int) -> None:
    """``window``: each frame attends to its window and the anchors, the mean over its windows."""
    latent = (8, 12)
    masks = make_masks(frames, (64, 96), seed=4)
    config = ModulationConfig(preset=preset, temporal="window", window_frames=length, window_overlap=overlap,
                              anchor_frames=anchors)
    attn = layer(False)
    hidden, _ = inputs(2 * frames, 24, False)
    out, _ = run_engine(attn, hidden, None, plan_for(masks, latent, config), **STEP)
    ref = dense.processor(attn, hidden, None, masks=masks, spans=MASK_SPANS, latent=latent, config=config, **STEP)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("preset", ["videograin", "paper"])
def test_window_covering_the_clip_is_full_attention(make_masks, preset: str) -> None:
    """A window at least as long as the clip gives exactly (bit for bit) the ``full`` focus."""
    masks = make_masks(4, (64, 96), seed=6)
    attn = layer(False)
    hidden, _ = inputs(8, 24, False)
    full, _ = run_engine(attn, hidden, None, plan_for(masks, (8, 12), ModulationConfig(preset=preset)), **STEP)
    for length in (4, 9):
        window = ModulationConfig(preset=preset, temporal="window", window_frames=length, window_overlap=1)
        out, _ = run_engine(attn, hidden, None, plan_for(masks, (8, 12), window), **STEP)
        assert torch.equal(out, full)
