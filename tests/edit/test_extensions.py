"""The extension kind through the editor: the order of its calls, the cache key, its store, clean removal."""

from __future__ import annotations

import contextlib
import json

import attrs
import pytest
import torch

from stmod import hookimpl
from stmod.core.config import load_job
from stmod.core.errors import ConfigError
from stmod.core.io.ownership import is_owned
from stmod.core.pipeline.cache import InversionCache
from stmod.core.pipeline.editor import Editor
from stmod.core.sampling import ddim_timesteps
from stmod.testing import fresh_plugin_manager


@attrs.frozen
class ProbeOptions:
    #: factor on the UNet's output (``conv_out``) while installed; 1 leaves the model as it is
    scale: float = 1.0
    #: pretend the store lacks a recording, so a cached inversion must run again
    rerun: bool = False


class Probe:
    """An extension that logs every call and scales the UNet's ε through a forward hook on ``conv_out``."""

    def __init__(self, options: ProbeOptions, log: list) -> None:
        self.options, self.log, self.store = options, log, None

    def check(self, spec) -> None:
        if spec.steps > 50:
            raise ConfigError("probe: at most 50 steps", key="steps")
        self.log.append(("check",))

    def inversion_settings(self):
        return {"scale": self.options.scale}

    def prepare(self, request) -> None:
        self.store = request.store
        self.log.append(("prepare", request.num_frames, tuple(request.latent_size), request.frames.shape))
        if request.store is not None:
            (request.store / "made-by-probe.json").write_text(json.dumps({"frames": request.num_frames}))

    def needs_inversion(self) -> bool:
        return self.options.rerun

    @contextlib.contextmanager
    def install(self, model, *, role):
        if role != "unet":
            yield
            return
        handle = model.conv_out.register_forward_hook(lambda module, args, out: out * self.options.scale)
        self.log.append(("install", role))
        try:
            yield
        finally:
            handle.remove()
            self.log.append(("remove", role))

    def step(self, *, phase, step_index, timestep, branches) -> None:
        self.log.append((phase, step_index, timestep, tuple(branches)))


class ProbePlugin:
    def __init__(self) -> None:
        self.log: list = []
        self.instances: list[Probe] = []

    @hookimpl
    def stmod_register_extensions(self, register):
        def make(options):
            self.instances.append(Probe(options, self.log))
            return self.instances[-1]

        register.add("probe", make, options=ProbeOptions, summary="logs its calls, scales the UNet output")


def _editor(plugin: ProbePlugin, tmp_path, cache: bool = True) -> Editor:
    return Editor(fresh_plugin_manager(plugin).registry, progress=False,
                  cache=InversionCache(tmp_path / "cache") if cache else False)


def test_calls_come_in_order_and_hooks_are_removed(demo_job, tmp_path) -> None:
    plugin = ProbePlugin()
    editor = _editor(plugin, tmp_path)
    steps = 3
    result = editor.run(load_job(demo_job(extensions=["probe"], steps=steps, guidance=7.5)))
    log, timesteps = plugin.log, ddim_timesteps(steps)
    assert log[0] == ("check",)
    assert log[1] == ("prepare", 4, (8, 8), (4, 64, 64, 3))
    invert = [entry for entry in log if entry[0] == "invert"]
    denoise = [entry for entry in log if entry[0] == "denoise"]
    assert invert == [("invert", k, t, ("cond",)) for k, t in enumerate(reversed(timesteps))]
    assert denoise == [("denoise", i, t, ("uncond", "cond")) for i, t in enumerate(timesteps)]
    assert [e for e in log if e[0] in ("install", "remove")] == [("install", "unet"), ("remove", "unet")] * 2
    unet = editor._backbones and next(iter(editor._backbones.values())).unet
    assert not unet.conv_out._forward_hooks  # nothing of the extension is left on the model
    store = plugin.instances[0].store
    assert store.name == "probe" and store.parent.name.endswith(".d") and is_owned(store) and is_owned(store.parent)
    assert json.loads((store / "made-by-probe.json").read_text()) == {"frames": 4}
    assert result.frames.shape == (4, 64, 64, 3)


def test_an_extension_changes_the_edit_and_its_settings_key_the_cache(demo_job, tmp_path) -> None:
    """Scaling ε changes the result; a different setting is another inversion; the same one is a hit."""
    plugin = ProbePlugin()
    editor = _editor(plugin, tmp_path)
    job = demo_job(steps=2)  # written once: rewriting the mp4 need not give the same bytes
    plain = editor.run(load_job(job))
    scaled, again = (editor.run(load_job(job, {"extensions": [{"name": "probe", "scale": 0.5}], "overwrite": True}))
                     for _ in range(2))
    assert not torch.equal(torch.from_numpy(plain.frames), torch.from_numpy(scaled.frames))
    assert plain.run["inversion"]["key"] != scaled.run["inversion"]["key"]
    assert (scaled.run["inversion"]["cached"], again.run["inversion"]["cached"]) == (False, True)
    assert (again.frames == scaled.frames).all()


def test_needs_inversion_turns_a_cached_entry_into_a_miss(demo_job, tmp_path) -> None:
    plugin = ProbePlugin()
    editor = _editor(plugin, tmp_path)
    job = demo_job(extensions=[{"name": "probe", "rerun": True}], steps=2)
    first, second = (editor.run(load_job(job, {"overwrite": True})) for _ in range(2))
    assert first.run["inversion"]["key"] == second.run["inversion"]["key"]
    assert second.run["inversion"]["cached"] is False
    assert len([e for e in plugin.log if e[0] == "invert"]) == 4  # both runs inverted (2 steps each)


def test_without_a_cache_the_store_is_none(demo_job, tmp_path) -> None:
    plugin = ProbePlugin()
    _editor(plugin, tmp_path, cache=False).run(load_job(demo_job(extensions=["probe"], steps=2)))
    assert plugin.instances[0].store is None


def test_extension_checks_and_options_are_the_jobs_errors(demo_job, tmp_path) -> None:
    plugin = ProbePlugin()
    editor = _editor(plugin, tmp_path)
    with pytest.raises(ConfigError, match="probe: at most 50 steps"):
        editor.check(load_job(demo_job(extensions=["probe"], steps=60)))
    with pytest.raises(ConfigError, match="unknown key 'scal' in extensions\\[0\\] \\(probe\\)"):
        editor.check(load_job(demo_job(extensions=[{"name": "probe", "scal": 2}])))
    with pytest.raises(ConfigError, match="extension 'probe' is listed twice"):
        load_job(demo_job(extensions=["probe", {"name": "probe", "scale": 2.0}]))
    assert plugin.log.count(("check",)) == 0  # the errors came before any extension was asked


def test_a_failed_install_leaves_the_models_as_they_were(demo_job, tmp_path) -> None:
    """An extension whose install raises: the modulator's processors and earlier hooks are undone."""
    plugin = ProbePlugin()

    class Broken(ProbePlugin):
        @hookimpl
        def stmod_register_extensions(self, register):
            class Failing(Probe):
                def install(self, model, *, role):
                    raise RuntimeError("cannot install")

            register.add("failing", lambda: Failing(ProbeOptions(), []), summary="fails to install")

    editor = Editor(fresh_plugin_manager(plugin, Broken()).registry, progress=False, cache=False)
    with pytest.raises(RuntimeError, match="cannot install"):
        editor.run(load_job(demo_job(extensions=["probe", "failing"], steps=2)))
    unet = next(iter(editor._backbones.values())).unet
    assert not unet.conv_out._forward_hooks
    assert {type(p).__module__.split(".")[0] for p in unet.attn_processors.values()} == {"diffusers"}
