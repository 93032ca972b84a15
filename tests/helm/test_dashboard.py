"""The Grafana dashboard and the alerts query only metrics the gateway and vLLM export."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics
from gateway.sim.metrics import SimMetrics
from tests.helm.chart import CHART, MONITORING_API, render
from tests.helm.dashboard_metrics import metric_names, promql_metric_names

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "summary": ("", "_sum", "_count")}


def exported(registry: CollectorRegistry) -> set[str]:
    """Series names as prometheus_client writes them (counters get _total, ...)."""
    return {family.name + suffix for family in registry.collect()
            for suffix in SUFFIXES[family.type]}


def gateway_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    return exported(registry)


def vllm_names() -> set[str]:
    """vLLM's names, as the simulator (built to match vLLM's /metrics) exports them."""
    registry = CollectorRegistry()
    SimMetrics(registry)
    return exported(registry)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "dashboards/gateway.json").read_text())
    return loaded


@pytest.mark.parametrize(("expr", "names"), [
    ("sum by (tier) (rate(gateway_requests_total{status=~\"5..\", tier!=\"by\"}[5m]))",
     {"gateway_requests_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
     "{namespace=~\"$namespace\"}[$__rate_interval])))",
     {"vllm:time_to_first_token_seconds_bucket"}),
    ("a_total / on (pod) group_left (version) b_info offset 1h30m > bool 1e-3",
     {"a_total", "b_info"}),
    ("sum(rate(x_total[5m])) by (route) unless y", {"x_total", "y"}),
    ("count_over_time({__name__=\"up\", job=\"g\"}[1m:15s])", {"up"}),
    ("label_replace(m, \"dst\", \"$1\", \"src\", \"(.*)\") and ${var} > 0.5", {"m"}),
    ("max_over_time(m2[10m] @ end())", {"m2"}),
    ("-inf < m3 or NaN", {"m3"}),
])
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_metric_names_walks_rows_variables_and_annotations() -> None:
    board = {
        "panels": [{"type": "row", "panels": [{"targets": [{"expr": "rate(a_total[1m])"}]}]},
                   {"targets": [{"expr": "b"}, {"refId": "no expr"}]}],
        "templating": {"list": [
            {"type": "query", "query": "label_values(c_total{job=\"x\"}, tier)"},
            {"type": "query", "query": {"query": "query_result(topk(3, d))"}},
            {"type": "query", "query": "label_values(tier)"},
            {"type": "datasource", "query": "prometheus"},
        ]},
        "annotations": {"list": [{"expr": "changes(e[5m]) > 0"}]},
    }
    assert metric_names(board) == {"a_total", "b", "c_total", "d", "e"}


def test_dashboard_uses_only_exported_metrics() -> None:
    used = metric_names(dashboard())
    unknown = used - gateway_names() - vllm_names()
    assert unknown == set()


def test_dashboard_covers_what_sres_watch() -> None:
    used = metric_names(dashboard())
    assert used >= {
        "gateway_requests_total", "gateway_classifier_decisions_total",
        "gateway_request_duration_seconds_bucket", "gateway_time_to_first_token_seconds_bucket",
        "gateway_inter_token_latency_seconds_bucket", "gateway_overhead_seconds_bucket",
        "gateway_ratelimit_decisions_total", "gateway_ratelimit_mode",
        "gateway_upstream_healthy", "gateway_upstream_errors_total",
        "vllm:num_requests_running", "vllm:time_to_first_token_seconds_bucket",
        "vllm:generation_tokens_total",
    }
    titles = " ".join(p["title"] for p in dashboard()["panels"] if p["type"] == "row").lower()
    for topic in ("traffic", "decisions", "latency", "rate-limit", "upstream", "vllm"):
        assert topic in titles


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource"}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_alerts_use_only_exported_metrics() -> None:
    rule = render({}, api_versions=MONITORING_API).get("PrometheusRule", "prod-gateway")
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used - gateway_names() == set()
    assert used >= {"gateway_requests_total", "gateway_upstream_healthy",
                    "gateway_ratelimit_mode", "gateway_policy_invalid",
                    "gateway_overhead_seconds_bucket", "gateway_audit_records_total",
                    "gateway_revocation_store_errors_total"}
