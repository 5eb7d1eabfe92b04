"""Hook specifications: the extension points of stmod.

Every hook hands the plugin a *registrar*; the plugin calls ``register.add(...)`` once per component
it contributes. Components are created later, only when a job selects them, so registering must be
cheap: import heavy libraries inside the factory, not at module level.

An implementation may accept any subset of a hook's parameters (pluggy's rule), so hooks can gain
parameters without breaking plugins. Each hook is documented in ``docs/hooks.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from stmod.core.registry import CommandRegistrar, ComponentRegistrar

#: Marker for hook specifications (private to stmod; plugins use :data:`stmod.hookimpl`).
from stmod import hookspec  # the one marker, defined with hookimpl


@hookspec
def stmod_register_backbones(register: ComponentRegistrar) -> None:
    """Register backbones: diffusion models that can encode, invert, denoise and decode a clip.

    Call ``register.add(name, factory, summary=..., options=OptionsClass)`` for each backbone.
    ``factory(options)`` must return a :class:`~stmod.core.protocols.Backbone`; it is called only when
    a job selects ``name`` and must not load weights (``Backbone.load`` does).

    :param register: registrar for the ``backbone`` kind.
    """


@hookspec
def stmod_register_layout_providers(register: ComponentRegistrar) -> None:
    """Register layout providers: sources of region masks (mask folders, boxes, SAM 2, K-Means, ...).

    ``factory(options)`` must return a :class:`~stmod.core.protocols.LayoutProvider`.

    :param register: registrar for the ``layout`` kind.
    """


@hookspec
def stmod_register_modulators(register: ComponentRegistrar) -> None:
    """Register modulators: attention processors that steer where prompts land.

    ``factory(options)`` must return a :class:`~stmod.core.protocols.Modulator`.

    :param register: registrar for the ``modulator`` kind.
    """


@hookspec
def stmod_register_blenders(register: ComponentRegistrar) -> None:
    """Register blenders: strategies that mix edited and source latents after each denoising step.

    ``factory(options)`` must return a :class:`~stmod.core.protocols.Blender`.

    :param register: registrar for the ``blender`` kind.
    """


@hookspec
def stmod_register_annotators(register: ComponentRegistrar) -> None:
    """Register control annotators: producers of ControlNet control images (canny, depth, ...).

    ``factory(options)`` must return a :class:`~stmod.core.protocols.ControlAnnotator`.

    :param register: registrar for the ``annotator`` kind.
    """


@hookspec
def stmod_register_commands(register: CommandRegistrar) -> None:
    """Register ``stmod-run`` subcommands.

    Call ``register.add(name, configure=..., run=..., help=...)``: ``configure(parser)`` adds the
    command's arguments to an ``argparse.ArgumentParser``; ``run(args, session)`` executes it and
    returns the exit status (raise :class:`~stmod.StmodError` for user errors).

    :param register: registrar for subcommands.
    """
