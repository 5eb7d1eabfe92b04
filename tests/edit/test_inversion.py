"""Inversion exactness on the real model path, and the latent blend against the trajectory."""

from __future__ import annotations

import pytest
import torch

from stmod.backbones.sd15 import SD15Options, StableDiffusionBackbone
from stmod.core.config import load_job
from stmod.core.st_layout.modulator import ModulationPlan, STLayoutModulator
from stmod.core.pipeline.editor import Editor
from stmod.core.sampling import ddim_timesteps, denoise, invert
from stmod.core.types import ModulationConfig
from stmod.plugins.blenders import BlendOptions, LatentBlend
from stmod.testing import fresh_plugin_manager
from stmod import hookimpl


def test_invert_denoise_round_trip_with_zero_eps(tiny_folder) -> None:
    """With the UNet's conv_out zeroed (ε ≡ 0), invert → denoise returns x0 within 1e-5."""
    backbone = StableDiffusionBackbone(SD15Options(model=str(tiny_folder), device="cpu"))
    backbone.load()
    with torch.no_grad():
        backbone.unet.conv_out.weight.zero_()
        backbone.unet.conv_out.bias.zero_()
    schedule = backbone.noise_schedule()
    timesteps = schedule.timesteps(10)
    x0 = backbone.encode(torch.rand(4, 3, 64, 64) * 2 - 1)
    text = backbone.encode_text(["a red cat"]).repeat(4, 1, 1)
    modulator = STLayoutModulator()
    modulator.prepare(ModulationPlan(masks=None, num_frames=4, latent_size=(8, 8), config=ModulationConfig()))

    def predict(phase):
        def run(x, t, i):
            kwargs = modulator.call_kwargs(phase=phase, step_index=i, timestep=t, branches=("cond",))
            eps = backbone.predict_noise(x, t, text, cross_attention_kwargs=kwargs)
            assert not eps.any()
            return eps
        return run

    with modulator.install(backbone.unet, role="unet"):
        trajectory = invert(x0, predict("invert"), schedule, timesteps)
        back = denoise(trajectory[timesteps[0]], predict("denoise"), schedule, timesteps)
    assert (back - x0).abs().max() < 1e-5
    assert (trajectory[timesteps[0]] - x0).abs().max() > 0.1  # inversion did move the latents


class RecordingLatentBlend(LatentBlend):
    """The latent blend, keeping every step's output and the context it saw."""

    def __init__(self, options: BlendOptions) -> None:
        super().__init__(options)
        self.steps: list[tuple[int, torch.Tensor]] = []
        self.context = None

    def blend(self, latents, *, step_index, timestep, next_timestep, context):
        out = super().blend(latents, step_index=step_index, timestep=timestep, next_timestep=next_timestep,
                            context=context)
        self.steps.append((next_timestep, out.clone()))
        self.context = context
        return out


class RecordingPlugin:
    def __init__(self) -> None:
        self.instances: list[RecordingLatentBlend] = []

    @hookimpl
    def stmod_register_blenders(self, register):
        def make(options):
            self.instances.append(RecordingLatentBlend(options))
            return self.instances[-1]

        register.add("recording-latent", make, options=BlendOptions, summary="latent blend that records")


def test_latent_blend_keeps_outside_on_trajectory(demo_job) -> None:
    """Outside the union mask, the latents equal the inversion trajectory after every step."""
    plugin = RecordingPlugin()
    editor = Editor(fresh_plugin_manager(plugin).registry, progress=False)
    editor.run(load_job(demo_job(blend="recording-latent", steps=4)))
    (blender,) = plugin.instances
    trajectory, mask = blender.context.trajectory, blender.context.mask
    outside = (mask == 0).expand_as(blender.steps[0][1])
    assert outside.any() and (~outside).any()
    assert [level for level, _ in blender.steps] == [*ddim_timesteps(4)[1:], 0]
    for level, latents in blender.steps:
        assert torch.equal(latents[outside], trajectory[level][outside]), level
    assert not torch.equal(blender.steps[-1][1][~outside], trajectory[0][~outside])


@pytest.mark.parametrize("preset", ["videograin", "paper"])
def test_both_presets_edit(demo_job, preset: str) -> None:
    """Both modulation presets run end to end (the paper preset uses the negative prompt on the UNet)."""
    editor = Editor(fresh_plugin_manager().registry, progress=False)
    result = editor.run(load_job(demo_job(modulation={"preset": preset, "end_step": 2}, negative_prompt="blurry")))
    assert result.frames.shape == (4, 64, 64, 3)
