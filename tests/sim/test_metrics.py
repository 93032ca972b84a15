"""The simulator exports vLLM's metric names, labels and series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.sim.metrics import SimMetrics

VLLM_SERIES = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    "vllm:request_success_total", "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket", "vllm:request_prefill_time_seconds_bucket",
    "vllm:request_decode_time_seconds_bucket", "vllm:request_inference_time_seconds_bucket",
    "vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket",
    "vllm:request_params_n_bucket", "vllm:request_params_max_tokens_bucket",
}


def _value(registry: CollectorRegistry, name: str, model: str = "m", **labels: str) -> float:
    value = registry.get_sample_value(name, {"model_name": model, "engine": "0", **labels})
    assert value is not None, (name, labels)
    return value


def test_every_series_exists_from_the_start_for_each_model() -> None:
    registry = CollectorRegistry()
    SimMetrics(registry, ["m", "n"])
    names = {s.name for family in registry.collect() for s in family.samples}
    assert names >= VLLM_SERIES
    for model in ("m", "n"):
        assert _value(registry, "vllm:num_requests_running", model) == 0
        for reason in ("stop", "length", "abort"):
            assert _value(registry, "vllm:request_success_total", model,
                          finished_reason=reason) == 0


def test_a_request_from_arrival_to_end() -> None:
    registry = CollectorRegistry()
    metrics = SimMetrics(registry, ["m"])
    recorder = metrics.start("m", prompt_tokens=7, n=2, max_tokens=10)
    assert _value(registry, "vllm:num_requests_running") == 1
    recorder.step(2)
    recorder.step(2)
    recorder.steps(3, 5, 0.02)
    recorder.finish(["stop", "length"])
    assert _value(registry, "vllm:num_requests_running") == 0
    assert _value(registry, "vllm:prompt_tokens_total") == 7
    assert _value(registry, "vllm:generation_tokens_total") == 9
    assert _value(registry, "vllm:request_success_total", finished_reason="stop") == 1
    assert _value(registry, "vllm:request_success_total", finished_reason="length") == 1
    assert _value(registry, "vllm:time_to_first_token_seconds_count") == 1
    assert _value(registry, "vllm:inter_token_latency_seconds_count") == 4
    assert _value(registry, "vllm:request_generation_tokens_sum") == 9
    assert _value(registry, "vllm:request_params_n_sum") == 2


def test_an_aborted_request_before_its_first_token() -> None:
    registry = CollectorRegistry()
    SimMetrics(registry, ["m"]).start("m", 5, 1, 16).finish(["abort"])
    assert _value(registry, "vllm:request_success_total", finished_reason="abort") == 1
    assert _value(registry, "vllm:prompt_tokens_total") == 0
    assert _value(registry, "vllm:time_to_first_token_seconds_count") == 0
    assert _value(registry, "vllm:e2e_request_latency_seconds_count") == 1


def test_registries_are_independent() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    SimMetrics(first, ["m"]).start("m", 1, 1, 1).finish(["stop"])
    SimMetrics(second, ["m"])
    assert _value(second, "vllm:request_success_total", finished_reason="stop") == 0
