"""values.yaml is documented key by key, and values.schema.json rejects bad values."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.pipeline.auth.settings import AuthSettings
from gateway.settings import Settings, load_settings
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
    # Every gateway setting is known, at every level: a typo is an error, not a crash loop.
    ({"config": {"drain_timeout": 60}}, "additional properties 'drain_timeout' not allowed"),
    ({"config": {"log_levle": "DEBUG"}}, "additional properties 'log_levle' not allowed"),
    ({"config": {"audit": {"bogus": 1}}}, "at '/config/audit': additional properties 'bogus'"),
    ({"config": {"timeouts": {"client_body": 5}}}, "at '/config/timeouts': additional"),
    ({"config": {"timeouts": {"client_body_s": 0}}}, "/config/timeouts/client_body_s"),
    ({"config": {"readiness_requires_upstream": "no"}}, "/config/readiness_requires_upstream"),
    # The chart owns host, port, policies, home and redis_url; auth comes from auth.*.
    ({"config": {"port": 9000}}, "value must be 'unset: the chart sets port"),
    ({"config": {"home": "/data"}}, "value must be 'unset: the chart sets home"),
    ({"config": {"auth": {"issuer": "x"}}}, "value must be 'unset: set auth.settings"),
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
    ({"auth": {"settings": {"jwks_file": "/keys.json"}}},
     "value must be 'unset: the chart sets jwks_file"),
    ({"auth": {"settings": {"issuerr": "idp"}}}, "additional properties 'issuerr' not allowed"),
    ({"auth": {"settings": {"revocation_on_error": "ignore"}}},
     "/auth/settings/revocation_on_error"),
    ({"vllm": {"gpus": "lots"}}, "/vllm/gpus"),
    ({"vllm": {"image": {"tag": "latest"}}}, "/vllm/image/tag"),
    ({"vllm": {"modelCache": {"type": "nfs"}}}, "/vllm/modelCache/type"),
    ({"vllm": {"watermark": {"config": {"key": 42}}}}, "/vllm/watermark/config"),
    ({"monitoring": {"prometheusRule": {"errorRatio": 5}}},
     "/monitoring/prometheusRule/errorRatio"),
    ({"policies": {"files": {"tiers.json": "{}"}}}, "invalid propertyName 'tiers.json'"),
    ({"extraEnv": [{"name": "GATEWAY_SECRET_HS256", "value": "x" * 40}]},
     "add the name in lower case to secrets.names"),
    ({"homeVolume": {"persistentVolumeClaim": "gw-home"}}, "/homeVolume/persistentVolumeClaim"),
    ({"progressDeadlineSeconds": 0}, "/progressDeadlineSeconds"),
    ({"redis": {"statefulset": {"nodeSelector": {"pool": 1}}}},
     "/redis/statefulset/nodeSelector/pool"),
    ({"monitoring": {"prometheusRule": {"runbookBaseUrl": "docs/runbooks.md"}}},
     "/monitoring/prometheusRule/runbookBaseUrl"),
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


# Settings the chart writes itself, refused under `config` (auth: under auth.settings).
CHART_OWNED = {"host", "port", "policies", "home", "redis_url", "auth"}
CHART_OWNED_AUTH = {"jwks_url", "jwks_file", "pem_files", "revocation_file"}
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string"}


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def _refuses(node: dict[str, Any]) -> bool:
    """The refusal that carries a message: const MESSAGE, and not the message itself."""
    return "const" in node and node.get("not") == {"const": node["const"]}


def _schema_types(node: dict[str, Any]) -> set[str]:
    if "anyOf" in node:
        return set().union(*(_schema_types(option) for option in node["anyOf"]))
    declared = node.get("type", [])
    return {declared} if isinstance(declared, str) else set(declared)


def _setting_types(tp: Any) -> set[str]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return {"null"}.union(*(_setting_types(a) for a in typing.get_args(tp)
                                if a is not type(None)))
    if typing.get_origin(tp) is tuple:
        return {"array"}
    return {_JSON_TYPES[tp]}


def _compare(cls: type[Any], node: dict[str, Any], where: str, owned: set[str]) -> list[str]:
    """Where the schema node and the settings dataclass disagree (keys, types, strictness)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    if node.get("additionalProperties") is not False:
        return [f"{where}: additionalProperties is not false"]
    problems = [f"{where}.{k}: not a setting" for k in sorted(set(node["properties"]) - fields)]
    problems += [f"{where}.{k}: missing" for k in sorted(fields - set(node["properties"]))]
    hints = typing.get_type_hints(cls)
    for name in sorted(fields & set(node["properties"])):
        sub, tp = node["properties"][name], hints[name]
        if _refuses(sub) != (name in owned):
            problems.append(f"{where}.{name}: refused is {_refuses(sub)}")
        elif name in owned:
            continue
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            problems += _compare(tp, sub, f"{where}.{name}", set())
        elif not _setting_types(tp) <= _schema_types(sub):
            problems.append(f"{where}.{name}: {_schema_types(sub)} for {tp}")
    return problems


def test_config_schema_is_exactly_the_gateways_settings() -> None:
    """`config` lists every field of gateway.settings.Settings at every level, with a
    JSON type the loader accepts, and nothing else: neither can drift from the other."""
    config = schema()["properties"]["config"]
    assert _compare(Settings, config, "config", CHART_OWNED) == []


def test_auth_settings_schema_is_exactly_the_gateways_auth_settings() -> None:
    auth = schema()["properties"]["auth"]["properties"]["settings"]
    assert _compare(AuthSettings, auth, "auth.settings", CHART_OWNED_AUTH) == []


def test_every_setting_the_schema_allows_is_accepted_by_the_gateway(tmp_path: Path) -> None:
    values = {
        "config": {
            "log_format": "text", "readiness_requires_upstream": True,
            "timeouts": {"client_header_s": 5, "client_body_s": 20, "client_idle_s": 30,
                         "client_send_s": 45},
            "audit": {"overflow": "drop", "queue_size": 100, "on_error": "fail_closed"},
            "sim": {"models": ["sim-a"], "ttft_s": 0.1},
            "output": {"redact": ["internal-hostname"]},
            "watermark": {"forward_key_id": True, "ledger_retention_days": 30},
            "tracing": {"service_name": "gw", "timeout_s": 2},
            "ratelimit": {"redis_timeout_s": 0.5},
        },
        "auth": {"settings": {"issuer": "https://idp.example.com", "audience": ["gw"],
                              "revocation_on_error": "fail_open", "jwks_refetch_s": 10}},
    }
    assert lint(values) == []
    path = tmp_path / "gateway.yaml"
    path.write_text(render(values).get("ConfigMap", "prod-gateway-config")["data"]
                    ["gateway.yaml"])
    settings = load_settings(path, env={})
    assert settings.timeouts.client_body_s == 20
    assert settings.auth.audience == ("gw",)
    assert settings.readiness_requires_upstream is True
