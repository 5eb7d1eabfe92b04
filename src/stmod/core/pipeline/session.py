"""Per-edit state shared by the phases after the model loads: components, ControlNets, control images."""

from __future__ import annotations

import contextlib

import attrs
import numpy as np
import torch

from stmod.core.io.video import SourceClip
from stmod.core.pipeline.components import Components
from stmod.core.pipeline.progress import RunReporter
from stmod.core.protocols import Backbone, FollowsSteps, Phase
from stmod.core.types import Branch, Control, EditSpec

__all__ = ["EditSession", "latent_size", "to_model_frames", "to_uint8"]


@attrs.define
class EditSession:
    """One edit's loaded backbone, its ControlNet locations and control images, and the clip."""

    spec: EditSpec
    components: Components
    backbone: Backbone
    locations: list[str]
    control_images: list[np.ndarray]
    clip: SourceClip
    #: The run's progress and step callback (:mod:`.progress`).
    reporter: RunReporter
    _tensors: dict[int, list[tuple[str, Control]]] = attrs.field(factory=dict)

    def controls(self, repeat: int) -> list[tuple[str, Control]]:
        """``(ControlNet location, Control)`` pairs with images repeated for ``repeat`` CFG branches."""
        if repeat not in self._tensors:
            self._tensors[repeat] = [
                (loc, Control(images=self.backbone.control_tensor(images, repeat=repeat), scale=c.scale))
                for loc, images, (_, c) in zip(self.locations, self.control_images, self.components.annotators)
            ]
        return self._tensors[repeat]

    def installed(self) -> contextlib.ExitStack:
        """Install the modulator, then the extensions in job order, on every attention model of the
        backbone for a ``with`` block (removed in reverse order on exit)."""
        stack = contextlib.ExitStack()
        try:
            for role, model in self.backbone.attention_models().items():
                role = role.split(".")[0]
                stack.enter_context(self.components.modulator.install(model, role=role))
                for extension, _ in self.components.extensions:
                    stack.enter_context(extension.install(model, role=role))
        except BaseException:  # a failed install: undo the ones before it, the models stay as they were
            stack.close()
            raise
        return stack

    def step(self, *, phase: Phase, step_index: int, timestep: int, branches: tuple[Branch, ...]) -> None:
        """Tell every extension that follows steps which model call comes next (before each UNet call of
        either loop)."""
        for extension, _ in self.components.extensions:
            if isinstance(extension, FollowsSteps):
                extension.step(phase=phase, step_index=step_index, timestep=timestep, branches=branches)


def latent_size(latents: torch.Tensor) -> tuple[int, int]:
    """``(h, w)`` of latents ``(..., h, w)``."""
    return int(latents.shape[-2]), int(latents.shape[-1])


def to_model_frames(frames: np.ndarray) -> torch.Tensor:
    """``uint8 (F, H, W, 3)`` → ``float32 (F, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``float (F, 3, H, W)`` in [-1, 1] → ``uint8 (F, H, W, 3)``."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
