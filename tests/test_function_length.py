"""Functions in core/ and plugins/ stay short enough to read: at most 60 lines, unless the docstring
says why (a line starting ``Long:``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60


def test_no_long_function_without_a_reason() -> None:
    long = []
    for folder in ("src/stmod/core", "src/stmod/plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    reason = any(line.strip().startswith("Long:") for line in (ast.get_docstring(node) or "").splitlines())
                    if lines > LIMIT and not reason:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {LIMIT} lines without a 'Long:' reason in the docstring:\n" + "\n".join(long)
