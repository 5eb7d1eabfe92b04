"""A 2-region ``wan`` edit end to end through ``stmod-run edit`` on the tiny random Wan model (CPU, 3 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}


def _job(tmp_path: Path, make_clip, tiny_wan: Path, frames: int = 5) -> Path:
    make_clip(tmp_path / "clip.mp4", frames=frames, size=(64, 64))
    job = {
        "video": {"path": "clip.mp4", "frames": frames, "size": [64, 64]},
        "prompt": "a red cat and a blue dog",
        "source_prompt": "a cat and a dog",
        "regions": {"cat": "red cat", "dog": "blue dog"},
        "layout": {"name": "boxes", "boxes": {"cat": {0: [0, 0, 32, 64]}, "dog": {0: [32, 0, 64, 64]}}},
        "backbone": {"name": "wan", "model": str(tiny_wan), "device": "cpu"},
        "steps": 3,
        "seed": 0,
        "output": "out",
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_two_region_edit_end_to_end(tmp_path: Path, make_clip, tiny_wan: Path) -> None:
    result = run_cli(["edit", str(_job(tmp_path, make_clip, tiny_wan)), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "out"
    run = json.loads((out / "run.json").read_text())
    assert run["frames"] == 5 and (out / "result.mp4").exists() and (out / "masks.mp4").exists()
    assert run["modulated_steps"] and "denoise" in run["phases"]


def test_sizes_in_sixteens_edit_and_size_keep_rounds_to_them(tmp_path: Path, make_clip, tiny_wan: Path) -> None:
    """Wan takes any multiple of 16 (an 8× VAE, 2×2 patches; SD 1.5 needs 64): an 80×64 edit runs end to end
    (5×4 tokens, the masks taken to that grid), and ``--size keep`` on a 200×100 clip rounds to 192×96."""
    job = _job(tmp_path, make_clip, tiny_wan)
    result = run_cli(["edit", str(job), "--size", "80x64", "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["modulated_steps"] and (tmp_path / "out" / "result.mp4").exists()
    make_clip(tmp_path / "wide.mp4", frames=5, size=(100, 200))  # (height, width)
    result = run_cli(["check", str(job), "--video", str(tmp_path / "wide.mp4"), "--size", "keep", "--print"], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout.rpartition("\nok:")[0])["video"]["size"] == [192, 96]


def test_frame_count_not_one_plus_four_k_is_refused_by_check(tmp_path: Path, make_clip, tiny_wan: Path) -> None:
    result = run_cli(["check", str(_job(tmp_path, make_clip, tiny_wan, frames=6))], env=ENV)
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "video.frames=6" in line and "use 5 or 9" in line, line


def test_control_entries_are_refused_by_check(tmp_path: Path, make_clip, tiny_wan: Path) -> None:
    job = _job(tmp_path, make_clip, tiny_wan)
    data = yaml.safe_load(job.read_text())
    data["control"] = [{"annotator": "canny"}]
    job.write_text(yaml.safe_dump(data))
    result = run_cli(["check", str(job)], env=ENV)
    assert result.exit_code == 2 and "no ControlNets" in result.stderr, result.stderr


def test_direct_inversion_reconstructs_on_the_flow_schedule(tmp_path: Path, make_clip, tiny_wan: Path,
                                                           monkeypatch) -> None:
    """Direct inversion is the schedule's, not SD 1.5's: on Wan (flow matching, velocity), the source prompt
    as the target at guidance 5 comes back as the inverted clip's clean latents; plain guidance drifts."""
    import torch

    import stmod.core.pipeline.editor as editor_module
    from stmod.core.config import load_job
    from stmod.core.pipeline.editor import Editor
    from stmod.testing import fresh_plugin_manager

    path = _job(tmp_path, make_clip, tiny_wan)
    base = yaml.safe_load(path.read_text())
    finals = {}
    real_denoise, real_inversion = editor_module.denoise, editor_module.cached_inversion
    for mode in ("direct", "plain"):
        job = {**base, "prompt": base["source_prompt"], "regions": {}, "layout": [], "guidance": 5.0,
               "inversion": mode, "output": str(tmp_path / mode)}
        path.write_text(yaml.safe_dump(job))
        seen: dict = {}
        monkeypatch.setattr(editor_module, "denoise",
                            lambda *a, **k: seen.setdefault("out", real_denoise(*a, **k)))
        monkeypatch.setattr(editor_module, "cached_inversion",
                            lambda *a, **k: seen.setdefault("inversion", real_inversion(*a, **k)))
        Editor(fresh_plugin_manager().registry, progress=False, cache=False).run(load_job(path))
        finals[mode] = (seen["out"], seen["inversion"].trajectory[0])
    direct, x0 = finals["direct"]
    torch.testing.assert_close(direct, x0, rtol=0, atol=1e-4)
    plain, _ = finals["plain"]
    assert (plain - x0).abs().max() > 100 * (direct - x0).abs().max()
