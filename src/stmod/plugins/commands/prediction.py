"""The memory and time prediction that ``stmod-run check`` (and the UI) print, and the not-fit warning.

The numbers come from :mod:`stmod.core.budget` (no model loads); this module asks the backbone for its
footprint and, on CUDA, torch for the free GPU memory (or takes it from ``--gpu-memory``).
"""

from __future__ import annotations

from stmod.core.budget.estimate import Estimate, estimate
from stmod.core.budget.fit import fits, suggestions
from stmod.core.budget.job import JobShape, ModelFootprint, job_shape
from stmod.core.budget.report import estimate_lines, warning_lines
from stmod.core.protocols import DescribesFootprint
from stmod.core.types import EditSpec

__all__ = ["free_gpu_bytes", "predict", "prediction_lines"]


def free_gpu_bytes(device: str) -> float | None:
    """Free memory of the CUDA device ``device`` now (``torch.cuda.mem_get_info``), or ``None`` without CUDA."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return float(torch.cuda.mem_get_info(torch.device(device))[0])


def predict(spec: EditSpec, backbone: object, frames: int, *,
            device: str | None = None) -> tuple[JobShape, ModelFootprint, Estimate] | None:
    """``(job shape, footprint, estimate)`` of ``spec`` over ``frames`` frames, or ``None`` when the
    backbone cannot tell its models (no :class:`DescribesFootprint`, or nothing readable)."""
    if not isinstance(backbone, DescribesFootprint):
        return None
    models = backbone.footprint(spec, device=device)
    if models is None:
        return None
    job = job_shape(spec, frames, time_ratio=models.time_ratio)
    return job, models, estimate(job, models)


def prediction_lines(spec: EditSpec, backbone: object, frames: int, *, gpu_memory_gib: float | None = None,
                     verbose: bool = False) -> list[str]:
    """The prediction (one line per phase; ``verbose``: the whole table) and, on a GPU it would not fit,
    the warning with the changes that fit.

    :param gpu_memory_gib: free GPU memory to plan for (GiB) instead of the visible device's; it
        also plans the job on CUDA when the backbone would run on the CPU here.
    """
    device = str(getattr(backbone, "device", "cpu"))
    planned = "cuda" if gpu_memory_gib is not None and not device.startswith("cuda") else None
    found = predict(spec, backbone, frames, device=planned)
    if found is None:
        return [f"predicted peak memory and time: unknown (backbone {spec.backbone.name!r} cannot tell its model "
                "sizes without loading them, e.g. a hub id that is not cached or a single file without a config: folder)"]
    job, models, result = found
    lines = estimate_lines(result, verbose=verbose)
    free = gpu_memory_gib * 2**30 if gpu_memory_gib is not None else free_gpu_bytes(planned or device)
    if result.device == "cuda" and free is not None and not fits(result, free):
        lines += warning_lines(result, free, suggestions(job, models, spec.modulation, free))
    return lines
