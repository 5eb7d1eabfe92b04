"""The ``pnp`` extension: the official VideoGrain code's plug-and-play feature injection.

During the inversion, forward hooks record the outputs of the official up-block places
(:mod:`.pnp_places`: resnet residual branches and self-attention ``to_q`` / ``to_k``); during the
first ``inject_step`` denoising steps the same hooks return the recorded tensors instead, so those
modules' outputs are the source clip's. ST-Layout's processor computes its scores from ``attn.to_q`` /
``attn.to_k``, so the modulated self layers modulate the injected ``QKᵀ``, as in the official code.

**Step pairing.** The official code calls the UNet on ``x_t`` at ``t`` in both loops; at 50 steps its
denoising step ``i`` (``t = 981 − 20i``, input ``x_{981−20i}``) gets the inversion's features from the
call at ``t = 961 − 20i``, whose input is ``x_{961−20i}``. stmod's inversion (``stmod.core.sampling.invert``)
moves ``x_{t−Δ} → x_t`` with ``ε`` from the call at timestep ``t`` on ``x_{t−Δ}`` (``Δ`` = 1000/steps):
its call at ``t = 981 − 20i`` — inversion step ``k = steps − 1 − i`` — sees ``x_{961−20i}``, the very latent
the official features come from, with the denoising step's own timestep. That is the pairing here:
denoising step ``i`` ↔ inversion step ``steps − 1 − i``, the call at the same timestep (checked when
injecting). It pairs every denoising step, the official code all but the last.

**CFG branches.** stmod's inversion runs the conditional branch (source prompt) only, so one branch
is recorded and injected into every branch of the denoising. The official inversion also runs the
unconditional branch (``""``) and injects each half into its own; the two agree exactly when the
source prompt is the unconditional text (most official configs: ``prompt: ''``).

**Cost.** Only the ``inject_step`` steps that are injected are recorded (the official code keeps all
49), in ``precision`` (float16: half of float32), one branch. With the inversion cache, each step is a
file ``step-NNN.pt`` in the extension's store beside the cache entry, written when recorded and read
when its step comes: memory holds one step. Without it, the records stay in RAM, under
``ram_budget_mb`` when given. SD 1.5 at 512² and 16 frames: 293.6 MB per step (official: 587 MB per
step, 28.8 GB for 49 steps in CPU RAM).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import attrs
import torch
from attrs import field, frozen, validators

from stmod.core.errors import InputError
from stmod.core.types import EditSpec, ExtensionInput, number
from stmod.plugins.extensions.pnp_places import OFFICIAL_PLACES, Place, find_places, place_bytes
from stmod.plugins.extensions.pnp_store import StepStore

__all__ = ["PnPOptions", "PnPExtension", "paired_inversion_step"]

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@frozen(kw_only=True)
class PnPOptions:
    """Options of the ``pnp`` extension."""

    #: denoising steps with index < inject_step get the source's features (official configs: 0–40)
    inject_step: int = number(10, low=0, high=1000)
    #: how the records are kept: float16 (half the bytes, the official code's autocast type) or float32
    precision: Literal["float16", "float32"] = field(default="float16", validator=validators.in_(tuple(_DTYPES)))
    #: without the inversion cache the records stay in RAM: refuse an edit whose records exceed this (MB)
    ram_budget_mb: float | None = number(None, low=1.0, high=float(2**30))


def paired_inversion_step(step_index: int, steps: int) -> int:
    """The inversion step whose recorded features denoising step ``step_index`` gets (module docs)."""
    return steps - 1 - step_index


@attrs.define
class _Record:
    step: int
    timestep: int
    pending: dict[str, torch.Tensor] = attrs.field(factory=dict)


@attrs.define
class _Inject:
    step: int
    features: dict[str, torch.Tensor]
    branches: int


class PnPExtension:
    """PnP feature injection (:class:`~stmod.core.protocols.Extension`).

    :ivar recorded: denoising step indices whose features this edit recorded (in inversion order).
    :ivar injected: denoising step indices that were injected.
    """

    def __init__(self, options: PnPOptions | None = None) -> None:
        self.options = options or PnPOptions()
        self._steps = 0
        self._request: ExtensionInput | None = None
        self._store = StepStore(None)
        self._places: list[Place] = []
        self._mode: _Record | _Inject | None = None
        self.recorded: list[int] = []
        self.injected: list[int] = []

    @property
    def injected_steps(self) -> int:
        """How many denoising steps are injected (``inject_step``, at most the edit's steps)."""
        return min(self.options.inject_step, self._steps)

    def check(self, spec: EditSpec) -> None:
        if self.options.inject_step > spec.steps:
            log.info("pnp: inject_step %d is more than the %d steps; every step is injected",
                     self.options.inject_step, spec.steps)

    def inversion_settings(self) -> Mapping[str, object]:
        # inject_step is not part of the key: entries are shared, and needs_inversion() asks for the
        # inversion again when a step this edit injects has no record yet
        places = {str(level): {"resnets": list(r), "attentions": list(a)} for level, (r, a) in OFFICIAL_PLACES.items()}
        return {"records": places, "precision": self.options.precision}

    def prepare(self, request: ExtensionInput) -> None:
        # the edit's step count comes with its request (check keeps no state: it may see another job)
        self._request, self._store, self._steps = request, StepStore(request.store), request.spec.steps
        self.recorded, self.injected = [], []

    def needs_inversion(self) -> bool:
        return not all(self._store.has(i) for i in range(self.injected_steps))

    @contextlib.contextmanager
    def install(self, model: torch.nn.Module, *, role: str) -> Iterator[None]:
        """Forward hooks on the UNet's PnP places inside the block (nothing on a ControlNet)."""
        if role != "unet" or self.injected_steps == 0:
            yield
            return
        self._places = find_places(model)
        self._check_budget(model)
        handles = [place.module.register_forward_hook(self._hook(place.name)) for place in self._places]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._mode = None

    def step(self, *, phase: str, step_index: int, timestep: int, branches: tuple[str, ...]) -> None:
        self._mode = None
        if phase == "invert":
            paired = paired_inversion_step(step_index, self._steps)  # the relation is its own inverse
            if paired < self.injected_steps:
                self._mode = _Record(paired, timestep)
        elif step_index < self.injected_steps:
            self._mode = self._load(step_index, timestep, len(branches))
            self.injected.append(step_index)

    def _load(self, step_index: int, timestep: int, branches: int) -> _Inject:
        recorded_at, features = self._store.load(step_index)
        if recorded_at != timestep:
            raise InputError("extensions.pnp.inject_step", self.options.inject_step,
                             f"denoising step {step_index} runs at timestep {timestep} but its features were "
                             f"recorded at {recorded_at}; inversion and denoising must use the same schedule")
        device = self._request.device if self._request is not None else None
        return _Inject(step_index, {name: t.to(device) for name, t in features.items()}, branches)

    def _hook(self, name: str) -> Callable[[torch.nn.Module, object, torch.Tensor], torch.Tensor | None]:
        def hook(module: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor | None:
            mode = self._mode
            if isinstance(mode, _Record):
                self._record(mode, name, output)
            elif isinstance(mode, _Inject):
                return self._inject(mode, name, output)
            return None

        return hook

    def _record(self, mode: _Record, name: str, output: torch.Tensor) -> None:
        kept = output.detach().to("cpu", _DTYPES[self.options.precision], copy=True)
        if not torch.isfinite(kept).all():
            raise InputError("extensions.pnp.precision", self.options.precision,
                             f"{name} does not fit in {self.options.precision} at timestep {mode.timestep}; "
                             "use precision: float32")
        mode.pending[name] = kept
        if len(mode.pending) == len(self._places):  # the UNet call has passed every place: the step is complete
            self._store.save(mode.step, mode.timestep, mode.pending)
            self.recorded.append(mode.step)
            self._mode = None

    def _inject(self, mode: _Inject, name: str, output: torch.Tensor) -> torch.Tensor:
        stored = mode.features.get(name)
        if stored is None or tuple(output.shape) != (mode.branches * stored.shape[0], *stored.shape[1:]):
            have = "nothing" if stored is None else f"{tuple(stored.shape)} per CFG branch"
            raise InputError("extensions.pnp", name, f"the recorded features of denoising step {mode.step} are "
                             f"{have}, the UNet computes {tuple(output.shape)} for {mode.branches} branch(es): "
                             "the clip's frames or size differ from the inversion's; run the inversion again")
        return torch.cat([stored.to(output.dtype)] * mode.branches)

    def _check_budget(self, model: torch.nn.Module) -> None:
        """Without a store folder every record is held in RAM: refuse up front what exceeds the budget."""
        budget, request = self.options.ram_budget_mb, self._request
        if budget is None or request is None or request.store is not None:
            return
        per_step = place_bytes(model, self._places, latent_size=request.latent_size, frames=request.num_frames,
                               element_size=_DTYPES[self.options.precision].itemsize)
        needed = per_step * self.injected_steps / 2**20
        if needed > budget:
            raise InputError("extensions.pnp.ram_budget_mb", budget,
                             f"the {self.injected_steps} injected steps' features need {needed:.1f} MB in RAM "
                             f"({per_step / 2**20:.1f} MB per step); raise the budget, lower inject_step, use "
                             "the inversion cache (features then go to disk), or fewer frames")
