"""One name rule everywhere (job files, flags, manifests), and batch output roots owned like edit
outputs: a user's ``batch.json`` or ``.batch`` there is never replaced, a root that is a file is
refused, reserved names are no job names."""

from __future__ import annotations

from pathlib import Path

import pytest

from stmod.core.types import name_problem
from stmod.plugins.batch.manifest import batch_root_problem
from stmod.testing import run_cli

from .test_no_data_lost import ENV, TESTING, _refused, _snapshot


@pytest.mark.parametrize("name", ["cat\n", "cat\r\n", "ca\tt", "\u2028cat", ".hidden", "a/b", "batch.json"])
def test_name_rule(name: str) -> None:
    assert name_problem(name, reserved=("batch.json",)) is not None
    assert name_problem("cat-2.v1") is None


@pytest.mark.parametrize("where", ["yaml", "flag"])
def test_region_name_with_a_newline_is_refused(job_file, tmp_path: Path, where: str) -> None:
    job = job_file(regions={"cat\n": "red cat"}) if where == "yaml" else job_file(regions={})
    extra = [] if where == "yaml" else ["--region", "cat\n=red cat"]
    before = _snapshot(tmp_path)
    _refused(run_cli([*TESTING, "check", str(job), *extra], env=ENV), "not a valid name")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["run\n", "batch.json", ".batch"])
def test_batch_job_names_follow_the_rule(manifest, tmp_path: Path, name: str) -> None:
    path = manifest(clips={}, prompts={}, presets={}, seeds=None, jobs=[{"name": name}])
    before = _snapshot(tmp_path)
    _refused(run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV), "name", batch=True)
    assert _snapshot(tmp_path) == before


def test_batch_root_with_a_users_batch_json_is_refused(manifest, tmp_path: Path) -> None:
    path = manifest(clips={}, prompts={}, presets={}, seeds=None, jobs=[{"name": "one"}])
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "batch.json").write_text('{"my": "results"}')
    before = _snapshot(tmp_path)
    for extra in ([], ["--summary"]):
        _refused(run_cli([*TESTING, "batch", str(path), "--quiet", *extra], env=ENV), "batch.json",
                 "stmod did not write")
    assert _snapshot(tmp_path) == before


def test_batch_root_that_is_a_file_is_refused(manifest, tmp_path: Path) -> None:
    path = manifest(clips={}, prompts={}, presets={}, seeds=None, jobs=[{"name": "one"}])
    (tmp_path / "runs").write_text("a file")
    _refused(run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV), "is a file")
    assert (tmp_path / "runs").read_text() == "a file"


def test_batch_rerun_keeps_its_own_summary_and_the_users_files(manifest, tmp_path: Path) -> None:
    path = manifest(clips={}, prompts={}, presets={}, seeds=None, jobs=[{"name": "one"}])
    assert run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV).exit_code == 0
    (tmp_path / "runs" / "notes.md").write_text("mine")
    assert batch_root_problem(tmp_path / "runs") is None  # its own batch.json
    assert run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV).exit_code == 0
    assert (tmp_path / "runs" / "notes.md").read_text() == "mine"
    (tmp_path / "runs" / ".batch").rename(tmp_path / "state")
    (tmp_path / "runs" / ".batch").write_text("not a folder")
    assert ".batch" in batch_root_problem(tmp_path / "runs")
