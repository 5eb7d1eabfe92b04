"""Devices and dtypes: the one device resolver (``"auto"`` means the CUDA device when there is one, else
the CPU), and device and dtype arguments checked where they are given, so a missing GPU is reported by
the call that asked for it (``Editor.from_pretrained(..., device="cuda")``), not later when a model moves."""

from __future__ import annotations

from typing import Any

import torch

from stmod.core.errors import InputError

__all__ = ["DTYPE_NAMES", "check_device", "dtype_name", "resolve_device"]

#: The floating-point dtypes a backbone runs in (``torch_dtype=torch.float16`` ↔ ``"float16"``).
DTYPE_NAMES = ("float16", "bfloat16", "float32")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; any other name as ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(device: Any, *, argument: str = "device") -> str:
    """``device`` as a name torch reads (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or ``"auto"``),
    after checking this machine has it; the error names ``argument``, the value and the fix."""
    name = str(device)
    if name == "auto":
        return name
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(argument, name, 'is not a device; use "cpu", "cuda", "cuda:1" or "auto"') from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(argument, name, 'no CUDA device is available on this machine; use device="cpu"')
        if parsed.index is not None and parsed.index >= count:
            raise InputError(argument, name, f"this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1}); "
                                             "choose one of those")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(argument, name, 'no MPS device is available on this machine; use device="cpu"')
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise InputError(argument, name, 'stmod runs on "cpu", "cuda" or "mps"; choose one of those')
    return name


def dtype_name(torch_dtype: Any, *, argument: str = "torch_dtype") -> str | None:
    """``torch.float16`` (or ``"float16"``) → ``"float16"``; ``None`` stays ``None``; anything else is refused."""
    if torch_dtype is None:
        return None
    name = str(torch_dtype).replace("torch.", "")
    if name not in DTYPE_NAMES:
        raise InputError(argument, str(torch_dtype), f"backbones run in {', '.join(DTYPE_NAMES)}; "
                                                      "pass torch.float16, torch.bfloat16 or torch.float32")
    return name
