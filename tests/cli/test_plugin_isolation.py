"""A broken third-party plugin is skipped with one warning; every command keeps working."""

from __future__ import annotations

import json
import types

import pytest

from stmod import hookimpl
from stmod.plugins import manager as manager_module
from stmod.testing import run_cli


class _EntryPoint:
    def __init__(self, name: str, module: types.ModuleType) -> None:
        self.name, self.value, self._module = name, f"{name}_pkg.plugin", module
        self.dist = types.SimpleNamespace(name=f"{name}-dist", version="0.1")

    def load(self) -> types.ModuleType:
        return self._module


def _module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook, body in hooks.items():
        setattr(module, hook, hookimpl(body))
    return module


def _raise(register):
    raise KeyError("no such thing")


def _clash(register):
    register.add("latent", lambda: None, summary="a second 'latent'")


def _command(register):
    def run(args, session):
        raise RuntimeError("the command crashed")

    register.add("explode", configure=lambda parser: None, run=run, help="raises")


@pytest.fixture
def broken_plugins(monkeypatch: pytest.MonkeyPatch):
    eps = [_EntryPoint("raiser", _module("raiser", stmod_register_blenders=_raise)),
           _EntryPoint("clasher", _module("clasher", stmod_register_blenders=_clash)),
           _EntryPoint("exploder", _module("exploder", stmod_register_commands=_command))]
    monkeypatch.setattr(manager_module.md, "entry_points", lambda group: eps if group == "stmod" else [])


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["list", "blenders"], ["check", "--help"]])
def test_commands_work_beside_broken_plugins(broken_plugins, argv: list[str]) -> None:
    result = run_cli(argv, env={})
    assert result.exit_code == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and all(line.startswith("WARNING") and "was skipped" in line for line in warnings)
    assert "'raiser'" in warnings[0] and "'clasher'" in warnings[1]


def test_plugins_shows_broken_plugins_with_their_reason(broken_plugins) -> None:
    text = run_cli(["plugins"], env={}).stdout
    assert "BROKEN raiser (raiser-dist): plugin 'raiser' failed to load: stmod_register_blenders raised KeyError" in text
    assert "BROKEN clasher (clasher-dist): blender 'latent' is registered by both plugin 'stmod.blenders'" in text
    report = json.loads(run_cli(["plugins", "--json"], env={}).stdout)
    broken = {f["name"]: f["reason"] for f in report["failed"]}
    assert set(broken) == {"raiser", "clasher"} and "KeyError" in broken["raiser"]
    assert "exploder" in {p["name"] for p in report["plugins"]}


@pytest.mark.parametrize("name, message", [
    ("raiser", "plugin 'raiser' failed to load: stmod_register_blenders raised KeyError"),
    ("clasher", "blender 'latent' is registered by both plugin 'stmod.blenders' and plugin 'clasher'"),
])
def test_a_broken_plugin_asked_for_is_an_error(broken_plugins, name: str, message: str) -> None:
    result = run_cli(["-p", name, "plugins"], env={})
    assert result.exit_code == 2
    assert message in result.stderr.splitlines()[-1]


def test_a_plugin_command_that_raises_names_the_plugin(broken_plugins) -> None:
    result = run_cli(["explode"], env={})
    assert result.exit_code == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("stmod-run: error: command 'explode' of plugin 'exploder' failed: RuntimeError: "
                           "the command crashed (a bug in that plugin, not in stmod)")
