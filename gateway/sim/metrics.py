"""vLLM's own /metrics: names, labels and buckets of its v1 engine.

Dashboards and alerts built against the simulator then work against vLLM. Every series
carries `model_name` and `engine` ("0": the simulator is one engine), and is created at
startup for each served model, as vLLM does, so a scrape shows zeros rather than nothing.
Counters are declared without `_total`; prometheus_client appends it on export
(`vllm:prompt_tokens_total`, `vllm:request_success_total{finished_reason=...}`).
The simulator has no scheduler queue: `vllm:num_requests_waiting` stays 0, and every
accepted request counts as running from arrival to its end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FINISH_REASONS = ("stop", "length", "abort")
_LABELS = ("model_name", "engine")
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
         7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0, 20.0, 40.0, 80.0)
_REQUEST = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
            120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


def _one_two_five(limit: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to limit: vLLM's buckets for token counts."""
    out: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > limit:
                return out
            out.append(float(mantissa * scale))
        scale *= 10


@dataclass(frozen=True, slots=True)
class _Series:
    """One model's children of every metric, looked up once rather than per token."""

    running: Gauge
    prompt_tokens: Counter
    generation_tokens: Counter
    success: dict[str, Counter]
    ttft: Histogram
    itl: Histogram
    e2e: Histogram
    queue: Histogram
    prefill: Histogram
    decode: Histogram
    inference: Histogram
    request_prompt: Histogram
    request_generation: Histogram
    params_n: Histogram
    params_max_tokens: Histogram


class SimMetrics:
    """All the simulator's metrics, on an injected registry."""

    def __init__(self, registry: CollectorRegistry, models: Sequence[str] = (),
                 max_model_len: int = 8192) -> None:
        self.registry = registry
        tokens = _one_two_five(max_model_len)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _LABELS, registry=registry)

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(name, doc, (*_LABELS, *extra), registry=registry)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, _LABELS, buckets=buckets, registry=registry)

        self.running = gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting",
                             "Number of requests waiting to be processed.")
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc",
                                    "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions",
                                   "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.")
        self.success = counter("vllm:request_success",
                               "Count of successfully processed requests.", "finished_reason")
        self.ttft = histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", _TTFT)
        self.itl = histogram("vllm:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", _ITL)
        self.e2e = histogram("vllm:e2e_request_latency_seconds",
                             "Histogram of e2e request latency in seconds.", _REQUEST)
        self.queue = histogram("vllm:request_queue_time_seconds",
                               "Histogram of time spent in WAITING phase for request.", _REQUEST)
        self.prefill = histogram("vllm:request_prefill_time_seconds",
                                 "Histogram of time spent in PREFILL phase for request.",
                                 _REQUEST)
        self.decode = histogram("vllm:request_decode_time_seconds",
                                "Histogram of time spent in DECODE phase for request.", _REQUEST)
        self.inference = histogram("vllm:request_inference_time_seconds",
                                   "Histogram of time spent in RUNNING phase for request.",
                                   _REQUEST)
        self.request_prompt = histogram("vllm:request_prompt_tokens",
                                        "Number of prefill tokens processed.", tokens)
        self.request_generation = histogram("vllm:request_generation_tokens",
                                            "Number of generation tokens processed.", tokens)
        self.params_n = histogram("vllm:request_params_n",
                                  "Histogram of the n request parameter.", (1, 2, 5, 10, 20))
        self.params_max_tokens = histogram("vllm:request_params_max_tokens",
                                           "Histogram of the max_tokens request parameter.",
                                           tokens)
        self._series: dict[str, _Series] = {}
        for model in models:
            self.series(model)

    def series(self, model: str) -> _Series:
        found = self._series.get(model)
        if found is None:
            labels = (model, "0")
            for gauge in (self.waiting, self.kv_cache_usage):
                gauge.labels(*labels)
            self.preemptions.labels(*labels)
            found = self._series[model] = _Series(
                running=self.running.labels(*labels),
                prompt_tokens=self.prompt_tokens.labels(*labels),
                generation_tokens=self.generation_tokens.labels(*labels),
                success={r: self.success.labels(*labels, r) for r in FINISH_REASONS},
                ttft=self.ttft.labels(*labels), itl=self.itl.labels(*labels),
                e2e=self.e2e.labels(*labels), queue=self.queue.labels(*labels),
                prefill=self.prefill.labels(*labels), decode=self.decode.labels(*labels),
                inference=self.inference.labels(*labels),
                request_prompt=self.request_prompt.labels(*labels),
                request_generation=self.request_generation.labels(*labels),
                params_n=self.params_n.labels(*labels),
                params_max_tokens=self.params_max_tokens.labels(*labels))
        return found

    def start(self, model: str, prompt_tokens: int, n: int, max_tokens: int) -> Recorder:
        return Recorder(self.series(model), prompt_tokens, n, max_tokens)


class Recorder:
    """One request's metrics, from arrival to `finish`, which must be called exactly once."""

    __slots__ = ("_arrived", "_first", "_generated", "_last", "_max_tokens", "_n",
                 "_prompt_tokens", "_s")

    def __init__(self, series: _Series, prompt_tokens: int, n: int, max_tokens: int) -> None:
        self._s = series
        self._prompt_tokens = prompt_tokens
        self._n = n
        self._max_tokens = max_tokens
        self._arrived = self._last = time.monotonic()
        self._first: float | None = None
        self._generated = 0
        series.running.inc()

    def step(self, tokens: int) -> None:
        """An engine step produced `tokens` tokens (one per choice still generating)."""
        now = time.monotonic()
        if self._first is None:
            self._first = now
            self._s.ttft.observe(now - self._arrived)
            self._s.prompt_tokens.inc(self._prompt_tokens)
        else:
            self._s.itl.observe(now - self._last)
        self._last = now
        self._generated += tokens
        self._s.generation_tokens.inc(tokens)

    def steps(self, count: int, tokens: int, interval: float) -> None:
        """`count` further steps already waited for as a whole, `interval` apart."""
        for _ in range(count):
            self._s.itl.observe(interval)
        self._last = time.monotonic()
        self._generated += tokens
        self._s.generation_tokens.inc(tokens)

    def finish(self, reasons: Sequence[str]) -> None:
        """The request ended: one finished_reason per choice ("abort" when cut short)."""
        now = time.monotonic()
        s = self._s
        s.running.dec()
        for reason in reasons:
            s.success[reason].inc()
        first = self._first if self._first is not None else now
        s.e2e.observe(now - self._arrived)
        s.queue.observe(0.0)
        s.prefill.observe(first - self._arrived)
        s.decode.observe(now - first)
        s.inference.observe(now - self._arrived)
        s.request_prompt.observe(self._prompt_tokens)
        s.request_generation.observe(self._generated)
        s.params_n.observe(self._n)
        s.params_max_tokens.observe(self._max_tokens)
