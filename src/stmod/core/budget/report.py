"""The estimate as text: a short table of the peak's parts and of the phases (``stmod-run check``, the UI)."""

from __future__ import annotations

from stmod.core.budget.constants import FIT_MARGIN
from stmod.core.budget.estimate import Estimate
from stmod.core.budget.fit import Suggestion

__all__ = ["gib", "estimate_lines", "warning_lines"]


def gib(value: float | None) -> str:
    """GiB to two decimals, small values to three significant digits."""
    if value is None:
        return "unknown"
    value /= 2**30
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def estimate_lines(found: Estimate, *, verbose: bool = False) -> list[str]:
    """The prediction: a headline, then one line per phase (peak, seconds); ``verbose`` adds the parts of
    the peak and the attention working set."""
    memory = "GPU memory" if found.device != "cpu" else "memory (RSS)"
    peak = found.peak_phase
    rates = "rates measured on the CPU (docs/memory.md)" if found.measured_rates else \
        "GPU rates and memory constants unmeasured until bench/gpu.sh runs on a GPU (docs/memory.md)"
    lines = [f"predicted peak {memory}: {gib(found.peak_bytes)} GiB in {peak.name}, on {found.device} at "
             f"{8 * found.dtype_bytes}-bit; time ≈ {_seconds(found.seconds)} s ({rates})"]
    if verbose:
        lines.append(f"  {'part of the peak':<58} {'GiB':>8}")
        lines += [f"  {part.name:<58} {gib(part.bytes):>8}" for part in peak.parts]
    lines.append(f"  {'phase':<30} {'peak GiB':>10} {'seconds':>9}")
    lines += [f"  {p.name:<30} {gib(p.peak_bytes):>10} {_seconds(p.seconds):>9}" for p in found.phases]
    lines.append(f"  {'total':<30} {gib(found.peak_bytes):>10} {_seconds(found.seconds):>9}")
    if found.attention and verbose:
        levels = ", ".join(f"level {level}: {gib(size)}" for level, size in found.attention)
        lines.append(f"  self-attention working set in denoising (GiB, one level at a time): {levels}")
    return lines


def warning_lines(found: Estimate, free_bytes: float, fixes: list[Suggestion]) -> list[str]:
    """The not-fit warning: the prediction against the free GPU memory, and the changes that fit."""
    lines = [f"warning: predicted peak {gib(found.peak_bytes)} GiB exceeds the free GPU memory "
             f"({gib(free_bytes)} GiB, of which {100 * (1 - FIT_MARGIN):.0f} % is kept free); this job would "
             "likely run out of memory"]
    if not fixes:
        return [*lines, "  no single change fits (fewer frames, window attention, --cpu-offload, --vae-tiling); "
                        "combine them or use a larger GPU"]
    lines.append("  each of these fits on its own (re-estimated peak):")
    lines += [f"    {fix.change}: {gib(fix.estimate.peak_bytes)} GiB" for fix in fixes]
    return lines
