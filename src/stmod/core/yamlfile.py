"""Reading YAML that users write: safe, bounded, and strict about duplicate keys.

``yaml.safe_load`` accepts two things a job file must not do:

* **duplicate keys** — ``steps: 50`` and, further down, ``steps: 5``: the later one silently wins.
  Here it is an error naming the key and both lines (keys pulled in by a ``<<`` merge may be
  overridden, as YAML intends).
* **unbounded alias expansion** — ``&a``/``*a`` let a 1 KB file describe a value of billions of
  items ("billion laughs"). PyYAML shares the aliased objects, so loading is cheap, but anything
  that walks the value (validation, ``repr`` in a message, ``config.yaml``) expands it. Here the
  document is measured *as expanded* before it is constructed, and refused past
  :data:`MAX_NODES` values or :data:`MAX_CHARS` characters of scalars (a real job has a few
  hundred values). Recursive aliases are refused too.
"""

from __future__ import annotations

from typing import Any

import yaml

from stmod.core.errors import ConfigError, show

__all__ = ["MAX_NODES", "MAX_CHARS", "load_yaml"]

#: Values (mappings, lists and scalars, counted as expanded through aliases) a YAML file may hold.
MAX_NODES = 100_000
#: Characters of scalar text a YAML file may hold once aliases are expanded (4 MB).
MAX_CHARS = 4_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (``source`` names the file in the error)."""

    source: str | None = None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # keys merged in with << may be overridden, as YAML intends
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: SafeConstructor reports it below
                continue
            if repeated:
                where = f"twice on line {line}" if seen[key] == line else f"at lines {seen[key]} and {line}"
                raise ConfigError(f"duplicate key {show(key)} {where}; keep one of them",
                                  key=str(key), source=self.source)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node, source: str | None) -> tuple[int, int]:
    """``(values, scalar characters)`` of ``root`` with every alias expanded, without expanding it.

    Each node's size is computed once (aliases point at the same node object), so this is linear in
    the file, however much the aliases multiply.
    """
    sizes: dict[int, tuple[int, int]] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        ident = id(node)
        if ident in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[ident] = (1, len(node.value))
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        if not done:
            if ident in active:
                raise ConfigError(f"a YAML alias at line {node.start_mark.line + 1} refers to a value that contains "
                                  "it (a recursive alias); write the value out", source=source)
            active.add(ident)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        active.discard(ident)
        count, chars = 1, 0
        for child in children:
            count, chars = count + sizes[id(child)][0], chars + sizes[id(child)][1]
        sizes[ident] = (min(count, MAX_NODES + 1), min(chars, MAX_CHARS + 1))  # capped: no giant ints either
    return sizes[id(root)]


def load_yaml(text: str, *, source: str | None = None) -> Any:
    """The value of YAML document ``text`` (safe types only); ``source`` names the file in errors.

    :raises ConfigError: for invalid YAML (with its line and column), a duplicate key, a recursive
        alias, or a document that expands past :data:`MAX_NODES` values / :data:`MAX_CHARS` characters.
    """
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader refuses control characters already here
        loader.source = source
        node = loader.get_single_node()
        if node is None:
            return None
        values, chars = _expanded_size(node, source)
        if values > MAX_NODES or chars > MAX_CHARS:
            raise ConfigError(f"the YAML expands to more than {MAX_NODES} values or {MAX_CHARS} characters "
                              "(through &anchors and *aliases); a job file needs far fewer, write it out plainly",
                              source=source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}", source=source) from exc
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply; a job file needs a few levels", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()
