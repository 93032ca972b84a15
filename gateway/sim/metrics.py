"""vLLM's own metric names, so dashboards built on the simulator work on vLLM."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
            7.5, 10.0, 20.0, 40.0, 80.0)


class SimMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.running = Gauge("vllm:num_requests_running", "Requests being generated.",
                             ["model_name"], registry=registry)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.",
                             ["model_name"], registry=registry)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.",
                                     ["model_name"], registry=registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generation tokens.",
                                         ["model_name"], registry=registry)
        self.success = Counter("vllm:request_success", "Finished requests by reason.",
                               ["model_name", "finished_reason"], registry=registry)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.",
                              ["model_name"], buckets=_LATENCY, registry=registry)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency.",
                             ["model_name"], buckets=_LATENCY, registry=registry)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end latency.",
                             ["model_name"], buckets=_LATENCY, registry=registry)
