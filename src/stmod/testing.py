"""Helpers for testing stmod plugins (and stmod itself).

* :func:`fresh_plugin_manager` — an isolated plugin manager with your plugin registered, no entry
  points loaded, nothing global touched.
* :func:`run_cli` — run ``stmod-run`` in-process and capture exit status, stdout and stderr.
* Stand-in components that satisfy the protocols without any model: :class:`IdentityBackbone`,
  :class:`ConstantLayoutProvider`, :class:`PassThroughAnnotator`, :class:`NullModulator`. This
  module is itself a plugin that registers them (``identity``, ``full-frame``, ``passthrough``,
  ``null``): ``stmod-run -p stmod.testing check job.yaml``.

Example::

    from stmod.testing import fresh_plugin_manager
    import my_plugin

    def test_registers_my_blender():
        pm = fresh_plugin_manager(my_plugin)
        assert "mine" in pm.registry.components("blender")
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from stmod import hookimpl
from stmod.core.features import InversionFeatures
from stmod.core.sampling import NoiseSchedule
from stmod.core.types import EditSpec, LayoutMasks, LayoutRequest, ModulationInput
from stmod.plugins.manager import StmodPluginManager, make_plugin_manager

if TYPE_CHECKING:
    from stmod.core.registry import ComponentRegistrar

__all__ = [
    "fresh_plugin_manager",
    "CliResult",
    "run_cli",
    "IdentityBackbone",
    "ConstantLayoutProvider",
    "PassThroughAnnotator",
    "NullModulator",
    "layout_request",
]


def fresh_plugin_manager(
    *plugins: object,
    plugin_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    load_entrypoints: bool = False,
) -> StmodPluginManager:
    """A new plugin manager with the built-ins plus ``plugins`` (modules or objects with hookimpls).

    Entry points are not loaded unless ``load_entrypoints`` is true, and the process environment is
    ignored unless passed as ``env``, so tests do not depend on what else is installed.
    """
    extra = {getattr(p, "__name__", f"test-plugin-{i}"): p for i, p in enumerate(plugins)}
    return make_plugin_manager(plugin_args=plugin_args, env=env or {}, load_entrypoints=load_entrypoints,
                               extra_plugins=extra)


def layout_request(spec: EditSpec, *, features: InversionFeatures | None = None) -> LayoutRequest:
    """The :class:`~stmod.LayoutRequest` the editor builds for ``spec``: its clip read, frames selected,
    resized and cropped (reads the video; loads no model). ``features`` stand in for the inversion
    features a provider with a ``feature_request`` would get."""
    from stmod.core.io.video import load_video

    clip = load_video(spec.video)
    return LayoutRequest(spec=spec, frame_indices=clip.indices, source_size=clip.source_size,
                         transform=clip.transform, frames=clip.frames, features=features)


@attrs.frozen
class CliResult:
    """Outcome of :func:`run_cli`."""

    exit_code: int
    stdout: str
    stderr: str


def run_cli(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> CliResult:
    """Run ``stmod-run argv`` in this process; ``env`` replaces ``os.environ`` for plugin selection."""
    from stmod.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv), stdout=out, stderr=err, env=env)
    return CliResult(exit_code=code, stdout=out.getvalue(), stderr=err.getvalue())


class IdentityBackbone:
    """A backbone without a model: latents are the frames average-pooled by 8 (3 channels + a zero).

    ``decode(encode(x))`` is the nearest-upsampled block average of ``x``; ε is always zero, so DDIM
    inversion and denoising are exact and an edit reproduces the (pooled) source. It has no tokenizer,
    so regions get no text tokens. Useful to test layouts, blending and orchestration quickly.
    """

    scale_factor = 8
    model_id = "identity"
    tokenizer = None

    def __init__(self) -> None:
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.loaded = False

    def check(self, spec: EditSpec) -> None:
        return None

    def load_tokenizer(self, base_dir: Any = None) -> None:
        return None

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        return model or annotator

    def load(self, controlnets: Sequence[str] = (), base_dir: Any = None) -> None:
        self.loaded = True

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(frames.float(), self.scale_factor)
        return torch.cat([pooled, torch.zeros_like(pooled[:, :1])], dim=1)

    def decode(self, latents: torch.Tensor, *, progress: Any = None) -> torch.Tensor:
        return F.interpolate(latents[:, :3].float(), scale_factor=self.scale_factor, mode="nearest").clamp(-1, 1)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.zeros(len(prompts), 77, 8)

    def predict_noise(self, latents: torch.Tensor, timestep: int, text: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(latents)

    def noise_schedule(self) -> NoiseSchedule:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # SD 1.5's schedule
        alphas = torch.cumprod(1 - betas, 0)
        return NoiseSchedule(alphas_cumprod=alphas, clean_alpha=float(alphas[0]), steps_offset=1)

    def attention_models(self) -> dict[str, torch.nn.Module]:
        return {}

    def control_tensor(self, images: np.ndarray, repeat: int = 1) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        return tensor.repeat(repeat, 1, 1, 1)


class ConstantLayoutProvider:
    """Serves fixed masks: ``masks`` (a :class:`LayoutMasks`) or, if ``None``, full-frame regions."""

    feature_request = None

    def __init__(self, masks: LayoutMasks | None = None) -> None:
        self.masks = masks

    def check(self, spec: EditSpec, regions: Sequence[str], clip: object) -> None:
        if self.masks is not None:
            self.masks.select(list(regions))

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        if self.masks is not None:
            return self.masks.select(list(regions))
        frames = np.asarray(request.frames)
        shape = (frames.shape[0], len(regions), frames.shape[1], frames.shape[2])
        return LayoutMasks(masks=torch.ones(shape, dtype=torch.bool), names=tuple(regions))


class PassThroughAnnotator:
    """Uses the frames themselves as control images."""

    def check(self, spec: EditSpec) -> None:
        return None

    def annotate(self, request: LayoutRequest) -> np.ndarray:
        return np.array(request.frames, dtype=np.uint8, copy=True)


class NullModulator:
    """Installs nothing and passes no per-call arguments: plain attention everywhere."""

    def prepare(self, request: ModulationInput) -> None:
        self.request = request

    @contextlib.contextmanager
    def install(self, model: torch.nn.Module, *, role: str) -> Iterator[None]:
        yield

    def call_kwargs(self, *, phase: str, step_index: int, timestep: int,
                    branches: Sequence[str] = ("uncond", "cond")) -> dict[str, Any]:
        return {}


# ``stmod-run -p stmod.testing ...`` registers the stand-ins, so a job can be checked or orchestrated
# end to end without any model.


@hookimpl
def stmod_register_backbones(register: ComponentRegistrar) -> None:
    register.add("identity", IdentityBackbone, summary="stand-in backbone without a model (stmod.testing)")


@hookimpl
def stmod_register_modulators(register: ComponentRegistrar) -> None:
    register.add("null", NullModulator, summary="stand-in modulator: plain attention (stmod.testing)")


@hookimpl
def stmod_register_layout_providers(register: ComponentRegistrar) -> None:
    register.add("full-frame", ConstantLayoutProvider,
                 summary="stand-in layout: every region covers the whole frame (stmod.testing)")


@hookimpl
def stmod_register_annotators(register: ComponentRegistrar) -> None:
    register.add("passthrough", PassThroughAnnotator, summary="stand-in annotator: frames as control (stmod.testing)")
