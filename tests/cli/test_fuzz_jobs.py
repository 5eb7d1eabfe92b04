"""Property-based fuzzing of job files through ``stmod-run check`` (in-process).

Whatever a job file holds — wrong types, huge, negative or non-finite numbers, unicode, unknown
keys, nested garbage, or text that is not YAML at all — ``check`` exits 0 (valid) or 2 (one line on
stderr), never 1 (a bug), and changes nothing on disk. Bounded and derandomized so CI runs the same
examples every time in a few seconds; no example database is written.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

BASE: dict[str, Any] = {
    "video": {"path": "clip.mp4", "frames": 4, "size": [64, 64], "start": 0, "every": 1},
    "prompt": "a red cat",
    "source_prompt": "a red car",
    "regions": {"cat": "red cat"},
    "layout": {"name": "full-frame"},
    "backbone": "identity",
    "modulator": "null",
    "blend": {"name": "latent", "soft_edge": 1.0},
    "modulation": {"preset": "paper", "start_step": 0, "end_step": 2, "cross_strength": 1.0},
    "steps": 3,
    "seed": 0,
    "guidance": 7.5,
    "output": "out",
}

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=-(2**80), max_value=2**80), st.sampled_from([0, -1, 2**32, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308]),
)
_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, _TEXT)
_GARBAGE = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(_TEXT, st.integers()), inner, max_size=4)), max_leaves=12)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the base job (mappings and lists), the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*prefix, i))
    return found


_KEYS = st.one_of(st.sampled_from([p for p in _paths(BASE) if p]), st.tuples(_TEXT))


@st.composite
def mutated_jobs(draw) -> dict[str, Any]:
    """The base job with a few keys replaced by garbage, deleted, or added under a new name."""
    job = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(_KEYS)
        parent = job
        for key in path[:-1]:
            if not isinstance(parent, (dict, list)) or (isinstance(parent, list) and key >= len(parent)) \
                    or (isinstance(parent, dict) and key not in parent):
                break
            parent = parent[key]
        else:
            if isinstance(parent, dict) or (isinstance(parent, list) and path[-1] < len(parent)):
                if draw(st.booleans()) or not isinstance(parent, dict):
                    parent[path[-1]] = draw(_GARBAGE)
                else:
                    parent.pop(path[-1], None)
    return job


def _snapshot(root: Path) -> dict[str, str]:
    """Hash of every file and folder under ``root`` except the output folder."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if "out" not in p.relative_to(root).parts}


@pytest.fixture
def folder(tmp_path: Path, make_clip) -> Path:
    make_clip(tmp_path / "clip.mp4")
    return tmp_path


def _check(folder: Path, text: str) -> None:
    job = folder / "job.yaml"
    job.write_text(text, encoding="utf-8")
    before = _snapshot(folder)
    result = run_cli(["-p", "stmod.testing", "check", str(job)], env=ENV)
    assert result.exit_code in (0, 2), result.stderr
    if result.exit_code == 2:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("stmod-run: error: "), result.stderr
        assert len(result.stderr) < 1200
    assert _snapshot(folder) == before


def test_the_base_job_is_valid(folder: Path) -> None:
    (folder / "job.yaml").write_text(yaml.safe_dump(BASE), encoding="utf-8")
    result = run_cli(["-p", "stmod.testing", "check", str(folder / "job.yaml")], env=ENV)
    assert result.exit_code == 0, result.stderr


@FUZZ
@given(job=mutated_jobs())
def test_mutated_jobs_exit_0_or_2_and_touch_nothing(folder: Path, job: dict[str, Any]) -> None:
    _check(folder, yaml.safe_dump(job, allow_unicode=True))


@FUZZ
@given(text=st.one_of(_TEXT, st.text(st.sampled_from("{}[]:,&*!|>-?#'\"\n \tab1."), max_size=60)))
def test_any_text_as_a_job_file_exits_0_or_2(folder: Path, text: str) -> None:
    _check(folder, text)
