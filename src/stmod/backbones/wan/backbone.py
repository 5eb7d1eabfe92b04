"""The ``wan`` backbone: Wan 2.1 text-to-video (diffusers) driven step by step for multi-grained edits.

Weights come from a hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` by default, or the 14B), served from
the local HF cache when offline, or a local diffusers folder (``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), with the same location rules and errors as
``sd15``. The transformer and text encoder run in ``dtype`` (``auto``: bfloat16 on CUDA, float32 on
the CPU); the VAE always in float32, as diffusers' Wan examples load it. See ``docs/wan.md``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from attrs import field, frozen, validators

from stmod.backbones.sd15 import _first_line, _loaded, _local_folder, check_location
from stmod.backbones.wan.attention import CallContext, WanDenoiser
from stmod.backbones.wan.layout import compress_masks_in_time, latent_frame_count, nearest_valid_frame_counts
from stmod.backbones.wan.text import StartMarkedTokenizer, umt5_text
from stmod.core.devices import resolve_device
from stmod.core.errors import CheckpointError, ConfigError, InputError
from stmod.core.sampling import FlowSchedule
from stmod.core.types import Control, EditSpec, LayoutMasks

if TYPE_CHECKING:
    from stmod.core.budget.job import ModelFootprint

__all__ = ["WanOptions", "WanBackbone", "DEFAULT_WAN_MODEL", "TEXT_LENGTH"]

log = logging.getLogger(__name__)

DEFAULT_WAN_MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

#: Text positions of Wan's cross-attention (diffusers' ``max_sequence_length``).
TEXT_LENGTH = 512

_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

@frozen(kw_only=True)
class WanOptions:
    """Options of the ``wan`` backbone (job key ``backbone``)."""

    #: Hub id or local diffusers folder of a Wan 2.1 text-to-video model.
    model: str = DEFAULT_WAN_MODEL
    #: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
    device: str = "auto"
    #: ``auto``: bfloat16 on CUDA, float32 on CPU (transformer and text encoder; the VAE stays float32).
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = field(
        default="auto", validator=validators.in_(("auto", "float16", "bfloat16", "float32")))
    #: Tiled VAE encode/decode (diffusers' ``AutoencoderKLWan.enable_tiling``) for large frames.
    vae_tiling: bool = False
    #: Keep the models on the CPU; each moves to the device when it runs (accelerate's hooks).
    cpu_offload: bool = False


def _scheduler_config(location: str) -> dict[str, Any]:
    """The scheduler config, refused unless it is a flow-matching one stmod can step (one line: key, value)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dict(FlowMatchEulerDiscreteScheduler.load_config(location, subfolder="scheduler"))
    kind = str(config.get("_class_name", ""))
    if kind.startswith("FlowMatch"):
        if config.get("use_dynamic_shifting"):
            raise CheckpointError(location, "scheduler use_dynamic_shifting: true is not supported by wan (it needs "
                                            "a shift per resolution); set a fixed shift")
    elif config.get("prediction_type") != "flow_prediction" or not config.get("use_flow_sigmas"):
        raise CheckpointError(location, f"scheduler prediction_type: {config.get('prediction_type')!r} "
                                        f"(use_flow_sigmas: {config.get('use_flow_sigmas')!r}); wan runs flow-matching "
                                        "models only (flow_prediction with flow sigmas)")
    return config


class WanBackbone:
    """Wan 2.1 (umT5 text, causal video VAE, flow-matching transformer); the editor owns the loops.

    Latents are ``(f, C, h, w)``: ``f = 1 + (F − 1)/4`` latent frames of the clip's ``F`` frames, already
    normalised with the VAE's ``latents_mean``/``latents_std`` (:class:`~stmod.core.protocols.VideoBackbone`).
    """

    #: An 8× VAE and 1×2×2 patches: any multiple of 16 pixels, so Wan's own 480p (832×480) can be edited
    #: (:class:`~stmod.core.protocols.SizeRule`).
    size_multiple = 16

    @staticmethod
    def location_claim(location: str) -> int:
        """How surely ``location`` is a Wan model (see ``StableDiffusionBackbone.location_claim``): 2 a folder
        with a ``transformer/`` or a hub id of the ``Wan-AI`` organisation, 0 otherwise."""
        path = Path(location).expanduser()
        if path.is_dir():
            return 2 if (path / "transformer").is_dir() else 0
        return 2 if location.startswith("Wan-AI/") else 0

    text_length = TEXT_LENGTH

    def __init__(self, options: WanOptions) -> None:
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = getattr(torch, options.dtype) if options.dtype != "auto" else (
            torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.transformer: torch.nn.Module | None = None
        self.text_encoder: torch.nn.Module | None = None
        # diffusers' AutoencoderKLWan: mypy cannot resolve its mixin bases, so its methods are not typed for it
        self.vae: Any = None
        self.tokenizer: StartMarkedTokenizer | None = None
        self.scheduler_config: dict[str, Any] | None = None
        self.offload: Any = None
        self.context = CallContext()
        self.latent_frames = 0  # of the last encoded clip: splits a batch into CFG branches

    @property
    def model_id(self) -> str:
        return self.options.model

    # -- validation (no weights) ------------------------------------------------------------------

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        raise ConfigError("backbone wan has no ControlNets; remove the job's control entries", key="control")

    def check(self, spec: EditSpec) -> None:
        if self.options.device != "auto" and self.device.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError(self.options.device, "device is CUDA but no CUDA device is available; use --device cpu")
        if spec.control:
            raise ConfigError("backbone wan has no ControlNets; remove the job's control entries", key="control")
        if spec.extensions:
            raise ConfigError(f"extension {spec.extensions[0].name!r} changes UNet attention; backbone wan takes "
                              "none, remove the job's extensions", key="extensions")
        self.check_weights(spec.base_dir)

    def check_weights(self, base_dir: Path | None = None) -> None:
        check_location(self.options.model, what="Wan model", subfolders=_PARTS, base_dir=base_dir)

    def attention_levels(self, base_dir: Path | None = None) -> tuple[int, ...]:
        """Every block attends at one grid, level 1 in the core's terms (:mod:`stmod.core.levels`): the
        1×2×2 patch halves the latent grid as a UNet's first down-sampling does, so a K-Means layout's
        default ``level: 1`` is Wan's token grid and any other level is refused by ``check``."""
        return (1,)

    def attention_blocks(self, base_dir: Path | None = None) -> int | None:
        """The transformer's block count (``num_layers``) from ``transformer/config.json`` of a local folder or
        the HF cache, no weights read (:class:`~stmod.core.protocols.AttentionBlocks`); ``None`` when absent."""
        if self.transformer is not None:
            return len(self.transformer.blocks)  # type: ignore[arg-type]  # an nn.ModuleList
        try:
            location = Path(check_location(self.options.model, what="Wan model", base_dir=base_dir))
            config = json.loads((location / "transformer" / "config.json").read_text(encoding="utf-8"))
            return int(config["num_layers"])
        except (OSError, ValueError, KeyError, TypeError, CheckpointError):
            return None

    def check_clip(self, clip: Any) -> None:
        """Refuse a frame count the causal VAE cannot take (``1 + 4k``), naming the nearest valid counts."""
        frames = len(clip.indices)
        if latent_frame_count(frames) is None:
            counts = " or ".join(map(str, nearest_valid_frame_counts(frames)))
            raise InputError("video.frames", frames, f"wan's video VAE takes 1 + 4k frames; use {counts}")

    def footprint(self, spec: EditSpec, *, device: str | None = None) -> ModelFootprint | None:
        """The models' sizes and shapes from their configs and safetensors headers, no weights loaded
        (:class:`~stmod.core.protocols.DescribesFootprint`; a hub id is read from the HF cache only). The
        transformer's parameters come from its config when its weights are not here (exact for diffusers'
        ``WanTransformer3DModel``); the estimate is :mod:`stmod.core.budget.dit_estimate`."""
        import attrs

        from stmod.core.budget.dit import dit_params, dit_shape
        from stmod.core.budget.job import ModelFootprint
        from stmod.core.budget.sizes import read_component

        folder = _local_folder(self.options.model, spec.base_dir)
        if folder is None:
            return None
        target = torch.device(device) if device else self.device
        dtype = getattr(torch, self.options.dtype) if self.options.dtype != "auto" else (
            torch.bfloat16 if target.type == "cuda" else torch.float32)
        transformer = read_component(folder / "transformer")
        shape = dit_shape(transformer.config) if transformer is not None else None
        if transformer is not None and transformer.params is None and shape is not None:
            transformer = attrs.evolve(transformer, params=dit_params(shape))
        triton = target.type == "cuda" and importlib.util.find_spec("triton") is not None
        return ModelFootprint(device="cpu" if target.type == "cpu" else "cuda", dtype_bytes=dtype.itemsize,
                              unet=transformer, vae=read_component(folder / "vae"),
                              text_encoder=read_component(folder / "text_encoder"), vae_tiling=self.options.vae_tiling,
                              vae_tile=256, cpu_offload=self.options.cpu_offload,
                              kernel="triton" if triton else "two-pass", denoiser="transformer",
                              time_ratio=self._time_ratio(), vae_dtype_bytes=4)

    def load_tokenizer(self, base_dir: Path | None = None) -> StartMarkedTokenizer:
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            location = check_location(self.options.model, what="Wan model", base_dir=base_dir)
            try:
                self.tokenizer = StartMarkedTokenizer(AutoTokenizer.from_pretrained(location, subfolder="tokenizer"))
            except OSError as exc:
                raise CheckpointError(self.options.model, f"cannot load the tokenizer: {_first_line(exc)}") from exc
        return self.tokenizer

    # -- loading ----------------------------------------------------------------------------------

    def load(self, controlnets: Sequence[str] = (), base_dir: Path | None = None) -> None:
        """Load the transformer, VAE, text encoder, tokenizer and scheduler config (idempotent)."""
        if controlnets:
            raise ConfigError("backbone wan has no ControlNets; remove the job's control entries", key="control")
        if self.transformer is not None:
            return
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import UMT5EncoderModel

        location = check_location(self.options.model, what="Wan model", subfolders=_PARTS, base_dir=base_dir)
        try:
            self.scheduler_config = _scheduler_config(location)
            transformer = WanTransformer3DModel.from_pretrained(location, subfolder="transformer", torch_dtype=self.dtype)
            vae = AutoencoderKLWan.from_pretrained(location, subfolder="vae", torch_dtype=torch.float32)
            text_encoder = UMT5EncoderModel.from_pretrained(location, subfolder="text_encoder", torch_dtype=self.dtype)
            self.load_tokenizer(base_dir)
        except OSError as exc:
            raise CheckpointError(self.options.model, f"cannot load the model: {_first_line(exc)}") from exc
        if self.options.vae_tiling:
            vae.enable_tiling()
        self.transformer, self.vae, self.text_encoder = (
            self._place(m.eval().requires_grad_(False), group)
            for m, group in ((transformer, "denoiser"), (vae, "vae"), (text_encoder, "text")))
        log.info("loaded %s on %s (%s)", self.options.model, self.device, self.dtype)

    def _place(self, module: torch.nn.Module, group: str) -> torch.nn.Module:
        """``module`` on the device, or, with ``cpu_offload`` and a GPU, on the CPU under an accelerate hook."""
        if self.options.cpu_offload and self.device.type != "cpu":
            if self.offload is None:
                from stmod.backbones.offload import ModelOffload

                self.offload = ModelOffload(self.device)
            self.offload.add(module, group)
            return module
        return module.to(self.device)

    # -- model calls -------------------------------------------------------------------------------

    def noise_schedule(self) -> FlowSchedule:
        return FlowSchedule.from_scheduler_config(_loaded(self.scheduler_config, "the Wan scheduler config"))

    def attention_models(self) -> dict[str, Any]:
        """The transformer's attention, as the one denoiser role (``"unet"``: what the modulator modulates)."""
        return {"unet": WanDenoiser(_loaded(self.transformer, "the Wan transformer"), self.context)}

    def latent_masks(self, masks: LayoutMasks) -> LayoutMasks:
        """Pixel masks per latent frame: each the union of its frame group's (:mod:`.layout`)."""
        return LayoutMasks(masks=compress_masks_in_time(masks.masks, self._time_ratio()), names=masks.names)

    def _time_ratio(self) -> int:
        return 2 ** sum(self.vae.temperal_downsample) if self.vae is not None else 4

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(n, 512, D)`` umT5 rows: a zero start row, the prompt's tokens, zero padding (:mod:`.text`)."""
        tokenizer = _loaded(self.tokenizer, "the Wan tokenizer")
        encoder = _loaded(self.text_encoder, "the Wan text encoder")
        return umt5_text(tokenizer.inner, encoder, prompts, length=self.text_length,
                         device=self.device, dtype=self.dtype)

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        return (torch.tensor(config.latents_mean).view(shape).to(self.device),
                torch.tensor(config.latents_std).view(shape).to(self.device))

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``float32 (F, 3, H, W)`` in [-1, 1] → normalised latents ``(f, C, H/8, W/8)`` (distribution mean)."""
        # Adapted from diffusers pipelines/wan/pipeline_wan_video2video.py WanVideoToVideoPipeline.prepare_latents
        video = frames.to(self.device, torch.float32).permute(1, 0, 2, 3)[None]
        latents = self.vae.encode(video).latent_dist.mean
        mean, std = self._latent_stats()
        latents = ((latents - mean) / std)[0].permute(1, 0, 2, 3)
        self.latent_frames = latents.shape[0]
        return latents.to(self.dtype).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, progress: Callable[[int], Any] | None = None) -> torch.Tensor:
        """Latents ``(f, C, h, w)`` → ``float32 (1 + 4(f − 1), 3, H, W)`` in [-1, 1] on the CPU."""
        mean, std = self._latent_stats()
        z = latents.to(self.device, torch.float32).permute(1, 0, 2, 3)[None] * std + mean
        video = self.vae.decode(z).sample[0].permute(1, 0, 2, 3).float().clamp(-1, 1).cpu()
        if progress is not None:
            progress(len(video))
        if self.offload is not None:
            self.offload.offload_all()
        return video

    def control_tensor(self, images: np.ndarray, repeat: int = 1) -> torch.Tensor:
        raise ConfigError("backbone wan has no ControlNets; remove the job's control entries", key="control")

    @torch.no_grad()
    def predict_noise(self, latents: torch.Tensor, timestep: int, text: torch.Tensor, *,
                      controls: Sequence[tuple[str, Control]] = (), control_text: torch.Tensor | None = None,
                      cross_attention_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
        """The velocity for latents ``(B·f, C, h, w)`` (CFG branches outermost, ``f`` latent frames of the
        last encoded clip inner) with text ``(B·f, 512, D)`` (each branch's rows alike)."""
        frames = self.latent_frames or len(latents)
        if len(latents) % frames or len(text) != len(latents):
            raise ValueError(f"a batch of {len(latents)} latent frames and {len(text)} text rows is not whole clips "
                             f"of {frames} latent frames")
        branches = len(latents) // frames
        x = latents.to(self.device, self.dtype).view(branches, frames, *latents.shape[1:]).transpose(1, 2)
        t = torch.full((branches,), float(timestep), device=self.device)
        step = (cross_attention_kwargs or {}).get("stmod_step")
        transformer = _loaded(self.transformer, "the Wan transformer")
        with self.context.calling(step, frames):
            out = transformer(x, t, encoder_hidden_states=text[::frames].to(self.device, self.dtype),
                              return_dict=False)[0]
        return out.transpose(1, 2).reshape(latents.shape)

