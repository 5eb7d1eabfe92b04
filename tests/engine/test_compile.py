"""The processors under ``torch.compile``: one graph without breaks, no recompile when the step's
strength changes, the eager result (``bench/compile.py`` measures a whole UNet)."""

from __future__ import annotations

import pytest
import torch

from stmod.core.st_layout.modulator import EngineOptions, STLayoutModulator
from stmod.core.st_layout.processor import STLayoutProcessor
from stmod.core.types import ModulationConfig

from .test_processors import inputs, layer, plan_for

FRAMES, LATENT = 2, (8, 12)
TOKENS = 4 * 6  #: level 1 (``videograin`` modulates no layer at the finest level)


@pytest.mark.parametrize("temporal", ["full", "window"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_compiled_processor_matches_eager_without_recompiling(make_masks, cross: bool, temporal: str) -> None:
    """``fullgraph=True`` traces a modulated call (so no graph break, no host sync on tensor data), the
    next step (another timestep, so another λ) reuses that graph (``error_on_recompile``), and both
    equal the eager processor."""
    masks = make_masks(FRAMES, (LATENT[0] * 8, LATENT[1] * 8))
    config = ModulationConfig(temporal=temporal, window_frames=1, window_overlap=0, anchor_frames=1) \
        if temporal == "window" else ModulationConfig()
    modulator = STLayoutModulator(EngineOptions(budget_mb=0.01))
    modulator.prepare(plan_for(masks, LATENT, config))
    modulator.prepare_levels("cpu")  # else the first trace builds them (a graph break)
    attn = layer(cross)
    processor = STLayoutProcessor(modulator._state)
    hidden, text = inputs(2 * FRAMES, TOKENS, cross)

    def call(step: object) -> torch.Tensor:
        return processor(attn, hidden, text, stmod_step=step)

    torch._dynamo.reset()
    compiled = torch.compile(call, backend="eager", fullgraph=True)
    steps = [modulator.call_kwargs(phase="denoise", step_index=i, timestep=t)["stmod_step"]
             for i, t in enumerate((981, 761))]
    with torch.no_grad():
        first = compiled(steps[0])
        with torch._dynamo.config.patch(error_on_recompile=True):
            second = compiled(steps[1])
        eager = [call(step) for step in steps]
    assert not torch.allclose(eager[0], eager[1], atol=1e-3)  # the strengths differ, and so do the outputs
    torch.testing.assert_close(first, eager[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(second, eager[1], atol=1e-5, rtol=0)
