"""The chart's alerts, evaluated by Prometheus' own rule engine (`promtool test rules`).

Each alert has a case where it fires and one where it stays quiet; the quiet ones include
another release's gateway in the same namespace (job "canary-gateway") misbehaving, which
must not page for this release. promtool comes with the prometheus package: without it
these tests are skipped, unless GATEWAY_REQUIRE_PROMETHEUS=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import MONITORING_API, NAMESPACE, ROOT, render

RUNBOOKS = ROOT / "docs" / "runbooks.md"
JOB = "prod-gateway"  # the gateway Service's name: the job label the ServiceMonitor gives
THIS = f'namespace="{NAMESPACE}",job="{JOB}"'
OTHER = f'namespace="{NAMESPACE}",job="canary-gateway"'  # another release, same namespace
FIRING = {"namespace": NAMESPACE, "job": JOB}
API = 'route="/v1/chat/completions"'


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def case(alert: str, eval_time: str, inputs: list[dict[str, str]],
         fired: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """One promtool test group: these series, then the alert's state at eval_time."""
    exp = [{"exp_labels": {"alertname": alert, **labels}} for labels in fired or []]
    return {"interval": "1m", "input_series": inputs,
            "alert_rule_test": [{"eval_time": eval_time, "alertname": alert, "exp_alerts": exp}]}


def _overhead(labels: str, fast: str, slow: str) -> list[dict[str, str]]:
    """Overhead histogram: `fast` observations under 10 ms, `slow` ones of 10-100 ms."""
    name = "gateway_overhead_seconds_bucket"
    return [series(name, f'{labels},{API},le="0.01"', f"0+{fast}x30"),
            series(name, f'{labels},{API},le="0.1"', f"0+{int(fast) + int(slow)}x30"),
            series(name, f'{labels},{API},le="+Inf"', f"0+{int(fast) + int(slow)}x30")]


def _paths(labels: str, contextual: int, late: int, busy: int = 0) -> list[dict[str, str]]:
    """Embedding classifications per minute: by the static head alone (always many), by
    the model, by the static head after the model's time ran out, and by the static head
    while the model was closed after a late answer."""
    name = "gateway_classifier_embedding_paths_total"
    return [series(name, f'{labels},path="static"', "0+50x30"),
            series(name, f'{labels},path="contextual"', f"0+{contextual}x30"),
            series(name, f'{labels},path="static_after_timeout"', f"0+{late}x30"),
            series(name, f'{labels},path="static_busy"', f"0+{busy}x30")]


def _requests(labels: str, ok: int, failed: int, route: str = API) -> list[dict[str, str]]:
    name = "gateway_requests_total"
    return [series(name, f'{labels},{route},status="200"', f"0+{ok}x20"),
            series(name, f'{labels},{route},status="503"', f"0+{failed}x20")]


def _healthy(labels: str, *states: str) -> list[dict[str, str]]:
    """One pod's view of several upstreams."""
    return [series("gateway_upstream_healthy",
                   f'{labels},pod="gw-0",upstream="http://vllm-{n}:8000"', state)
            for n, state in enumerate(states)]


def _audit(labels: str, dropped: str) -> list[dict[str, str]]:
    # As the gateway exports them: every result at 0 from the start.
    name = "gateway_audit_records_total"
    return [series(name, f'{labels},result="written"', "0+10x10"),
            series(name, f'{labels},result="error"', "0x10"),
            series(name, f'{labels},result="dropped"', dropped)]


def _mode(labels: str, redis: str, local: str) -> list[dict[str, str]]:
    name = "gateway_ratelimit_mode"
    return [series(name, f'{labels},pod="gw-0",mode="redis"', redis),
            series(name, f'{labels},pod="gw-0",mode="local"', local)]


CASES: dict[str, list[dict[str, Any]]] = {
    "GatewayDown": [
        # The last pod goes at 3m; the other release keeps running.
        case("GatewayDown", "10m", [
            series("gateway_requests_in_flight", f'{THIS},pod="gw-0"', "0 0 0 stale"),
            series("gateway_requests_in_flight", f'{OTHER},pod="gw-0"', "0x15")],
            [{"severity": "critical", **FIRING}]),
        case("GatewayDown", "5m", [  # gone for 2 of the 5 minutes it waits
            series("gateway_requests_in_flight", f'{THIS},pod="gw-0"', "0 0 0 stale")]),
        case("GatewayDown", "10m", [
            series("gateway_requests_in_flight", f'{THIS},pod="gw-0"', "0x15")]),
    ],
    "GatewayHighErrorRatio": [
        case("GatewayHighErrorRatio", "15m", _requests(THIS, ok=50, failed=10),
             [{"severity": "critical", **FIRING}]),
        case("GatewayHighErrorRatio", "15m", [
            *_requests(THIS, ok=100, failed=1),
            *_requests(THIS, ok=0, failed=100, route='route="/readyz"'),  # not the API
            *_requests(OTHER, ok=0, failed=100)]),
    ],
    # The series exist at 0 from the start, so the first burst (0 -> 52) fires.
    "GatewayAuditRecordsLost": [
        case("GatewayAuditRecordsLost", "6m", _audit(THIS, "0 0 0 0 0 52 52 52 52 52"),
             [{"severity": "critical", **FIRING}]),
        case("GatewayAuditRecordsLost", "6m", [
            *_audit(THIS, "0x10"), *_audit(OTHER, "0 0 0 0 0 52 52 52 52 52")]),
    ],
    "GatewayUpstreamDown": [
        case("GatewayUpstreamDown", "5m", [
            series("gateway_upstream_healthy", f'{THIS},pod="gw-0",upstream="http://v:8000"',
                   "0x10"),
            series("gateway_upstream_healthy", f'{THIS},pod="gw-1",upstream="http://v:8000"',
                   "0x10")],
            [{"severity": "warning", "upstream": "http://v:8000", **FIRING}]),
        case("GatewayUpstreamDown", "5m", [  # one pod still reaches it
            series("gateway_upstream_healthy", f'{THIS},pod="gw-0",upstream="http://v:8000"',
                   "0x10"),
            series("gateway_upstream_healthy", f'{THIS},pod="gw-1",upstream="http://v:8000"',
                   "1x10"),
            series("gateway_upstream_healthy", f'{OTHER},pod="gw-0",upstream="http://v:8000"',
                   "0x10")]),
    ],
    "GatewayNoHealthyUpstream": [
        case("GatewayNoHealthyUpstream", "5m", _healthy(THIS, "0x10", "0x10"),
             [{"severity": "critical", **FIRING}]),
        case("GatewayNoHealthyUpstream", "5m", [
            *_healthy(THIS, "0x10", "1x10"), *_healthy(OTHER, "0x10", "0x10")]),
    ],
    "GatewayRateLimitStoreFallback": [
        case("GatewayRateLimitStoreFallback", "5m", _mode(THIS, "0x10", "1x10"),
             [{"severity": "warning", "mode": "local", **FIRING}]),
        case("GatewayRateLimitStoreFallback", "5m", [
            *_mode(THIS, "1x10", "0x10"), *_mode(OTHER, "0x10", "1x10")]),
    ],
    "GatewayRevocationStoreFailing": [
        case("GatewayRevocationStoreFailing", "5m", [
            series("gateway_revocation_store_errors_total", f'{THIS},pod="gw-0"',
                   "0 0 0 3 3 3 3")],
            [{"severity": "warning", **FIRING}]),
        case("GatewayRevocationStoreFailing", "5m", [
            series("gateway_revocation_store_errors_total", f'{THIS},pod="gw-0"', "0x10"),
            series("gateway_revocation_store_errors_total", f'{OTHER},pod="gw-0"',
                   "0 0 0 3 3 3 3")]),
    ],
    "GatewayPolicyReloadFailing": [
        case("GatewayPolicyReloadFailing", "3m", [
            series("gateway_policy_invalid", f'{THIS},pod="gw-0"', "0 0 1 1 1"),
            series("gateway_policy_invalid", f'{THIS},pod="gw-1"', "0x5")],
            [{"severity": "warning", "pod": "gw-0", **FIRING}]),
        case("GatewayPolicyReloadFailing", "3m", [
            series("gateway_policy_invalid", f'{THIS},pod="gw-0"', "1 1 0 0 0"),
            series("gateway_policy_invalid", f'{OTHER},pod="gw-0"', "1x5")]),
    ],
    # Of 10 prompts a minute the model should read, 3 late (30%) vs 1 late (10%); and a
    # model closed after late answers: 1 late, 4 turned away (50%).
    "GatewayClassifierFallingBack": [
        case("GatewayClassifierFallingBack", "20m", [
            *_paths(THIS, contextual=7, late=3), *_paths(OTHER, contextual=9, late=1)],
            [{"severity": "warning", **FIRING}]),
        case("GatewayClassifierFallingBack", "20m", [
            *_paths(THIS, contextual=5, late=1, busy=4), *_paths(OTHER, contextual=9, late=1)],
            [{"severity": "warning", **FIRING}]),
        case("GatewayClassifierFallingBack", "20m", [
            *_paths(THIS, contextual=9, late=1), *_paths(OTHER, contextual=5, late=5)]),
    ],
    # p99 of 10-100 ms observations is about 99 ms; of sub-10 ms ones, under 10 ms.
    "GatewayHighOverhead": [
        case("GatewayHighOverhead", "20m", _overhead(THIS, fast="0", slow="100"),
             [{"severity": "warning", **FIRING}]),
        case("GatewayHighOverhead", "20m", [
            *_overhead(THIS, fast="100", slow="0"), *_overhead(OTHER, fast="0", slow="100")]),
    ],
}


def rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rule = render(values or {}, api_versions=MONITORING_API).get("PrometheusRule", JOB)
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [r for group in rule_groups(values) for r in group["rules"] if "alert" in r]


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("GATEWAY_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("promtool not found (the prometheus package), and "
                        "GATEWAY_REQUIRE_PROMETHEUS=1")
        pytest.skip("promtool not installed (the prometheus package)")
    return found


def _run(promtool: str, *args: str, cwd: Path) -> None:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_are_valid_prometheus_rules(promtool: str, tmp_path: Path) -> None:
    """Expressions and annotation templates parse (promtool check rules)."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    _run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)


def test_every_alert_has_cases() -> None:
    assert {a["alert"] for a in alerts()} == set(CASES)


@pytest.mark.parametrize("alert", CASES)
def test_alert_fires_when_it_should_and_only_then(
        alert: str, promtool: str, tmp_path: Path) -> None:
    # Annotations are left out: their wording is not under test (check rules parses them).
    groups = [{**group, "rules": [{k: v for k, v in rule.items() if k != "annotations"}
                                  for rule in group["rules"]]} for group in rule_groups()]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": CASES[alert]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    _run(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)


def test_every_selector_is_scoped_to_the_release() -> None:
    for alert in alerts():
        selectors = re.findall(r"\{([^{}]*)\}", alert["expr"])
        assert selectors, alert["alert"]
        for selector in selectors:
            assert THIS in selector.replace(" ", ""), (alert["alert"], selector)


def test_the_job_label_is_the_gateway_services_name() -> None:
    """With no jobLabel the Prometheus Operator sets job to the Service's name: the one
    Service the gateway's ServiceMonitor selects must be named like the alerts' job."""
    rendered = render({"vllm": {"enabled": True}, "redis": {"statefulset": {"enabled": True}}},
                      api_versions=MONITORING_API)
    monitor = rendered.get("ServiceMonitor", JOB)["spec"]
    assert "jobLabel" not in monitor
    wanted = monitor["selector"]["matchLabels"].items()
    selected = [s["metadata"]["name"] for s in rendered.all("Service")
                if wanted <= s["metadata"]["labels"].items()]
    assert selected == [JOB]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#{1,6} (.+)$", markdown, re.M)}


def test_every_alert_has_a_runbook_section_and_description() -> None:
    base = "https://git.example.com/ai/gateway/blob/v0.1.0/docs/runbooks.md"
    anchors = _anchors(RUNBOOKS.read_text())
    for alert in alerts({"monitoring": {"prometheusRule": {"runbookBaseUrl": base}}}):
        url = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == base and anchor == alert["alert"].lower(), url
        assert anchor in anchors, f"docs/runbooks.md has no section {alert['alert']}"
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert not any("runbook_url" in alert["annotations"] for alert in alerts())
