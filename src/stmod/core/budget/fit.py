"""Changes that would make a job fit a GPU, each re-estimated: fewer frames, ``window`` attention,
CPU offload, VAE tiling, a smaller VAE batch.

Only changes whose own estimate fits (peak ≤ :data:`~stmod.core.budget.constants.FIT_MARGIN` × free
memory) are suggested; each is one change on its own, named as the job key and the flag that make it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from attrs import frozen

from stmod.core.budget.constants import FIT_MARGIN, DeviceRates
from stmod.core.budget.estimate import Estimate, estimate
from stmod.core.budget.job import JobShape, ModelFootprint, focus_of

if TYPE_CHECKING:
    from stmod.core.types import ModulationConfig

__all__ = ["Suggestion", "fits", "suggestions"]

#: Window lengths tried for ``temporal: window``, largest first (the first that fits is suggested).
WINDOWS = (24, 16, 12, 8, 6, 4, 2)


@frozen
class Suggestion:
    """One change (``change``: the job key and the flag) and the estimate with it."""

    change: str
    estimate: Estimate


def fits(found: Estimate, free_bytes: float) -> bool:
    """Whether ``found``'s peak is known and within :data:`FIT_MARGIN` of ``free_bytes``."""
    peak = found.peak_bytes
    return peak is not None and peak <= FIT_MARGIN * free_bytes


def _fewest_frames(job: JobShape, models: ModelFootprint, modulation: ModulationConfig, free: float,
                   rates: DeviceRates | None) -> Suggestion | None:
    """The largest frame count below the job's that fits (the peak grows with frames: bisection); with a
    causal video VAE only counts it takes (``1 + r·k``)."""
    counts = [f for f in range(1, job.frames) if (f - 1) % job.time_ratio == 0]
    low, high, best = 0, len(counts) - 1, None
    while low <= high:
        middle = (low + high) // 2
        found = estimate(job.with_frames(counts[middle], modulation), models, rates)
        if fits(found, free):
            low, best = middle + 1, (counts[middle], found)
        else:
            high = middle - 1
    if best is None:
        return None
    return Suggestion(f"video.frames: {best[0]} (--frames {best[0]})", best[1])


def _window(job: JobShape, models: ModelFootprint, modulation: ModulationConfig, free: float,
            rates: DeviceRates | None) -> Suggestion | None:
    if modulation.temporal in ("per-frame", "sparse-causal"):
        return None
    for length in (w for w in WINDOWS if w < job.latent_frames):  # windows count latent frames
        config = attrs.evolve(modulation, temporal="window", window_frames=length,
                              window_overlap=min(modulation.window_overlap, length // 4),
                              anchor_frames=min(modulation.anchor_frames, length // 2))
        found = estimate(attrs.evolve(job, focus=focus_of(config, job.latent_frames)), models, rates)
        if fits(found, free):
            return Suggestion(f"modulation: {{temporal: window, window_frames: {length}, window_overlap: "
                              f"{config.window_overlap}, anchor_frames: {config.anchor_frames}}}", found)
    return None


def suggestions(job: JobShape, models: ModelFootprint, modulation: ModulationConfig, free_bytes: float,
                rates: DeviceRates | None = None) -> list[Suggestion]:
    """The single changes whose estimate fits in ``free_bytes``, each with that estimate."""
    found = [_fewest_frames(job, models, modulation, free_bytes, rates),
             _window(job, models, modulation, free_bytes, rates)]
    for change, changed in (("backbone.cpu_offload: true (--cpu-offload)", attrs.evolve(models, cpu_offload=True)),
                            ("backbone.vae_tiling: true (--vae-tiling)", attrs.evolve(models, vae_tiling=True))):
        if changed != models:
            result = estimate(job, changed, rates)
            found.append(Suggestion(change, result) if fits(result, free_bytes) else None)
    for batch in (b for b in (4, 2, 1) if b < min(models.vae_batch, job.frames)):
        result = estimate(job, attrs.evolve(models, vae_batch=batch), rates)
        if fits(result, free_bytes):
            found.append(Suggestion(f"backbone.vae_batch: {batch}", result))
            break
    return [s for s in found if s is not None]
