"""Registrars handed to registration hooks, and the registry they fill.

A registrar is bound to one component kind and one plugin, so every component knows who provided it
and a clash can name both providers.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
from attrs import frozen

from stmod.core import protocols
from stmod.core.config import structure
from stmod.core.guard import guard_component, guarded_call
from stmod.core.errors import ComponentContractError, ConfigError, PluginConflictError, UnknownComponentError
from stmod.core.types import NAME_PATTERN

__all__ = [
    "KINDS",
    "ComponentInfo",
    "ComponentRegistrar",
    "CommandInfo",
    "CommandRegistrar",
    "JobFormatInfo",
    "JobFormatRegistrar",
    "Registry",
    "normalise_kind",
]

#: Component kinds: ``kind -> (registration hook, protocol the factory's product satisfies)``.
KINDS: dict[str, tuple[str, type]] = {
    "backbone": ("stmod_register_backbones", protocols.Backbone),
    "layout": ("stmod_register_layout_providers", protocols.LayoutProvider),
    "modulator": ("stmod_register_modulators", protocols.Modulator),
    "blender": ("stmod_register_blenders", protocols.Blender),
    "annotator": ("stmod_register_annotators", protocols.ControlAnnotator),
    "extension": ("stmod_register_extensions", protocols.Extension),
}

_KIND_ALIASES = {
    **{kind: kind for kind in KINDS},
    **{kind + "s": kind for kind in KINDS},
    "layout-provider": "layout",
    "layout-providers": "layout",
    "blend": "blender",
    "blends": "blender",
    "control": "annotator",
}


def normalise_kind(text: str) -> str:
    """``"layouts"`` → ``"layout"``; raises ``KeyError`` for an unknown kind."""
    return _KIND_ALIASES[text.strip().lower()]


def resolve_reference(ref: object, *, kind: str, name: str, plugin: str, what: str) -> Any:
    """``"package.module:attribute"`` → that attribute (imported now); anything else is returned as is.

    Plugins may register a component by reference so that listing it (``--help``, ``plugins``, ``list``)
    imports nothing heavy: the module loads only when a job uses the component.
    """
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    try:
        value: Any = importlib.import_module(module)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise ComponentContractError(kind, name, plugin, f"registered {what} {ref!r}, which does not load: {exc}") from exc
    return value


@frozen(kw_only=True)
class ComponentInfo:
    """A registered component: what it is, who provided it, and how to build it.

    ``factory`` and ``options`` may have been registered as ``"module:attribute"`` references; reading
    them imports the module (see :func:`resolve_reference`).
    """

    kind: str
    name: str
    summary: str
    _factory: Callable[..., object] | str = attrs.field(eq=False, alias="factory")
    _options: type | str | None = attrs.field(default=None, alias="options")
    plugin: str

    @property
    def factory(self) -> Callable[..., object]:
        factory = resolve_reference(self._factory, kind=self.kind, name=self.name, plugin=self.plugin, what="factory")
        if not callable(factory):
            raise ComponentContractError(self.kind, self.name, self.plugin, "registered a factory that is not callable")
        return factory

    @property
    def options(self) -> type | None:
        options = resolve_reference(self._options, kind=self.kind, name=self.name, plugin=self.plugin, what="options")
        if options is not None and not attrs.has(options):
            raise ComponentContractError(self.kind, self.name, self.plugin, "declared options that are not an attrs class")
        return options

    @property
    def takes_options(self) -> bool:
        """Whether the component declared options (known without importing it)."""
        return self._options is not None


@frozen(kw_only=True)
class CommandInfo:
    """A registered ``stmod-run`` subcommand."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] = attrs.field(eq=False)
    run: Callable[..., int] = attrs.field(eq=False)
    plugin: str
    #: Command lines shown under "examples:" in the command's ``--help``.
    examples: tuple[str, ...] = ()


@frozen(kw_only=True)
class JobFormatInfo:
    """A registered job-file format other than stmod's own (e.g. the official VideoGrain configs).

    :ivar detect: ``detect(mapping) -> bool``: whether a parsed YAML mapping is in this format.
    :ivar convert: ``convert(mapping, *, source, allow_unsupported) -> mapping``: the stmod job mapping.
    :ivar paths: what relative paths in such a file are relative to: ``"job"`` (its folder) or
        ``"cwd"`` (the working directory, where the format's own tool runs its files).
    :ivar places: where the format's own documentation puts missing weights, by
        :attr:`~stmod.core.errors.CheckpointError.kind` (``"model"``, ``"controlnet"``, ``"annotator"``):
        a sentence added to each such error of a job read from this format.
    """

    name: str
    summary: str
    detect: Callable[[Mapping[str, Any]], bool] = attrs.field(eq=False)
    convert: Callable[..., Mapping[str, Any]] = attrs.field(eq=False)
    paths: str = attrs.field(validator=attrs.validators.in_(("job", "cwd")))
    plugin: str
    places: Mapping[str, str] = attrs.field(factory=dict)


class _Registrar:
    __slots__ = ("_plugin", "_entries", "_label")

    def __init__(self, plugin: str, entries: dict[str, Any], label: str) -> None:
        self._plugin, self._entries, self._label = plugin, entries, label

    @property
    def plugin(self) -> str:
        """The plugin this registrar registers for (its name in ``stmod-run plugins``)."""
        return self._plugin

    def _claim(self, name: str) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ComponentContractError(self._label, str(name), self._plugin, "has an invalid name")
        if name in self._entries:
            raise PluginConflictError(self._label, name, self._entries[name].plugin, self._plugin)


class ComponentRegistrar(_Registrar):
    """Passed to every ``stmod_register_<kind>`` hook; bound to one kind and one plugin."""

    __slots__ = ("kind",)

    def __init__(self, kind: str, plugin: str, entries: dict[str, ComponentInfo]) -> None:
        super().__init__(plugin, entries, kind)
        self.kind = kind

    def add(
        self,
        name: str,
        factory: Callable[..., object] | str,
        *,
        summary: str,
        options: type | str | None = None,
    ) -> None:
        """Register component ``name``.

        :param name: unique within the kind; letters, digits, ``_``, ``-``, ``.``.
        :param factory: ``factory(options)`` (or ``factory()`` when ``options`` is ``None``) returns the
            component. Called only when a job selects it. A ``"package.module:attribute"`` string is
            imported only then, so that a plugin whose components need torch costs nothing to list.
        :param summary: one line shown by ``stmod-run list``.
        :param options: an ``attrs`` class describing the component's options (or a reference to one);
            job files are validated against it (unknown keys are errors) before anything is built.
        :raises PluginConflictError: when another plugin registered ``name`` for this kind.
        """
        self._claim(name)
        if not callable(factory) and not _is_reference(factory):
            raise ComponentContractError(self.kind, name, self._plugin, "registered a factory that is not callable")
        if options is not None and not isinstance(options, str) and not attrs.has(options):
            raise ComponentContractError(self.kind, name, self._plugin, "declared options that are not an attrs class")
        if not isinstance(summary, str) or not summary.strip():
            raise ComponentContractError(self.kind, name, self._plugin, "needs a one-line summary")
        self._entries[name] = ComponentInfo(
            kind=self.kind, name=name, summary=summary.strip().splitlines()[0], factory=factory,
            options=options, plugin=self._plugin,
        )


def _is_reference(value: object) -> bool:
    return isinstance(value, str) and ":" in value and all(value.partition(":")[::2])


class CommandRegistrar(_Registrar):
    """Passed to ``stmod_register_commands``; bound to one plugin."""

    __slots__ = ()

    def add(
        self,
        name: str,
        *,
        configure: Callable[[argparse.ArgumentParser], None],
        run: Callable[..., int],
        help: str,
        examples: Sequence[str] = (),
    ) -> None:
        """Register subcommand ``name``.

        :param configure: adds the command's arguments to its ``argparse`` parser.
        :param run: ``run(args, session) -> int`` executes it.
        :param help: one line shown by ``stmod-run --help``.
        :param examples: full command lines shown at the end of ``stmod-run NAME --help``.
        """
        self._claim(name)
        self._entries[name] = CommandInfo(name=name, help=help, configure=configure, run=run, plugin=self._plugin,
                                          examples=tuple(examples))


class JobFormatRegistrar(_Registrar):
    """Passed to ``stmod_register_job_formats``; bound to one plugin."""

    __slots__ = ()

    def add(
        self,
        name: str,
        *,
        detect: Callable[[Mapping[str, Any]], bool],
        convert: Callable[..., Mapping[str, Any]],
        summary: str,
        paths: str = "job",
        places: Mapping[str, str] | None = None,
    ) -> None:
        """Register job format ``name`` (see :class:`JobFormatInfo` for the arguments)."""
        self._claim(name)
        if not callable(detect) or not callable(convert):
            raise ComponentContractError(self._label, name, self._plugin, "needs callable detect and convert")
        if paths not in ("job", "cwd"):
            raise ComponentContractError(self._label, name, self._plugin, f"paths must be 'job' or 'cwd', not {paths!r}")
        self._entries[name] = JobFormatInfo(name=name, summary=summary.strip().splitlines()[0], detect=detect,
                                            convert=convert, paths=paths, plugin=self._plugin,
                                            places=dict(places or {}))


class Registry:
    """All components, commands and job formats registered by the loaded plugins."""

    def __init__(self, components: Mapping[str, dict[str, ComponentInfo]], commands: dict[str, CommandInfo],
                 job_formats: Mapping[str, JobFormatInfo] | None = None, *, guarded: Sequence[str] = ()):
        self._components = {kind: dict(components.get(kind, {})) for kind in KINDS}
        self.commands = dict(commands)
        self.job_formats = dict(job_formats or {})
        #: Plugins whose components run behind :func:`stmod.core.guard.guard_component` (the third-party ones).
        self.guarded = frozenset(guarded)

    def components(self, kind: str) -> dict[str, ComponentInfo]:
        """``{name: info}`` of one kind."""
        return dict(self._components[kind])

    def __iter__(self) -> Iterator[ComponentInfo]:
        for kind in KINDS:
            yield from self._components[kind].values()

    def info(self, kind: str, name: str) -> ComponentInfo:
        """The component ``name`` of ``kind``, or an error listing what is available."""
        try:
            return self._components[kind][name]
        except KeyError:
            available = {n: i.plugin for n, i in self._components[kind].items()}
            raise UnknownComponentError(kind, name, available) from None

    def parse_options(self, kind: str, name: str, options: Mapping[str, object], *, place: str = "") -> object:
        """Validate ``options`` for component ``name`` (unknown keys are errors); returns the options object."""
        info = self.info(kind, name)
        where = place or f"{kind} {name!r} options"
        if not info.takes_options:
            if options:
                return structure(_NoOptions, options, place=where)
            return None
        declared = info.options
        assert declared is not None  # takes_options
        return structure(declared, options, place=where)

    def create(self, kind: str, name: str, options: Mapping[str, object] | None = None, *, place: str = "") -> Any:
        """Build component ``name`` of ``kind`` with ``options``; checks the product against its protocol."""
        info = self.info(kind, name)
        parsed = self.parse_options(kind, name, options or {}, place=place)
        where = place or f"{kind} {name!r}"
        factory = info.factory
        if info.plugin in self.guarded:
            factory = guarded_call(factory, where=where, plugin=info.plugin, method="factory", passed=(ValueError,))
        try:
            product = factory() if not info.takes_options else factory(parsed)
        except ValueError as exc:  # options that fit their class but not each other: the job's error
            where = place or f"{kind} {name!r} options"
            raise ConfigError(f"{where}: {exc} (plugin {info.plugin!r})", place=where) from exc
        protocol = KINDS[kind][1]
        if not isinstance(product, protocol):
            missing = [m for m in _protocol_members(protocol) if not hasattr(product, m)]
            raise ComponentContractError(
                kind, name, info.plugin, f"built an object that is not {'an' if protocol.__name__[0] in 'AEIOU' else 'a'} {protocol.__name__} (missing: {', '.join(missing)})"
            )
        return guard_component(product, where=where, plugin=info.plugin) if info.plugin in self.guarded else product


@attrs.frozen
class _NoOptions:
    """A component that takes no options."""


def _protocol_members(protocol: type) -> list[str]:
    names = set(getattr(protocol, "__annotations__", {})) | {n for n in vars(protocol) if callable(vars(protocol)[n])}
    return sorted(n for n in names if not n.startswith("_"))
