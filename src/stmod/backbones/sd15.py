"""The ``sd15`` backbone: Stable Diffusion 1.5-family checkpoints plus zero or more ControlNets.

Weights come from a Hugging Face hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5`` by default,
served from the local HF cache when offline), a local diffusers folder, or a single ``.safetensors``
file. fp16 on CUDA, fp32 on CPU unless told otherwise. ``check`` validates every location without
loading weights and says exactly what is missing and how to provide it.
"""

from __future__ import annotations

import logging
import json
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import attrs
import numpy as np
import torch
from attrs import field, frozen, validators

from stmod.core.devices import resolve_device
from stmod.core.errors import CheckpointError, MissingFilesError
from stmod.core.hub import hub_unreachable, in_hf_cache
from stmod.core.sampling import NoiseSchedule
from stmod.core.types import Control, EditSpec, number

if TYPE_CHECKING:
    from stmod.core.budget.job import ModelFootprint
    from stmod.core.protocols import Tokenizer

__all__ = ["SD15Options", "StableDiffusionBackbone", "DEFAULT_MODEL", "DEFAULT_CONTROLNETS", "embed_condition_once",
           "refuse_unrunnable"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

#: ControlNet used when a job's control entry names an annotator but no model.
DEFAULT_CONTROLNETS = {
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "openpose": "lllyasviel/control_v11p_sd15_openpose",
}

_HOW_TO_GET = (
    "download it where the hub is reachable (hf download {id}) and copy the HF cache, "
    "or point to a local diffusers folder"
)


#: The ``dtype`` option's values.
DTypeName = Literal["auto", "float16", "bfloat16", "float32"]


@frozen(kw_only=True)
class SD15Options:
    """Options of the ``sd15`` backbone (job key ``backbone``)."""

    #: Hub id, local diffusers folder, or a single ``.safetensors``/``.ckpt`` file.
    model: str = DEFAULT_MODEL
    #: Diffusers config folder for a single-file checkpoint (needed offline).
    config: str | None = None
    #: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
    device: str = "auto"
    #: ``auto``: float16 on CUDA, float32 on CPU.
    dtype: DTypeName = field(
        default="auto", validator=validators.in_(("auto", "float16", "bfloat16", "float32")))
    #: Frames per VAE call (VAE slicing); lower it to save memory.
    vae_batch: int = number(8, low=1, high=1024)
    #: Tiled VAE encode/decode for large frames.
    vae_tiling: bool = False
    #: Keep the models on the CPU; each moves to the device when it runs (accelerate's hooks, as diffusers'
    #: ``enable_model_cpu_offload``); ignored, with a warning, when the device is the CPU.
    cpu_offload: bool = False


def _is_local(location: str, base_dir: Path | None = None) -> bool:
    """A path rather than a hub id: it looks like one, or it names something that exists (relative to the
    job's folder first: the official configs' ``ckpt/stable-diffusion-v1-5`` has no ``./``)."""
    if location.startswith((".", "/", "~")) or location.endswith((".safetensors", ".ckpt")):
        return True
    return (base_dir is not None and (base_dir / location).exists()) or Path(location).expanduser().exists()


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (checkpoints must then be in the HF cache)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def check_location(location: str, *, what: str, subfolders: Sequence[str] = (), base_dir: Path | None = None,
                   kind: str | None = None) -> str:
    """Validate a weights location without loading it; returns the resolved location.

    :param kind: what the weights are (:attr:`CheckpointError.kind`: ``"model"``, ``"controlnet"``).
    :raises CheckpointError: naming the location (the path looked at, for a folder) and how to provide
        the weights.
    """
    try:
        return _check_location(location, what=what, subfolders=subfolders, base_dir=base_dir)
    except CheckpointError as error:
        raise CheckpointError(error.location, error.problem, kind=kind) from None


def _check_location(location: str, *, what: str, subfolders: Sequence[str], base_dir: Path | None) -> str:
    if _is_local(location, base_dir):
        path = Path(location).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.exists():
            raise CheckpointError(str(path), f"{what} not found: no such file or folder")
        if path.is_dir():
            if not (path / "model_index.json").exists() and not (path / "config.json").exists() and subfolders:
                missing = [s for s in subfolders if not (path / s).is_dir()]
                if missing:
                    raise CheckpointError(str(path), f"{what} folder lacks {', '.join(m + '/' for m in missing)} (expected a diffusers "
                                                     "layout: save it with save_pretrained)")
        return str(path)
    if in_hf_cache(location):
        return location
    if hub_offline():
        raise CheckpointError(location, f"{what} is not in the Hugging Face cache and HF_HUB_OFFLINE=1; "
                                        + _HOW_TO_GET.format(id=location))
    problem = hub_unreachable()
    if problem is not None:
        raise CheckpointError(location, f"{what} is not a local folder nor in the Hugging Face cache, and the hub "
                                        f"cannot be reached ({problem}); " + _HOW_TO_GET.format(id=location))
    return location


def _local_folder(location: str, base_dir: Path | None) -> Path | None:
    """The folder holding ``location`` here: a local path, or a hub id's snapshot in the HF cache
    (never downloaded); ``None`` when there is none."""
    if _is_local(location, base_dir):
        path = Path(location).expanduser()
        path = base_dir / path if not path.is_absolute() and base_dir is not None else path
        return path if path.is_dir() else None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(location, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the sizes are unknown
        return None


_T = TypeVar("_T")


def _loaded(part: _T | None, what: str) -> _T:
    """``part`` once the backbone's ``load`` has set it; before that, an error that says so."""
    if part is None:
        raise RuntimeError(f"{what} is not loaded; call load() first")
    return part


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


class StableDiffusionBackbone:
    """SD 1.5 (+ ControlNets) driven step by step: the editor owns the loops."""

    scale_factor = 8

    @staticmethod
    def location_claim(location: str) -> int:
        """How surely ``location`` is an SD-1.5-family model (``Editor.from_pretrained`` picks the backbone
        that claims it most surely): 2 a folder with a ``unet/`` or a single checkpoint file, 1 a hub id
        (offline, its files cannot be looked at), 0 a folder of another layout."""
        path = Path(location).expanduser()
        if path.is_dir():
            return 2 if (path / "unet").is_dir() else 0
        if path.suffix in (".safetensors", ".ckpt"):
            return 2
        return 1

    def __init__(self, options: SD15Options) -> None:
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        self.unet: torch.nn.Module | None = None
        self.text_encoder: torch.nn.Module | None = None
        # diffusers' AutoencoderKL: mypy cannot resolve its mixin bases, so its methods are not typed for it
        self.vae: Any = None
        self.tokenizer: Any = None  # a transformers CLIPTokenizer (its __call__ is wider than the Tokenizer protocol)
        self.scheduler_config: Mapping[str, Any] | None = None
        self.controlnets: dict[str, Any] = {}
        self.offload: Any = None  # a ModelOffload while cpu_offload is on (and there is a device to offload to)
        self._offload_warned = False

    # -- validation (no weights) ------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        """What identifies the weights (part of the inversion cache key)."""
        return self.options.model

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        """The ControlNet for a control entry: its ``model`` or the default for its annotator."""
        if model:
            return model
        if annotator not in DEFAULT_CONTROLNETS:
            raise CheckpointError(annotator, f"no default ControlNet for annotator {annotator!r}; set control[].model")
        return DEFAULT_CONTROLNETS[annotator]

    def _weight_checks(self) -> list[tuple[str, str, tuple[str, ...], str]]:
        """(location, what, subfolders, kind) of the model's own weights."""
        own = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
        checks: list[tuple[str, str, tuple[str, ...], str]] = [(self.options.model, "SD 1.5 model", own, "model")]
        if self.options.config:
            checks.append((self.options.config, "single-file config", (), "model"))
        return checks

    def check_weights(self, base_dir: Path | None = None) -> None:
        for location, what, subfolders, kind in self._weight_checks():
            check_location(location, what=what, subfolders=subfolders, base_dir=base_dir, kind=kind)

    def check(self, spec: EditSpec) -> None:
        if self.options.device != "auto" and self.device.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError(self.options.device, 'device is CUDA but no CUDA device is available; use device="cpu"')
        problems: list[CheckpointError] = []  # every missing one at once, not one per run
        checks = self._weight_checks()
        for control in spec.control:
            checks.append((self.controlnet_location(control.annotator.name, control.model), "ControlNet", (),
                           "controlnet"))
        for location, what, subfolders, kind in checks:
            try:
                check_location(location, what=what, subfolders=subfolders, base_dir=spec.base_dir, kind=kind)
            except CheckpointError as error:
                problems.append(error)
        MissingFilesError.raise_any(problems)

    def load_tokenizer(self, base_dir: Path | None = None) -> Tokenizer | None:
        """The CLIP tokenizer alone (cheap: no weights), for prompt checks before loading."""
        if self.tokenizer is None:
            from transformers import CLIPTokenizer

            location = check_location(self.options.model, what="SD 1.5 model", base_dir=base_dir)
            if location.endswith((".safetensors", ".ckpt")):
                if not self.options.config:
                    return None
                location = self.options.config
            self.tokenizer = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer")
        return self.tokenizer

    def attention_levels(self, base_dir: Path | None = None) -> tuple[int, ...] | None:
        """UNet levels with attention layers, read from a local model's ``unet/config.json`` (no weights).

        ``None`` when the config is not a local file (a hub id or a single-file checkpoint): then a
        layout's ``level`` is checked after loading, as before.
        """
        try:
            location = Path(check_location(self.options.model, what="SD 1.5 model", base_dir=base_dir))
            config = json.loads((location / "unet" / "config.json").read_text(encoding="utf-8"))
            down, up = list(config["down_block_types"]), list(config["up_block_types"])
        except (OSError, ValueError, KeyError, TypeError, CheckpointError):
            return None
        levels = {i for i, kind in enumerate(down) if "CrossAttn" in kind}
        levels |= {len(up) - 1 - j for j, kind in enumerate(up) if "CrossAttn" in kind}
        if "CrossAttn" in str(config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
            levels.add(len(down) - 1)
        return tuple(sorted(levels))

    def footprint(self, spec: EditSpec, *, device: str | None = None) -> ModelFootprint | None:
        """The models' sizes and shapes from their configs and safetensors headers, no weights loaded
        (:class:`~stmod.core.protocols.DescribesFootprint`); a hub id is read from the HF cache only."""
        import importlib.util

        from stmod.core.budget.job import read_footprint

        target = torch.device(device) if device else self.device
        model = self.options.model
        if model.endswith((".safetensors", ".ckpt")):  # configs only (parameters unknown), if given
            model = self.options.config or ""
        folder = _local_folder(model, spec.base_dir) if model else None
        if folder is None:
            return None
        nets = tuple(_local_folder(self.controlnet_location(c.annotator.name, c.model), spec.base_dir)
                     or Path("/nonexistent") for c in spec.control)
        triton = target.type == "cuda" and importlib.util.find_spec("triton") is not None
        return read_footprint(folder, nets, device="cpu" if target.type == "cpu" else "cuda",
                              dtype_bytes=resolve_dtype(self.options.dtype, target).itemsize,
                              vae_batch=self.options.vae_batch, vae_tiling=self.options.vae_tiling,
                              cpu_offload=self.options.cpu_offload, kernel="triton" if triton else "two-pass")

    # -- loading ----------------------------------------------------------------------------------

    def load(self, controlnets: Sequence[str] = (), base_dir: Path | None = None) -> None:
        """Load the model and the given ControlNet locations (idempotent per location)."""
        if self.unet is None:
            self._load_model(base_dir)
        for location in controlnets:
            if location not in self.controlnets:
                from diffusers import ControlNetModel

                resolved = check_location(location, what="ControlNet", base_dir=base_dir)
                try:
                    net = ControlNetModel.from_pretrained(resolved, torch_dtype=self.dtype)
                except OSError as exc:
                    raise CheckpointError(location, f"cannot load the ControlNet: {_first_line(exc)}") from exc
                self.controlnets[location] = self._place(embed_condition_once(net.eval().requires_grad_(False)),
                                                         "denoiser")

    def _load_model(self, base_dir: Path | None) -> None:
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel

        location = check_location(self.options.model, what="SD 1.5 model",
                                  subfolders=("unet", "vae", "text_encoder", "tokenizer", "scheduler"), base_dir=base_dir)
        try:
            if location.endswith((".safetensors", ".ckpt")):
                pipe = StableDiffusionPipeline.from_single_file(
                    location, config=self.options.config, torch_dtype=self.dtype,
                    safety_checker=None, requires_safety_checker=False)
                vae, unet, text_encoder = pipe.vae, pipe.unet, pipe.text_encoder
                self.tokenizer, scheduler_config = pipe.tokenizer, pipe.scheduler.config
            else:
                vae = AutoencoderKL.from_pretrained(location, subfolder="vae", torch_dtype=self.dtype)
                unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", torch_dtype=self.dtype)
                text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", torch_dtype=self.dtype)
                self.load_tokenizer(base_dir)
                scheduler_config = DDIMScheduler.from_pretrained(location, subfolder="scheduler").config
        except OSError as exc:
            raise CheckpointError(self.options.model, f"cannot load the model: {_first_line(exc)}") from exc
        refuse_unrunnable(self.options.model, scheduler_config, unet.config)
        if self.options.vae_tiling:
            vae.enable_tiling()
        self.vae, self.unet, self.text_encoder = (
            self._place(m.eval().requires_grad_(False), group)
            for m, group in ((vae, "vae"), (unet, "denoiser"), (text_encoder, "text")))
        self.scheduler_config = scheduler_config
        log.info("loaded %s on %s (%s)", self.options.model, self.device, self.dtype)

    def _place(self, module: torch.nn.Module, group: str) -> torch.nn.Module:
        """``module`` on the device, or, with ``cpu_offload``, on the CPU under an accelerate offload hook."""
        if self.offload is None and self.options.cpu_offload and self._can_offload():
            from stmod.backbones.offload import ModelOffload

            self.offload = ModelOffload(self.device)
        if self.offload is None:
            return module.to(self.device)
        self.offload.add(module, group)
        return module

    def _can_offload(self) -> bool:
        if self.device.type != "cpu":
            return True
        if not self._offload_warned:
            log.warning("cpu_offload: the models run on the CPU, so there is nothing to offload; ignored")
            self._offload_warned = True
        return False

    def enable_model_cpu_offload(self, device: str | torch.device | None = None) -> None:
        """Keep the models on the CPU; each moves to ``device`` (default: this backbone's) when it runs, through
        accelerate's hooks (:mod:`stmod.backbones.offload`). On the CPU there is nothing to offload: a warning."""
        if device is not None:
            self.device = torch.device(device)
        self.options = attrs.evolve(self.options, cpu_offload=True)
        if self._can_offload():
            from stmod.backbones.offload import ModelOffload

            self._attach_offload(ModelOffload(self.device))

    def _attach_offload(self, offload: Any) -> None:
        """Put the loaded models under ``offload`` (a :class:`~stmod.backbones.offload.ModelOffload`; tests
        pass one whose device is the CPU, to run the hooks where there is no GPU)."""
        if self.offload is not None:
            self.offload.remove()
        self.offload = offload
        for module, group in self._models_by_group():
            offload.add(module, group)

    def _models_by_group(self) -> list[tuple[torch.nn.Module, str]]:
        models = [(self.text_encoder, "text"), (self.vae, "vae"), (self.unet, "denoiser")]
        models += [(net, "denoiser") for net in self.controlnets.values()]
        return [(m, g) for m, g in models if m is not None]

    def remove_all_hooks(self) -> None:
        """Take the offload hooks off (diffusers' name); the models are then moved to the device."""
        if self.offload is None:
            return
        self.offload.remove()
        self.offload = None
        self.options = attrs.evolve(self.options, cpu_offload=False)
        for module, _ in self._models_by_group():
            module.to(self.device)

    # -- model calls -------------------------------------------------------------------------------

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_scheduler_config(_loaded(self.scheduler_config, "the scheduler config"))

    def attention_models(self) -> dict[str, torch.nn.Module]:
        """Models whose attention a modulator may replace: ``unet`` and ``controlnet.<i>``."""
        models = {"unet": _loaded(self.unet, "the UNet")}
        models.update({f"controlnet.{i}": net for i, net in enumerate(self.controlnets.values())})
        return models

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP embeddings ``(len(prompts), 77, D)`` of prompts padded to 77 tokens."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        encoder = _loaded(self.text_encoder, "the text encoder")
        return encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``float32 (F, 3, H, W)`` in [-1, 1] → latents ``(F, 4, H/8, W/8)`` (distribution mean × scale)."""
        scale = self.vae.config.scaling_factor
        out = []
        for chunk in frames.split(self.options.vae_batch):
            dist = self.vae.encode(chunk.to(self.device, self.dtype)).latent_dist
            out.append(dist.mean * scale)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, progress: Callable[[int], Any] | None = None) -> torch.Tensor:
        """Latents → ``float32 (F, 3, H, W)`` in [-1, 1] on the CPU; ``progress(n)`` after each n frames."""
        scale = self.vae.config.scaling_factor
        out = []
        for chunk in latents.split(self.options.vae_batch):
            out.append(self.vae.decode(chunk.to(self.device, self.dtype) / scale).sample.float().clamp(-1, 1).cpu())
            if progress is not None:
                progress(len(chunk))
        if self.offload is not None:  # the edit's last model call: free the device (diffusers' maybe_free_model_hooks)
            self.offload.offload_all()
        return torch.cat(out)

    def control_tensor(self, images: np.ndarray, repeat: int = 1) -> torch.Tensor:
        """``uint8 (F, H, W, 3)`` control images → ``(repeat·F, 3, H, W)`` in [0, 1] on the device."""
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        return tensor.repeat(repeat, 1, 1, 1).to(self.device, self.dtype)

    @torch.no_grad()
    def predict_noise(
        self,
        latents: torch.Tensor,
        timestep: int,
        text: torch.Tensor,
        *,
        controls: Sequence[tuple[str, Control]] = (),
        control_text: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """ε for a batch of latents ``(B, 4, h, w)`` with text ``(B, 77, D)``.

        ``controls`` pairs a loaded ControlNet location with its condition; residuals of several
        ControlNets add up. ``control_text`` is the ControlNets' text (defaults to ``text``).
        """
        t = torch.tensor(timestep, device=self.device)
        latents = latents.to(self.device, self.dtype)
        down, mid = None, None
        for location, control in controls:
            d, m = self.controlnets[location](
                latents, t, encoder_hidden_states=control_text if control_text is not None else text,
                controlnet_cond=control.images, conditioning_scale=control.scale,
                cross_attention_kwargs=cross_attention_kwargs, return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        unet = _loaded(self.unet, "the UNet")
        return unet(latents, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False)[0]


def refuse_unrunnable(location: str, scheduler_config: Any, unet_config: Any) -> None:
    """Refuse, in one line naming the key and its value, a checkpoint ``sd15`` would run wrongly: a scheduler
    that does not predict ε (v-prediction: SD 2.x 768) or a UNet that is not SD-1.5-shaped (SDXL's added
    time/text embedding, latents other than 4 channels). Loading used to succeed and give wrong pictures."""
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise CheckpointError(location, f"scheduler prediction_type: {prediction!r}; sd15 runs ε-prediction models "
                                        "only (an SD 2.x v-prediction checkpoint needs a backbone that predicts v)")
    extra = unet_config.get("addition_embed_type")
    if extra is not None:
        raise CheckpointError(location, f"unet addition_embed_type: {extra!r}; the UNet is not SD-1.5-shaped "
                                        "(SDXL and its kin are not supported by sd15)")
    for key in ("in_channels", "out_channels"):
        if unet_config.get(key) != 4:
            raise CheckpointError(location, f"unet {key}: {unet_config.get(key)!r}; sd15 runs UNets on 4-channel "
                                            "latents (SD-1.5-shaped) only")


def embed_condition_once(net: torch.nn.Module) -> torch.nn.Module:
    """Make ``net``'s conditioning embedding (a CNN over the full-size control images) run once per images tensor.

    The embedding depends on the images only, and an edit passes the same images tensor at every step
    and CFG branch (``EditSession.controls`` caches it), so recomputing it each call is wasted work
    (23 % of model time on the tiny model). The cached output is reused while the same tensor comes
    back unmodified (same object, same version counter) without autograd; it is dropped when that
    tensor is freed. ``state_dict`` is unchanged (only ``forward`` of the instance is wrapped).
    """
    embedding = cast(torch.nn.Module, net.controlnet_cond_embedding)  # a ControlNet's conditioning CNN
    inner = embedding.forward
    last: dict[str, Any] = {}

    def forward(cond: torch.Tensor) -> torch.Tensor:
        ref = last.get("ref")
        if torch.is_grad_enabled() or ref is None or ref() is not cond or last["version"] != cond._version:
            last.clear()
            value = inner(cond)
            if not torch.is_grad_enabled():
                last.update(ref=weakref.ref(cond, lambda _: last.clear()), version=cond._version, value=value)
            return value
        return last["value"]

    embedding.forward = forward
    return net


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
