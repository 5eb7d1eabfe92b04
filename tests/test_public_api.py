"""The curated ``stmod`` API: every public name resolves, ``import stmod`` stays cheap, and the
example plugin needs nothing else."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import stmod
from stmod.plugins import hookspecs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "stmod-example-plugin" / "stmod_example_plugin" / "__init__.py"


def test_every_public_name_resolves() -> None:
    missing = [name for name in stmod.__all__ if not hasattr(stmod, name)]
    assert not missing
    assert stmod.StmodError.__module__ == "stmod.core.errors" and issubclass(stmod.LayoutError, stmod.StmodError)


def test_import_stmod_loads_no_torch() -> None:
    code = "import sys, stmod; stmod.hookimpl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_hookspec_marker_is_defined_once() -> None:
    assert hookspecs.hookspec is stmod.hookspec


def test_example_plugin_imports_only_the_public_api() -> None:
    deep = [f"line {node.lineno}: {node.module}" for node in ast.walk(ast.parse(EXAMPLE.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stmod.")]
    assert not deep, "the example plugin reaches past the public API:\n" + "\n".join(deep)
