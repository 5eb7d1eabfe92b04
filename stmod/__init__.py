"""stmod: zero-shot multi-grained video editing (ST-Modulator / VideoGrain) as a plugin framework.

The public surface for users and plugin authors::

    from stmod import hookimpl, StmodError

    @hookimpl
    def stmod_register_blenders(register):
        register.add("mine", MyBlender, summary="...")

Subpackages: :mod:`stmod.core` (values, protocols, engine, CLI), :mod:`stmod.plugins` (hooks,
plugin manager, built-in blenders), :mod:`stmod.backbones`, :mod:`stmod.layouts`.
"""

from __future__ import annotations

from typing import Any

import pluggy

from stmod.core.errors import StmodError

__all__ = ["hookimpl", "hookspec", "StmodError", "__version__"]

#: Decorator for hook implementations in plugins: ``@stmod.hookimpl def stmod_register_...``.
hookimpl = pluggy.HookimplMarker("stmod")

#: Decorator for hook specifications; only stmod itself and hosts extending it need this.
hookspec = pluggy.HookspecMarker("stmod")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("stmod")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    raise AttributeError(f"module 'stmod' has no attribute {name!r}")
