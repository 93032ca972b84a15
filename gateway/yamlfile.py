"""YAML loading that remembers where each key was written, for error messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


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


def _walk(node: yaml.Node, prefix: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            _walk(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            lines[key] = item.start_mark.line + 1
            _walk(item, key, lines)


def load_text(text: str, path: str) -> Located:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlError(f"{path}:{line}: invalid YAML: {problem}") from None
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _walk(node, (), lines)
    return Located(data=data, path=path, lines=lines)


def load_file(path: Path) -> Located:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlError(f"{path}:1: cannot read: {exc.__class__.__name__}") from None
    return load_text(text, str(path))
