"""Built-in modulators: registers ``st-layout``, the ST-Layout attention engine (:mod:`stmod.core.st_layout.modulator`)."""

from __future__ import annotations

from stmod import hookimpl
from stmod.core.registry import ComponentRegistrar


def _st_layout(options: object) -> object:
    from stmod.core.st_layout.modulator import EngineOptions, STLayoutModulator

    assert isinstance(options, EngineOptions)
    return STLayoutModulator(options)


@hookimpl
def stmod_register_modulators(register: ComponentRegistrar) -> None:
    """Register ``st-layout`` (options by reference: the engine's module imports torch)."""
    register.add(
        "st-layout",
        _st_layout,
        summary="ST-Layout attention: spatio-temporal cross/self-attention modulation (VideoGrain)",
        options="stmod.core.st_layout.modulator:EngineOptions",
    )
