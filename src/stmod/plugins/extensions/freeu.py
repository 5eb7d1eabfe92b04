"""The ``freeu`` extension: FreeU (Si et al. 2023) through diffusers' own ``enable_freeu`` / ``disable_freeu``.

The official VideoGrain code applies FreeU with ``b1=1.2, b2=1.5, s1=1.0, s2=1.0`` (hard-coded in its
``test.py``) before the inversion, so it acts on the inversion and the denoising; these are the
defaults here. ``install`` switches it on for the ``with`` block on the UNet (the ControlNet has no
up blocks) and restores what the UNet had on exit. FreeU changes what the inversion computes, so its
values are part of the inversion cache key (:meth:`FreeUExtension.inversion_settings`).

The official code patches its own structure-aware FreeU variant into the up blocks; stmod uses
diffusers' FreeU instead (``docs/method.md`` lists how the two differ).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, cast

import torch
from attrs import frozen

from stmod.core.types import number

__all__ = ["FreeUOptions", "FreeUExtension"]

_KEYS = ("b1", "b2", "s1", "s2")


@frozen(kw_only=True)
class FreeUOptions:
    """diffusers' ``enable_freeu`` factors: ``b1``/``b2`` scale the backbone features of up-block
    stages 1/2, ``s1``/``s2`` the low frequencies of their skip features (1.0: unchanged)."""

    b1: float = number(1.2, low=0.0, high=10.0)
    b2: float = number(1.5, low=0.0, high=10.0)
    s1: float = number(1.0, low=0.0, high=10.0)
    s2: float = number(1.0, low=0.0, high=10.0)


class _FreeUHost(Protocol):
    """What FreeU uses of a diffusers UNet (checked with ``hasattr`` before use)."""

    up_blocks: Sequence[torch.nn.Module]

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None: ...

    def disable_freeu(self) -> None: ...


class FreeUExtension:
    """FreeU on the UNet for a whole edit (:class:`~stmod.core.protocols.Extension`, no optional ability:
    nothing to check, prepare or follow step by step)."""

    def __init__(self, options: FreeUOptions | None = None) -> None:
        self.options = options or FreeUOptions()

    def inversion_settings(self) -> Mapping[str, object]:
        return {key: getattr(self.options, key) for key in _KEYS}

    @contextlib.contextmanager
    def install(self, model: torch.nn.Module, *, role: str) -> Iterator[None]:
        """``model.enable_freeu(...)`` on the UNet inside the block; the up blocks' previous values after it."""
        if role != "unet":
            yield
            return
        if not callable(getattr(model, "enable_freeu", None)) or not hasattr(model, "up_blocks"):
            raise TypeError(f"FreeU needs a diffusers UNet with enable_freeu, got {type(model).__name__}")
        unet = cast(_FreeUHost, model)  # both checked just above
        before = [{key: getattr(block, key, None) for key in _KEYS} for block in unet.up_blocks]
        opts = self.options  # the factors of inversion_settings(), by name
        unet.enable_freeu(s1=opts.s1, s2=opts.s2, b1=opts.b1, b2=opts.b2)
        try:
            yield
        finally:
            unet.disable_freeu()
            for block, values in zip(unet.up_blocks, before):
                for key, value in values.items():
                    if value is not None:  # FreeU the UNet had before (e.g. a pipeline's own)
                        setattr(block, key, value)
