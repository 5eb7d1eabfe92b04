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
    from stmod.core.registry import CommandRegistrar, ComponentRegistrar, JobFormatRegistrar

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
def stmod_register_extensions(register: ComponentRegistrar) -> None:
    """Register extensions: changes to the backbone's networks for a whole edit, inversion and
    denoising (FreeU, FLATTEN trajectory attention, PnP feature injection), chosen by a job's
    ``extensions`` list.

    ``factory(options)`` must return a :class:`~stmod.core.protocols.Extension`.

    :param register: registrar for the ``extension`` kind.
    """


@hookspec
def stmod_register_commands(register: CommandRegistrar) -> None:
    """Register ``stmod-run`` subcommands.

    Call ``register.add(name, configure=..., run=..., help=...)``: ``configure(parser)`` adds the
    command's arguments to an ``argparse.ArgumentParser``; ``run(args, session)`` executes it and
    returns the exit status (raise :class:`~stmod.StmodError` for user errors).

    :param register: registrar for subcommands.
    """


@hookspec
def stmod_register_job_formats(register: JobFormatRegistrar) -> None:
    """Register job-file formats other than stmod's own, converted to an stmod job when read.

    Call ``register.add(name, detect=..., convert=..., summary=..., paths="job" | "cwd", places=...)``:
    ``detect(mapping)`` says whether a parsed YAML mapping is in the format (cheap, no I/O);
    ``convert(mapping, *, source, allow_unsupported)`` returns the equivalent stmod job mapping, or
    raises :class:`~stmod.ConfigError` naming the key; features it cannot map are refused unless
    ``allow_unsupported`` (``--allow-unsupported``), then logged as dropped; a format whose files list
    several edits also takes ``prompt_index`` (``--prompt-index``, passed only when given); a converter with an
    ``overrides`` parameter receives the command line's overrides (merged over its result afterwards), so
    that what it logs matches what will run. The first format whose ``detect`` is true converts the file;
    ``paths`` says what its relative paths are relative to; ``places`` (optional) maps a kind of weights
    (``"model"``, ``"controlnet"``, ``"annotator"``) to where the format's own documentation puts them,
    added to ``check``'s and ``edit``'s report of each such missing file.

    :param register: registrar for job formats.
    """
