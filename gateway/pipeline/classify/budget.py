"""The model's time budget under `overlap`: it starts when the upstream's answer is ready.

`contextual_timeout_s` is the most the contextual model may add to a request. Without
overlap the request waits for the verdict from the start, so the budget counts from
there. With overlap the request is upstream meanwhile, and the model adds nothing until
the answer is ready and held for the verdict: the classify stage sets `ANSWER_READY` for
its late task, the relay sets the event when it starts holding (or the route when the
upstream fails first), and the budget counts from then. The classifier's own `timeout_s`
(`chain.Guarded`) bounds the whole wait: `within` gives up a little before it, so that a
model too slow even for a slow upstream leaves the static head's answer standing rather
than the classifier's failure mode.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

ANSWER_READY: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "answer_ready", default=None)


async def within(work: Awaitable[T], budget_s: float, limit_s: float) -> T:
    """`work`'s result, waiting at most `budget_s` past the moment the answer is ready
    (at once when nothing is overlapped) and never more than `limit_s` in all;
    TimeoutError after that."""
    ready = ANSWER_READY.get()
    if ready is None or ready.is_set():
        return await asyncio.wait_for(work, min(budget_s, limit_s))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait((task, waiter), timeout=limit_s,
                           return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        waiter.cancel()
    return await asyncio.wait_for(task, max(0.0, min(budget_s, deadline - loop.time())))
