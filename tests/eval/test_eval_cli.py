"""``stmod-run eval``: metrics into run.json (atomically), tables, --compare, missing CLIP, old folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stmod.plugins.eval.evaluate import write_run
from stmod.testing import run_cli

TESTING = ["-p", "stmod.testing"]
ENV = {"STMOD_LOAD_PLUGINS": ""}
NO_CLIP = "stmod-tests/no-such-clip"  # a hub id that is never cached (HF_HUB_OFFLINE=1 in tests/conftest.py)


@pytest.fixture
def edited(identity_job):
    """``edited(name) -> output folder``: the demo clip edited by the identity backbone."""

    def make(name: str = "run", **changes) -> Path:
        job = identity_job(name, **changes)
        result = run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV)
        assert result.exit_code == 0, result.stderr
        return job.parent.parent / name

    return make


def test_eval_writes_metrics_and_prints_a_table(edited, tiny_clip: Path) -> None:
    """Every metric lands in run.json next to the untouched run record; the table shows them."""
    out = edited()
    before = json.loads((out / "run.json").read_text())
    result = run_cli([*TESTING, "eval", str(out), "--clip", str(tiny_clip)], env=ENV)
    assert result.exit_code == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert {k: v for k, v in run.items() if k != "metrics"} == before
    metrics = run["metrics"]
    assert metrics["frames_from"] == "eval" and metrics["settings"]["clip"]["model"] == str(tiny_clip)
    assert 90 < metrics["clip_f"] <= 100 and -100 <= metrics["clip_t"] <= 100
    assert metrics["warp_err"] > 0 and metrics["q_edit"] == pytest.approx(metrics["clip_t"] / metrics["warp_err"])
    assert set(metrics["regions"]) == {"square", "disc"} and metrics["regions"]["square"]["frames"] == 4
    background = metrics["background"]
    assert 0 < background["fraction"] < 1 and 10 < background["psnr"] < 100 and 0 < background["ssim"] < 1
    for label in ("CLIP-T", "CLIP-F", "Warp-Err", "Q-edit", "background PSNR", "square CLIP-T", "peak RAM"):
        assert label in result.stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".stmod-owned"]  # no temporaries left


def test_compare_shows_runs_side_by_side_with_efficiency(edited, tiny_clip: Path) -> None:
    """--compare: one header, one row per run, metric and Table 2 columns; cached metrics are reused."""
    first, second = edited("a"), edited("b", seed=3)
    clip = shutil.copytree(tiny_clip, first.parent / "clip-copy")
    assert run_cli([*TESTING, "eval", str(first), str(second), "--clip", str(clip)], env=ENV).exit_code == 0
    shutil.rmtree(clip)  # metrics with these settings are in run.json: --compare must not load CLIP again
    result = run_cli([*TESTING, "eval", str(first.parent), "--compare", "--clip", str(clip)], env=ENV)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(h in lines[0] for h in ("CLIP-F", "CLIP-T", "Warp-Err", "Q-edit", "BG PSNR", "Time (min)", "GPU (GB)",
                                       "RAM (GB)"))
    rows = [line for line in lines[2:] if line.strip()]
    assert [r.split()[0] for r in rows] == [str(first), str(second)]
    assert rows[0].split()[1:5] == rows[1].split()[1:5]  # same clip, same identity edit
    as_json = json.loads(run_cli([*TESTING, "eval", str(first), "--metrics", "none", "--json"], env=ENV).stdout)
    assert as_json[str(first)]["efficiency"]["ram_gb"] > 0


def test_missing_clip_weights_exit_2_with_one_line(edited) -> None:
    """Offline without CLIP: one line naming --clip, exit 2, run.json untouched; warp alone needs no CLIP."""
    out = edited()
    before = (out / "run.json").read_text()
    result = run_cli([*TESTING, "eval", str(out), "--clip", NO_CLIP], env=ENV)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--clip PATH" in result.stderr
    assert (out / "run.json").read_text() == before
    warp = run_cli([*TESTING, "eval", str(out), "--metrics", "warp,background"], env=ENV)
    assert warp.exit_code == 0, warp.stderr
    metrics = json.loads((out / "run.json").read_text())["metrics"]
    assert "warp_err" in metrics and "clip_t" not in metrics and metrics["q_edit"] is None


def test_folder_without_eval_data_uses_result_mp4_and_the_source(edited) -> None:
    """Older output folders (no eval/): result.mp4, the job's clip and its layout give close numbers."""
    out = edited()
    exact = run_cli([*TESTING, "eval", str(out), "--metrics", "warp,background", "--json"], env=ENV)
    shutil.rmtree(out / "eval")
    approx = run_cli([*TESTING, "eval", str(out), "--metrics", "warp,background", "--recompute", "--json"], env=ENV)
    assert approx.exit_code == 0, approx.stderr
    a, b = (json.loads(r.stdout)[str(out)]["metrics"] for r in (exact, approx))
    assert a["frames_from"] == "eval" and b["frames_from"] == "mp4"
    assert b["background"]["fraction"] == pytest.approx(a["background"]["fraction"])
    assert b["background"]["psnr"] == pytest.approx(a["background"]["psnr"], abs=3.0)  # H.264 at crf 18
    assert b["warp_err"] == pytest.approx(a["warp_err"], rel=0.5)


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    """Not an output folder, or an unknown metric: exit 2 with one line."""
    result = run_cli(["eval", str(tmp_path)], env=ENV)
    assert result.exit_code == 2 and "no run.json" in result.stderr
    (tmp_path / "run.json").write_text("{}")
    result = run_cli(["eval", str(tmp_path), "--metrics", "clip-t,fvd"], env=ENV)
    assert result.exit_code == 2 and "unknown metric 'fvd'" in result.stderr


def test_write_run_is_atomic(tmp_path: Path) -> None:
    """A failure while writing leaves the previous run.json intact and no temporary file."""
    write_run(tmp_path, {"seed": 1})
    with pytest.raises(ValueError):
        write_run(tmp_path, {"seed": float("nan")})  # not valid JSON: refused before replacing
    assert json.loads((tmp_path / "run.json").read_text()) == {"seed": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_changed_settings_drop_stale_numbers(edited, tiny_clip: Path) -> None:
    """Recomputing CLIP-T with another CLIP drops the old CLIP-F, whose settings no longer apply."""
    out = edited()
    other = shutil.copytree(tiny_clip, out.parent / "other-clip")
    assert run_cli([*TESTING, "eval", str(out), "--clip", str(tiny_clip), "--metrics", "clip-t,clip-f"],
                   env=ENV).exit_code == 0
    assert run_cli([*TESTING, "eval", str(out), "--clip", str(other), "--metrics", "clip-t"], env=ENV).exit_code == 0
    metrics = json.loads((out / "run.json").read_text())["metrics"]
    assert metrics["settings"]["clip"]["model"] == str(other) and "clip_t" in metrics and "clip_f" not in metrics
