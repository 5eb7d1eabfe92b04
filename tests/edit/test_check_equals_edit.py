"""``check`` and ``edit`` validate through one path: every job ``edit`` refuses before loading a model,
``check`` refuses with the same line.

``edit`` runs with the backbone's ``load`` and ``predict_noise`` made to fail loudly (an internal
error, exit 1), so a case passes only when ``edit`` stops with exit 2 before any weights load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from stmod.backbones.sd15 import StableDiffusionBackbone
from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
CAT_AND_DOG = {"square": "red cat", "disc": "blue dog"}


def _kmeans(**options: Any) -> dict[str, Any]:
    return {"layout": {"name": "kmeans", "assign": {"square": 0, "disc": 1}, **options}}


def _overlap(inputs: Path) -> dict[str, Any]:
    shutil.copytree(inputs / "masks" / "disc", inputs / "masks" / "disc2")  # two regions, one mask
    return {"regions": {**CAT_AND_DOG, "disc2": "dog"}, "layout_overlap": "error"}


#: ``(id, job changes or a function of the inputs folder returning them, flags, a needle of the message)``.
CASES: list[tuple[str, Any, list[str], str]] = [
    ("prompt-over-77-tokens", {"prompt": "a red cat and a blue dog " + "on the grass " * 40}, [], "77"),
    ("source-prompt-over-77", {"source_prompt": "grass " * 90}, [], "77"),
    ("local-prompt-not-a-span", {"regions": {"square": "green tree", "disc": "blue dog"}}, [], "'green tree'"),
    ("local-prompt-in-a-word", {"prompt": "a spiderman and a blue dog", "regions": {"square": "man",
                                                                                   "disc": "blue dog"}}, [], "spiderman"),
    ("steps-above-limit", {"steps": 5000}, [], "steps must be an integer from 1 to 1000"),
    ("steps-flag-above-limit", {}, ["--steps", "100000"], "steps must be an integer from 1 to 1000"),
    ("seed-2**70", {"seed": 2**70}, [], "seed must be an integer from 0 to 4294967295"),
    ("guidance-inf", {"guidance": float("inf")}, [], "guidance must be a number"),
    ("cross-strength-inf", {"modulation": {"cross_strength": float("inf")}}, [], "modulation.cross_strength"),
    ("overlapping-masks", _overlap, [], "overlap"),
    ("kmeans-level-without-attention", _kmeans(level=5), [], "level: 5 has no attention layer"),
    ("kmeans-more-clusters-than-tokens", _kmeans(clusters=20, level=2), [], "clusters: 20 is more than the 16 tokens"),
    ("kmeans-cluster-id-out-of-range", _kmeans(clusters=2, assign={"square": 0, "disc": 5}), [], "names cluster 5"),
    ("kmeans-word-not-in-source", {"layout": {"name": "kmeans", "assign": {"square": "tree", "disc": 1}}}, [],
     "not in the source prompt"),
    ("canny-thresholds-inverted", {"control": [{"annotator": {"name": "canny", "low_threshold": 200,
                                                              "high_threshold": 100}}]}, [], "high_threshold 100"),
    ("region-without-mask", {"regions": {**CAT_AND_DOG, "tree": "a"}}, [], "region 'tree' has no mask folder"),
    ("frames-beyond-clip", {}, ["--frames", "9"], "clip has 4 frames"),
    ("end-before-start", {"modulation": {"start_step": 5, "end_step": 2}}, [], "end_step 2"),
    ("unknown-blender", {"blend": "smooth"}, [], "unknown blender 'smooth'"),
]


@pytest.fixture
def failing_models(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, *args, **kwargs):
        raise RuntimeError("a model was loaded or run before the job was refused")

    monkeypatch.setattr(StableDiffusionBackbone, "load", refuse)
    monkeypatch.setattr(StableDiffusionBackbone, "predict_noise", refuse)


@pytest.mark.parametrize("changes, flags, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_refuses_what_edit_refuses(demo_job, tmp_path: Path, failing_models, changes: Any,
                                         flags: list[str], needle: str) -> None:
    if callable(changes):
        demo_job()  # writes the inputs the function changes
        changes = changes(tmp_path / "inputs")
    job = demo_job(**changes)
    check = run_cli(["check", str(job), *flags], env=ENV)
    edit = run_cli(["edit", str(job), "--quiet", "--no-cache", *flags], env=ENV)
    assert (check.exit_code, edit.exit_code) == (2, 2), (check.stderr, edit.stderr)
    assert check.stderr.count("\n") == 1 and check.stderr == edit.stderr
    assert needle in check.stderr
    assert not (tmp_path / "out").exists()


def test_a_valid_job_passes_check(demo_job) -> None:
    result = run_cli(["check", str(demo_job())], env=ENV)
    assert result.exit_code == 0 and result.stdout.startswith("ok:"), result.stderr


def test_the_clip_is_probed_once_per_job(demo_job, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks of the job, of every layout provider and the reading of the frames share one probe."""
    from stmod.core.io import video
    from stmod.core.config import load_job
    from stmod.core.pipeline.editor import Editor
    from stmod.testing import fresh_plugin_manager

    calls = []
    probe = video.probe_video
    monkeypatch.setattr(video, "probe_video", lambda *a, **k: calls.append(a) or probe(*a, **k))
    job = demo_job(layout=[{"name": "masks", "dir": "masks", "regions": ["square"]},
                           {"name": "boxes", "regions": ["disc"], "boxes": {"disc": {0: [32, 0, 64, 64]}}}])
    Editor(fresh_plugin_manager().registry, progress=False, cache=False).prepare(load_job(job))
    assert len(calls) == 1, calls
