"""Which optional extras (redis, ml, otel, postgres) this installation has."""

from __future__ import annotations

import importlib.util


def installed(module: str) -> bool:
    """Whether `module` can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing (or an import hook hides it)
        return False


def absent(*modules: str) -> list[str]:
    """The modules of `modules` this installation lacks."""
    return [m for m in modules if not installed(m)]
