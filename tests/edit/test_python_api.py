"""The Python API in diffusers' conventions (docs/python.md): from_pretrained, from_pipe, step callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import stmod
from stmod import EditCancelled, Editor


def _job(demo_job) -> dict:
    path = demo_job()
    job = yaml.safe_load(path.read_text())
    job["video"]["path"] = str(path.parent / job["video"]["path"])
    job["layout"]["dir"] = str(path.parent / job["layout"]["dir"])
    return job


def test_from_pretrained_runs_a_mapping_with_a_step_callback(demo_job, tiny_folder: Path, tmp_path: Path) -> None:
    """torch_dtype and device reach the backbone; the callback hears every inversion and denoising step."""
    editor = Editor.from_pretrained(tiny_folder, torch_dtype=torch.float32, device="cpu", progress=False, cache=False)
    assert stmod.Editor is Editor and editor.backbone.options["dtype"] == "float32"
    calls = []

    def callback(pipe, step, timestep, callback_kwargs):
        calls.append((callback_kwargs["phase"], step, timestep, callback_kwargs["latents"], pipe))
        return callback_kwargs

    result = editor.run(_job(demo_job), callback_on_step_end=callback)
    steps = yaml.safe_load(demo_job().read_text())["steps"]
    assert [(c[0], c[1]) for c in calls] == ([("inversion", i) for i in range(steps)]
                                             + [("denoising", i) for i in range(steps)])
    assert all(isinstance(c[2], int) and c[3].shape[1] == 4 and c[4] is editor for c in calls)
    assert result.frames.dtype.name == "uint8" and (result.output / "result.mp4").exists()
    from diffusers.utils import export_to_video

    export_to_video(list(result.frames / 255.0), str(tmp_path / "diffusers.mp4"), fps=8)
    assert (tmp_path / "diffusers.mp4").stat().st_size > 0


def test_a_callback_setting_the_interrupt_flag_cancels_and_writes_nothing(demo_job, tiny_folder: Path) -> None:
    """diffusers' interrupt: the callback sets ``pipe._interrupt``; the edit stops after that step."""
    editor = Editor.from_pretrained(tiny_folder, device="cpu", progress=False, cache=False)
    job = _job(demo_job)

    def interrupt(pipe, step, timestep, callback_kwargs):
        if callback_kwargs["phase"] == "denoising" and step == 1:
            pipe._interrupt = True
        return callback_kwargs

    with pytest.raises(EditCancelled, match="denoising step 1"):
        editor.run(job, callback_on_step_end=interrupt)
    assert editor.interrupt and not Path(job["output"]).exists()


def test_a_callback_written_for_a_diffusers_pipeline_runs_as_it_is(demo_job, tiny_folder: Path, tmp_path: Path) -> None:
    """A diffusers ``PipelineCallback`` (its own ``tensor_inputs``) and the docs' latents-replacing callback
    work unchanged: what the callback returns for ``latents`` is what the next step starts from."""
    from diffusers.callbacks import PipelineCallback

    class ZeroLatentsAtStep(PipelineCallback):  # diffusers' documented way to write a reusable callback
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            if step_index == self.config.cutoff_step_index and callback_kwargs.get("phase") == "denoising":
                return {"latents": torch.zeros_like(callback_kwargs["latents"])}
            return callback_kwargs

    editor = Editor.from_pretrained(tiny_folder, device="cpu", progress=False, cache=False)
    job = _job(demo_job)
    plain = editor.run({**job, "output": str(tmp_path / "plain")})
    steps = yaml.safe_load(demo_job().read_text())["steps"]
    changed = editor.run({**job, "output": str(tmp_path / "zeroed")},
                         callback_on_step_end=ZeroLatentsAtStep(cutoff_step_ratio=None, cutoff_step_index=steps - 1))
    assert (plain.frames != changed.frames).any()
    with pytest.raises(stmod.InputError, match="callback_on_step_end_tensor_inputs.*prompt_embeds"):
        editor.run(job, callback_on_step_end=lambda *a: a[-1], callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_from_pipe_uses_a_loaded_pipeline(demo_job, tiny_folder: Path) -> None:
    """An already-loaded StableDiffusionPipeline is the backbone; changed weights change the cache identity."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)
    editor = Editor.from_pipe(pipe, device="cpu", progress=False, cache=False)
    result = editor.run(_job(demo_job))
    assert result.run["frames"] == len(result.frames)
    backbone = next(iter(editor._backbones.values()))
    before = backbone.model_id
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1.0)  # as a fine-tune or a fused LoRA would
    assert Editor.from_pipe(pipe, device="cpu").registry.create("backbone", "pipeline").model_id != before


def test_from_pretrained_refuses_bad_options_at_once() -> None:
    with pytest.raises(stmod.ConfigError, match="vae_tilling"):
        Editor.from_pretrained("some/model", vae_tilling=True)


def _controlnet_pipe(tiny_folder: Path, names: tuple[str | None, ...] = (None,)):
    """A tiny StableDiffusionControlNetPipeline (one ControlNet per name; a name is its ``_name_or_path``)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)
    nets = []
    for name in names:
        net = ControlNetModel.from_pretrained(tiny_folder / "controlnet")
        if name is not None:
            net.register_to_config(_name_or_path=name)
        nets.append(net)
    return StableDiffusionControlNetPipeline(**{k: v for k, v in base.components.items()},
                                             controlnet=nets[0] if len(nets) == 1 else nets)


def test_from_pipe_reuses_a_controlnet_pipelines_controlnet(demo_job, tiny_folder: Path) -> None:
    """A control entry without model takes the pipeline's ControlNet (read from its name); nothing is loaded."""
    pipe = _controlnet_pipe(tiny_folder, ("lllyasviel/control_v11p_sd15_canny",))
    editor = Editor.from_pipe(pipe, device="cpu", progress=False, cache=False)
    backbone = editor._pipeline_backbone
    job = _job(demo_job)
    job["control"] = [{"annotator": "canny", "scale": 1.0}]
    result = editor.run(job)
    assert list(backbone.controlnets) == [backbone.pipeline_controlnets["canny"]]
    assert backbone.controlnets[backbone.pipeline_controlnets["canny"]] is pipe.controlnet
    assert result.run["frames"] == len(result.frames)


def test_from_pipe_with_several_controlnets_and_changed_weights(demo_job, tiny_folder: Path) -> None:
    """A MultiControlNetModel's nets serve the given annotators; an entry with model loads that one; a
    fine-tuned ControlNet (changed weights) gets another location, so the inversion cache tells them apart."""
    pipe = _controlnet_pipe(tiny_folder, (None, None))
    editor = Editor.from_pipe(pipe, device="cpu", annotators=("canny", "depth"), progress=False, cache=False)
    backbone = editor._pipeline_backbone
    assert [backbone.controlnets[backbone.pipeline_controlnets[a]] for a in ("canny", "depth")] == list(pipe.controlnet.nets)
    assert backbone.controlnet_location("canny", str(tiny_folder / "controlnet")) == str(tiny_folder / "controlnet")
    before = backbone.pipeline_controlnets["canny"]
    with torch.no_grad():
        next(pipe.controlnet.nets[0].parameters()).add_(1.0)
    again = Editor.from_pipe(pipe, device="cpu", annotators=("canny", "depth"))._pipeline_backbone
    assert again.pipeline_controlnets["canny"] != before


@pytest.mark.parametrize("names, annotators, message", [
    ((None,), None, r"cannot tell which annotator the pipeline's ControlNet 0 .*pass annotators=\[\.\.\.\]"),
    ((None, None), ("canny",), "annotators lists 1 names for the pipeline's 2 ControlNet"),
    (("x/control_canny", "y/canny-v2"), None, "two of the pipeline's ControlNets serve 'canny'"),
])
def test_from_pipe_controlnet_annotators_are_clear_errors(tiny_folder: Path, names, annotators, message) -> None:
    with pytest.raises(stmod.ConfigError, match=message):
        Editor.from_pipe(_controlnet_pipe(tiny_folder, names), device="cpu", annotators=annotators)


def test_from_pipe_with_a_lora_loaded_pipeline(demo_job, tiny_folder: Path, tmp_path: Path) -> None:
    """pipe.load_lora_weights(...) (peft): the edit runs through the LoRA layers — other frames than the plain
    pipeline's, another cache identity."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    def pipe():
        return StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)

    trained = pipe()  # a LoRA as a fine-tune would leave it: non-zero B matrices, saved in diffusers' format
    trained.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                        target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(trained.unet))
    plain, lora = pipe(), pipe()
    lora.load_lora_weights(tmp_path / "lora")
    job = _job(demo_job)
    results = {}
    for name, p in (("plain", plain), ("lora", lora)):
        editor = Editor.from_pipe(p, device="cpu", progress=False, cache=False)
        results[name] = (editor.run({**job, "output": str(tmp_path / f"out-{name}")}), editor._pipeline_backbone.model_id)
    assert results["plain"][1] != results["lora"][1]
    assert (results["plain"][0].frames != results["lora"][0].frames).any()
