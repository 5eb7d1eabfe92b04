"""Model CPU offload through accelerate's hooks (``--cpu-offload``, ``Editor.enable_model_cpu_offload``).

Without a GPU the hooks are run with the CPU as their execution device: every move is then a no-op,
but which model group is sent back when, and that the hooks come off cleanly, are the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from accelerate.hooks import CpuOffload, SequentialHook, UserCpuOffloadHook

from stmod import Editor
from stmod.backbones.offload import ModelOffload
from stmod.backbones.sd15 import SD15Options, StableDiffusionBackbone


@pytest.fixture
def backbone(tiny_folder: Path) -> StableDiffusionBackbone:
    model = StableDiffusionBackbone(SD15Options(model=str(tiny_folder), device="cpu"))
    model.load(controlnets=[str(tiny_folder / "controlnet")])
    return model


def _calls(model: StableDiffusionBackbone) -> torch.Tensor:
    """One of each model call an edit makes, in an edit's order; returns the decoded frames."""
    from stmod.core.types import Control

    torch.manual_seed(0)
    text = model.encode_text(["a red disc"])
    latents = model.encode(torch.rand(2, 3, 64, 64) * 2 - 1)
    control = Control(images=model.control_tensor(torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8).numpy()),
                      scale=1.0)
    location = next(iter(model.controlnets))
    eps = model.predict_noise(latents, 500, text.repeat(2, 1, 1), controls=[(location, control)])
    return model.decode(latents - 0.1 * eps)


def test_hooks_send_the_other_groups_back_and_come_off(backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    """text → VAE → UNet ⇄ ControlNet → VAE: before each group runs the previous one is offloaded; results
    are those without hooks; after the last decode everything is offloaded; remove() restores the models."""
    plain = _calls(backbone)
    names = {id(m): n for n, m in (("text", backbone.text_encoder), ("vae", backbone.vae), ("unet", backbone.unet),
                                   ("controlnet", next(iter(backbone.controlnets.values()))))}
    offloaded: list[str] = []
    original = UserCpuOffloadHook.offload
    monkeypatch.setattr(UserCpuOffloadHook, "offload",
                        lambda hook: (offloaded.append(names[id(hook.model)]), original(hook))[1])
    backbone._attach_offload(ModelOffload(torch.device("cpu")))
    for module in (backbone.text_encoder, backbone.vae, backbone.unet):
        hook = module._hf_hook
        assert isinstance(hook, SequentialHook) and isinstance(hook.hooks[-1], CpuOffload)
    assert set(backbone.offload.groups()) == {"text", "vae", "denoiser"}
    assert torch.equal(_calls(backbone), plain)
    # encode: text leaves; predict_noise: the VAE leaves (UNet and ControlNet share a group); decode: the
    # UNet and ControlNet leave; the end of decode sends the VAE back too
    assert offloaded[:1] == ["text"] and offloaded[1:2] == ["vae"]
    assert sorted(offloaded[2:4]) == ["controlnet", "unet"] and offloaded[4:] == ["vae"]
    assert backbone.offload.on_device == set()
    backbone.remove_all_hooks()
    for module in (backbone.text_encoder, backbone.vae, backbone.unet, *backbone.controlnets.values()):
        assert getattr(module, "_hf_hook", None) is None and module.forward.__func__ is type(module).forward
    assert backbone.offload is None and not backbone.options.cpu_offload


def test_cpu_offload_on_the_cpu_is_a_no_op_with_a_warning(tiny_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = StableDiffusionBackbone(SD15Options(model=str(tiny_folder), device="cpu", cpu_offload=True))
    with caplog.at_level(logging.WARNING, logger="stmod.backbones.sd15"):
        model.load(controlnets=[str(tiny_folder / "controlnet")])
    assert model.offload is None and getattr(model.unet, "_hf_hook", None) is None
    assert [r.getMessage() for r in caplog.records] == [
        "cpu_offload: the models run on the CPU, so there is nothing to offload; ignored"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only path")
def test_editor_enable_model_cpu_offload_without_a_gpu_still_edits(demo_job, tiny_folder: Path) -> None:
    from stmod.plugins.manager import load_job

    editor = Editor.from_pretrained(tiny_folder, device="cpu", progress=False, cache=False)
    editor.enable_model_cpu_offload()
    assert editor.backbone.options["cpu_offload"] is True and editor.backbone.options["device"] == "cpu"
    result = editor.run(load_job(demo_job()))
    assert result.frames.shape[0] == result.run["frames"]


def test_from_pipe_takes_over_a_pipelines_offload_hooks(tiny_folder: Path) -> None:
    """A pipeline under diffusers' enable_model_cpu_offload keeps no hooks of its own once stmod uses it."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)
    pipe.enable_model_cpu_offload(device="cpu")
    assert getattr(pipe.unet, "_hf_hook", None) is not None
    editor = Editor.from_pipe(pipe, progress=False, cache=False)
    backbone = editor._pipeline_backbone
    assert backbone.device.type == "cpu" and backbone.options.cpu_offload
    assert getattr(pipe.unet, "_hf_hook", None) is None and not pipe._all_hooks
