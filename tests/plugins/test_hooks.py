"""Every hook: a test per hook, registrar contracts, and meta-tests for docs and tests."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import attrs
import pytest

from stmod import hookimpl
from stmod.core.errors import ComponentContractError, ConfigError
from stmod.plugins import hookspecs
from stmod.testing import (
    ConstantLayoutProvider,
    IdentityBackbone,
    NullModulator,
    PassThroughAnnotator,
    fresh_plugin_manager,
    run_cli,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"
HOOKS = sorted(name for name, fn in vars(hookspecs).items() if name.startswith("stmod_") and callable(fn))


@attrs.frozen
class Opts:
    size: int = attrs.field(default=1, validator=attrs.validators.ge(0))


class NullExtension:
    """An extension that changes nothing."""

    def check(self, spec):
        pass

    def inversion_settings(self):
        return {}

    def prepare(self, request):
        pass

    def needs_inversion(self):
        return False

    def install(self, model, *, role):
        return contextlib.nullcontext()

    def step(self, *, phase, step_index, timestep, branches):
        pass


class Registers:
    """A throwaway plugin registering one component of every kind."""

    @hookimpl
    def stmod_register_backbones(self, register):
        register.add("bb", lambda opts: IdentityBackbone(), options=Opts, summary="a backbone")

    @hookimpl
    def stmod_register_layout_providers(self, register):
        register.add("lp", ConstantLayoutProvider, summary="a layout")

    @hookimpl
    def stmod_register_modulators(self, register):
        register.add("mod", NullModulator, summary="a modulator")

    @hookimpl
    def stmod_register_blenders(self, register):
        register.add("bl", lambda: object(), summary="not really a blender")

    @hookimpl
    def stmod_register_annotators(self, register):
        register.add("ann", PassThroughAnnotator, summary="an annotator")

    @hookimpl
    def stmod_register_extensions(self, register):
        register.add("ext", lambda opts: NullExtension(), options=Opts, summary="an extension")

    @hookimpl
    def stmod_register_commands(self, register):
        register.add("hello", configure=lambda parser: parser.add_argument("--who", default="you"),
                     run=lambda args, session: session.echo(f"hello {args.who}") or 0, help="say hello")

    @hookimpl
    def stmod_register_job_formats(self, register):
        # A format whose files say ``clip:`` and ``text:`` instead of ``video:`` and ``prompt:``.
        register.add("short", detect=lambda data: "clip" in data, summary="clip/text job files",
                     convert=lambda data, *, source, allow_unsupported: {"video": data["clip"], "prompt": data["text"]})


@pytest.fixture
def pm():
    return fresh_plugin_manager(Registers())


def test_hook_stmod_register_backbones(pm) -> None:
    """Backbones registered with options are built with validated options."""
    assert isinstance(pm.registry.create("backbone", "bb", {"size": 3}), IdentityBackbone)
    with pytest.raises(ConfigError, match="unknown key 'sise' in backbone 'bb' options; did you mean 'size'"):
        pm.registry.create("backbone", "bb", {"sise": 3})
    with pytest.raises(ConfigError, match="size"):
        pm.registry.create("backbone", "bb", {"size": -1})


def test_hook_stmod_register_layout_providers(pm) -> None:
    """Layout providers are registered with their plugin name."""
    assert pm.registry.info("layout", "lp").plugin == "test-plugin-0"
    assert isinstance(pm.registry.create("layout", "lp"), ConstantLayoutProvider)


def test_hook_stmod_register_modulators(pm) -> None:
    """Modulators are built and satisfy the protocol."""
    assert isinstance(pm.registry.create("modulator", "mod"), NullModulator)


def test_hook_stmod_register_blenders(pm) -> None:
    """A factory whose product does not satisfy the protocol is reported with the plugin's name."""
    with pytest.raises(ComponentContractError, match="blender 'bl' from plugin 'test-plugin-0' built an object "
                                                     "that is not a Blender .missing: blend."):
        pm.registry.create("blender", "bl")


def test_hook_stmod_register_annotators(pm) -> None:
    """Annotators without options reject any option."""
    assert isinstance(pm.registry.create("annotator", "ann"), PassThroughAnnotator)
    with pytest.raises(ConfigError, match="unknown key 'x'"):
        pm.registry.create("annotator", "ann", {"x": 1})


def test_hook_stmod_register_extensions(pm) -> None:
    """Extensions are built with validated options and satisfy the protocol; a half one is named."""
    assert isinstance(pm.registry.create("extension", "ext", {"size": 2}), NullExtension)
    with pytest.raises(ConfigError, match="unknown key 'sise' in extension 'ext' options"):
        pm.registry.create("extension", "ext", {"sise": 2})

    class Half:
        def install(self, model, *, role):
            return contextlib.nullcontext()

    broken = fresh_plugin_manager(type("P", (), {"stmod_register_extensions": hookimpl(
        lambda self, register: register.add("half", Half, summary="no step"))})())
    with pytest.raises(ComponentContractError, match=r"not an Extension .missing: inversion_settings\)"):
        broken.registry.create("extension", "half")  # check, prepare, step: optional abilities, not asked for
    # the end-to-end contract (order of calls, cache key, store, removal): tests/edit/test_extensions.py


def test_hook_stmod_register_commands() -> None:
    """A plugin's subcommand appears in the CLI and runs."""
    import sys
    import types

    module = types.ModuleType("hello_plugin_for_test")
    module.stmod_register_commands = Registers.stmod_register_commands.__get__(Registers())
    sys.modules[module.__name__] = module
    try:
        result = run_cli(["-p", module.__name__, "hello", "--who", "tests"], env={"STMOD_LOAD_PLUGINS": ""})
    finally:
        del sys.modules[module.__name__]
    assert result.exit_code == 0 and result.stdout.strip() == "hello tests"


def test_hook_stmod_register_job_formats(pm, tmp_path: Path) -> None:
    """A plugin's job format converts the files it detects; its relative paths stay relative to the file."""
    import numpy as np
    from PIL import Image

    from stmod.core.config import load_job

    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(frames / f"{i:02d}.png")
    job = tmp_path / "job.yaml"
    job.write_text("clip: {path: clip, size: [64, 64]}\ntext: a cat\n")
    info = pm.registry.job_formats["short"]
    assert (info.plugin, info.paths) == ("test-plugin-0", "job")
    spec = load_job(job, formats=pm.registry.job_formats.values())
    assert spec.prompt == "a cat" and spec.video.path == frames


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.add("bad name", IdentityBackbone, summary="x"), "invalid name"),
        (lambda r: r.add("ok", 42, summary="x"), "not callable"),
        (lambda r: r.add("ok", IdentityBackbone, summary=""), "one-line summary"),
        (lambda r: r.add("ok", IdentityBackbone, summary="x", options=dict), "not an attrs class"),
    ],
)
def test_registrar_rejects_bad_registrations(call, message: str) -> None:
    """The registrar checks names, factories, summaries and options at registration time."""

    class Bad:
        @hookimpl
        def stmod_register_backbones(self, register):
            call(register)

    with pytest.raises(ComponentContractError, match=message):
        fresh_plugin_manager(Bad()).registry


def test_every_hook_is_documented() -> None:
    """Each hook has a heading `name(args)` in docs/hooks.md."""
    text = DOCS.read_text()
    for name in HOOKS:
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"## {name}({args})" in text, f"docs/hooks.md lacks an entry for {name}({args})"


def test_every_hook_has_a_test() -> None:
    """Each hook has a test_hook_<name> in this module."""
    for name in HOOKS:
        assert f"test_hook_{name}" in globals(), f"no test_hook_{name}"


def test_every_hook_has_a_docstring_contract() -> None:
    """Hookspecs are documented where they are declared, with the registrar parameter."""
    for name in HOOKS:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert ":param register:" in doc, name
