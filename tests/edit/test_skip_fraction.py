"""``skip_fraction`` (the official ``blending_percentage``): the first ``int(steps·f)`` denoising steps are skipped."""

from __future__ import annotations

import pytest
import torch

import stmod.core.pipeline.editor as editor_module
from stmod.core.config import job_from_mapping, load_job
from stmod.core.errors import ConfigError
from stmod.core.pipeline.editor import Editor
from stmod.testing import fresh_plugin_manager


@pytest.mark.parametrize(("steps", "fraction"), [(4, 0.5), (5, 0.25), (4, 0.0)])
def test_exactly_the_first_steps_are_skipped(demo_job, monkeypatch: pytest.MonkeyPatch, steps: int,
                                             fraction: float) -> None:
    """The denoising runs timesteps[int(steps·f):], from the fully inverted latent, step indices from 0."""
    seen: dict[str, object] = {}
    real_denoise, real_inversion = editor_module.denoise, editor_module.cached_inversion

    def spy_denoise(x, predict, schedule, timesteps, **kwargs):
        seen["start"], seen["timesteps"] = x, list(timesteps)
        return real_denoise(x, predict, schedule, timesteps, **kwargs)

    def spy_inversion(session, x0, schedule, timesteps, **kwargs):
        seen["inversion"], seen["all"] = real_inversion(session, x0, schedule, timesteps, **kwargs), list(timesteps)
        return seen["inversion"]

    monkeypatch.setattr(editor_module, "denoise", spy_denoise)
    monkeypatch.setattr(editor_module, "cached_inversion", spy_inversion)
    calls = []
    spec = load_job(demo_job(steps=steps, skip_fraction=fraction))
    result = Editor(fresh_plugin_manager().registry, progress=False, cache=False).run(
        spec, callback_on_step_end=lambda editor, step, t, kwargs: calls.append((kwargs["phase"], step, t)))
    skipped = int(steps * fraction)
    assert spec.skipped_steps == skipped and result.run["skipped_steps"] == skipped
    assert seen["timesteps"] == seen["all"][skipped:]
    assert torch.equal(seen["start"], seen["inversion"].trajectory[seen["all"][0]])  # the fully inverted latent
    assert [c for c in calls if c[0] == "denoising"] == [("denoising", i, t) for i, t in enumerate(seen["timesteps"])]


def test_skip_fraction_range(tmp_path) -> None:
    """A fraction outside [0, 1), or one that skips every step, is a job error naming the key."""
    job = {"video": {"path": "clip.mp4"}, "prompt": "a cat", "steps": 3}
    assert job_from_mapping({**job, "skip_fraction": 0.25}, base_dir=tmp_path).skipped_steps == 0
    for bad, message in ((1.0, "skips all 3 denoising steps"), (-0.1, "skip_fraction"), (1.5, "skip_fraction")):
        with pytest.raises(ConfigError, match=message):
            job_from_mapping({**job, "skip_fraction": bad}, base_dir=tmp_path)
