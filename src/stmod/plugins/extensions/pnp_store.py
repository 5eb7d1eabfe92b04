"""PnP's recorded features, one record per injected denoising step, on disk or in memory.

A record is ``{"timestep": t, "features": {place name: tensor}}`` for one denoising step. On disk
(the extension's ``store`` folder beside the inversion's cache entry) each record is its own file
``step-NNN.pt``, written atomically behind the cache's checksum header and read back only when its
step comes, so at most one step's features are in memory during the denoising. Without a folder the
records stay in memory, optionally under a byte budget.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import torch

from stmod.core.errors import InputError
from stmod.core.io.ownership import atomic_path
from stmod.core.pipeline.cache import verified_payload, write_entry

__all__ = ["StepRecord", "StepStore"]

#: ``(timestep, {place name: tensor})``
StepRecord = tuple[int, dict[str, torch.Tensor]]


def _nbytes(features: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in features.values())


class StepStore:
    """Records by denoising step index: files in ``folder``, or memory when ``folder`` is ``None``."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memory: dict[int, StepRecord] = {}

    def path(self, step: int) -> Path:
        assert self.folder is not None
        return self.folder / f"step-{step:03d}.pt"

    def has(self, step: int) -> bool:
        return step in self._memory if self.folder is None else self.path(step).is_file()

    def memory_bytes(self) -> int:
        """Bytes of the records held in memory (0 on disk)."""
        return sum(_nbytes(features) for _, features in self._memory.values())

    def save(self, step: int, timestep: int, features: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self._memory[step] = (timestep, features)
            return
        buffer = io.BytesIO()
        torch.save({"timestep": int(timestep), "features": features}, buffer)
        with atomic_path(self.path(step)) as tmp:
            write_entry(tmp, buffer.getvalue())

    def load(self, step: int) -> StepRecord:
        """The record of ``step``; a missing or damaged file is an error saying how to record it again."""
        if self.folder is None:
            if step not in self._memory:
                raise KeyError(f"pnp: no features recorded for denoising step {step}")
            return self._memory[step]
        path = self.path(step)
        try:
            data = torch.load(io.BytesIO(verified_payload(path.read_bytes())), map_location="cpu", weights_only=True)
            return int(data["timestep"]), dict(data["features"])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InputError("extensions.pnp", str(path), f"cannot read the features recorded for denoising step "
                             f"{step} ({exc}); delete that file and run again: the inversion records it anew") from exc
