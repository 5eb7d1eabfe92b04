"""The one Python entry without running an edit: constructors resolve through the registry, device and dtype
problems surface at construction, the step-callback contract, minimal extension contracts, frozen
components, results that print a summary, and errors that give their fix in Python and CLI terms."""

from __future__ import annotations

import contextlib
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

import stmod
from stmod import Editor
from stmod.api import pretrained_backbone
from stmod.cli import in_cli_terms
from stmod.core.errors import CheckpointError, EditCancelled, InputError, OutputExistsError
from stmod.core.pipeline.editor import EditResult
from stmod.core.pipeline.progress import RunReporter
from stmod.core.protocols import AttentionLevels, ChecksJob, Extension, FollowsSteps, PreparesFromClip
from stmod.core.sampling import NoiseSchedule, denoise, invert
from stmod.core.types import LayoutMasks
from stmod.testing import fresh_plugin_manager


def test_from_pretrained_resolves_names_through_the_registry() -> None:
    """A registered backbone's name is that backbone; anything else is a location for the backbone that loads
    one; a plugin's backbone that also loads locations makes the choice explicit."""
    registry = fresh_plugin_manager().registry
    assert pretrained_backbone(registry, "shapes") == ("shapes", {})
    assert pretrained_backbone(registry, "some/model") == ("sd15", {"model": "some/model"})
    # several loaders (sd15, wan): the one that claims the location most surely
    assert pretrained_backbone(registry, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")[0] == "wan"

    @attrs.frozen
    class WanOptions:
        model: str = "Wan-AI/Wan2.1"

    class Loader:
        def __init__(self, options: WanOptions) -> None:
            self.options = options

        @staticmethod
        def location_claim(location: str) -> int:
            return 1  # as unsure of a hub id as sd15 is

    class Plugin:
        @stmod.hookimpl
        def stmod_register_backbones(self, register) -> None:
            register.add("wan-test", Loader, options=WanOptions, summary="another loader")

    registry = fresh_plugin_manager(Plugin()).registry
    with pytest.raises(InputError, match="several backbones load a model location .*sd15, wan, wan-test.*backbone="):
        pretrained_backbone(registry, "some/model")
    assert pretrained_backbone(registry, "some/model", "wan-test") == ("wan-test", {"model": "some/model"})
    with pytest.raises(InputError, match="does not load a model location"):
        pretrained_backbone(registry, "some/model", "shapes")


def test_weights_that_are_not_there_are_refused_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                ) -> None:
    """A hub id neither cached nor downloadable, or a folder that does not exist, fails in from_pretrained
    (naming the location and how to get it), not when the first job runs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match=r"some/model: SD 1\.5 model is not in the Hugging Face cache.*hf download"):
        Editor.from_pretrained("some/model")
    with pytest.raises(CheckpointError, match="not found: no such file or folder"):
        Editor.from_pretrained(str(tmp_path / "missing-model"))
    with pytest.raises(CheckpointError, match="Wan model is not in the Hugging Face cache"):
        Editor.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert Editor.from_pretrained("shapes", progress=False, cache=False).backbone is not None  # nothing to fetch


def test_device_and_dtype_problems_surface_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: asking for one fails in from_pretrained, naming the argument and the Python fix."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"device='cuda': no CUDA device .*use device=\"cpu\""):
        Editor.from_pretrained("some/model", device="cuda")
    with pytest.raises(InputError, match="device='gpu9'"):
        Editor.from_pretrained("some/model", device="gpu9")
    with pytest.raises(InputError, match="torch_dtype='torch.int8'.*float16"):
        Editor.from_pretrained("some/model", torch_dtype=torch.int8)
    with pytest.raises(InputError, match="torch_dtype.*'shapes' backbone picks its dtype itself"):
        Editor.from_pretrained("shapes", torch_dtype=torch.float32)
    editor = Editor.from_pretrained("shapes", device="cpu", progress=False, cache=False)
    assert editor.backbone is not None and editor.backbone.options == {"device": "cpu"}
    with pytest.raises(InputError, match="no CUDA device"):
        editor.to("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match="cuda:3.*2 CUDA device"):
        editor.to("cuda:3")
    assert editor.to("cuda:1").backbone.options["device"] == "cuda:1"


def test_from_plugins_runs_jobs_on_their_own_backbone() -> None:
    editor = Editor.from_plugins(progress=False, cache=False)
    assert isinstance(editor, Editor) and editor.backbone is None
    assert "load_job" not in stmod.__all__ and "editor_from_plugins" not in stmod.__all__


def _schedule() -> NoiseSchedule:
    return NoiseSchedule(alphas_cumprod=torch.linspace(0.999, 0.01, 1000, dtype=torch.float64), clean_alpha=1.0)


def test_step_callback_replaces_latents_and_interrupts() -> None:
    """The returned ``latents`` are what the next step starts from (float64 reference: the same loop with
    the replacement done by hand); ``_interrupt`` stops after the step that set it."""
    schedule, timesteps = _schedule(), [801, 601, 401, 201, 1]
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)

    def predict(latents: torch.Tensor, t: int, i: int) -> torch.Tensor:
        return 0.1 * latents + t / 1000

    class Host:
        _interrupt = False

    host, seen = Host(), []

    def halve(editor, step, timestep, kwargs):
        seen.append((editor, kwargs["phase"], step, timestep))
        return {"latents": kwargs["latents"] * 0.5} if step == 2 else kwargs

    reporter = RunReporter(host, show_bars=False, callback=halve)
    with reporter.phase(len(timesteps), "denoising") as progress:
        got = denoise(x, predict, schedule, timesteps, on_step_end=progress.step_end)
    expected = x.clone()
    for i, t in enumerate(timesteps):
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        alpha_t, alpha_n = schedule.alpha(t), schedule.alpha(nxt)
        eps = predict(expected, t, i)
        x0 = (expected - (1 - alpha_t) ** 0.5 * eps) / alpha_t ** 0.5
        expected = alpha_n ** 0.5 * x0 + (1 - alpha_n) ** 0.5 * eps
        expected = expected * 0.5 if i == 2 else expected
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert [s[1:3] for s in seen] == [("denoising", i) for i in range(5)] and seen[0][0] is host

    def stop(editor, step, timestep, kwargs):
        editor._interrupt = step == 1
        return kwargs

    with pytest.raises(EditCancelled, match="inversion step 1"):
        reporter = RunReporter(host, show_bars=False, callback=stop)
        with reporter.phase(5, "inversion") as progress:
            invert(x, predict, schedule, timesteps, on_step_end=progress.step_end)
    bad = RunReporter(Host(), show_bars=False, callback=lambda *a: {"latents": torch.zeros(1)})
    with pytest.raises(InputError, match="callback_on_step_end.*shaped"):
        denoise(x, predict, schedule, timesteps, on_step_end=lambda i, t, z: bad.step_end("denoising", i, t, z))


def test_tensor_inputs_are_checked_before_anything_runs() -> None:
    with pytest.raises(InputError, match=r"callback_on_step_end_tensor_inputs=\['latents', 'prompt_embeds'\]"):
        RunReporter(None, show_bars=False, callback=lambda *a: {}, tensor_inputs=["latents", "prompt_embeds"])

    class Declares:  # a diffusers PipelineCallback names its tensors itself
        tensor_inputs = ["latents"]

        def __call__(self, *args):
            return {}

    assert RunReporter(None, show_bars=False, callback=Declares()).tensor_inputs == ("latents",)


class _MinimalExtension:
    """What every extension needs, nothing more."""

    def inversion_settings(self):
        return {}

    def install(self, model, *, role):
        return contextlib.nullcontext()


def test_an_extension_needs_only_install_and_inversion_settings() -> None:
    extension = _MinimalExtension()
    assert isinstance(extension, Extension)
    assert not isinstance(extension, (ChecksJob, PreparesFromClip, FollowsSteps))
    from stmod.plugins.extensions.freeu import FreeUExtension

    assert not any(hasattr(FreeUExtension, name) for name in ("check", "prepare", "needs_inversion", "step"))
    from stmod.backbones.sd15 import StableDiffusionBackbone

    assert issubclass(StableDiffusionBackbone, AttentionLevels)


def test_components_are_frozen_once_built(demo_job) -> None:
    from stmod.plugins.manager import load_job

    components = Editor.from_plugins(progress=False, cache=False).build(load_job(demo_job()))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        components.backbone = None  # type: ignore[misc]


def test_check_warns_where_run_would_refuse_and_run_overwrites(demo_job, caplog: pytest.LogCaptureFixture) -> None:
    """``check`` means what ``stmod-run check`` means: an existing output folder is a note, not an error."""
    from stmod.plugins.manager import load_job

    spec = load_job(demo_job())
    spec.output.mkdir(parents=True)
    (spec.output / "result.mp4").write_bytes(b"stmod wrote this")
    editor = Editor.from_plugins(progress=False, cache=False)
    editor.check(spec)
    assert "needs overwrite=True" in caplog.text
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        editor.run(spec)


def test_errors_say_their_fix_in_python_terms_and_the_cli_in_flags() -> None:
    message = str(OutputExistsError("/tmp/out"))
    assert "overwrite=True" in message and "--" not in message
    assert in_cli_terms(message) == ("output folder /tmp/out already exists; pass --overwrite to replace it or "
                                     "choose another output (--out)")
    assert in_cli_terms('no CUDA device; use device="cpu"') == "no CUDA device; use --device cpu"


def test_a_result_prints_a_summary_not_arrays() -> None:
    frames = np.zeros((3, 8, 16, 3), np.uint8)
    layout = LayoutMasks(masks=torch.zeros(3, 1, 8, 16, dtype=torch.bool), names=("cat",))
    result = EditResult(output=Path("out"), source=frames, frames=frames, layout=layout,
                        run={"phases": {"invert": 1.25, "denoise": 2.0}})
    assert repr(result) == "EditResult(output='out', frames=3, size=16x8, regions=[cat], seconds=3.2)"
