"""Registration hooks run through pluggy's call path: monitoring and hook wrappers see every call."""

from __future__ import annotations

from stmod import hookimpl
from stmod.plugins.manager import make_plugin_manager
from stmod.testing import fresh_plugin_manager


def test_hookcall_monitoring_sees_each_plugin() -> None:
    pm = make_plugin_manager(env={}, load_entrypoints=False)
    calls: list[tuple[str, list[str]]] = []
    undo = pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, [impl.plugin_name for impl in impls])),
        lambda outcome, name, impls, kwargs: None)
    try:
        assert "latent" in pm.registry.components("blender")
    finally:
        undo()
    assert ("stmod_register_blenders", ["stmod.blenders"]) in calls
    assert ("stmod_register_commands", ["stmod.commands"]) in calls


def test_hook_wrapper_wraps_every_registration() -> None:
    seen: list[str] = []

    class Tracer:
        @hookimpl(wrapper=True)
        def stmod_register_blenders(self, register):
            seen.append(register.plugin)
            return (yield)

    pm = fresh_plugin_manager(Tracer())
    assert set(pm.registry.components("blender")) >= {"none", "latent", "videograin"}
    assert seen == ["stmod.blenders"]
