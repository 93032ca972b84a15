"""values.yaml is documented key by key, and values.schema.json rejects bad values."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.helm.chart import CHART, HelmError, lint, render

# (values, a fragment of Helm's message naming the offending key)
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": 0}, "/replicaCount"),
    ({"replicaCount": "three"}, "/replicaCount"),
    ({"replicas": 3}, "'replicas' not allowed"),  # a typo is an error, not ignored
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "md5:abc"}}, "/image/digest"),
    ({"service": {"port": 70000}}, "/service/port"),
    ({"containerPort": 80}, "/containerPort"),  # privileged port for a non-root process
    ({"config": {"drain_timeout_s": -1}}, "/config/drain_timeout_s"),
    # The chart owns host, port, policies, home and redis_url.
    ({"config": {"port": 9000}}, "invalid propertyName 'port'"),
    ({"config": {"upstreams": ["vllm:8000"]}}, "/config/upstreams/0"),
    ({"config": {"ratelimit": {"on_store_error": "ignore"}}},
     "/config/ratelimit/on_store_error"),
    ({"securityContext": {"readOnlyRootFilesystem": False}}, "/securityContext"),
    ({"securityContext": {"allowPrivilegeEscalation": True}}, "/securityContext"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"podAntiAffinity": "sometimes"}, "/podAntiAffinity"),
    ({"autoscaling": {"minReplicas": 1}}, "/autoscaling/minReplicas"),
    ({"secrets": {"values": {"watermark": "short"}}}, "/secrets/values/watermark"),
    ({"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url"),
    ({"auth": {"jwksUrl": "http://idp/jwks.json"}}, "/auth/jwksUrl"),  # keys over plain HTTP
    ({"auth": {"settings": {"jwks_file": "/keys.json"}}}, "invalid propertyName 'jwks_file'"),
    ({"vllm": {"gpus": "lots"}}, "/vllm/gpus"),
    ({"vllm": {"image": {"tag": "latest"}}}, "/vllm/image/tag"),
    ({"vllm": {"modelCache": {"type": "nfs"}}}, "/vllm/modelCache/type"),
    ({"vllm": {"watermark": {"config": {"key": 42}}}}, "/vllm/watermark/config"),
    ({"monitoring": {"prometheusRule": {"errorRatio": 5}}},
     "/monitoring/prometheusRule/errorRatio"),
    ({"policies": {"files": {"tiers.json": "{}"}}}, "invalid propertyName 'tiers.json'"),
    ({"extraEnv": [{"name": "GATEWAY_SECRET_WATERMARK", "value": "x" * 40}]}, "/extraEnv/0"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES,
                         ids=[json.dumps(v, separators=(",", ":")) for v, _ in BAD_VALUES])
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    messages = lint(values)
    assert messages, f"helm lint accepted {values}"
    assert any(where in m for m in messages), messages
    with pytest.raises(HelmError, match=re.escape(where)):
        render(values)


def test_values_yaml_satisfies_its_schema() -> None:
    assert lint() == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["replicaCount"] == 1


_KEY = re.compile(r"^(?P<indent> *)(?:- )?(?P<key>[\w.\-/]+):(?: |$)")


def test_every_value_is_documented() -> None:
    """Each value has a comment right above it or inside a key documented as a whole.

    A section (a key whose value is the indented block below it) needs no comment of its
    own when every key in it has one.
    """
    undocumented = []
    documented_at: list[int] = []  # indents of enclosing keys documented as a whole
    previous = ""
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        match = _KEY.match(line)
        if match is None:
            if line.strip():
                previous = line
            continue
        indent = len(match["indent"])
        documented_at = [i for i in documented_at if i < indent]
        commented = previous.strip().startswith("#")
        section = line.rstrip().endswith(":")
        if not commented and not documented_at and not section:
            undocumented.append(f"values.yaml:{number}: {match['key']}")
        if commented and section:
            documented_at.append(indent)
        previous = line
    assert undocumented == []
