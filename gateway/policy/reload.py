"""Transactional policy reload: build the whole new pipeline beside the old, then swap.

Triggered by a change in the policy directory (polled: mtime, size and name of each
file; cheap, and works on ConfigMap volumes whose symlinks flip atomically) and by SIGHUP.
Any error keeps the last good pipeline serving; it is logged, counted and shown in
/admin/v1/policy until a good policy loads, even one identical to the serving policy (an
edit reverted).

In the running server the files are read, parsed and validated, and the new pipeline is
built (rules compiled, the classifier head read), on a worker thread: that is hundreds of
milliseconds for the shipped files and more for a large one, and requests keep flowing
meanwhile. What the new pipeline needs warm before its first request (`settle`: the
embedding model's traced pass for a head that reads other layers, ~0.3 s) is made ready
before the swap, so no request meets it cold and falls back to the static head. Only the
swap runs on the event loop, one reload at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.metrics import Metrics
from gateway.policy.loader import PolicyError, load_policy, policy_files
from gateway.policy.spec import PolicySpec

log = logging.getLogger("gateway.policy")


@dataclass(slots=True)
class PolicyStatus:
    digest: str = ""
    version: str = ""
    loaded_at: float = 0.0
    files: tuple[str, ...] = ()
    last_error: str | None = None
    last_error_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "digest": self.digest, "loaded_at": self.loaded_at,
                "files": list(self.files), "last_error": self.last_error,
                "last_error_at": self.last_error_at}


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        files = policy_files(directory)
        return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError:
        return ()


# Makes everything a policy needs, raising before anything changes, and returns the swap
# that puts it in service. May run on a worker thread; the swap runs on the event loop.
Build = Callable[[PolicySpec], Callable[[], None]]


class PolicyReloader:
    """Owns the current policy: each new one is built with `build`, then swapped in."""

    def __init__(self, directory: Path, build: Build, metrics: Metrics,
                 settle: Callable[[], Awaitable[None]] | None = None) -> None:
        self.directory = directory
        self._settle = settle
        self.status = PolicyStatus()
        self._build = build
        self._metrics = metrics
        self._signature = _signature(directory)
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[bool]] = set()

    def load_initial(self) -> PolicySpec:
        """Start-up load: an invalid policy here is fatal (raises PolicyError)."""
        policy = load_policy(self.directory)
        self._build(policy)()
        self._swapped(policy)
        return policy

    def reload(self, reason: str = "change") -> bool:
        """Load, build and swap on the calling thread; the server uses `reload_async`."""
        try:
            policy = load_policy(self.directory)
            if self._unchanged(policy, reason):
                return True
            swap = self._build(policy)
        except Exception as exc:
            self._load_failed(exc)
            return False
        self._install(policy, swap, reason)
        return True

    async def reload_async(self, reason: str = "change") -> bool:
        """`reload` with the load and the build on a worker thread, off the event loop."""
        async with self._lock:
            try:
                policy = await asyncio.to_thread(load_policy, self.directory)
                if self._unchanged(policy, reason):
                    return True
                swap = await asyncio.to_thread(self._build, policy)
                if self._settle is not None:
                    await self._settle()
            except Exception as exc:
                self._load_failed(exc)
                return False
            self._install(policy, swap, reason)
            return True

    def reload_soon(self, reason: str) -> None:
        """Start `reload_async` from a callback that cannot await (a signal handler)."""
        task = asyncio.get_running_loop().create_task(self.reload_async(reason))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            signature = _signature(self.directory)
            if signature != self._signature:
                self._signature = signature
                await self.reload_async("file change")

    def _unchanged(self, policy: PolicySpec, reason: str) -> bool:
        """The serving policy again: nothing to build (an edit reverted clears its error)."""
        if policy.digest != self.status.digest:
            return False
        if self.status.last_error is not None:
            log.info("policy %s is valid again (%s)", policy.version, reason)
            self.status.last_error = self.status.last_error_at = None
            self._metrics.policy_invalid.set(0)
        return True

    def _install(self, policy: PolicySpec, swap: Callable[[], None], reason: str) -> None:
        swap()
        self._swapped(policy)
        log.info("policy %s loaded (%s)", policy.version, reason)

    def _load_failed(self, exc: Exception) -> None:
        if isinstance(exc, PolicyError):
            self._failed(str(exc))
            return
        log.error("policy build failed", exc_info=exc)
        self._failed(f"policy build failed: {exc.__class__.__name__}: {exc}")

    def _swapped(self, policy: PolicySpec) -> None:
        self.status.digest, self.status.version = policy.digest, policy.version
        self.status.loaded_at, self.status.files = time.time(), policy.files
        self.status.last_error = self.status.last_error_at = None
        self._metrics.policy_invalid.set(0)
        self._metrics.policy_reloads.labels("ok").inc()
        self._metrics.policy_info.clear()
        self._metrics.policy_info.labels(policy.version).set(1)

    def _failed(self, error: str) -> None:
        log.error("policy reload failed, keeping version %s:\n%s", self.status.version, error)
        self.status.last_error, self.status.last_error_at = error, time.time()
        self._metrics.policy_reloads.labels("error").inc()
        self._metrics.policy_reload_failures.inc()
        self._metrics.policy_invalid.set(1)
