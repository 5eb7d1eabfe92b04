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

A plugin that fails to import is recorded in :attr:`StmodPluginManager.failures`, logged, and
skipped; the others still load.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from stmod.core.errors import PluginConflictError, PluginLoadError, StmodError, UsageError
from stmod.plugins import hookspecs
from stmod.core.registry import KINDS, CommandInfo, CommandRegistrar, ComponentInfo, ComponentRegistrar, Registry

if TYPE_CHECKING:
    from stmod.core.pipeline.editor import Editor

__all__ = [
    "ENTRY_POINT_GROUP",
    "BUILTIN_PLUGINS",
    "ESSENTIAL_PLUGINS",
    "PluginRecord",
    "StmodPluginManager",
    "make_plugin_manager",
    "editor_from_plugins",
]

log = logging.getLogger(__name__)

#: Entry-point group third-party plugins register under.
ENTRY_POINT_GROUP = "stmod"

#: Built-in plugins: ``name -> module``. Registered through the same hooks as third-party ones.
BUILTIN_PLUGINS: dict[str, str] = {
    "stmod.commands": "stmod.plugins.commands",
    "stmod.eval": "stmod.plugins.eval",
    "stmod.batch": "stmod.plugins.batch",
    "stmod.blenders": "stmod.plugins.blenders",
    "stmod.modulators": "stmod.plugins.modulators",
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
        components: dict[str, dict[str, ComponentInfo]] = {kind: {} for kind in KINDS}
        for kind, (hook_name, _) in KINDS.items():
            self._call_each(hook_name, lambda plugin, k=kind: ComponentRegistrar(k, plugin, components[k]))
        commands: dict[str, CommandInfo] = {}
        self._call_each("stmod_register_commands", lambda plugin: CommandRegistrar(plugin, commands, "command"))
        return Registry(components, commands)

    def _call_each(self, hook_name: str, make_registrar) -> None:
        # Each implementation gets a registrar bound to its own plugin, so components know their
        # provider. Every call goes through pluggy (a hook caller without the other plugins'
        # implementations), so hook wrappers and add_hookcall_monitoring see it; get_hookimpls()
        # lists the implementations in registration order (built-ins first).
        impls = [impl for impl in getattr(self.hook, hook_name).get_hookimpls()
                 if not (impl.wrapper or impl.hookwrapper)]
        for impl in impls:
            caller = self.subset_hook_caller(hook_name, [other.plugin for other in impls if other is not impl])
            log.debug("%s: calling %s", hook_name, impl.plugin_name)
            try:
                caller(register=make_registrar(impl.plugin_name))
            except StmodError:
                raise
            except Exception as exc:  # a plugin bug: name the plugin, keep the traceback for -v
                raise PluginLoadError(impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}") from exc

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


def _entry_points() -> dict[str, md.EntryPoint]:
    found: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            first = found[ep.name].dist.name if found[ep.name].dist else found[ep.name].value
            second = ep.dist.name if ep.dist else ep.value
            raise PluginConflictError("plugin", ep.name, first, second)
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

    eps = _entry_points() if (load_entrypoints or load) else {}
    wanted = [n for n in eps if load_entrypoints and (only is None or n in only)] + list(load)
    for name in dict.fromkeys(wanted):  # keeps order, drops repeats
        if name in block or name in pm.records:
            continue
        if name in eps:
            _load_entry_point(pm, eps[name], explicit=name in load)
        else:
            _load_module(pm, name, available=sorted(eps))
    pm.check_pending()
    return pm


def _load_entry_point(pm: StmodPluginManager, ep: md.EntryPoint, *, explicit: bool) -> None:
    dist = ep.dist.name if ep.dist else None
    try:
        plugin = ep.load()
        pm.add_plugin(plugin, PluginRecord(name=ep.name, module=ep.value, distribution=dist,
                                           version=ep.dist.version if ep.dist else None))
    except PluginConflictError:
        raise
    except Exception as exc:  # a broken third-party plugin must not take the others down
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
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
    except Exception as exc:
        raise PluginLoadError(name, f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    pm.add_plugin(module, PluginRecord(name=name, module=name))



def editor_from_plugins(plugin_args: Sequence[str] = (), **kwargs: Any) -> Editor:
    """An :class:`~stmod.core.pipeline.editor.Editor` over the installed plugins (selection like ``stmod-run -p``).

    ``kwargs`` go to the editor (``progress``, ``cache``).
    """
    from stmod.core.pipeline.editor import Editor  # torch and the pipeline load only when an editor is made

    return Editor(make_plugin_manager(plugin_args=plugin_args).registry, **kwargs)
