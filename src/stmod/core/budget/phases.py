"""The parts of an estimate every backbone kind shares: named shares of a peak, phases, the estimate,
and the weights, the load phase and the offload transfers (:mod:`.estimate` for UNets,
:mod:`.dit_estimate` for video transformers)."""

from __future__ import annotations

from collections.abc import Callable

from attrs import frozen

from stmod.core.budget.constants import DeviceRates
from stmod.core.budget.job import JobShape, ModelFootprint
from stmod.core.budget.sizes import Component

__all__ = ["Part", "PhaseEstimate", "Estimate", "weights_of", "resident_parts", "load_phase", "transfer_seconds",
           "edit_phases"]


@frozen
class Part:
    """A named share of a peak, in bytes (``None``: the backbone could not tell)."""

    name: str
    bytes: float | None


@frozen
class PhaseEstimate:
    """One phase: its peak (bytes), what it is made of, and its seconds (``None``: unknown)."""

    name: str
    parts: tuple[Part, ...]
    seconds: float | None

    @property
    def peak_bytes(self) -> float | None:
        known = [p.bytes for p in self.parts if p.bytes is not None]
        return None if len(known) < len(self.parts) else float(sum(known))


@frozen(kw_only=True)
class Estimate:
    """Predicted peak memory (by part, of the largest phase) and seconds per phase of one edit.

    :ivar attention: ``(level, bytes)`` of the denoising self-attention working set per UNet level
        (one level at a time; the largest is inside the peak when attention is what peaks).
    """

    device: str
    dtype_bytes: int
    phases: tuple[PhaseEstimate, ...]
    attention: tuple[tuple[int, float], ...]
    measured_rates: bool

    @property
    def peak_phase(self) -> PhaseEstimate:
        """The phase with the largest known peak (the first one when none is known)."""
        known = [p for p in self.phases if p.peak_bytes is not None]
        return max(known, key=lambda p: p.peak_bytes or 0.0) if known else self.phases[0]  # known: never None

    @property
    def peak_bytes(self) -> float | None:
        """The edit's peak, ``None`` when a part of any phase is unknown."""
        if any(p.peak_bytes is None for p in self.phases):
            return None
        return self.peak_phase.peak_bytes

    @property
    def seconds(self) -> float | None:
        known = [p.seconds for p in self.phases if p.seconds is not None]
        return None if len(known) < len(self.phases) else float(sum(known))


def _params_bytes(component: Component | None, item: int) -> float | None:
    return None if component is None or component.params is None else float(component.params * item)


def weights_of(models: ModelFootprint) -> dict[str, float | None]:
    item = models.dtype_bytes
    found = {models.denoiser: _params_bytes(models.unet, item),
             "vae": _params_bytes(models.vae, models.vae_dtype_bytes or item),
             "text encoder": _params_bytes(models.text_encoder, item)}
    for i, net in enumerate(models.controlnets):
        found[f"controlnet {i}" if len(models.controlnets) > 1 else "controlnet"] = _params_bytes(net, item)
    return found


def resident_parts(models: ModelFootprint, rates: DeviceRates, weights: dict[str, float | None],
              running: tuple[str, ...]) -> list[Part]:
    """Weights on the device during a phase (``cpu_offload`` on a GPU: only the ``running`` models)."""
    offload = models.cpu_offload and models.device != "cpu"
    names = [n for n in weights if not offload or n.split(" ")[0] in running or n in running]
    if offload and names:  # one model on the device at a time: the largest of those that run
        known = [weights[n] for n in names]
        largest = max(names, key=lambda n: weights[n] or 0.0)
        parts = [Part(f"weights: {largest} (offloaded, one at a time)", None if None in known else weights[largest])]
    else:
        parts = [Part(f"weights: {n}", weights[n]) for n in names]
    if rates.runtime_bytes:
        parts.append(Part("runtime (libraries)", rates.runtime_bytes))
    return parts


def load_phase(models: ModelFootprint, rates: DeviceRates, weights: dict[str, float | None]) -> PhaseEstimate:
    """Loading, in the backbone's order: each component's file is read into memory whole and converted
    to the run's dtype, so the moment after the largest file is read, with what is loaded before it,
    peaks (on the CPU; on a GPU the weights are moved there once converted: weights only)."""
    components = [("vae", models.vae), (models.denoiser, models.unet), ("text encoder", models.text_encoder)]
    components += [(name, net) for name, net in zip([n for n in weights if n.startswith("controlnet")],
                                                      models.controlnets)]
    files = sum(c.file_bytes for _, c in components if c is not None)
    seconds = files / rates.load_bytes
    if models.device != "cpu" or not rates.load_copy:
        offloaded = models.cpu_offload and models.device != "cpu"  # loaded into host memory, not the GPU
        resident = [] if offloaded else resident_parts(models, rates, weights, tuple(weights))
        return PhaseEstimate("load", tuple(resident), seconds)
    loaded, best, reading = 0.0, -1.0, ("", 0.0, 0.0)
    for name, component in components:
        size = (component.file_bytes if component is not None else 0) * rates.load_copy
        if loaded + size + (weights[name] or 0.0) > best:
            best, reading = loaded + size + (weights[name] or 0.0), (name, loaded, size)
        loaded += weights[name] or 0.0
    name, before, size = reading
    parts = [Part("weights loaded before it", None if None in weights.values() else before),
             Part(f"weights: {name}", weights[name]), Part(f"reading {name} (its file, while converted)", size)]
    if rates.runtime_bytes:
        parts.append(Part("runtime (libraries)", rates.runtime_bytes))
    return PhaseEstimate("load", tuple(parts), seconds)


def transfer_seconds(models: ModelFootprint, rates: DeviceRates, running: tuple[str, ...]) -> float:
    """Seconds moving ``running`` models to the device and back once (``cpu_offload`` on a GPU)."""
    if not models.cpu_offload or models.device == "cpu" or not rates.transfer_bytes:
        return 0.0
    weights = weights_of(models)
    moved = sum(v or 0.0 for n, v in weights.items() if n.split(" ")[0] in running)
    return 2.0 * moved / rates.transfer_bytes


def edit_phases(job: JobShape, models: ModelFootprint, rates: DeviceRates, weights: dict[str, float | None], *,
                denoiser: tuple[str, ...], vae_phase: Callable[[str, list[Part], bool], PhaseEstimate],
                denoiser_phase: Callable[[str, list[Part]], PhaseEstimate]) -> tuple[PhaseEstimate, ...]:
    """The phases of one edit in the order they run — load, encode, inversion, direct inversion (when the
    job asks for it), denoising, decoding — whatever the denoising network: ``vae_phase(name, resident,
    decoder)`` and ``denoiser_phase(name, resident)`` estimate one phase given the parts resident then."""
    on_vae = resident_parts(models, rates, weights, ("vae",))
    on_denoiser = resident_parts(models, rates, weights, denoiser)
    steps = ("inversion", *(("direct inversion",) if job.direct_inversion else ()), "denoising")
    return (load_phase(models, rates, weights), vae_phase("encode", on_vae, False),
            *(denoiser_phase(name, on_denoiser) for name in steps), vae_phase("decoding", on_vae, True))
