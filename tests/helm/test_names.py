"""Long release names: every object name stays valid, within its limit, distinct, and
every reference between objects still points at the right one."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helm.chart import MONITORING_API, Rendered, env, pod_spec, render, validate
from tests.helm.test_chart import ALL_ON, PROMETHEUS_PEER

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Services
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A StatefulSet labels its pods controller-revision-hash="<name>-<10-character hash>".
STATEFULSET_MAX = 52
EVERYTHING: dict[str, Any] = {**ALL_ON, "networkPolicy": {
    **ALL_ON["networkPolicy"], "vllmFrom": [PROMETHEUS_PEER]}}
LONG = {
    # 51 characters, with "gateway" in it: the full name is the release name.
    "release-51": ("inference-gateway-production-europe-west4-canary-01", {}),
    # Helm's longest (53), without "gateway": "<release>-gateway" is 61.
    "release-53": ("inference-production-europe-west4-canary-01-abcdefghi", {}),
    "fullnameOverride-63": ("prod", {"fullnameOverride": "x" * 38 + "-inference-gateway-europe"}),
}


def render_long(case: str) -> Rendered:
    release, override = LONG[case]
    return render({**EVERYTHING, **override}, api_versions=MONITORING_API, release=release)


def test_long_names_are_what_they_claim() -> None:
    assert [len(LONG[case][0]) for case in ("release-51", "release-53")] == [51, 53]
    assert len(LONG["fullnameOverride-63"][1]["fullnameOverride"]) == 63


@pytest.mark.parametrize("case", LONG)
def test_names_are_valid_and_distinct(case: str) -> None:
    rendered = render_long(case)
    validate(rendered)
    seen: set[tuple[str, str]] = set()
    for manifest in rendered.all():
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        assert (kind, name) not in seen, f"two {kind}s named {name}"
        seen.add((kind, name))
        pattern = DNS_1035 if kind == "Service" else DNS_1123_LABEL
        assert pattern.match(name) and len(name) <= 63, f"{kind}/{name} ({len(name)})"
        if kind == "StatefulSet":
            assert len(name) <= STATEFULSET_MAX, f"{kind}/{name} ({len(name)})"
        labels = {**manifest["metadata"].get("labels", {}),
                  **manifest.get("spec", {}).get("template", {}).get("metadata", {}).get(
                      "labels", {})}
        assert all(len(str(value)) <= 63 for value in labels.values()), labels
    assert {kind for kind, _ in seen} >= {"Deployment", "StatefulSet", "Service", "Secret",
                                          "ConfigMap", "NetworkPolicy", "ServiceMonitor",
                                          "PersistentVolumeClaim", "PrometheusRule"}


@pytest.mark.parametrize("case", LONG)
def test_references_follow_the_shortened_names(case: str) -> None:
    rendered = render_long(case)
    names = {(m["kind"], m["metadata"]["name"]) for m in rendered.all()}
    (redis,) = rendered.all("StatefulSet")
    assert ("Service", redis["spec"]["serviceName"]) in names
    assert ("Service", redis["metadata"]["name"]) in names
    gateway = next(d for d in rendered.all("Deployment")
                   if d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
                   == "gateway")
    container = pod_spec(gateway)["containers"][0]
    redis_host = urlsplit(env(container)["GATEWAY_REDIS_URL"]["value"]).hostname
    assert ("Service", redis_host) in names
    config = yaml.safe_load(next(
        m for m in rendered.all("ConfigMap") if "gateway.yaml" in m.get("data", {})
    )["data"]["gateway.yaml"])
    assert all(("Service", urlsplit(url).hostname) in names for url in config["upstreams"])
    for workload in rendered.all("Deployment") + rendered.all("StatefulSet"):
        spec = pod_spec(workload)
        for volume in spec.get("volumes", []):
            for kind, key, field in (("ConfigMap", "configMap", "name"),
                                     ("Secret", "secret", "secretName"),
                                     ("PersistentVolumeClaim", "persistentVolumeClaim",
                                      "claimName")):
                if key in volume:
                    assert (kind, volume[key][field]) in names, volume
        for container in spec["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] != "hf":  # the one Secret the values name
                    assert ("Secret", ref["name"]) in names, item


def test_long_releases_that_differ_at_the_end_share_no_name() -> None:
    """Names were cut with nothing to tell them apart: `...-canary-01` and `...-canary-02`
    rendered the same Redis Secret, Service and StatefulSet, and the second install in a
    namespace failed on objects the first owned."""
    first, override = LONG["release-51"]
    names = []
    for release in (first, first[:-1] + "2"):
        rendered = render({**EVERYTHING, **override}, api_versions=MONITORING_API,
                          release=release)
        names.append({(m["kind"], m["metadata"]["name"]) for m in rendered.all()})
    shared = names[0] & names[1]
    assert not shared, shared
