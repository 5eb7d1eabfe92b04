"""The Python API in diffusers' conventions: ``Editor.from_pretrained`` / ``Editor.from_pipe``, then ``run``.

::

    import torch
    from stmod import Editor

    editor = Editor.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5", torch_dtype=torch.float16,
                                    device="cuda")
    result = editor.run("job.yaml", callback_on_step_end=lambda phase, step, t, latents: None)

The model an editor was made from replaces each job's ``backbone`` (as a diffusers pipeline is its
model); a job is an :class:`~stmod.EditSpec`, a job file or a mapping (paths relative to the working
directory). See ``docs/python.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from stmod.core.pipeline.editor import Editor as _CoreEditor
from stmod.core.pipeline.editor import EditResult, StepCallback
from stmod.core.registry import ComponentInfo, Registry
from stmod.core.types import ComponentRef, EditSpec

__all__ = ["Editor"]

log = logging.getLogger(__name__)

#: Backbones named by ``from_pretrained`` instead of a model location.
_NAMED = ("shapes", "tiny")


def _registry(plugins: Any = None) -> Registry:
    from stmod.plugins.manager import make_plugin_manager

    return make_plugin_manager(plugin_args=list(plugins or [])).registry


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _dtype_name(torch_dtype: Any) -> str | None:
    return None if torch_dtype is None else str(torch_dtype).replace("torch.", "")


class Editor(_CoreEditor):
    """:class:`stmod.core.pipeline.editor.Editor` plus diffusers-style constructors and flexible jobs."""

    backbone: ComponentRef | None = None
    _pipeline_backbone: Any = None  # the backbone over the pipeline given to from_pipe

    @classmethod
    def from_pretrained(cls, model_or_folder: str | Path, *, torch_dtype: Any = None, device: str | None = None,
                        progress: bool = True, cache: Any = None, **options: Any) -> Editor:
        """An editor whose jobs run on ``model_or_folder``: a hub id, a diffusers folder or a ``.safetensors``
        file (the ``sd15`` backbone), or ``"shapes"`` / ``"tiny"`` (the built-in small models).

        :param torch_dtype: ``torch.float16`` etc. (``sd15``; default float16 on CUDA, float32 on CPU).
        :param device: ``"cuda"``, ``"cpu"``, ``"cuda:1"`` (default: CUDA when available; CPU for shapes/tiny).
        :param progress: progress bars on stderr; ``cache``: as for the core editor (``False``: no inversion cache).
        :param options: further backbone options (``vae_tiling=True``, ``cpu_offload=True``, ``vae_batch``).
        """
        name = str(model_or_folder)
        if name in _NAMED:
            ref_options = {**({"device": device} if device else {}), **options}
            if torch_dtype is not None:
                raise TypeError(f"the {name!r} backbone picks its dtype itself; drop torch_dtype")
            ref = ComponentRef(name=name, options=ref_options)
        else:
            path = Path(name).expanduser()
            model = str(path.resolve()) if path.exists() else name
            extra = {k: v for k, v in (("dtype", _dtype_name(torch_dtype)), ("device", device)) if v is not None}
            ref = ComponentRef(name="sd15", options={"model": model, **extra, **options})
        registry = _registry()
        registry.parse_options("backbone", ref.name, dict(ref.options), place="Editor.from_pretrained")  # fail now
        editor = cls(registry, progress=progress, cache=cache)
        editor.backbone = ref
        return editor

    @classmethod
    def from_pipe(cls, pipe: Any, *, device: str | None = None, annotators: Sequence[str] | None = None,
                  progress: bool = True, cache: Any = None) -> Editor:
        """An editor over an already-loaded diffusers ``StableDiffusionPipeline`` or
        ``StableDiffusionControlNetPipeline`` (fine-tuned, LoRA-loaded, ...): its VAE, UNet, text encoder,
        tokenizer, scheduler config and ControlNet(s) are used as they are.

        :param annotators: the annotator each of the pipeline's ControlNets serves, in its order (default:
            read from each ControlNet's name, e.g. ``lllyasviel/control_v11p_sd15_canny`` → ``canny``). A job's
            control entry without ``model:`` takes the pipeline's ControlNet for its annotator.
        """
        from stmod.backbones.pipe import PipelineBackbone

        backbone = PipelineBackbone(pipe, device=device, annotators=annotators)
        base = _registry()
        components = {kind: base.components(kind) for kind in ("backbone", "layout", "modulator", "blender", "annotator")}
        components["backbone"]["pipeline"] = ComponentInfo(kind="backbone", name="pipeline", factory=lambda: backbone,
                                                           summary="the pipeline given to Editor.from_pipe",
                                                           plugin="stmod.api")
        editor = cls(Registry(components, base.commands, base.job_formats), progress=progress, cache=cache)
        editor.backbone = ComponentRef(name="pipeline")
        editor._pipeline_backbone = backbone
        return editor

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | None = None) -> None:
        """Keep the models on the CPU and move each to the GPU when it runs, through accelerate's hooks (as
        diffusers' ``pipe.enable_model_cpu_offload()``). Without a GPU it does nothing but say so (a warning).

        :param gpu_id: the CUDA device index (``device="cuda:1"`` says the same); default 0.
        """
        if gpu_id is not None and device is not None:
            raise TypeError("pass gpu_id or device, not both")
        target = device or f"cuda:{gpu_id or 0}"
        if not device and not torch_cuda_available():
            target = "cpu"  # the backbone says there is nothing to offload
        loaded = [b for b in (*self._backbones.values(), self._pipeline_backbone)
                  if callable(getattr(b, "enable_model_cpu_offload", None))]
        loaded = list({id(b): b for b in loaded}.values())
        for backbone in loaded:  # already loaded: offload them in place (their cache keys stay)
            backbone.enable_model_cpu_offload(target)
        if loaded or self.backbone is None:
            return
        if self.backbone.name != "sd15":
            log.warning("enable_model_cpu_offload: the %r backbone runs on the CPU; nothing to offload", self.backbone.name)
            return
        self.backbone = attrs.evolve(self.backbone, options={**self.backbone.options, "cpu_offload": True,
                                                             "device": target})

    def job(self, job: EditSpec | str | Path | Mapping[str, Any]) -> EditSpec:
        """``job`` as an :class:`EditSpec` on this editor's model (a file in any installed format; a mapping's
        relative paths are taken from the working directory)."""
        from stmod.core.config import job_from_mapping, load_job

        if isinstance(job, Mapping):
            spec = job_from_mapping(job, base_dir=Path.cwd(), source="Editor.run")
        elif isinstance(job, EditSpec):
            spec = job
        else:
            spec = load_job(Path(job), formats=self.registry.job_formats.values())
        return spec if self.backbone is None else attrs.evolve(spec, backbone=self.backbone)

    def check(self, spec: EditSpec, *, check_output: bool = True):  # type: ignore[override]
        return super().check(self.job(spec), check_output=check_output)

    def run(self, job: EditSpec | str | Path | Mapping[str, Any], *,  # type: ignore[override]
            callback_on_step_end: StepCallback | None = None) -> EditResult:
        """Edit ``job`` (see :meth:`job`) and write its output folder. ``callback_on_step_end(phase, step,
        timestep, latents)`` runs after every inversion and denoising step; returning ``False`` stops the
        edit with :class:`stmod.EditCancelled` and writes nothing."""
        return super().run(self.job(job), callback_on_step_end=callback_on_step_end)
