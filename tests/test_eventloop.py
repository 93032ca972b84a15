"""The loop `gateway serve` and `gateway sim` run on: uvloop where installed, else asyncio's."""

from __future__ import annotations

import asyncio

import pytest

from gateway import eventloop


async def _name() -> str:
    await asyncio.sleep(0)
    return eventloop.running_loop_name()


@pytest.mark.parametrize(("choice", "runs_on"),
                         [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_chosen_loop_runs_the_coroutine(choice: str, runs_on: str) -> None:
    assert eventloop.run(_name(), choice) == runs_on


def test_auto_is_asyncio_where_uvloop_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "installed", lambda module: module != "uvloop")
    assert eventloop.run(_name(), "auto") == "asyncio"
    assert eventloop.check_event_loop("auto") is None
    assert "uvloop is not installed" in (eventloop.check_event_loop("uvloop") or "")


def test_an_unknown_loop_is_refused_by_name() -> None:
    assert eventloop.check_event_loop("trio") == "one of auto, uvloop, asyncio, got 'trio'"
    assert all(eventloop.check_event_loop(choice) is None for choice in eventloop.EVENT_LOOPS)
