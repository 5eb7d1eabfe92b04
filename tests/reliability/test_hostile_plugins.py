"""Plugins cannot take the host down or lie to it: a ``BaseException`` from a plugin's import, its
registration or its components is contained (a ``KeyboardInterrupt`` still interrupts: exit 130, no
traceback); a component's failure names the plugin in one line, exit 2; non-finite latents are refused
naming the component."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

from stmod.core.errors import PluginComponentError
from stmod.core.guard import guard_component, unwrap
from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
_COUNTER = itertools.count()

_BLENDER = """
import torch
from stmod import hookimpl

class Blender:
    def blend(self, latents, *, step_index, timestep, next_timestep, context):
        {blend}

def make():
    {factory}
    return Blender()

@hookimpl
def stmod_register_blenders(register):
    register.add("hostile", make, summary="a blender that misbehaves")
"""


def _plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Write ``source`` as a module of a fresh name on ``sys.path``; returns its name."""
    name = f"stmod_hostile_{next(_COUNTER)}_{tmp_path.name[-8:].replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _one_line(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize("raised", ["SystemExit(0)", "SystemExit('bye')", "GeneratorExit()", "RuntimeError('x')"])
def test_plugin_raising_at_import_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: str) -> None:
    name = _plugin(tmp_path, monkeypatch, f"raise {raised}\n")
    _one_line(run_cli(["-p", name, "plugins"], env=ENV), 2, name, "failed to load")


def test_keyboard_interrupt_at_import_is_an_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _plugin(tmp_path, monkeypatch, "raise KeyboardInterrupt\n")
    _one_line(run_cli(["-p", name, "plugins"], env=ENV), 130, "interrupted")


def test_registration_hook_raising_system_exit_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _plugin(tmp_path, monkeypatch, """
        from stmod import hookimpl

        @hookimpl
        def stmod_register_blenders(register):
            raise SystemExit(0)
        """)
    _one_line(run_cli(["-p", name, "plugins"], env=ENV), 2, name, "SystemExit")


@pytest.mark.parametrize("blend, factory, needles", [
    ("raise SystemExit(0)", "pass", ["blend()", "SystemExit"]),
    ("raise KeyError('latents')", "pass", ["blend()", "KeyError"]),
    ("return latents * float('nan')", "pass", ["blend()", "non-finite"]),
    ("return latents", "raise RuntimeError('no GPU here')", ["factory()", "no GPU here"]),
])
def test_a_component_failure_names_its_plugin(job_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blend: str,
                                              factory: str, needles: list[str]) -> None:
    name = _plugin(tmp_path, monkeypatch, _BLENDER.format(blend=blend, factory=factory))
    job = job_file(blend="hostile", steps=2)
    result = run_cli(["-p", "stmod.testing", "-p", name, "edit", str(job), "--quiet"], env=ENV)
    _one_line(result, 2, f"plugin {name!r}", "blend (hostile)", *needles)
    assert not (tmp_path / "out").exists()


def test_a_layout_check_raising_names_its_plugin(job_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _plugin(tmp_path, monkeypatch, """
        from stmod import hookimpl

        class Layout:
            feature_request = None

            def check(self, spec, regions, clip):
                raise SystemExit(3)

            def layout(self, request, regions):
                raise AssertionError("never reached")

        @hookimpl
        def stmod_register_layout_providers(register):
            register.add("hostile-layout", Layout, summary="a layout that misbehaves")
        """)
    job = job_file(layout={"name": "hostile-layout"})
    _one_line(run_cli(["-p", "stmod.testing", "-p", name, "check", str(job)], env=ENV), 2, name, "check()",
              "SystemExit")


def test_guarded_component_keeps_its_protocol_and_class() -> None:
    import torch

    from stmod.core.protocols import Blender
    from stmod.plugins.blenders import NoBlend

    inner = NoBlend()
    guarded = guard_component(inner, where="blend (none)", plugin="p")
    assert isinstance(guarded, Blender) and isinstance(guarded, NoBlend) and unwrap(guarded) is inner
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    assert torch.equal(guarded.blend(x, step_index=0, timestep=1, next_timestep=0, context=None), x)
    with pytest.raises(PluginComponentError, match="non-finite"):
        guarded.blend(x / 0 * 0, step_index=0, timestep=1, next_timestep=0, context=None)
    with pytest.raises(KeyboardInterrupt):
        guard_component(_Interrupting(), where="w", plugin="p").run()


class _Interrupting:
    def run(self) -> None:
        raise KeyboardInterrupt


def test_a_guarded_failure_is_still_the_plugins_exception_type_for_python_callers() -> None:
    class _Raising:
        def run(self, kind: type[BaseException]) -> None:
            raise kind("broken")

    guarded = guard_component(_Raising(), where="w", plugin="p")
    for kind in (RuntimeError, ValueError, KeyError):
        with pytest.raises(kind) as caught:
            guarded.run(kind)
        assert isinstance(caught.value, PluginComponentError) and "broken" in str(caught.value)
    for kind in (SystemExit, OSError, GeneratorExit):
        with pytest.raises(PluginComponentError):
            guarded.run(kind)
