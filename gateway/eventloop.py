"""The event loop `gateway serve` and `gateway sim` run on.

uvloop (the loop vLLM's own server runs on) wherever it is installed; it is a dependency
on every platform it supports. It takes about a tenth off the gateway's CPU per request
(bench/proxy.py). `event_loop: asyncio` (GATEWAY_EVENT_LOOP) keeps the standard loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.extras import installed

EVENT_LOOPS = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


def check_event_loop(choice: str) -> str | None:
    """Why `choice` cannot be used, or None."""
    if choice not in EVENT_LOOPS:
        return f"one of {', '.join(EVENT_LOOPS)}, got {choice!r}"
    if choice == "uvloop" and not installed("uvloop"):
        return "uvloop is not installed here (pip install uvloop; Linux and macOS only)"
    return None


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """None: asyncio's own loop."""
    if choice == "asyncio" or (choice == "auto" and not installed("uvloop")):
        return None
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """asyncio.run on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
