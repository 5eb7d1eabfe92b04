"""The plugin-manager factory: which plugins load, in what order, and what they registered.

There is no global manager. :func:`make_plugin_manager` builds a fresh one per call (the CLI calls it
once per invocation, tests once per test), and nothing is loaded at import time.

Selection follows pytest:

* built-in plugins (``BUILTIN_PLUGINS``) are always registered, unless blocked;
* third-party plugins come from the ``stmod`` entry-point group; ``STMOD_LOAD_PLUGINS`` (a comma
  list, ``""`` for none) restricts which of them load;
* ``-p NAME`` also loads ``NAME`` (an entry-point name or an importable module);
* ``-p no:NAME`` and ``STMOD_DISABLE_PLUGINS`` (a comma list) block plugins, built-in or not;
  ``ESSENTIAL_PLUGINS`` cannot be blocked.

A third-party plugin that fails to import, whose registration hook raises, or that registers a
component name another plugin already has, is recorded in :attr:`StmodPluginManager.failures`,
logged as one warning naming it, and skipped as a whole (none of its components or commands
stay); the others still load, so ``--help`` and ``plugins`` keep working. It is an error only
when the plugin was asked for (``-p NAME``, ``extra_plugins``), and for the built-ins.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from stmod.core.errors import PluginConflictError, PluginLoadError, StmodError, UsageError
from stmod.plugins import hookspecs
from stmod.core.registry import (KINDS, CommandInfo, CommandRegistrar, ComponentInfo, ComponentRegistrar,
                                 JobFormatInfo, JobFormatRegistrar, Registry)

if TYPE_CHECKING:
    from stmod.core.pipeline.editor import Editor
    from stmod.core.types import EditSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "BUILTIN_PLUGINS",
    "ESSENTIAL_PLUGINS",
    "PluginRecord",
    "StmodPluginManager",
    "make_plugin_manager",
    "editor_from_plugins",
    "load_job",
]

log = logging.getLogger(__name__)

#: Entry-point group third-party plugins register under.
ENTRY_POINT_GROUP = "stmod"

#: Built-in plugins: ``name -> module``. Registered through the same hooks as third-party ones.
BUILTIN_PLUGINS: dict[str, str] = {
    "stmod.commands": "stmod.plugins.commands",
    "stmod.eval": "stmod.plugins.eval",
    "stmod.batch": "stmod.plugins.batch",
    "stmod.official": "stmod.plugins.official",
    "stmod.blenders": "stmod.plugins.blenders",
    "stmod.modulators": "stmod.plugins.modulators",
    "stmod.extensions": "stmod.plugins.extensions",
    "stmod.backbones": "stmod.backbones.plugin",
    "stmod.layouts": "stmod.layouts.plugin",
}

#: Built-ins that cannot be blocked (without them there is no CLI).
ESSENTIAL_PLUGINS = frozenset({"stmod.commands"})


@attrs.frozen(kw_only=True)
class PluginRecord:
    """A registered plugin: its name, the distribution that ships it, and whether it is built in."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False


@attrs.frozen(kw_only=True)
class PluginFailure:
    """A plugin that could not be loaded, and why (one line)."""

    name: str
    distribution: str | None
    reason: str


class StmodPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from and builds the :class:`Registry`."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.failures: list[PluginFailure] = []
        #: Plugins asked for by name (``-p``, ``extra_plugins``): their failures are errors, not skips.
        self.explicit: set[str] = set()
        self._registry: Registry | None = None

    def add_plugin(self, plugin: object, record: PluginRecord) -> None:
        """Register ``plugin`` under ``record.name`` (a duplicate name is a conflict naming both)."""
        if record.name in self.records:
            first = self.records[record.name]
            raise PluginConflictError("plugin", record.name, first.distribution or first.module,
                                      record.distribution or record.module)
        self.register(plugin, name=record.name)
        self.records[record.name] = record
        self._registry = None

    @property
    def registry(self) -> Registry:
        """Components and commands registered by all loaded plugins (built on first use)."""
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        # Plugin by plugin, in registration order (built-ins first): each one's registrations go to a
        # copy that is kept only when all its hooks succeeded, so a skipped plugin leaves nothing behind.
        components: dict[str, dict[str, ComponentInfo]] = {kind: {} for kind in KINDS}
        commands: dict[str, CommandInfo] = {}
        formats: dict[str, JobFormatInfo] = {}
        for name, plugin in list(self.list_name_plugin()):
            if plugin is None:  # blocked
                continue
            staged = {kind: dict(entries) for kind, entries in components.items()}
            staged_commands, staged_formats = dict(commands), dict(formats)
            try:
                for kind, (hook_name, _) in KINDS.items():
                    self._call(hook_name, name, ComponentRegistrar(kind, name, staged[kind]))
                self._call("stmod_register_commands", name, CommandRegistrar(name, staged_commands, "command"))
                self._call("stmod_register_job_formats", name, JobFormatRegistrar(name, staged_formats, "job format"))
            except StmodError as exc:
                record = self.records.get(name)
                if record is None or record.builtin or name in self.explicit:
                    raise
                self.skip(name, record, str(exc))
                continue
            components, commands, formats = staged, staged_commands, staged_formats
        third_party = [name for name, record in self.records.items() if not record.builtin]
        return Registry(components, commands, formats, guarded=third_party)

    def _call(self, hook_name: str, plugin_name: str, registrar: object) -> None:
        # The call goes through pluggy (a hook caller without the other plugins' implementations), so
        # hook wrappers and add_hookcall_monitoring see it.
        impls = [impl for impl in getattr(self.hook, hook_name).get_hookimpls()
                 if not (impl.wrapper or impl.hookwrapper)]
        if not any(impl.plugin_name == plugin_name for impl in impls):
            return
        caller = self.subset_hook_caller(hook_name, [i.plugin for i in impls if i.plugin_name != plugin_name])
        log.debug("%s: calling %s", hook_name, plugin_name)
        try:
            caller(register=registrar)
        except (StmodError, KeyboardInterrupt):
            raise
        except BaseException as exc:  # a plugin bug (SystemExit included): name the plugin, traceback for -v
            raise PluginLoadError(plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}") from exc

    def skip(self, name: str, record: PluginRecord, reason: str) -> None:
        """Unregister third-party plugin ``name`` and report it as broken (one warning line)."""
        log.warning("plugin %r (%s) was skipped: %s", name, record.distribution or record.module, reason)
        self.unregister(name=name)
        del self.records[name]
        self.failures.append(PluginFailure(name=name, distribution=record.distribution, reason=reason))

    def components_by_plugin(self) -> dict[str, list[ComponentInfo]]:
        """``{plugin name: [components it registered]}``, including plugins that registered none."""
        result: dict[str, list[ComponentInfo]] = {name: [] for name in self.records}
        for info in self.registry:
            result.setdefault(info.plugin, []).append(info)
        return result


def _split_env(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _parse_plugin_args(plugin_args: Iterable[str]) -> tuple[list[str], list[str]]:
    load, block = [], []
    for arg in plugin_args:
        if arg.startswith("no:"):
            block.append(arg[3:])
        else:
            load.append(arg)
    return load, block


def _entry_points(pm: StmodPluginManager, load: Sequence[str]) -> dict[str, md.EntryPoint]:
    """Entry points by name; a name two distributions claim keeps the first, the second is broken."""
    found: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            earlier = found[ep.name].dist
            first = earlier.name if earlier is not None else found[ep.name].value
            second = ep.dist.name if ep.dist is not None else ep.value
            clash = PluginConflictError("plugin", ep.name, first, second)
            if ep.name in load:
                raise clash
            log.warning("plugin %r (%s) was skipped: %s", ep.name, second, clash)
            pm.failures.append(PluginFailure(name=ep.name, distribution=second, reason=str(clash)))
            continue
        found[ep.name] = ep
    return found


def make_plugin_manager(
    *,
    plugin_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    load_entrypoints: bool = True,
    extra_plugins: Mapping[str, object] | None = None,
) -> StmodPluginManager:
    """Build a fresh plugin manager with built-ins, entry points and ``-p`` selections applied.

    :param plugin_args: values of ``-p`` options, e.g. ``["no:example", "mypkg.plugin"]``.
    :param env: environment to read ``STMOD_LOAD_PLUGINS`` and ``STMOD_DISABLE_PLUGINS`` from
        (``os.environ`` by default).
    :param load_entrypoints: load third-party plugins from entry points (tests pass ``False``).
    :param extra_plugins: ``{name: plugin object}`` registered after the built-ins (tests, embedders).
    :raises UsageError: for ``-p`` of an unknown plugin or blocking an essential one.
    """
    env = os.environ if env is None else env
    load, block = _parse_plugin_args(plugin_args)
    block += _split_env(env.get("STMOD_DISABLE_PLUGINS")) or []
    only = _split_env(env.get("STMOD_LOAD_PLUGINS"))
    for name in block:
        if name in ESSENTIAL_PLUGINS:
            raise UsageError(f"plugin {name!r} is essential and cannot be blocked")

    pm = StmodPluginManager()
    for name in block:
        pm.set_blocked(name)

    for name, module in BUILTIN_PLUGINS.items():
        if name not in block:
            pm.add_plugin(importlib.import_module(module), PluginRecord(name=name, module=module, builtin=True))
    for name, plugin in (extra_plugins or {}).items():
        if name not in block:
            pm.add_plugin(plugin, PluginRecord(name=name, module=getattr(plugin, "__name__", repr(plugin))))
            pm.explicit.add(name)
    pm.explicit.update(load)

    eps = _entry_points(pm, load) if (load_entrypoints or load) else {}
    wanted = [n for n in eps if load_entrypoints and (only is None or n in only)] + list(load)
    for name in dict.fromkeys(wanted):  # keeps order, drops repeats
        if name in block or name in pm.records:
            continue
        if name in eps:
            _load_entry_point(pm, eps[name], explicit=name in load)
        else:
            _load_module(pm, name, available=sorted(eps))
    _check_pending(pm)
    return pm


def _check_pending(pm: StmodPluginManager) -> None:
    """pluggy's check for hook implementations no hook spec has (a misspelt hook), plugin by plugin."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin)
            record = pm.records.get(name) if name else None
            if name is None or record is None or record.builtin or name in pm.explicit:
                raise PluginLoadError(str(name), " ".join(str(exc).split())) from exc
            pm.skip(name, record, " ".join(str(exc).split()))


def _load_entry_point(pm: StmodPluginManager, ep: md.EntryPoint, *, explicit: bool) -> None:
    dist = ep.dist.name if ep.dist else None
    try:
        plugin = ep.load()
        pm.add_plugin(plugin, PluginRecord(name=ep.name, module=ep.value, distribution=dist,
                                           version=ep.dist.version if ep.dist else None))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a broken third-party plugin (SystemExit included) must not take the others down
        reason = str(exc) if isinstance(exc, StmodError) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if explicit:
            raise PluginLoadError(ep.name, reason) from exc
        log.warning("plugin %r (%s) failed to load and was skipped: %s", ep.name, dist, reason)
        pm.failures.append(PluginFailure(name=ep.name, distribution=dist, reason=reason))


def _load_module(pm: StmodPluginManager, name: str, *, available: list[str]) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            listing = ", ".join(available) or "none installed"
            raise UsageError(
                f"-p {name}: no plugin of that name (entry points in group 'stmod': {listing}) and no module {name!r}"
            ) from exc
        raise PluginLoadError(name, f"{type(exc).__name__}: {exc}") from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit and the like from a plugin's import: its failure, named
        raise PluginLoadError(name, f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    pm.add_plugin(module, PluginRecord(name=name, module=name))



def load_job(path: str | Path, overrides: Mapping[str, Any] | None = None, *, allow_unsupported: bool = False,
             prompt_index: int | None = None, plugin_args: Sequence[str] = ()) -> EditSpec:
    """Read a job file in any format the installed plugins know (what ``Editor.job`` does with a path).

    :func:`stmod.core.config.load_job` with the job formats of the plugins (selection like
    ``stmod-run -p``): an stmod job, or e.g. an official VideoGrain config (``stmod.official``;
    ``prompt_index`` picks one of its ``editing_prompts``, ``overrides={"control": []}`` drops its ControlNet).
    """
    from stmod.core.config import load_job as load_stmod_job

    registry = make_plugin_manager(plugin_args=plugin_args).registry
    return load_stmod_job(Path(path), overrides, allow_unsupported=allow_unsupported, prompt_index=prompt_index,
                          formats=registry.job_formats.values())


def editor_from_plugins(plugin_args: Sequence[str] = (), **kwargs: Any) -> Editor:
    """An :class:`~stmod.core.pipeline.editor.Editor` over the installed plugins (selection like ``stmod-run -p``).

    ``kwargs`` go to the editor (``progress``, ``cache``).
    """
    from stmod.core.pipeline.editor import Editor  # torch and the pipeline load only when an editor is made

    return Editor(make_plugin_manager(plugin_args=plugin_args).registry, **kwargs)
