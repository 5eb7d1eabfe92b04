"""The modulation window follows the step count: unset ``end_step`` is round(0.3 × steps); an explicit one is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stmod import Editor
from stmod.plugins.manager import load_job
from stmod.core.config import dump_job, job_from_mapping
from stmod.core.errors import ConfigError
from stmod.core.st_layout.state import EngineState
from stmod.core.types import default_end_step
from stmod.testing import run_cli

TESTING = ["-p", "stmod.testing"]  # its identity backbone: check needs no model
ENV = {"STMOD_LOAD_PLUGINS": ""}
BASE = {"prompt": "a red cat", "video": {"path": "clip.mp4"}, "regions": {"cat": "red cat"}}


@pytest.mark.parametrize("steps, modulation, window", [
    (50, {}, (0, 15)),                    # the official 15 of 50
    (20, {}, (0, 6)),
    (3, {}, (0, 1)),
    (1, {}, (0, 1)),                      # never an empty window by default
    (20, {"end_step": 15}, (0, 15)),      # an explicit end_step is kept
    (10, {"end_step": 15}, (0, 10)),      # ... and covers at most the steps there are
    (20, {"start_step": 2}, (2, 6)),
])
def test_window_of_a_job(steps: int, modulation: dict, window: tuple[int, int]) -> None:
    spec = job_from_mapping({**BASE, "steps": steps, "modulation": modulation}, base_dir=Path("."))
    assert spec.modulation_window == window
    resolved = spec.modulation.resolved(steps)
    assert [i for i in range(steps) if resolved.active(i)] == list(range(*window))


def test_default_end_step_is_a_fraction() -> None:
    assert [default_end_step(n) for n in (1, 3, 6, 10, 20, 25, 50, 100)] == [1, 1, 2, 3, 6, 8, 15, 30]


def test_a_start_after_the_default_end_is_a_job_error() -> None:
    with pytest.raises(ConfigError, match=r"modulation.start_step 10 lies after the default end_step 6 \(30% of 20 "
                                          r"steps\); set modulation.end_step"):
        job_from_mapping({**BASE, "steps": 20, "modulation": {"start_step": 10}}, base_dir=Path("."))


def test_check_says_which_steps_are_modulated(job_file) -> None:
    job = job_file()
    result = run_cli([*TESTING, "check", str(job), "--steps", "20"], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert "modulation: denoising steps 0-5 of 20 (end_step unset: the first 30% of the steps)" in result.stdout
    kept = run_cli([*TESTING, "check", str(job_file(modulation={"end_step": 15})), "--steps", "20"], env=ENV)
    assert "modulation: denoising steps 0-14 of 20 (end_step 15 from the job)" in kept.stdout


def test_rerunnable_config_keeps_the_unset_end_step(tmp_path: Path) -> None:
    """config.yaml says ``end_step: null``: a rerun resolves it the same way (and follows a new --steps)."""
    spec = job_from_mapping({**BASE, "steps": 20}, base_dir=tmp_path)
    saved = yaml.safe_load(dump_job(spec, rerunnable=True))
    assert saved["modulation"]["end_step"] is None
    again = job_from_mapping(saved, base_dir=tmp_path)
    assert again.modulation == spec.modulation and again.modulation_window == (0, 6)


def test_the_editor_modulates_the_first_30_percent(demo_job, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 10 steps and no end_step the attention is modulated at denoising steps 0-2 only; run.json says so."""
    seen: set[int] = set()
    in_window = EngineState.in_window

    def spy(self, step):
        active = in_window(self, step)
        if active:
            seen.add(step.step_index)
        return active

    monkeypatch.setattr(EngineState, "in_window", spy)
    job = demo_job(steps=10, modulation={"preset": "videograin"}, control=[])
    result = Editor.from_pretrained(yaml.safe_load(job.read_text())["backbone"]["model"], device="cpu",
                                    progress=False, cache=False).run(load_job(job))
    assert seen == {0, 1, 2}
    assert result.run["modulated_steps"] == [0, 1, 2]
