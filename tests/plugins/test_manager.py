"""The plugin-manager factory: entry points, selection, conflicts and failures."""

from __future__ import annotations

import types
from collections.abc import Callable

import pytest

from stmod import hookimpl
from stmod.core.errors import PluginConflictError, PluginLoadError, UnknownComponentError, UsageError
from stmod.plugins import manager as manager_module
from stmod.plugins.manager import BUILTIN_PLUGINS, make_plugin_manager
from stmod.testing import fresh_plugin_manager


class FakeDist:
    def __init__(self, name: str, version: str = "1.2.3") -> None:
        self.name, self.version = name, version


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint without installing anything."""

    def __init__(self, name: str, load: Callable[[], object], dist: str = "fake-dist") -> None:
        self.name, self.value, self._load, self.dist = name, f"{dist}.module", load, FakeDist(dist)

    def load(self) -> object:
        return self._load()


def _plugin_module(name: str, blender: str) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def stmod_register_blenders(register):
        register.add(blender, lambda: object(), summary=f"{blender} from {name}")

    module.stmod_register_blenders = stmod_register_blenders
    return module


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch):
    """Install fake entry points in group 'stmod': ``fake_entry_points(ep, ...)``."""

    def install(*eps: FakeEntryPoint) -> None:
        monkeypatch.setattr(manager_module.md, "entry_points",
                            lambda group: [ep for ep in eps] if group == "stmod" else [])

    return install


def test_builtins_registered_through_hooks() -> None:
    """Built-in components are provided by built-in plugins, like any plugin's."""
    pm = fresh_plugin_manager()
    assert set(BUILTIN_PLUGINS) <= set(pm.records)
    blenders = pm.registry.components("blender")
    assert blenders["latent"].plugin == "stmod.blenders"
    assert {"plugins", "list", "check"} <= set(pm.registry.commands)


def test_factory_builds_fresh_managers() -> None:
    """No global: each call returns an independent manager."""
    a, b = fresh_plugin_manager(), fresh_plugin_manager()
    assert a is not b and a.registry is not b.registry


def test_entry_point_plugin_loaded_with_version(fake_entry_points) -> None:
    """Entry points in group 'stmod' load, with their distribution and version recorded."""
    fake_entry_points(FakeEntryPoint("extra", lambda: _plugin_module("extra_mod", "shiny"), dist="stmod-extra"))
    pm = make_plugin_manager(env={})
    assert pm.records["extra"].distribution == "stmod-extra" and pm.records["extra"].version == "1.2.3"
    assert pm.registry.components("blender")["shiny"].plugin == "extra"


def test_broken_plugin_reported_and_others_load(fake_entry_points) -> None:
    """A plugin that fails to import is recorded by name; the others still load."""

    def boom() -> object:
        raise ImportError("No module named 'missing_dependency'")

    fake_entry_points(FakeEntryPoint("broken", boom, dist="stmod-broken"),
                      FakeEntryPoint("good", lambda: _plugin_module("good_mod", "fine")))
    pm = make_plugin_manager(env={})
    assert [f.name for f in pm.failures] == ["broken"]
    assert "missing_dependency" in pm.failures[0].reason and pm.failures[0].distribution == "stmod-broken"
    assert "fine" in pm.registry.components("blender")


def test_broken_plugin_requested_explicitly_is_an_error(fake_entry_points) -> None:
    """-p NAME of a broken plugin fails loudly, naming it."""

    def boom() -> object:
        raise RuntimeError("bad init")

    fake_entry_points(FakeEntryPoint("broken", boom))
    with pytest.raises(PluginLoadError, match="plugin 'broken' failed to load: RuntimeError: bad init"):
        make_plugin_manager(plugin_args=["broken"], env={"STMOD_LOAD_PLUGINS": ""})


def test_duplicate_component_names_skip_the_second_plugin(fake_entry_points, caplog) -> None:
    """The second plugin registering a taken name is skipped, reported naming both; the first stays."""
    fake_entry_points(FakeEntryPoint("one", lambda: _plugin_module("m1", "same")),
                      FakeEntryPoint("two", lambda: _plugin_module("m2", "same")))
    pm = make_plugin_manager(env={})
    assert pm.registry.info("blender", "same").plugin == "one"
    assert [f.name for f in pm.failures] == ["two"] and "two" not in pm.records
    assert "'one' and plugin 'two'" in pm.failures[0].reason and "-p no:two" in pm.failures[0].reason
    assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [
        f"plugin 'two' (fake-dist) was skipped: {pm.failures[0].reason}"]


def test_duplicate_component_names_are_an_error_when_asked_for(fake_entry_points) -> None:
    fake_entry_points(FakeEntryPoint("one", lambda: _plugin_module("m1", "same")),
                      FakeEntryPoint("two", lambda: _plugin_module("m2", "same")))
    with pytest.raises(PluginConflictError) as info:
        make_plugin_manager(env={}, plugin_args=["two"]).registry
    assert (info.value.first, info.value.second, info.value.name) == ("one", "two", "same")


def test_duplicate_with_builtin_component(fake_entry_points) -> None:
    """Clashing with a built-in name skips the plugin; asked for with -p, it is an error."""
    fake_entry_points(FakeEntryPoint("clash", lambda: _plugin_module("m", "latent")))
    pm = make_plugin_manager(env={})
    assert pm.registry.info("blender", "latent").plugin == "stmod.blenders"
    assert "'stmod.blenders' and plugin 'clash'" in pm.failures[0].reason
    with pytest.raises(PluginConflictError, match="'stmod.blenders' and plugin 'clash'"):
        make_plugin_manager(env={}, plugin_args=["clash"]).registry


def test_block_with_p_no_and_env(fake_entry_points) -> None:
    """-p no:NAME and STMOD_DISABLE_PLUGINS block plugins, built-in or third-party."""
    fake_entry_points(FakeEntryPoint("extra", lambda: _plugin_module("extra_mod", "shiny")))
    pm = make_plugin_manager(plugin_args=["no:extra"], env={})
    assert "extra" not in pm.records and "shiny" not in pm.registry.components("blender")
    pm = make_plugin_manager(env={"STMOD_DISABLE_PLUGINS": "extra, stmod.blenders"})
    assert "extra" not in pm.records and pm.registry.components("blender") == {}


def test_load_plugins_env_restricts_entry_points(fake_entry_points) -> None:
    """STMOD_LOAD_PLUGINS limits which entry points load; '' loads none; -p adds one back."""
    fake_entry_points(FakeEntryPoint("a", lambda: _plugin_module("ma", "ba")),
                      FakeEntryPoint("b", lambda: _plugin_module("mb", "bb")))
    assert {"a", "b"} <= set(make_plugin_manager(env={}).records)
    only_a = make_plugin_manager(env={"STMOD_LOAD_PLUGINS": "a"})
    assert "a" in only_a.records and "b" not in only_a.records
    none = make_plugin_manager(env={"STMOD_LOAD_PLUGINS": ""})
    assert not {"a", "b"} & set(none.records)
    back = make_plugin_manager(plugin_args=["b"], env={"STMOD_LOAD_PLUGINS": ""})
    assert "b" in back.records and "a" not in back.records


def test_p_loads_a_module_by_import_path() -> None:
    """-p accepts an importable module that is not an entry point (stmod.testing's stand-ins)."""
    pm = make_plugin_manager(plugin_args=["stmod.testing"], env={"STMOD_LOAD_PLUGINS": ""})
    assert pm.registry.components("backbone")["identity"].plugin == "stmod.testing"


def test_p_unknown_plugin_is_usage_error(fake_entry_points) -> None:
    """-p of something that is neither an entry point nor a module lists what exists."""
    fake_entry_points(FakeEntryPoint("real", lambda: _plugin_module("m", "x")))
    with pytest.raises(UsageError, match=r"-p nosuch: no plugin of that name \(entry points in group 'stmod': real\)"):
        make_plugin_manager(plugin_args=["nosuch"], env={})


def test_essential_plugin_cannot_be_blocked() -> None:
    """The CLI commands plugin is essential."""
    with pytest.raises(UsageError, match="essential"):
        make_plugin_manager(plugin_args=["no:stmod.commands"], env={})


def test_unknown_component_lists_available() -> None:
    """Asking for an unknown component lists the names and their providers."""
    pm = fresh_plugin_manager()
    with pytest.raises(UnknownComponentError) as info:
        pm.registry.create("blender", "laten")
    assert info.value.available["latent"] == "stmod.blenders"
    assert "latent (from stmod.blenders)" in str(info.value)


def test_hook_that_raises_is_reported_by_plugin_name() -> None:
    """A registration hook that crashes is a PluginLoadError naming the plugin."""

    class Buggy:
        @hookimpl
        def stmod_register_blenders(self, register):
            raise ZeroDivisionError("oops")

    pm = fresh_plugin_manager(Buggy())
    with pytest.raises(PluginLoadError, match="stmod_register_blenders raised ZeroDivisionError"):
        pm.registry


def _half_broken(name: str) -> types.ModuleType:
    """Registers a blender, then its commands hook raises: nothing of it may stay."""
    module = _plugin_module(name, f"{name}-blend")

    @hookimpl
    def stmod_register_commands(register):
        raise RuntimeError("commands hook crashed")

    module.stmod_register_commands = stmod_register_commands
    return module


def test_hook_that_raises_skips_the_whole_plugin(fake_entry_points) -> None:
    fake_entry_points(FakeEntryPoint("half", lambda: _half_broken("half")),
                      FakeEntryPoint("good", lambda: _plugin_module("m", "fine")))
    pm = make_plugin_manager(env={})
    assert "fine" in pm.registry.components("blender")
    assert "half-blend" not in pm.registry.components("blender")  # rolled back with the plugin
    assert pm.failures[0].name == "half"
    assert "stmod_register_commands raised RuntimeError: commands hook crashed" in pm.failures[0].reason
    with pytest.raises(PluginLoadError, match="plugin 'half' failed to load: stmod_register_commands raised"):
        make_plugin_manager(env={}, plugin_args=["half"]).registry


def test_misspelt_hook_skips_the_plugin(fake_entry_points) -> None:
    module = types.ModuleType("typo")

    @hookimpl
    def stmod_register_blender(register):  # no such hook: pluggy refuses it
        pass

    module.stmod_register_blender = stmod_register_blender
    fake_entry_points(FakeEntryPoint("typo", lambda: module))
    pm = make_plugin_manager(env={})
    assert pm.failures[0].name == "typo" and "stmod_register_blender" in pm.failures[0].reason
    assert "latent" in pm.registry.components("blender")
    with pytest.raises(PluginLoadError, match="plugin 'typo'"):
        make_plugin_manager(env={}, plugin_args=["typo"])


def test_entry_point_name_claimed_twice_keeps_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeEntryPoint("twin", lambda: _plugin_module("a", "from-a"), dist="dist-a")
    second = FakeEntryPoint("twin", lambda: _plugin_module("b", "from-b"), dist="dist-b")
    monkeypatch.setattr(manager_module.md, "entry_points", lambda group: [first, second] if group == "stmod" else [])
    pm = make_plugin_manager(env={})
    assert "from-a" in pm.registry.components("blender") and pm.failures[0].distribution == "dist-b"
    with pytest.raises(PluginConflictError):
        make_plugin_manager(env={}, plugin_args=["twin"])
