"""budget.within: the model's time limit counts from the moment the answer is ready."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.pipeline.classify.budget import ANSWER_READY, within


@pytest.fixture
def ready() -> Iterator[asyncio.Event]:
    """An overlapped request's event, as the classify stage sets it for its late task."""
    event = asyncio.Event()
    token = ANSWER_READY.set(event)
    yield event
    ANSWER_READY.reset(token)


async def _slow(seconds: float, done: list[str]) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        done.append("cancelled")
        raise
    done.append("finished")
    return "vectors"


async def test_without_overlap_the_budget_counts_from_the_call() -> None:
    done: list[str] = []
    with pytest.raises(TimeoutError):
        await within(_slow(0.2, done), 0.01, 1.0)
    assert done == ["cancelled"]


async def test_before_the_answer_is_ready_the_work_is_not_cut(ready: asyncio.Event) -> None:
    done: list[str] = []
    assert await within(_slow(0.05, done), 0.001, 1.0) == "vectors"  # never set: no cut
    assert done == ["finished"]


async def test_once_the_answer_is_ready_the_budget_applies(ready: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, ready.set)
    done: list[str] = []
    started = loop.time()
    with pytest.raises(TimeoutError):
        await within(_slow(5.0, done), 0.02, 10.0)
    assert loop.time() - started < 1.0  # 0.02 to ready, 0.02 more: not the work's 5 s
    assert done == ["cancelled"]
    # Ready already: as without overlap.
    with pytest.raises(TimeoutError):
        await within(_slow(5.0, done), 0.01, 10.0)


async def test_cancelling_the_caller_cancels_the_work(ready: asyncio.Event) -> None:
    done: list[str] = []
    waiting = asyncio.ensure_future(within(_slow(5.0, done), 0.01, 10.0))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0)
    assert done == ["cancelled"]


async def test_the_limit_ends_the_wait_even_before_the_answer_is_ready(
        ready: asyncio.Event) -> None:
    """Under the classifier's own time-out, so the static answer can still stand."""
    done: list[str] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await within(_slow(5.0, done), 0.01, 0.05)
    assert loop.time() - started < 1.0
    await asyncio.sleep(0)
    assert done == ["cancelled"]
    assert not ready.is_set()
