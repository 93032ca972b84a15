"""Transactional policy reload: build the whole new pipeline beside the old, then swap.

Triggered by a change in the policy directory (polled: mtime, size and name of each
file; cheap, and works on ConfigMap volumes whose symlinks flip atomically) and by SIGHUP.
Any error keeps the last good pipeline serving; it is logged, counted and shown in
/admin/v1/policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
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


class PolicyReloader:
    """Owns the current policy; `apply` is called with each new, fully built policy."""

    def __init__(self, directory: Path, apply: Callable[[PolicySpec], None],
                 metrics: Metrics) -> None:
        self.directory = directory
        self.status = PolicyStatus()
        self._apply = apply
        self._metrics = metrics
        self._signature = _signature(directory)

    def load_initial(self) -> PolicySpec:
        """Start-up load: an invalid policy here is fatal (raises PolicyError)."""
        policy = load_policy(self.directory)
        self._apply(policy)
        self._swapped(policy)
        return policy

    def reload(self, reason: str = "change") -> bool:
        try:
            policy = load_policy(self.directory)
            if policy.digest == self.status.digest:
                return True
            self._apply(policy)  # builds everything; raises before any swap on failure
        except PolicyError as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:
            log.exception("policy build failed")
            self._failed(f"policy build failed: {exc.__class__.__name__}: {exc}")
            return False
        self._swapped(policy)
        log.info("policy %s loaded (%s)", policy.version, reason)
        return True

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            signature = _signature(self.directory)
            if signature != self._signature:
                self._signature = signature
                self.reload("file change")

    def _swapped(self, policy: PolicySpec) -> None:
        self.status.digest, self.status.version = policy.digest, policy.version
        self.status.loaded_at, self.status.files = time.time(), policy.files
        self.status.last_error = self.status.last_error_at = None
        self._metrics.policy_reloads.labels("ok").inc()
        self._metrics.policy_info.clear()
        self._metrics.policy_info.labels(policy.version).set(1)

    def _failed(self, error: str) -> None:
        log.error("policy reload failed, keeping version %s:\n%s", self.status.version, error)
        self.status.last_error, self.status.last_error_at = error, time.time()
        self._metrics.policy_reloads.labels("error").inc()
        self._metrics.policy_reload_failures.inc()
