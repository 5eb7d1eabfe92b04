"""YAML rules for job files: duplicate keys, bounded alias expansion, short messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stmod.core.config import load_job, load_mapping
from stmod.core.errors import ConfigError, InputError, StmodError, show
from stmod.core.yamlfile import MAX_NODES, load_yaml


def _laughs(levels: int) -> str:
    """A "billion laughs" document: 10**levels strings from a file of a few hundred bytes."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("prompt: a cat\nsteps: 50\nseed: 1\nsteps: 5\n")
    with pytest.raises(ConfigError, match=r"job.yaml: duplicate key 'steps' at lines 2 and 4; keep one"):
        load_mapping(job)


@pytest.mark.parametrize("text, where", [
    ("modulation:\n  end_step: 10\n  end_step: 12\n", "at lines 2 and 3"),
    ("x: {a: 1, a: 2}\n", "twice on line 1"),
    ("yes: 1\ntrue: 2\n", "at lines 1 and 2"),  # two spellings of one key
])
def test_duplicates_anywhere_are_refused(text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=f"duplicate key .* {where}"):
        load_yaml(text)


def test_merge_keys_may_be_overridden() -> None:
    assert load_yaml("base: &b {x: 1, y: 2}\nc: {<<: *b, x: 3}\n")["c"] == {"x": 3, "y": 2}


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    text = _laughs(9)
    assert len(text) < 1000
    job = tmp_path / "job.yaml"
    job.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"expands to more than .* &anchors and \*aliases"):
        load_job(job)
    assert time.perf_counter() - start < 2


def test_aliases_within_the_bound_still_work() -> None:
    data = load_yaml(_laughs(4))  # 10**4 values: far below the bound
    assert len(data["l3"]) == 10 and MAX_NODES > 10 ** 4


def test_one_huge_scalar_repeated_by_aliases_is_refused() -> None:
    text = "a: &s " + "x" * 100_000 + "\nb: [" + ", ".join(["*s"] * 100) + "]\n"
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml(text)


@pytest.mark.parametrize("text, match", [
    ("a: &a [1, *a]\n", "recursive alias"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("a: [1, 2\n", r"invalid YAML at line 2, column 1"),
    ("a: *nowhere\n", "invalid YAML"),
])
def test_malformed_documents_are_one_line_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_yaml(text, source="job.yaml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("tail", ["steps: {huge}\n", "? {huge}\n: 1\n", "modulation: {{preset: {huge}}}\n"])
def test_messages_never_show_a_huge_value(tmp_path: Path, tail: str) -> None:
    huge = "y" * 1_000_000
    job = tmp_path / "job.yaml"
    job.write_text("prompt: a cat\nvideo: {path: clip.mp4}\n" + tail.format(huge=huge))
    with pytest.raises(ConfigError) as info:
        load_job(job)
    assert len(str(info.value)) < len(str(job)) + 400 and "yyy...yyy" in str(info.value)
    assert len(str(InputError("video.path", huge, "cannot be read"))) < 200


def test_show_bounds_every_kind_of_value() -> None:
    assert show("x" * 10_000).endswith("'") and len(show("x" * 10_000)) <= 80
    assert len(show(list(range(10_000)))) <= 80
    assert "digits" in show(10 ** 5000)  # past Python's int-to-str limit: no ValueError
    assert show(2 ** 70) == str(2 ** 70)


def test_every_stmod_message_stays_bounded() -> None:
    text = str(StmodError("start " + "z " * 10_000 + "the fix"))
    assert len(text) < 700 and text.startswith("start") and text.endswith("the fix")
