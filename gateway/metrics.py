"""Every Prometheus metric the gateway exports, on an injected registry.

Names are `gateway_<noun>_<unit>` in base units; labels are bounded sets only
(route, tier, model mapped to the configured set, status class, kind) — never a
subject, a token or a prompt.
"""

from __future__ import annotations

import asyncio
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry

# LLM latencies span milliseconds (cached, short) to minutes (long generations).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
                   40.0, 80.0, 160.0, 320.0)
# As vLLM's own histograms: first tokens arrive in milliseconds to tens of seconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)  # up to timeouts.ttfb_s
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
               0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
# Microseconds when classification is cheap, seconds when an answer waits for a verdict
# (the guard's and the embedding model's time-outs are seconds): quantiles must not clamp.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _MemoLabels:
    """labels() memoised by its argument tuple. prometheus_client validates, converts and
    takes a lock on every call; the hot path asks for the same few children per request.
    The label sets are bounded (module docstring), so the memo is too."""

    _memo: dict[tuple[object, ...], Any]

    def labels(self, *values: object, **named: object) -> Any:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc]
        try:
            return self._memo[values]
        except AttributeError:
            self._memo = {}
        except KeyError:
            pass
        child = self._memo[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: object) -> None:
        self._memo = {}
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self._memo = {}
        super().clear()  # type: ignore[misc]


class Counter(_MemoLabels, prometheus_client.Counter):
    pass


class Gauge(_MemoLabels, prometheus_client.Gauge):
    pass


class Histogram(_MemoLabels, prometheus_client.Histogram):
    pass


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route, model, tier, decision and status.",
            ["route", "model", "tier", "decision", "status"], registry=registry)
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Time from request received to response end.",
            ["route"], buckets=REQUEST_BUCKETS, registry=registry)
        self.overhead = Histogram(
            "gateway_overhead_seconds", "Time spent in the gateway's own stages per request.",
            ["route"], buckets=OVERHEAD_BUCKETS, registry=registry)
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request received to the first streamed token sent.",
            ["route", "tier"], buckets=TTFT_BUCKETS, registry=registry)
        self.itl = Histogram(
            "gateway_inter_token_latency_seconds", "Time between streamed chunks sent.",
            ["route", "tier"], buckets=ITL_BUCKETS, registry=registry)
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Requests being handled.", registry=registry)
        self.open_streams = Gauge(
            "gateway_open_streams", "Streaming responses currently relayed.", registry=registry)
        # Read at scrape time (watch_tasks): a count that only grows is a task leak.
        self.asyncio_tasks = Gauge(
            "gateway_asyncio_tasks", "Asyncio tasks alive in the gateway's event loop.",
            registry=registry)
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failed upstream attempts, by kind.",
            ["kind"], registry=registry)
        self.upstream_healthy = Gauge(
            "gateway_upstream_healthy", "1 when the backend takes requests (panic routing "
            "included).",
            ["upstream"], registry=registry)
        self.upstream_ejected = Gauge(
            "gateway_upstream_ejected", "1 while the backend is ejected after failed "
            "attempts (health.failures_to_eject); panic routing may still use it.",
            ["upstream"], registry=registry)
        self.upstream_failures = Counter(
            "gateway_upstream_failures", "Failed attempts per backend, by kind: those "
            "that count toward its ejection.", ["upstream", "kind"], registry=registry)
        self.upstream_outstanding = Gauge(
            "gateway_upstream_outstanding", "Requests in flight to the backend (its share "
            "of least-outstanding-requests routing).", ["upstream"], registry=registry)
        self.upstream_panic = Counter(
            "gateway_upstream_panic_routed",
            "Upstream calls sent to an ejected backend because every backend serving the "
            "model was ejected (health.panic_routing).", registry=registry)
        self.client_disconnects = Counter(
            "gateway_client_disconnects", "Clients gone before the response ended.",
            ["route"], registry=registry)
        self.client_send_timeouts = Counter(
            "gateway_client_send_timeouts", "Connections closed because the client "
            "accepted nothing of a response for timeouts.client_send_s.", registry=registry)
        self.tokens = Counter(
            "gateway_tokens", "Tokens processed, by tier and direction (prompt/completion).",
            ["tier", "direction"], registry=registry)
        self.policy_reloads = Counter(
            "gateway_policy_reloads", "Policy loads by result (ok, error).",
            ["result"], registry=registry)
        self.policy_reload_failures = Counter(
            "gateway_policy_reload_failures", "Policy reloads that kept the old policy.",
            registry=registry)
        self.policy_invalid = Gauge(
            "gateway_policy_invalid", "1 while the policy files fail to load (the last good "
            "policy keeps serving; a restart would not start).", registry=registry)
        self.policy_info = Gauge(
            "gateway_policy_info", "The active policy version (1 for the active one).",
            ["version"], registry=registry)
        self.auth_failures = Counter(
            "gateway_auth_failures", "Refused tokens, by reason.", ["reason"], registry=registry)
        # classification
        self.classifier_decisions = Counter(
            "gateway_classifier_decisions", "Classified requests by tier, category and action.",
            ["tier", "category", "action"], registry=registry)
        self.classifier_duration = Histogram(
            "gateway_classifier_duration_seconds", "Time each classifier took per request.",
            ["classifier"], buckets=OVERHEAD_BUCKETS, registry=registry)
        self.classifier_embedding_paths = Counter(
            "gateway_classifier_embedding_paths",
            "Embedding classifications by who answered: static (the static head, sure "
            "alone), contextual (the model), static_after_timeout (the model was late), "
            "static_busy (the model, late too often, was not waited for: admission.py).",
            ["path"], registry=registry)
        self.classifier_errors = Counter(
            "gateway_classifier_errors", "Classifier failures or time-outs, by outcome.",
            ["classifier", "outcome"], registry=registry)
        self.classifier_hold = Histogram(
            "gateway_classifier_hold_seconds",
            "Overlapped classification: how long an answer ready upstream waited for the "
            "verdict before it was released (0 when the verdict came first).",
            buckets=(0.0, *OVERHEAD_BUCKETS), registry=registry)
        self.output_blocks = Counter(
            "gateway_output_blocks", "Responses cut by output moderation.",
            ["tier", "category"], registry=registry)
        self.output_flags = Counter(
            "gateway_output_flags", "Output moderation matches of a category the tier flags "
            "(the response is served).", ["tier", "category"], registry=registry)
        # rate limits
        self.ratelimit_decisions = Counter(
            "gateway_ratelimit_decisions", "Admissions and refusals by tier and limit kind.",
            ["tier", "result", "limit"], registry=registry)
        self.revocation_store_errors = Counter(
            "gateway_revocation_store_errors",
            "Failed reads of the shared revocation set in Redis (auth.revocation_on_error "
            "says what the request got).", registry=registry)
        self.ratelimit_store_errors = Counter(
            "gateway_ratelimit_store_errors", "Errors talking to the shared limit store.",
            registry=registry)
        self.ratelimit_mode = Gauge(
            "gateway_ratelimit_mode", "1 for the limit store mode in force.",
            ["mode"], registry=registry)
        # watermark and provenance
        self.watermarked = Counter(
            "gateway_watermarked_responses", "Responses marked, by tier and mode.",
            ["tier", "mode"], registry=registry)
        self.ledger_writes = Counter(
            "gateway_ledger_writes", "Provenance ledger writes by result.",
            ["result"], registry=registry)
        self.watermark_detections = Counter(
            "gateway_watermark_detections", "Detection requests by result.",
            ["result"], registry=registry)
        # audit
        self.audit_records = Counter(
            "gateway_audit_records", "Audit records by result (written, dropped, error).",
            ["result"], registry=registry)
        # Exported at 0 from the start: increase() needs a sample before the first loss,
        # or an alert on it misses the first burst of lost records.
        for result in ("written", "dropped", "error"):
            self.audit_records.labels(result)
        self.audit_dropped = Counter(  # the dropped result alone, as named before it
            "gateway_audit_queue_dropped", "Audit records dropped because the queue was full.",
            registry=registry)


def watch_tasks(metrics: Metrics, loop: asyncio.AbstractEventLoop) -> None:
    """Have the task gauge count `loop`'s tasks whenever it is read (scrapes run on the
    loop's own thread, where counting is safe)."""
    metrics.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
