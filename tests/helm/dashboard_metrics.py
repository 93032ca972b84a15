"""The metric names a Grafana dashboard's PromQL queries use.

`metric_names(dashboard)` walks the dashboard JSON (nested rows included) and returns every
metric name its expressions select: panel targets (`expr`), template variables
(`label_values(metric, label)`, `query_result(expr)` or a plain expression) and annotation
queries. Tests compare the result with what the gateway and vLLM really export, so a
renamed metric cannot silently leave a panel empty.

The PromQL scanner is deliberately small: it blanks out string literals, label matchers,
range and subquery brackets, grouping clauses and Grafana variables, then takes every
remaining identifier that is not a function call, keyword or number. Metric names selected
with `{__name__="..."}` are picked up from the matchers before they are blanked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# Identifiers that are PromQL syntax, never metric names.
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2", "inf", "nan", "start", "end",
})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"((?:[^"\\]|\\.)*)"')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(
    r"(?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)
_GRAFANA_FUNCTION = re.compile(
    r"^\s*(label_values|query_result|metrics|label_names)\s*\((.*)\)\s*$", re.DOTALL)


def _blank_brackets(expr: str, open_: str, close: str) -> str:
    """Replace everything between matching brackets (nesting allowed) with spaces."""
    out, depth = [], 0
    for char in expr:
        if char == open_:
            depth += 1
            out.append(" ")
        elif char == close and depth:
            depth -= 1
            out.append(" ")
        else:
            out.append(" " if depth else char)
    return "".join(out)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names one PromQL expression selects."""
    expr = _VARIABLE.sub(" 1 ", expr)
    names = {m.group(1) for m in _NAME_MATCHER.finditer(expr)}
    expr = _STRING.sub(" ", expr)
    expr = _blank_brackets(expr, "{", "}")
    expr = _blank_brackets(expr, "[", "]")
    expr = _GROUPING.sub(" ", expr)
    for token in _TOKEN.finditer(expr):
        ident = token.group("ident")
        if ident is None or token.group("call") or ident.lower() in KEYWORDS:
            continue
        names.add(ident)
    return names


def _grafana_query_names(query: str) -> set[str]:
    """A template variable's query: Grafana's own functions, else plain PromQL."""
    match = _GRAFANA_FUNCTION.match(query)
    if match is None:
        return promql_metric_names(query)
    function, args = match.groups()
    if function == "query_result":
        return promql_metric_names(args)
    if function == "label_values" and "," in _blank_brackets(args, "{", "}"):
        # label_values(selector, label): only the selector names metrics.
        selector = args[: _blank_brackets(args, "{", "}").rindex(",")]
        return promql_metric_names(selector)
    if function == "metrics":  # a regex over metric names, not a selector
        return set()
    return set()  # label_values(label), label_names(): no metric


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def metric_names(dashboard_json: dict[str, Any]) -> set[str]:
    """Every metric name used by the dashboard's PromQL (targets, variables, annotations)."""
    names: set[str] = set()
    for key, value in _walk(dashboard_json):
        if key == "expr" and isinstance(value, str):
            names |= promql_metric_names(value)
    templating = dashboard_json.get("templating", {}).get("list", [])
    for variable in templating:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str):
            names |= _grafana_query_names(query)
    return names
