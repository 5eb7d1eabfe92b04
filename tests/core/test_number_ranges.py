"""One rule for every number of a job: finite, and within the range its field declares.

The meta-test walks the job's value classes and the options class of every built-in component, so
a new numeric option without a declared range fails here.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from stmod.core.config import job_from_mapping, load_job
from stmod.core.errors import ConfigError
from stmod.core.types import MAX_SEED, RANGE_KEY, EditSpec, Range
from stmod.testing import fresh_plugin_manager

#: Required options of the built-ins that have some (the smallest valid value each).
REQUIRED = {
    ("layout", "masks"): {"dir": "masks"},
    ("layout", "boxes"): {"boxes": {"man": {0: [0, 0, 8, 8]}}},
    ("layout", "sam2"): {"checkpoint": "sam2.pt", "prompts": {"man": {0: {"box": [0, 0, 8, 8]}}}},
    ("annotator", "frames"): {"dir": "control"},
}
BASE = {"prompt": "a cat", "video": {"path": "clip.mp4"}}


def _numeric(tp: Any) -> bool:
    """Whether ``tp`` holds an int or float directly (alone, optional, or in a tuple)."""
    if tp in (int, float):
        return True
    if typing.get_origin(tp) in (typing.Union, tuple) or type(tp).__name__ == "UnionType":
        return any(_numeric(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return False


def _is_int(tp: Any) -> bool:
    return tp is int or any(_is_int(a) for a in typing.get_args(tp) if a is not Ellipsis)


def _holds_numbers(tp: Any) -> bool:
    return _numeric(tp) or any(_holds_numbers(a) for a in typing.get_args(tp) if a is not Ellipsis)


def _classes() -> dict[str, type]:
    """``{label: attrs class}``: the job's values and every built-in component's options class."""
    found = {cls.__name__: cls for cls in (EditSpec,)}
    pm = fresh_plugin_manager()
    for info in pm.registry:
        if info.options is not None:
            found[f"{info.kind} {info.name}"] = info.options
    todo = list(found.values())
    while todo:  # nested attrs classes (video, modulation, control, ...)
        cls = todo.pop()
        for tp in typing.get_type_hints(cls).values():
            for inner in (tp, *typing.get_args(tp)):
                if isinstance(inner, type) and attrs.has(inner) and inner.__name__ not in found:
                    found[inner.__name__] = inner
                    todo.append(inner)
    return found


def _numeric_fields() -> list[tuple[str, type, attrs.Attribute]]:
    rows = []
    for label, cls in _classes().items():
        hints = typing.get_type_hints(cls)
        rows += [(label, cls, f) for f in attrs.fields(cls) if f.init and _holds_numbers(hints[f.name])]
    return rows


def test_every_numeric_field_declares_its_range() -> None:
    uncovered = []
    for label, cls, f in _numeric_fields():
        direct = _numeric(typing.get_type_hints(cls)[f.name])
        # numbers inside a mapping are read by the field's own converter; check_numbers keeps them finite
        if (direct and not isinstance(f.metadata.get(RANGE_KEY), Range)) or (not direct and f.converter is None):
            uncovered.append(f"{label}.{f.name}")
    assert not uncovered, f"numeric fields without a declared range: {uncovered}"
    assert len(_numeric_fields()) > 30  # the walk found the options classes, not just EditSpec


def _bad_values(rng: Range, is_int: bool) -> list[Any]:
    values: list[Any] = [10**30, -(10**30)] if is_int else [math.inf, -math.inf, math.nan, 10**400]
    if rng.high is not None:
        values.append(int(rng.high) + 1 if is_int else rng.high * 2 + 1)
    if rng.low is not None:
        values.append(int(rng.low) - 1 if is_int else rng.low - 1)
    return values


def _component_cases() -> list[tuple[str, str, str, Any]]:
    cases = []
    for info in fresh_plugin_manager().registry:
        if info.options is None:
            continue
        hints = typing.get_type_hints(info.options)
        for f in attrs.fields(info.options):
            rng = f.metadata.get(RANGE_KEY)
            if rng is not None:
                is_int = _is_int(hints[f.name])
                cases += [(info.kind, info.name, f.name, v) for v in _bad_values(rng, is_int)]
    return cases


@pytest.mark.parametrize("kind, name, key, value", _component_cases())
def test_component_options_out_of_range_are_refused(kind: str, name: str, key: str, value: Any) -> None:
    registry = fresh_plugin_manager().registry
    options = {**REQUIRED.get((kind, name), {}), key: value}
    with pytest.raises(ConfigError, match=rf"^layout\[0\]\.{key}(\[0\])? must be (an integer|a number|a finite number)"):
        registry.parse_options(kind, name, options, place="layout[0]")


#: The job's pairs of numbers (``video.size``, ``guidance_interval``) by path, with their defaults: a bad value
#: is tried as the first item, the rest kept valid.
PAIRS: dict[str, tuple[Any, ...]] = {}


def _job_cases() -> list[tuple[str, Any]]:
    spec_cases = []
    for path, cls in (("", EditSpec), ("video.", None), ("modulation.", None)):
        cls = cls or typing.get_type_hints(EditSpec)[path[:-1]]
        hints = typing.get_type_hints(cls)
        for f in attrs.fields(cls):
            rng = f.metadata.get(RANGE_KEY)
            if rng is not None:
                if typing.get_origin(hints[f.name]) is tuple:
                    PAIRS[path + f.name] = f.default
                is_int = _is_int(hints[f.name])
                spec_cases += [(path + f.name, v) for v in _bad_values(rng, is_int)]
    return spec_cases


def _nest(path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    data = {**BASE}
    if rest:
        data[head] = {**data.get(head, {}), rest: value}
    else:
        data[head] = value
    return data


@pytest.mark.parametrize("path, value", _job_cases())
def test_job_numbers_out_of_range_are_refused(path: str, value: Any) -> None:
    data = _nest(path, [value, *PAIRS[path][1:]] if path in PAIRS else value)
    target = f"{path}[0]" if path in PAIRS else path
    with pytest.raises(ConfigError, match=rf"job.yaml: {re.escape(target)} must be (an integer|a number|a finite number)"):
        job_from_mapping(data, base_dir=Path("."), source="job.yaml")


@pytest.mark.parametrize("text, message", [
    ("guidance: .inf", "guidance must be a number from 0.0 to 100.0, got inf"),
    ("modulation: {cross_strength: .inf}", "modulation.cross_strength must be a number from 0.0 to 10.0, got inf"),
    ("modulation: {cross_strength: 1.0e+300}", "modulation.cross_strength must be a number from 0.0 to 10.0, got 1e+300"),
    ("seed: 1180591620717411303424", f"seed must be an integer from 0 to {MAX_SEED}, got 1180591620717411303424"),
    ("steps: 1000000000", "steps must be an integer from 1 to 1000, got 1000000000"),
    ("guidance: .NaN", "guidance must be a number from 0.0 to 100.0, got nan"),
    ("guidance: 1000", "guidance must be a number from 0.0 to 100.0, got 1000"),
    ("seed: -1", f"seed must be an integer from 0 to {MAX_SEED}, got -1"),
    ("video: {path: clip.mp4, size: [512, 100000]}\nx: 1", "video.size[1] must be an integer from 64 to 8192, got 100000"),
])
def test_the_issues_numbers_from_a_job_file(tmp_path: Path, text: str, message: str) -> None:
    job = tmp_path / "job.yaml"
    head = "prompt: a man\nregions: {man: man}\n"
    job.write_text(head + (text.replace("\nx: 1", "") if text.startswith("video") else "video: {path: clip.mp4}\n" + text)
                   + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_job(job)


def test_python_callers_get_the_same_ranges() -> None:
    spec = job_from_mapping(BASE, base_dir=Path("."))
    with pytest.raises(ValueError, match="steps must be an integer from 1 to 1000, got 5000"):
        attrs.evolve(spec, steps=5000)
    with pytest.raises(ValueError, match="guidance must be a number from 0.0 to 100.0, got inf"):
        attrs.evolve(spec, guidance=math.inf)


def test_canny_thresholds_in_the_wrong_order_are_a_job_error() -> None:
    registry = fresh_plugin_manager().registry
    with pytest.raises(ConfigError, match="high_threshold 5 must not be below low_threshold 10"):
        registry.parse_options("annotator", "canny", {"low_threshold": 10, "high_threshold": 5}, place="control[0]")


@pytest.mark.parametrize("name, options, message", [
    ("boxes", {"boxes": {"man": {0: [0, 0, math.nan, 8]}}}, "layout[0].boxes.man.0[2] must be a finite number, got nan"),
    ("boxes", {"boxes": {"man": {0: [0, 0, 10**400, 8]}}}, "layout[0].boxes.man.0[2] must be an integer of at most 64 bits"),
    ("kmeans", {"assign": {"man": [10**23]}}, "layout[0].assign.man[0] must be an integer of at most 64 bits"),
    ("masks", {"dir": "m", "format": "davis", "ids": {10**30: "man"}}, "layout[0].ids key must be an integer of at most"),
    ("sam2", {"checkpoint": "x.pt", "prompts": {"man": {0: {"points": [[1, math.inf]]}}}},
     "layout[0].prompts.man.0.points[0][1] must be a finite number, got inf"),
])
def test_numbers_a_converter_reads_are_finite_too(name: str, options: dict, message: str) -> None:
    registry = fresh_plugin_manager().registry
    with pytest.raises(ConfigError, match=re.escape(message)):
        registry.parse_options("layout", name, options, place="layout[0]")
