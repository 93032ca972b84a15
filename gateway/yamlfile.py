"""YAML loading that remembers where each key was written, for error messages.

Beyond YAML itself, a document is refused when a mapping repeats a key (YAML says keys
are unique; PyYAML keeps the last silently, so an edit could be shadowed unseen) and when
aliases expand it past a bound (see MAX_ALIAS_NODES). Aliases share nodes, so parsing a
"billion laughs" document is cheap, but everything after it (key lines, schema validation,
the policy build) walks the expanded tree: seven nested levels of nine aliases is 4.8
million nodes, seconds of CPU and gigabytes of memory. The expansion is counted over the
composed node graph, memoised per node, before anything walks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Nodes that aliases may add to a document beyond the nodes written out: this many, or
# ALIAS_GROWTH times the nodes written out when that is more (the cost then stays in
# proportion to the file's size). The shipped policies hold about 1,500 nodes and use no
# aliases; `<<: *defaults` on a thousand entries adds a few thousand.
MAX_ALIAS_NODES = 100_000
ALIAS_GROWTH = 10
_MERGE = "tag:yaml.org,2002:merge"  # `<<: *defaults`: may repeat, merges each


class YamlError(ValueError):
    """A YAML file that cannot be parsed; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Located:
    """Parsed YAML plus the line (1-based) of every key path, e.g. ("timeouts", "idle_s")."""

    data: Any
    path: str
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def where(self, keys: tuple[str, ...]) -> str | None:
        """`file:line` of the deepest known prefix of keys, or None if not in the file."""
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.lines:
                return f"{self.path}:{self.lines[keys[:n]]}"
        return None


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _Expansion:
    """Node counts of the tree each node expands to, memoised: aliases make a DAG."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sizes: dict[int, int] = {}
        self.largest_reused: yaml.Node | None = None  # the biggest node an alias repeats

    def size(self, node: yaml.Node) -> int:
        key = id(node)
        if key in self.sizes:
            if self.sizes[key] < 0:
                raise YamlError(f"{self.path}:{_line(node)}: an alias refers to the node "
                                "that contains it (a recursive document)")
            if self.largest_reused is None or \
                    self.sizes[key] > self.sizes[id(self.largest_reused)]:
                self.largest_reused = node
            return self.sizes[key]
        self.sizes[key] = -1  # on the current path: meeting it again is a cycle
        total = 1 + sum(self.size(child) for child in _children(node))
        self.sizes[key] = total
        return total


def _check_expansion(root: yaml.Node, path: str) -> None:
    expansion = _Expansion(path)
    expanded = expansion.size(root)
    written = len(expansion.sizes)
    limit = max(MAX_ALIAS_NODES, ALIAS_GROWTH * written)
    if expanded - written > limit:
        node = expansion.largest_reused or root
        raise YamlError(f"{path}:{_line(node)}: aliases expand this document by "
                        f"{expanded - written} nodes, more than the {limit} allowed; "
                        f"the value anchored here is {expansion.sizes[id(node)]} nodes, "
                        "copied each time an alias names it")


def _walk(node: yaml.Node, prefix: tuple[str, ...], lines: dict[tuple[str, ...], int],
          path: str) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE:
                name = (key_node.tag, key_node.value)
                if name in first:
                    raise YamlError(f"{path}:{_line(key_node)}: {'.'.join(key)}: duplicate key "
                                    f"(first written on line {first[name]})")
                first[name] = _line(key_node)
            lines[key] = _line(key_node)
            _walk(value_node, key, lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            lines[key] = _line(item)
            _walk(item, key, lines, path)


def load_text(text: str, path: str) -> Located:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple[str, ...], int] = {}
        if node is not None:
            _check_expansion(node, path)
            _walk(node, (), lines, path)  # before construction, which flattens merge keys
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlError(f"{path}:{line}: invalid YAML: {problem}") from None
    except RecursionError:
        raise YamlError(f"{path}:1: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return Located(data=data, path=path, lines=lines)


def load_file(path: Path) -> Located:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlError(f"{path}:1: cannot read: {exc.__class__.__name__}") from None
    return load_text(text, str(path))
