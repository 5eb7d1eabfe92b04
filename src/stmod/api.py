"""The Python API in diffusers' conventions: ``Editor.from_pretrained`` / ``Editor.from_pipe``, then run.

::

    import torch
    from stmod import Editor

    editor = Editor.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5", torch_dtype=torch.float16,
                                    device="cuda")
    result = editor("job.yaml")        # or editor.run("job.yaml", overwrite=True, callback_on_step_end=...)

The model an editor was made from replaces each job's ``backbone`` (as a diffusers pipeline is its
model); a job is an :class:`~stmod.EditSpec`, a job file or a mapping (paths relative to the working
directory). See ``docs/python.md``. The constructors live here, above the core, because they build
the plugin manager; everything an editor does is :class:`stmod.core.pipeline.editor.Editor`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from stmod.core.devices import check_device, dtype_name
from stmod.core.errors import InputError
from stmod.core.pipeline.cache import InversionCache
from stmod.core.pipeline.editor import Editor as _EditorBase
from stmod.core.pipeline.progress import ProgressCallback
from stmod.core.protocols import ChecksWeights
from stmod.core.registry import ComponentInfo, Registry
from stmod.core.types import ComponentRef

__all__ = ["Editor", "pretrained_backbone"]

log = logging.getLogger(__name__)

#: The option a backbone declares when it loads a model from a hub id, folder or file.
_LOCATION_OPTION = "model"


def _registry(plugin_args: Sequence[str] = ()) -> Registry:
    from stmod.plugins.manager import make_plugin_manager

    return make_plugin_manager(plugin_args=list(plugin_args)).registry


def _option_names(registry: Registry, name: str) -> set[str]:
    options = registry.info("backbone", name).options
    return set(attrs.fields_dict(options)) if options is not None else set()


def pretrained_backbone(registry: Registry, name_or_path: str | Path, backbone: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(backbone name, options)`` for ``Editor.from_pretrained(name_or_path)``: a registered backbone's
    name is that backbone; anything else is a model location (hub id, folder, file) for the backbone that
    loads one (its options declare ``model``): ``backbone`` when given, else the only such backbone."""
    text = str(name_or_path)
    if backbone is None and text in registry.components("backbone"):
        return text, {}
    loaders = sorted(name for name in registry.components("backbone") if _LOCATION_OPTION in _option_names(registry, name))
    if backbone is None and len(loaders) > 1:
        backbone = _claimant(registry, loaders, text)
    if backbone is None:
        if len(loaders) != 1:
            raise InputError("backbone", None, f"several backbones load a model location ({', '.join(loaders)}); "
                                               f"pass backbone= one of them" if loaders else
                             "no installed backbone loads a model location")
        backbone = loaders[0]
    elif backbone not in loaders:
        registry.info("backbone", backbone)  # an unknown name: the error lists the installed ones
        raise InputError("backbone", backbone, f"does not load a model location; choose one of {', '.join(loaders)}")
    path = Path(text).expanduser()
    return backbone, {_LOCATION_OPTION: str(path.resolve()) if path.exists() else text}


def _claimant(registry: Registry, loaders: list[str], location: str) -> str | None:
    """The one backbone that claims ``location`` more surely than the others (a backbone class's optional
    ``location_claim(location) -> int``: 0 not mine, 1 could be, 2 surely mine), else ``None``."""
    scores: dict[str, int] = {}
    for name in loaders:
        claim = getattr(registry.info("backbone", name).factory, "location_claim", None)
        scores[name] = int(claim(location)) if callable(claim) else 0
    best = max(scores.values())
    winners = [name for name, score in scores.items() if score == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


class Editor(_EditorBase):
    """The Python entry: an editor made from a model (:meth:`from_pretrained`), a loaded diffusers pipeline
    (:meth:`from_pipe`) or the installed plugins (:meth:`from_plugins`); call it, or :meth:`run`, on jobs."""

    _pipe: Any = None  # the pipeline given to from_pipe (and the annotators of its ControlNets)
    _pipe_annotators: Sequence[str] | None = None
    _pipeline_backbone: Any = None

    @classmethod
    def from_plugins(cls, plugin_args: Sequence[str] = (), *, progress: bool = True,
                     cache: InversionCache | None | bool = None, on_progress: ProgressCallback | None = None) -> Editor:
        """An editor over the installed plugins (``plugin_args`` select them as ``stmod-run -p`` does) that
        runs each job on the job's own ``backbone``."""
        return cls(_registry(plugin_args), progress=progress, cache=cache, on_progress=on_progress)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, torch_dtype: Any = None, device: str | None = None,
                        backbone: str | None = None, progress: bool = True, cache: InversionCache | None | bool = None,
                        plugin_args: Sequence[str] = (), **options: Any) -> Editor:
        """An editor whose jobs run on ``name_or_path``: the name of an installed backbone (``"shapes"``,
        ``"tiny"``, see ``stmod-run list backbones``), or a hub id, a diffusers folder or a ``.safetensors``
        file for the backbone that loads model locations (``sd15``; ``backbone=`` picks one when several do).

        :param torch_dtype: ``torch.float16`` etc. (default float16 on CUDA, float32 on CPU), for a backbone
            with a ``dtype`` option.
        :param device: ``"cuda"``, ``"cpu"``, ``"cuda:1"``; refused here when this machine has no such device.
        :param progress: progress bars on stderr; ``cache``: as for the core editor (``False``: no inversion cache).
        :param options: further backbone options (``vae_tiling=True``, ``cpu_offload=True``, ``vae_batch``);
            an unknown one is refused here, by name.
        """
        registry = _registry(plugin_args)
        name, ref_options = pretrained_backbone(registry, name_or_path, backbone)
        accepted = _option_names(registry, name)
        for argument, value in (("dtype", dtype_name(torch_dtype)),
                                ("device", None if device is None else check_device(device))):
            if value is not None and argument not in accepted:
                given = "torch_dtype" if argument == "dtype" else argument
                raise InputError(given, value, f"the {name!r} backbone picks its {argument} itself; drop {given}")
            if value is not None:
                ref_options[argument] = value
        ref = ComponentRef(name=name, options={**ref_options, **options})
        registry.parse_options("backbone", ref.name, dict(ref.options), place="Editor.from_pretrained")  # fail now
        model = registry.create("backbone", ref.name, dict(ref.options), place="Editor.from_pretrained")
        if isinstance(model, ChecksWeights):  # weights that are not there are refused now, not at the first job
            model.check_weights(Path.cwd())
        return cls(registry, backbone=ref, progress=progress, cache=cache)

    @classmethod
    def from_pipe(cls, pipe: Any, *, device: str | None = None, annotators: Sequence[str] | None = None,
                  progress: bool = True, cache: InversionCache | None | bool = None) -> Editor:
        """An editor over an already-loaded diffusers ``StableDiffusionPipeline`` or
        ``StableDiffusionControlNetPipeline`` (fine-tuned, LoRA-loaded, ...): its VAE, UNet, text encoder,
        tokenizer, scheduler config and ControlNet(s) are used as they are.

        :param annotators: the annotator each of the pipeline's ControlNets serves, in its order (default:
            read from each ControlNet's name, e.g. ``lllyasviel/control_v11p_sd15_canny`` → ``canny``). A job's
            control entry without ``model:`` takes the pipeline's ControlNet for its annotator.
        """
        editor = cls(_registry(), backbone=ComponentRef(name="pipeline"), progress=progress, cache=cache)
        editor._pipe, editor._pipe_annotators = pipe, annotators
        editor._use_pipe(None if device is None else check_device(device))
        return editor

    def _use_pipe(self, device: str | None) -> None:
        """Register the pipeline as the ``pipeline`` backbone, on ``device``."""
        from stmod.backbones.pipe import PipelineBackbone

        backbone = PipelineBackbone(self._pipe, device=device, annotators=self._pipe_annotators)
        components = {kind: self.registry.components(kind) for kind in ("backbone", "layout", "modulator", "blender",
                                                                         "annotator", "extension")}
        components["backbone"]["pipeline"] = ComponentInfo(kind="backbone", name="pipeline", factory=lambda: backbone,
                                                           summary="the pipeline given to Editor.from_pipe",
                                                           plugin="stmod.api")
        self.registry = Registry(components, self.registry.commands, self.registry.job_formats)
        self._backbones.clear()
        self._pipeline_backbone = backbone

    def to(self, device: Any) -> Editor:
        """Run later jobs on ``device`` (see the core editor's ``to``); a pipeline's models move with it."""
        if self._pipe is None:
            super().to(device)
        else:
            self._use_pipe(check_device(device))
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | None = None) -> None:
        """Keep the models on the CPU and move each to the GPU when it runs, through accelerate's hooks (as
        diffusers' ``pipe.enable_model_cpu_offload()``). Without a GPU it does nothing but say so (a warning).

        :param gpu_id: the CUDA device index (``device="cuda:1"`` says the same); default 0.
        """
        if gpu_id is not None and device is not None:
            raise InputError("device", device, "pass gpu_id or device, not both")
        import torch

        target = device or f"cuda:{gpu_id or 0}"
        if not device and not torch.cuda.is_available():
            target = "cpu"  # the backbone says there is nothing to offload
        loaded = {id(b): b for b in (*self._backbones.values(), self._pipeline_backbone)
                  if callable(getattr(b, "enable_model_cpu_offload", None))}
        for backbone in loaded.values():  # already loaded: offload them in place (their cache keys stay)
            backbone.enable_model_cpu_offload(target)
        if loaded or self.backbone is None or self._pipe is not None:
            return
        if "cpu_offload" not in _option_names(self.registry, self.backbone.name):
            log.warning("enable_model_cpu_offload: the %r backbone runs on the CPU; nothing to offload", self.backbone.name)
            return
        self.backbone = attrs.evolve(self.backbone, options={**self.backbone.options, "cpu_offload": True,
                                                             "device": target})
