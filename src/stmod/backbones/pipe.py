"""``sd15`` over an already-loaded diffusers pipeline (``stmod.Editor.from_pipe``).

A ``StableDiffusionPipeline`` gives the VAE, UNet, text encoder, tokenizer and scheduler config; a
``StableDiffusionControlNetPipeline`` its ControlNet(s) too (a ``MultiControlNetModel`` is several).
A job's control entry without ``model:`` takes the pipeline's ControlNet for its annotator: which
annotator each one serves is read from its name (``lllyasviel/control_v11p_sd15_canny`` → ``canny``) or
given (``annotators=("canny",)``). Nothing is read from disk but the ControlNets a job names itself.

A pipeline under diffusers' ``enable_model_cpu_offload()`` is taken over: its accelerate hooks are
replaced by stmod's (:mod:`stmod.backbones.offload`) on the same device.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from stmod.backbones.sd15 import DEFAULT_CONTROLNETS, DTypeName, SD15Options, StableDiffusionBackbone, check_location, \
    embed_condition_once
from stmod.core.errors import ConfigError
from stmod.core.types import EditSpec

if TYPE_CHECKING:
    from stmod.core.protocols import Tokenizer

__all__ = ["PipelineBackbone", "pipeline_controlnets", "controlnet_annotators"]

log = logging.getLogger(__name__)

_PLACE = "Editor.from_pipe"


def pipeline_controlnets(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's ControlNets: none, one, or the nets of a ``MultiControlNetModel``."""
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None:
        return []
    nets = getattr(controlnet, "nets", None)
    return list(nets) if nets is not None else [controlnet]


def _named_annotator(net: torch.nn.Module) -> str | None:
    """The one default annotator whose name is a word of the ControlNet's ``_name_or_path``, if any."""
    name = str(getattr(getattr(net, "config", None), "_name_or_path", "") or "")
    words = set(re.split(r"[^a-z0-9]+", Path(name).name.lower()))
    found = [annotator for annotator in DEFAULT_CONTROLNETS if annotator in words]
    return found[0] if len(found) == 1 else None


def controlnet_annotators(nets: Sequence[torch.nn.Module], annotators: Sequence[str] | None) -> list[str]:
    """The annotator each ControlNet serves: ``annotators`` when given, else read from each one's name.

    :raises ConfigError: a count that does not match, an annotator twice, or a name that tells none.
    """
    if annotators is not None:
        names = list(annotators)
        if len(names) != len(nets):
            raise ConfigError(f"annotators lists {len(names)} names for the pipeline's {len(nets)} ControlNet(s); "
                              "give one per ControlNet, in the pipeline's order", key="annotators", place=_PLACE)
    else:
        names = []
        for i, net in enumerate(nets):
            name = _named_annotator(net)
            if name is None:
                path = getattr(getattr(net, "config", None), "_name_or_path", "") or "unnamed"
                raise ConfigError(f"cannot tell which annotator the pipeline's ControlNet {i} ({path!r}) was trained "
                                  f"for; pass annotators=[...] (one of {', '.join(DEFAULT_CONTROLNETS)} or any "
                                  "installed annotator per ControlNet)", key="annotators", place=_PLACE)
            names.append(name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two of the pipeline's ControlNets serve {twice[0]!r}; a job's control entries pick the "
                          "pipeline's ControlNet by annotator, so give each its own", key="annotators", place=_PLACE)
    return names


def _take_over_offload(pipe: Any) -> torch.device | None:
    """Remove diffusers' model offload hooks from ``pipe``; returns the device they moved models to."""
    if any(p.device.type == "meta" for p in pipe.unet.parameters()):
        raise ConfigError("the pipeline's UNet weights are on the meta device (enable_sequential_cpu_offload or a "
                          "device_map); load it without, or use enable_model_cpu_offload()", place=_PLACE)
    if not getattr(pipe, "_all_hooks", None):
        return None
    device = getattr(pipe, "_offload_device", None)
    pipe.remove_all_hooks()
    log.info("%s: the pipeline's enable_model_cpu_offload hooks are replaced by stmod's (device %s)", _PLACE, device)
    return torch.device(device) if device is not None else None


class PipelineBackbone(StableDiffusionBackbone):
    """``sd15`` over the modules of an already-loaded diffusers pipeline (a fine-tuned or LoRA-loaded one
    included; ControlNets of a ``StableDiffusionControlNetPipeline`` reused).

    The weights' fingerprint is part of :attr:`model_id` and of each of the pipeline's ControlNet locations,
    so the inversion cache never mixes a LoRA-loaded pipeline with the plain one.
    """

    def __init__(self, pipe: Any, *, device: str | None = None, annotators: Sequence[str] | None = None,
                 vae_batch: int = 8) -> None:
        nets = pipeline_controlnets(pipe)
        names = controlnet_annotators(nets, annotators)
        offload_device = _take_over_offload(pipe)
        target = device or str(offload_device or pipe.unet.device)
        super().__init__(SD15Options(model=str(getattr(pipe, "name_or_path", None) or "pipeline"), device=target,
                                     # another dtype than those DTypeName lists is refused by SD15Options' validator
                                     dtype=cast(DTypeName, str(pipe.unet.dtype).replace("torch.", "")),
                                     vae_batch=vae_batch,
                                     cpu_offload=offload_device is not None))
        self.tokenizer, self.scheduler_config = pipe.tokenizer, pipe.scheduler.config
        self.vae, self.unet, self.text_encoder = (
            self._place(m.eval().requires_grad_(False), group)
            for m, group in ((pipe.vae, "vae"), (pipe.unet, "denoiser"), (pipe.text_encoder, "text")))
        self._fingerprint = _fingerprint(self.unet, self.text_encoder)
        #: annotator -> location of the pipeline's ControlNet for it (a key of ``self.controlnets``)
        self.pipeline_controlnets: dict[str, str] = {}
        for name, net in zip(names, nets):
            location = f"pipeline:{name}@{_fingerprint(net)}"
            self.controlnets[location] = self._place(embed_condition_once(net.eval().requires_grad_(False)),
                                                     "denoiser")
            self.pipeline_controlnets[name] = location

    @property
    def model_id(self) -> str:
        return f"{self.options.model}@{self._fingerprint}"

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        """The pipeline's ControlNet for ``annotator`` unless the entry names a ``model``; else as ``sd15``."""
        if model is None and annotator in self.pipeline_controlnets:
            return self.pipeline_controlnets[annotator]
        return super().controlnet_location(annotator, model)

    def check(self, spec: EditSpec) -> None:
        for control in spec.control:
            location = self.controlnet_location(control.annotator.name, control.model)
            if location not in self.controlnets:
                check_location(location, what="ControlNet", base_dir=spec.base_dir)

    def load_tokenizer(self, base_dir: Path | None = None) -> Tokenizer | None:
        return self.tokenizer

    def attention_levels(self, base_dir: Path | None = None) -> tuple[int, ...] | None:
        return None  # no config file to read: a layout's level is checked once the edit runs, as for hub ids


def _fingerprint(*modules: torch.nn.Module) -> str:
    """A short digest of the weights (a few values of every tensor): enough to tell fine-tunes and LoRAs apart."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            sample = tensor.detach().flatten()[:16].float().cpu()
            digest.update(f"{name}{tuple(tensor.shape)}{sample.sum().item():.6e}{sample.abs().sum().item():.6e}".encode())
    return digest.hexdigest()[:16]
