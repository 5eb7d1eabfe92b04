"""The layering has one direction: core imports no built-in plugin, layout or backbone, and no
module imports itself back through a chain of imports (lazy, function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ABOVE_CORE = ("stmod.plugins", "stmod.layouts", "stmod.backbones", "stmod.cli", "stmod.testing")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "stmod").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """The stmod modules ``module`` imports anywhere in its code (annotation-only imports excluded)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in names if name in known and name != module}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imports(path, module, known) for module, path in known.items()}


def test_core_imports_no_plugin_layout_or_backbone() -> None:
    wrong = [f"{module} imports {target}" for module, targets in _graph().items() if module.startswith("stmod.core")
             for target in sorted(targets) if target.startswith(ABOVE_CORE)]
    assert not wrong, "core must not depend on what is built on it:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _graph()
    # ``stmod`` (the public API) resolves its names lazily from the layers below; a plugin's
    # ``from stmod import hookimpl`` reads the marker only, so edges into ``stmod`` are not layering.
    graph = {module: {t for t in targets if t != "stmod"} for module, targets in graph.items()}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target):], target]))
            elif target not in state:
                walk(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
