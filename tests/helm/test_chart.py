"""The chart, rendered by Helm's engine and validated against Kubernetes' own schemas."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy.loader import load_policy
from gateway.settings import load_settings
from tests.helm.chart import (
    CHART,
    MONITORING_API,
    ROOT,
    HelmError,
    Rendered,
    env,
    lint,
    pod_spec,
    render,
    validate,
)

JWKS = '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "use": "sig", "kid": "k1"}]}'  # noqa: E501
ALL_ON: dict[str, Any] = {
    "replicaCount": 2,
    "auth": {"keys": {"jwks": JWKS}},
    "redis": {"statefulset": {"enabled": True, "persistence": {"enabled": True}}},
    "vllm": {"enabled": True, "logitsProcessor": {"enabled": True},
             "hfToken": {"existingSecret": "hf"}},
    "guard": {"enabled": True, "modelCache": {"type": "hostPath"}},
    "autoscaling": {"enabled": True, "inFlight": {"enabled": True}},
    "networkPolicy": {"egress": {"restrict": True},
                      "ingressFrom": [{"namespaceSelector": {"matchLabels": {"edge": "yes"}}}]},
}
EXTERNAL_REDIS: dict[str, Any] = {
    "replicaCount": 3,
    "auth": {"jwksUrl": "https://idp.example.com/.well-known/jwks.json"},
    "redis": {"external": {"existingSecret": "shared-redis", "existingSecretKey": "uri"}},
}
EXISTING_SECRETS: dict[str, Any] = {
    "replicaCount": 2,
    "secrets": {"existingSecret": "gw-secrets"},
    "auth": {"keys": {"existingSecret": "gw-keys"}},
    "redis": {"external": {"existingSecret": "gw-redis"}},
    "vllm": {"enabled": True, "watermark": {"existingSecret": "gw-vllm-wm"},
             "modelCache": {"existingClaim": "models"}},
}
CASES = {
    "default": None,
    "all-on": ALL_ON,
    "external-redis": EXTERNAL_REDIS,
    "existing-secrets": EXISTING_SECRETS,
}


def gateway(rendered: Rendered) -> dict[str, Any]:
    return rendered.get("Deployment", "prod-gateway")


def gateway_container(rendered: Rendered) -> dict[str, Any]:
    container: dict[str, Any] = pod_spec(gateway(rendered))["containers"][0]
    return container


def gateway_yaml(rendered: Rendered) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        rendered.get("ConfigMap", "prod-gateway-config")["data"]["gateway.yaml"])
    return config


@pytest.mark.parametrize("case", CASES)
def test_renders_lints_and_validates(case: str) -> None:
    values = CASES[case]
    assert lint(values) == []
    for api_versions in ((), MONITORING_API):
        validate(render(values, api_versions=api_versions))


@pytest.mark.parametrize("case", CASES)
def test_gateway_yaml_is_accepted_by_the_gateway(case: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(render(CASES[case]).get("ConfigMap", "prod-gateway-config")["data"]
                    ["gateway.yaml"])
    settings = load_settings(path, env={"GATEWAY_POLICIES": "/etc/gateway/policies",
                                        "GATEWAY_HOME": "/var/lib/gateway"})
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080


def test_default_is_one_hardened_pod() -> None:
    rendered = render()
    assert gateway(rendered)["spec"]["replicas"] == 1
    assert not rendered.all("HorizontalPodAutoscaler")
    assert not rendered.all("PodDisruptionBudget")  # 1 of 1 would block node drains
    assert not rendered.all("StatefulSet")
    assert "GATEWAY_REDIS_URL" not in env(gateway_container(rendered))
    assert "upstreams" not in gateway_yaml(rendered)
    assert "built-in simulator" in rendered.notes
    assert {m["kind"] for m in rendered.all()} >= {
        "Deployment", "Service", "ServiceAccount", "ConfigMap", "Secret", "NetworkPolicy"}


@pytest.mark.parametrize("case", CASES)
def test_security_context_and_probes(case: str) -> None:
    rendered = render(CASES[case])
    pod = pod_spec(gateway(rendered))
    container = gateway_container(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The only writable paths: GATEWAY_HOME and /tmp, both emptyDirs by default.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"/var/lib/gateway", "/tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["home"] and "emptyDir" in volumes["tmp"]
    assert env(container)["GATEWAY_HOME"]["value"] == "/var/lib/gateway"
    for workload in rendered.all("Deployment") + rendered.all("StatefulSet"):
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["livenessProbe"] and c["readinessProbe"]
            assert not c["image"].endswith(":latest") and ":" in c["image"]


def test_spread_and_anti_affinity() -> None:
    pod = pod_spec(gateway(render(EXTERNAL_REDIS)))
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    hard = pod_spec(gateway(render({**EXTERNAL_REDIS, "podAntiAffinity": "hard"})))
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard["affinity"]["podAntiAffinity"]


@pytest.mark.parametrize(("drain", "pre_stop"), [(30, 5), (120, 10), (0.5, 0)])
def test_grace_period_outlasts_pre_stop_and_drain(drain: float, pre_stop: int) -> None:
    rendered = render({"config": {"drain_timeout_s": drain}, "preStopSleepSeconds": pre_stop})
    pod = pod_spec(gateway(rendered))
    assert gateway_yaml(rendered)["drain_timeout_s"] == drain
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == [
        "sleep", str(pre_stop)]


def test_explicit_grace_period_shorter_than_the_drain_fails() -> None:
    with pytest.raises(HelmError, match="must exceed preStopSleepSeconds"):
        render({"terminationGracePeriodSeconds": 30})
    pod = pod_spec(gateway(render({"terminationGracePeriodSeconds": 90})))
    assert pod["terminationGracePeriodSeconds"] == 90


def test_several_replicas_without_redis_fail_with_a_clear_message() -> None:
    keys = {"auth": {"jwksUrl": "https://idp.example.com/jwks.json"}}
    for values in ({"replicaCount": 3, **keys}, {"autoscaling": {"enabled": True}, **keys}):
        with pytest.raises(HelmError, match="needs a shared Redis"):
            render(values)


def test_several_replicas_without_shared_keys_fail() -> None:
    with pytest.raises(HelmError, match="needs verification keys every pod shares"):
        render({"replicaCount": 2, "redis": {"statefulset": {"enabled": True}}})


def test_three_replicas_with_external_redis() -> None:
    rendered = render(EXTERNAL_REDIS)
    assert gateway(rendered)["spec"]["replicas"] == 3
    url = env(gateway_container(rendered))["GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert url == {"name": "shared-redis", "key": "uri"}
    assert rendered.get("PodDisruptionBudget", "prod-gateway")["spec"]["maxUnavailable"] == 1
    assert not rendered.all("StatefulSet")
    assert gateway_yaml(rendered)["auth"]["jwks_url"].startswith("https://idp.example.com/")
    # Redis down and on_store_error=local: each pod enforces a third of each limit.
    assert gateway_yaml(rendered)["ratelimit"] == {"on_store_error": "fail_closed",
                                                   "replicas": 3}
    assert "keys" not in {v["name"] for v in pod_spec(gateway(rendered))["volumes"]}


def test_redis_statefulset_and_autoscaling() -> None:
    rendered = render(ALL_ON)
    assert "replicas" not in gateway(rendered)["spec"]  # the HPA owns it
    assert gateway_yaml(rendered)["ratelimit"]["replicas"] == 10  # autoscaling.maxReplicas
    hpa = rendered.get("HorizontalPodAutoscaler", "prod-gateway")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "gateway_requests_in_flight"
    redis = rendered.get("StatefulSet", "prod-gateway-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    gw_env = env(gateway_container(rendered))
    assert gw_env["GATEWAY_REDIS_URL"]["value"] == (
        "redis://:$(GATEWAY_SECRET_REDIS_PASSWORD)@prod-gateway-redis:6379/0")
    password = gw_env["GATEWAY_SECRET_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "prod-gateway-redis", "key": "password"}
    secret = rendered.get("Secret", "prod-gateway-redis")
    assert len(base64.b64decode(secret["data"]["password"])) >= 32
    policy = rendered.get("NetworkPolicy", "prod-gateway-redis")
    assert policy["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": gateway(rendered)["spec"]["selector"]["matchLabels"]}}]


def test_vllm_and_guard() -> None:
    rendered = render(ALL_ON)
    gateway_labels = gateway(rendered)["spec"]["selector"]["matchLabels"]
    assert gateway_yaml(rendered)["upstreams"] == ["http://prod-gateway-vllm:8000"]
    for name in ("prod-gateway-vllm", "prod-gateway-guard"):
        deployment = rendered.get("Deployment", name)
        container = pod_spec(deployment)["containers"][0]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert rendered.get("Service", name)["spec"]["ports"][0]["port"] == 8000
        # Only the gateway's pods reach vLLM: /tokenize, /metrics are not behind --api-key.
        policy = rendered.get("NetworkPolicy", name)
        assert policy["spec"]["podSelector"]["matchLabels"] == (
            deployment["spec"]["selector"]["matchLabels"])
        assert policy["spec"]["ingress"] == [{
            "from": [{"podSelector": {"matchLabels": gateway_labels}}],
            "ports": [{"port": "http", "protocol": "TCP"}]}]
    vllm = pod_spec(rendered.get("Deployment", "prod-gateway-vllm"))
    args = vllm["containers"][0]["args"]
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct"
    watermark = next(a for a in args if a.startswith("--watermark-config="))
    config = watermark.removeprefix("--watermark-config=").replace("$(VLLM_WATERMARK_KEY)", "7")
    assert json.loads(config) == {"algorithm": "gumbel", "key": 7}
    assert "--logits-processors=gateway.vllm_plugin.processor:GreenListLogitsProcessor" in args
    vllm_env = env(vllm["containers"][0])
    assert vllm_env["VLLM_WATERMARK_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "key"
    master = vllm_env["GATEWAY_SECRET_VLLM_WATERMARK"]["valueFrom"]["secretKeyRef"]
    assert master == {"name": "prod-gateway-secrets", "key": "vllm_watermark"}
    assert vllm_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf"
    key = base64.b64decode(rendered.get("Secret", "prod-gateway-vllm-watermark")["data"]["key"])
    assert key.isdigit() and not key.startswith(b"0")
    assert {v["name"]: v for v in vllm["volumes"]}["models"]["persistentVolumeClaim"] == {
        "claimName": "prod-gateway-vllm-models"}
    guard = pod_spec(rendered.get("Deployment", "prod-gateway-guard"))
    assert not any("watermark" in a or "logits" in a for a in guard["containers"][0]["args"])
    assert "hostPath" in {v["name"]: v for v in guard["volumes"]}["models"]


@pytest.mark.parametrize(("deployment", "name"), [("prod-gateway-vllm", "upstream_api_key"),
                                                  ("prod-gateway-guard", "guard_api_key")])
def test_each_vllm_takes_only_the_gateways_api_key(deployment: str, name: str) -> None:
    """vLLM's --api-key (VLLM_API_KEY) and the key the gateway sends are one secret, one
    per server; without the name in secrets.names, that server has no key."""
    rendered = render(ALL_ON)
    ref = {"name": "prod-gateway-secrets", "key": name}
    vllm = pod_spec(rendered.get("Deployment", deployment))["containers"][0]
    assert env(vllm)["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == ref
    assert env(gateway_container(rendered))[f"GATEWAY_SECRET_{name.upper()}"][
        "valueFrom"]["secretKeyRef"] == ref
    assert "checksum/api-key" in rendered.get("Deployment", deployment)[
        "spec"]["template"]["metadata"]["annotations"]
    names = ["watermark", "cache_salt", "audit", "vllm_watermark",
             "upstream_api_key", "guard_api_key"]
    unkeyed = render({**ALL_ON, "secrets": {"names": [n for n in names if n != name]}})
    vllm = pod_spec(unkeyed.get("Deployment", deployment))["containers"][0]
    assert "VLLM_API_KEY" not in env(vllm)
    assert f"GATEWAY_SECRET_{name.upper()}" not in env(gateway_container(unkeyed))


def test_existing_secrets_are_referenced_not_created() -> None:
    rendered = render(EXISTING_SECRETS)
    assert rendered.all("Secret") == []
    gw_env = env(gateway_container(rendered))
    for name in ("WATERMARK", "CACHE_SALT", "AUDIT", "VLLM_WATERMARK"):
        ref = gw_env[f"GATEWAY_SECRET_{name}"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "gw-secrets", "key": name.lower()}
    assert gw_env["GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "gw-redis", "key": "url"}
    volumes = {v["name"]: v for v in pod_spec(gateway(rendered))["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == "gw-keys"
    assert gateway_yaml(rendered)["auth"] == {
        "jwks_file": "/etc/gateway/keys/jwks.json",
        "revocation_file": "/etc/gateway/revocation/revoked.txt"}
    vllm = pod_spec(rendered.get("Deployment", "prod-gateway-vllm"))
    assert env(vllm["containers"][0])["VLLM_WATERMARK_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "gw-vllm-wm", "key": "key"}
    assert not rendered.all("PersistentVolumeClaim")


PEM = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n" \
      "-----END PUBLIC KEY-----\n"


def test_pem_keys_from_values_or_an_existing_secret() -> None:
    rendered = render({"auth": {"keys": {"pem": {"k1.pem": PEM}}}})
    auth = gateway_yaml(rendered)["auth"]
    assert auth["pem_files"] == ["/etc/gateway/keys/k1.pem"] and "jwks_file" not in auth
    keys = rendered.get("Secret", "prod-gateway-keys")["data"]
    assert base64.b64decode(keys["k1.pem"]).decode() == PEM
    existing = render({"auth": {"keys": {"existingSecret": "idp", "pemKeys": ["a.pem"]}}})
    auth = gateway_yaml(existing)["auth"]
    assert auth["pem_files"] == ["/etc/gateway/keys/a.pem"] and "jwks_file" not in auth
    with pytest.raises(HelmError, match="pemKeys names keys of the existing"):
        render({"auth": {"keys": {"pemKeys": ["a.pem"]}}})


def test_revocations_reload_without_a_restart() -> None:
    base = render()
    revoked = render({"auth": {"revokedJtis": ["jti-1", "jti-2"]}})
    text = revoked.get("ConfigMap", "prod-gateway-revocation")["data"]["revoked.txt"]
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        "jti-1", "jti-2"]
    assert gateway(revoked) == gateway(base)
    mount = next(m for m in gateway_container(base)["volumeMounts"] if m["name"] == "revocation")
    assert "subPath" not in mount
    assert gateway_yaml(base)["auth"]["revocation_file"] == (
        mount["mountPath"] + "/revoked.txt")


def test_generated_secrets_are_long_and_distinct() -> None:
    secret = render().get("Secret", "prod-gateway-secrets")
    values = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(values) == {"watermark", "cache_salt", "audit", "vllm_watermark",
                           "upstream_api_key", "guard_api_key"}
    assert all(len(v) >= 32 for v in values.values())
    assert len(set(values.values())) == len(values)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_no_secret_material_in_any_configmap() -> None:
    markers = {"watermark": "W" * 40, "cache_salt": "C" * 40, "audit": "A" * 40,
               "vllm_watermark": "V" * 40}
    values = {**ALL_ON, "secrets": {"values": markers},
              "redis": {"external": {"url": "redis://:Pa55w0rdMarker@redis.example:6379/0"}}}
    rendered = render(values, api_versions=MONITORING_API)
    secrets_text = "\n".join(base64.b64decode(value).decode()
                              for m in rendered.all("Secret") for value in m["data"].values())
    configmaps_text = json.dumps([m.get("data") for m in rendered.all("ConfigMap")])
    for secret in [*markers.values(), "Pa55w0rdMarker", JWKS]:
        assert secret in secrets_text
        assert secret not in configmaps_text
        assert base64.b64encode(secret.encode()).decode() not in configmaps_text
    assert "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" not in configmaps_text
    for manifest in rendered.all("Deployment") + rendered.all("StatefulSet"):
        for item in pod_spec(manifest)["containers"][0].get("env", []):
            if "SECRET" in item["name"] or "PASSWORD" in item["name"] or "TOKEN" in item["name"]:
                assert "secretKeyRef" in item["valueFrom"], item
        assert "Pa55w0rdMarker" not in json.dumps(manifest)


def repo_policies() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((ROOT / "policies").glob("*.yaml"))}


def test_chart_copy_of_policies_is_identical_to_the_repo() -> None:
    chart_copy = {p.name: p.read_text() for p in sorted((CHART / "files/policies").glob("*"))}
    assert chart_copy == repo_policies(), (
        "helm/gateway/files/policies/ is stale: cp policies/*.yaml helm/gateway/files/policies/")


def test_policies_configmap_carries_the_repo_policies(tmp_path: Path) -> None:
    rendered = render()
    data = rendered.get("ConfigMap", "prod-gateway-policies")["data"]
    assert data == repo_policies()
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    assert load_policy(tmp_path).tiers  # and the gateway accepts them


def load_configmap_policies(data: dict[str, str], directory: Path) -> Any:
    directory.mkdir()
    for name, text in data.items():
        (directory / name).write_text(text)
    return load_policy(directory)


def test_guard_model_is_wired_into_the_policies(tmp_path: Path) -> None:
    data = render(ALL_ON).get("ConfigMap", "prod-gateway-policies")["data"]
    guard = load_configmap_policies(data, tmp_path / "all-on").classifiers.guard
    assert guard.enabled and guard.url == "http://prod-gateway-guard:8000"
    assert guard.model == "llama-guard-3-8b"
    # Only the guard block changed: every other file and key is the repo's.
    changed = {name for name, text in data.items() if repo_policies().get(name) != text}
    assert len(changed) == 1
    (name,) = changed
    for key, value in yaml.safe_load(data[name]).items():
        original = yaml.safe_load(repo_policies().get(name, "{}") or "{}").get(key)
        if key == "classifiers" and original is not None:
            assert {k: v for k, v in value.items() if k != "guard"} == {
                k: v for k, v in original.items() if k != "guard"}
        elif original is not None:
            assert value == original
    off = {**ALL_ON, "guard": {"enabled": True, "classifier": {"enabled": False}}}
    assert render(off).get("ConfigMap", "prod-gateway-policies")["data"] == repo_policies()


def test_guard_policy_file_added_when_no_file_configures_the_guard(tmp_path: Path) -> None:
    files = {k: v for k, v in repo_policies().items() if "guard:" not in v}
    values = {"guard": {"enabled": True}, "policies": {"useDefaults": False, "files": files}}
    data = render(values).get("ConfigMap", "prod-gateway-policies")["data"]
    assert set(data) == {*files, "guard.yaml"}
    guard = load_configmap_policies(data, tmp_path / "added").classifiers.guard
    assert guard.enabled and guard.url == "http://prod-gateway-guard:8000"


def test_guard_block_that_cannot_be_rewritten_fails_clearly() -> None:
    files = {"tiers.yaml": "tiers: {}\n", "c.yaml": "classifiers: {guard: {enabled: false}}\n"}
    values = {"guard": {"enabled": True}, "policies": {"useDefaults": False, "files": files}}
    with pytest.raises(HelmError, match="could not point classifiers"):
        render(values)


def test_policies_from_values_replace_or_add_files() -> None:
    tiers = "tiers:\n  only:\n    models: ['*']\n"
    data = render({"policies": {"files": {"tiers.yaml": tiers, "extra.yaml": "x: 1\n"}}}).get(
        "ConfigMap", "prod-gateway-policies")["data"]
    assert data["tiers.yaml"] == tiers and data["extra.yaml"] == "x: 1\n"
    own = render({"policies": {"useDefaults": False, "files": {"a.yaml": "tiers: {}\n"}}})
    assert own.get("ConfigMap", "prod-gateway-policies")["data"] == {"a.yaml": "tiers: {}\n"}
    external = render({"policies": {"existingConfigMap": "my-policies"}})
    assert not external.has("ConfigMap", "prod-gateway-policies")
    volumes = {v["name"]: v for v in pod_spec(gateway(external))["volumes"]}
    assert volumes["policies"]["configMap"]["name"] == "my-policies"


def test_policy_change_keeps_pods_but_config_change_rolls_them() -> None:
    """Policies hot-reload from the mounted directory: no pod-template change, no restart."""
    base = gateway(render())
    edited = render({"policies": {"files": {"tiers.yaml": "tiers: {}\n"}}})
    assert gateway(edited) == base
    mount = next(m for m in gateway_container(edited)["volumeMounts"] if m["name"] == "policies")
    assert mount["mountPath"] == "/etc/gateway/policies" and "subPath" not in mount
    assert env(gateway_container(edited))["GATEWAY_POLICIES"]["value"] == "/etc/gateway/policies"
    policies = edited.get("ConfigMap", "prod-gateway-policies")
    digest = hashlib.sha256(yaml.safe_dump(policies).encode()).hexdigest()
    annotations = base["spec"]["template"]["metadata"]["annotations"]
    assert digest not in annotations.values()
    assert not any("polic" in key for key in annotations)
    louder = gateway(render({"config": {"log_level": "DEBUG"}}))
    assert (louder["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            != annotations["checksum/config"])


def test_gateway_config_file_is_mounted() -> None:
    rendered = render()
    container = gateway_container(rendered)
    assert env(container)["GATEWAY_CONFIG"]["value"] == "/etc/gateway/config/gateway.yaml"
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_mount["mountPath"] == "/etc/gateway/config"
    assert gateway_yaml(rendered)["drain_timeout_s"] == 30


PROMETHEUS_PEER = {"namespaceSelector": {"matchLabels": {
    "kubernetes.io/metadata.name": "monitoring"}}}


@pytest.mark.parametrize("present", [True, False])
def test_monitoring_follows_the_prometheus_operator_api(present: bool) -> None:
    values = {"vllm": {"enabled": True}, "networkPolicy": {"vllmFrom": [PROMETHEUS_PEER]}}
    rendered = render(values, api_versions=MONITORING_API if present else ())
    assert rendered.has("ServiceMonitor", "prod-gateway") is present
    assert rendered.has("ServiceMonitor", "prod-gateway-vllm") is present
    assert rendered.has("PrometheusRule", "prod-gateway") is present
    dashboard = rendered.get("ConfigMap", "prod-gateway-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards/gateway.json").read_text())
    assert json.loads(dashboard["data"]["gateway.json"]) == shipped
    if present:
        monitor = rendered.get("ServiceMonitor", "prod-gateway")
        assert monitor["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics",
                                                   "interval": "15s"}
        rules = rendered.get("PrometheusRule", "prod-gateway")["spec"]["groups"][0]["rules"]
        assert {r["alert"] for r in rules} >= {
            "GatewayHighErrorRatio", "GatewayUpstreamDown", "GatewayRateLimitStoreFallback",
            "GatewayPolicyReloadFailing", "GatewayHighOverhead"}
    else:
        assert "No Prometheus Operator API" in rendered.notes


def test_vllm_is_scraped_only_where_prometheus_may_reach_it() -> None:
    """A NetworkPolicy that admits only the gateway would leave a vLLM target down for good;
    opening vLLM's port to Prometheus by default would open its API as well."""
    vllm = {"vllm": {"enabled": True}}
    closed = render(vllm, api_versions=MONITORING_API)
    assert not closed.has("ServiceMonitor", "prod-gateway-vllm")
    assert closed.has("ServiceMonitor", "prod-gateway")
    assert "networkPolicy.vllmFrom" in closed.notes
    opened = render({**vllm, "networkPolicy": {"vllmFrom": [PROMETHEUS_PEER]}},
                    api_versions=MONITORING_API)
    assert opened.has("ServiceMonitor", "prod-gateway-vllm")
    assert PROMETHEUS_PEER in opened.get("NetworkPolicy", "prod-gateway-vllm")["spec"][
        "ingress"][0]["from"]
    assert "networkPolicy.vllmFrom" not in opened.notes
    unpoliced = render({**vllm, "networkPolicy": {"enabled": False}}, api_versions=MONITORING_API)
    assert unpoliced.has("ServiceMonitor", "prod-gateway-vllm")


def test_redis_pulls_and_schedules_like_the_gateway() -> None:
    placement = {
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "priorityClassName": "gateway-critical",
    }
    values = {"imagePullSecrets": [{"name": "regcred"}],
              "redis": {"statefulset": {"enabled": True, **placement,
                                        "image": {"repository": "registry.internal/redis"}}}}
    rendered = render(values)
    validate(rendered)
    pod = pod_spec(rendered.get("StatefulSet", "prod-gateway-redis"))
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert {key: pod[key] for key in placement} == placement
    bare = pod_spec(render({"redis": {"statefulset": {"enabled": True}}}).get(
        "StatefulSet", "prod-gateway-redis"))
    assert not set(placement) & set(bare) and "imagePullSecrets" not in bare
