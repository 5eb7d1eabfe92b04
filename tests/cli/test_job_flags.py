"""Job shorthands and the flags users change most, without YAML; every command's --help has examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stmod.cli import build_parser
from stmod.core.config import job_from_mapping, load_job
from stmod.testing import fresh_plugin_manager, run_cli

TESTING = ["-p", "stmod.testing"]
ENV = {"STMOD_LOAD_PLUGINS": ""}


def _printed(argv: list[str]) -> dict:
    result = run_cli([*TESTING, "check", *argv, "--print"], env=ENV)
    assert result.exit_code == 0, result.stderr
    return yaml.safe_load(result.stdout.rpartition("\nok:")[0])


def test_video_shorthand_is_the_path(job_file, clip: Path) -> None:
    """`video: clip.mp4` is `video: {path: clip.mp4}`, in a file and under flags that set other video keys."""
    long = job_from_mapping({"video": {"path": "clip.mp4"}, "prompt": "x"}, base_dir=clip.parent)
    assert job_from_mapping({"video": "clip.mp4", "prompt": "x"}, base_dir=clip.parent) == long
    spec = load_job(job_file(video=clip.name), {"video": {"frames": 2, "size": [64, 64]}})
    assert spec.video.path == clip and spec.video.frames == 2


def test_backbone_and_control_flags(job_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--model (a folder here becomes absolute; a hub id stays), --dtype, --cpu-offload, --vae-tiling, --control."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    job = str(job_file(backbone="sd15", layout=[], regions={}))
    argv = [job, "--model", "weights", "--dtype", "float16", "--cpu-offload", "--vae-tiling", "--device", "cpu",
            "--control", "canny=0.5", "--control", "frames"]
    parser = build_parser(fresh_plugin_manager())
    from stmod.plugins.commands.jobargs import job_overrides

    overrides = job_overrides(parser.parse_args(["check", *argv]))
    assert overrides["backbone"] == {"device": "cpu", "model": str(tmp_path / "weights"), "dtype": "float16",
                                     "cpu_offload": True, "vae_tiling": True}
    assert overrides["control"] == [{"annotator": "canny", "scale": 0.5}, {"annotator": "frames"}]
    hub = job_overrides(parser.parse_args(["check", job, "--model", "org/some-model"]))
    assert hub["backbone"] == {"model": "org/some-model"}


def test_bad_control_flag_is_one_line() -> None:
    result = run_cli(["edit", "--control", "canny=strong"], env=ENV)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--control" in result.stderr and "'canny=strong'" in result.stderr and "canny=0.8" in result.stderr


def test_size_keep_and_the_upscale_warning(job_file, make_clip, tmp_path: Path) -> None:
    """--size keep edits at the clip's size (rounded down to 64); a size that upscales says so, naming both."""
    make_clip(tmp_path / "wide.mp4", size=(96, 200))  # (height, width)
    job = job_file(video={"path": "wide.mp4", "frames": 2})
    assert _printed([str(job), "--size", "keep"])["video"]["size"] == [192, 64]
    result = run_cli([*TESTING, "check", str(job), "--size", "512x512"], env=ENV)
    assert result.exit_code == 0
    assert "video.size 512x512 upscales the 200x96 source" in result.stderr and "--size keep" in result.stderr
    assert "upscales" not in run_cli([*TESTING, "check", str(job), "--size", "keep"], env=ENV).stderr


def test_a_size_the_backbone_cannot_take_is_one_line_naming_the_nearest(job_file) -> None:
    """The core takes multiples of 16; a backbone without a finer rule (SD 1.5's, this test's ``identity``) needs
    64, and ``check`` names the sizes around the one asked for."""
    result = run_cli([*TESTING, "check", str(job_file()), "--size", "80x64"], env=ENV)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "video.size=[80, 64]: backbone 'identity' needs sides in multiples of 64; use 64x64 or 128x64" \
        in result.stderr
    result = run_cli([*TESTING, "check", str(job_file()), "--size", "72x64"], env=ENV)
    assert result.exit_code == 2 and "multiple of 16" in result.stderr  # the core's own rule, for every backbone


def test_every_command_help_shows_defaults_and_two_examples() -> None:
    parser = build_parser(fresh_plugin_manager())
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, command in commands.items():
        text = command.format_help()
        examples = text.partition("\nexamples:\n")[2].splitlines()
        assert len([line for line in examples if line.strip()]) >= 2, name
        assert all(f"stmod-run {name}" in line or f"-m stmod {name}" in line for line in examples if line.strip())
    assert "(default: 7860" in commands["ui"].format_help() and "(default 50)" in commands["edit"].format_help()
    assert "(default: consecutive)" in commands["eval"].format_help()


def test_check_with_an_existing_output_says_valid_and_what_edit_needs(job_file, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    result = run_cli([*TESTING, "check", str(job_file())], env=ENV)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok: ") and lines[1].startswith("modulation: ")
    assert lines[2] == (f"note: the output folder {tmp_path / 'out'} exists: edit needs "
                        "--overwrite to replace it, or --out DIR")


def test_inversion_flag(job_file) -> None:
    """--inversion sets the job's inversion; without a source prompt check says which key is missing, one line."""
    assert _printed([str(job_file()), "--inversion", "direct", "--source-prompt", "a man"])["inversion"] == "direct"
    result = run_cli([*TESTING, "check", str(job_file()), "--inversion", "negative-prompt"], env=ENV)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "source_prompt" in result.stderr
