"""Property-based: the one name rule, and files planted beside (and inside) the output.

* Names (region, job, output) with newlines, control characters, surrogates, path separators, dots and
  reserved names: the validator accepts exactly the rule's names, and ``check`` / ``batch --plan``
  answer exit 0 or one line with exit 2, creating no folder.
* Files a user put where stmod keeps its lock, temporaries and output (links included): an edit
  (with or without ``--overwrite``) exits 0 or 2 with one line, and every planted file is still
  there, unchanged, and nothing was written through a link.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stmod.core.types import name_problem
from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
TESTING = ["-p", "stmod.testing"]
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

_HOSTILE_NAMES = st.one_of(
    st.text(max_size=12),  # surrogates (category Cs) included
    st.sampled_from(["cat\n", "cat\r", "\ncat", "c\tat", "batch.json", ".batch", ".", "..", "a/b", "a\\b", "cat ",
                     "cat\x00", "\ud800cat", "CON", "-cat", "c" * 300, "café", "cat\u2028", "ok-name_1.2"]),
    st.builds(lambda a, b: a + b, st.sampled_from(["cat", "a.b"]), st.sampled_from(["\n", "\x85", "\x7f", "/", ""])),
)


@settings(max_examples=300, **SETTINGS)
@given(name=_HOSTILE_NAMES)
def test_the_name_rule_accepts_exactly_its_names(name: str) -> None:
    accepted = name_problem(name) is None
    assert accepted == (bool(RULE.fullmatch(name)) and len(name) <= 200), name
    if accepted:
        assert "\n" not in name and "/" not in name and name not in (".", "..")
    assert name_problem(name, reserved=("batch.json",)) is not None or name != "batch.json"


def _yaml_safe(name: str) -> bool:
    try:
        yaml.safe_dump(name)
        name.encode("utf-8")
    except (UnicodeError, yaml.YAMLError):
        return False
    return True


@settings(max_examples=25, **SETTINGS)
@given(name=_HOSTILE_NAMES.filter(_yaml_safe), where=st.sampled_from(["region", "flag", "job"]))
def test_hostile_names_are_refused_in_one_line_everywhere(tmp_path_factory, make_clip, name: str, where: str) -> None:
    root = tmp_path_factory.mktemp("names")
    make_clip(root / "clip.mp4")
    job = {"video": {"path": "clip.mp4", "frames": 4, "size": [64, 64]}, "prompt": "a red cat",
           "layout": {"name": "full-frame"}, "backbone": "identity", "modulator": "null", "output": "out"}
    if where == "region":
        job["regions"] = {name: "red cat"}
        args = ["check", str(root / "job.yaml")]
    elif where == "flag":
        if "=" in name:  # the flag's NAME=PROMPT split takes the first "=": another name than drawn
            return
        job["regions"] = {}
        args = ["check", str(root / "job.yaml"), "--region", f"{name}=red cat"]
    else:
        job["regions"] = {"cat": "red cat"}
        (root / "batch.yaml").write_text(yaml.safe_dump({"output": "runs", "base": job, "jobs": [{"name": name}]}))
        args = ["batch", str(root / "batch.yaml"), "--plan"]
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    before = sorted(p.name for p in root.iterdir())
    result = run_cli([*TESTING, *args], env=ENV)
    valid = name_problem(name, reserved=("batch.json", ".batch") if where == "job" else ()) is None
    if where == "job":
        valid = valid and name_problem(name) is None
    assert result.exit_code in (0, 2), result.stderr
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if not valid:
        assert result.exit_code == 2, (name, result.stdout)
    assert sorted(p.name for p in root.iterdir()) == before


_PLANTS = {
    "user lock": (".out.lock", "my notes"),
    "user json lock": (".out.lock", '{"review": 1}'),
    "old-style temporary": (".out.deadbeef.tmp", "mine"),
    "old-style aside": (".out.0badc0de.old", "mine"),
    "dead-pid name, link": (f".out.{0x7FFFFFF0:08x}00000000.tmp", "->precious.txt"),
    "lock link": (".out.lock", "->precious.txt"),
    "output is a file": ("out", "a file where the output goes"),
    "output link": ("out", "->precious.txt"),
    "user file in output": ("out/review.md", "my review"),
    "fake marker, user file": ("out/.stmod-owned", '{"stmod": "edit output", "files": []}'),
}


def _plant(root: Path, name: str, content: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if content.startswith("->"):
        if not os.path.lexists(path):
            path.symlink_to(root / content[2:])
    elif not path.exists():
        path.write_text(content)


def _state(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@settings(max_examples=12, **SETTINGS)
@given(plants=st.lists(st.sampled_from(sorted(_PLANTS)), min_size=1, max_size=3, unique=True),
       overwrite=st.booleans(), earlier_output=st.booleans())
def test_planted_files_are_never_lost(tmp_path_factory, make_clip, plants: list[str], overwrite: bool,
                                      earlier_output: bool) -> None:
    root = tmp_path_factory.mktemp("planted")
    make_clip(root / "clip.mp4")
    (root / "precious.txt").write_text("years of work")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump({"video": {"path": "clip.mp4", "frames": 4, "size": [64, 64]},
                                   "prompt": "a red cat", "regions": {"cat": "red cat"},
                                   "layout": {"name": "full-frame"}, "backbone": "identity", "modulator": "null",
                                   "steps": 2, "output": "out"}))
    if earlier_output:
        assert run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV).exit_code == 0
    for plant in plants:
        _plant(root, *_PLANTS[plant])
    planted = {k: v for k, v in _state(root).items() if not k.startswith("out/") or k in
               {name for name, _ in _PLANTS.values()}}
    result = run_cli([*TESTING, "edit", str(job), "--quiet", *(["--overwrite"] if overwrite else [])], env=ENV)
    assert result.exit_code in (0, 2), result.stderr
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    after = _state(root)
    for key, digest in planted.items():
        if key.startswith("out/") and key in after or not key.startswith("out"):
            assert after.get(key) == digest, (key, plants, result.stderr)
    assert (root / "precious.txt").read_text() == "years of work"
    user_files = [n for p in plants for n, c in [_PLANTS[p]] if n.startswith("out/") and n != "out/.stmod-owned"]
    for name in user_files:
        assert (root / name).is_file(), (name, plants, result.stderr)
