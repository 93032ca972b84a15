"""Series the alerts watch exist before the first event they alert on."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics


@pytest.mark.parametrize("result", ["written", "dropped", "error"])
def test_audit_results_are_exported_at_zero_from_the_start(result: str) -> None:
    """The lost-records alert is an increase() over `dropped|error`: a series born at its
    first loss has no earlier sample, so that whole first burst went unnoticed (found by a
    black-box check: 52 records dropped, no alert)."""
    registry = CollectorRegistry()
    Metrics(registry)
    assert registry.get_sample_value("gateway_audit_records_total", {"result": result}) == 0
