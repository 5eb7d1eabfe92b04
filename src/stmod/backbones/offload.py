"""Model CPU offload through accelerate's hooks, as diffusers' ``enable_model_cpu_offload`` does it.

Provenance: diffusers (``DiffusionPipeline.enable_model_cpu_offload``, 0.42) moves every model to the
CPU and gives each an ``accelerate.cpu_offload_with_hook`` hook: a model moves to the device when its
``forward`` (or a method wrapped by diffusers' ``apply_forward_hook``, such as the VAE's ``encode`` and
``decode``) is called, and stays there until the hook of the *next* model in a fixed chain
(``text_encoder->unet->vae``) offloads it; ControlNets, called in turn with the UNet at every step,
stay out of the chain.

An edit does not call its models in one chain (text → VAE encode → text → UNet ⇄ ControlNets → VAE
decode), so here each model belongs to a *group* (``text``, ``vae``, ``denoiser``: the UNet and its
ControlNets together) and, before a model runs, the models of the other groups go back to the CPU.
The moves themselves are accelerate's (``CpuOffload.pre_forward`` moves in, ``UserCpuOffloadHook.offload``
moves out); :class:`_MakeRoom` is an accelerate ``ModelHook`` placed before each model's ``CpuOffload``.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import cpu_offload_with_hook
from accelerate.hooks import ModelHook, add_hook_to_module

__all__ = ["ModelOffload"]


class ModelOffload:
    """Accelerate offload hooks on a backbone's models, in groups; :meth:`remove` takes them all off.

    :param device: the execution device (``cuda``, ``cuda:1``; ``cpu`` only makes sense in tests: then
        every move is a no-op but the hooks run as they would).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.hooks: dict[str, list[Any]] = {}  # group -> accelerate UserCpuOffloadHook per model
        self.on_device: set[str] = set()       # groups moved to the device since they were last offloaded

    def add(self, model: torch.nn.Module, group: str) -> None:
        """Put ``model`` on the CPU, to move to the device when it runs (the other groups leave first)."""
        if getattr(model, "_hf_hook", None) is not None:
            raise ValueError(f"{type(model).__name__} already has accelerate hooks (device_map or an offloaded "
                             "pipeline); remove them first (pipe.remove_all_hooks())")
        add_hook_to_module(model, _MakeRoom(self, group))
        _, hook = cpu_offload_with_hook(model, self.device)  # appended after the one above
        self.hooks.setdefault(group, []).append(hook)

    def make_room(self, group: str) -> None:
        """Offload every group but ``group`` that was moved to the device."""
        leaving = self.on_device - {group}
        for other in leaving:
            for hook in self.hooks.get(other, []):
                hook.offload()
        if leaving and self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.on_device = {group}

    def offload_all(self) -> None:
        """Every model back to the CPU (the end of an edit; diffusers' ``maybe_free_model_hooks``)."""
        self.make_room("")
        self.on_device = set()

    def remove(self) -> None:
        """Take every hook off (the models keep their original ``forward``) and leave them on the CPU."""
        self.offload_all()
        for hooks in self.hooks.values():
            for hook in hooks:
                hook.remove()
        self.hooks = {}

    def groups(self) -> dict[str, list[torch.nn.Module]]:
        """``{group: models}`` under this offload."""
        return {group: [hook.model for hook in hooks] for group, hooks in self.hooks.items()}


class _MakeRoom(ModelHook):
    """Before a model of ``group`` runs, the other groups go back to the CPU (then accelerate moves it in)."""

    def __init__(self, offload: ModelOffload, group: str) -> None:
        self.offload, self.group = offload, group

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        self.offload.make_room(self.group)
        return args, kwargs
