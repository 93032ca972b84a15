"""What rolls the gateway's pods, and how a rollout runs: checksums on the pod template,
the update strategy, the progress deadline and the readiness the rollout waits on."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helm.chart import HelmError, pod_spec, render

JWKS_URL = "https://idp.example.com/jwks.json"
HOME_CLAIM = {"homeVolume": {"persistentVolumeClaim": {"claimName": "gw-home"}}}
OLD_URL = {"external": {"url": "redis://:oldpass@redis.example:6379/0"}}
BASE: dict[str, Any] = {"redis": OLD_URL, "secrets": {"values": {"watermark": "o" * 40}}}
CHANGED: dict[str, dict[str, Any]] = {
    "redis.external.url": {**BASE, "redis": {
        "external": {"url": "redis://:newpass@redis2.example:6379/0"}}},
    "secrets.values.watermark": {**BASE, "secrets": {"values": {"watermark": "n" * 40}}},
    "secrets.values.audit": {**BASE, "secrets": {"values": {"watermark": "o" * 40,
                                                            "audit": "a" * 40}}},
}


def deployment(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return render(values).get("Deployment", "prod-gateway")


def pod_annotations(values: dict[str, Any] | None = None) -> dict[str, str]:
    found: dict[str, str] = deployment(values)["spec"]["template"]["metadata"]["annotations"]
    return found


@pytest.mark.parametrize("changed", CHANGED)
def test_a_changed_secret_value_rolls_the_pods(changed: str) -> None:
    before, after = pod_annotations(BASE), pod_annotations(CHANGED[changed])
    assert before["checksum/secrets"] != after["checksum/secrets"]
    assert before["checksum/config"] == after["checksum/config"]
    assert pod_annotations(BASE) == before


def test_secrets_checksum_is_stable_when_nothing_changed() -> None:
    """Generated values (new on each `helm template`) do not enter the checksum, so an
    unchanged release renders the same pod template every time."""
    for values in (None, BASE, {"replicaCount": 2, "auth": {"jwksUrl": JWKS_URL},
                                "redis": {"statefulset": {"enabled": True}}}):
        first, second = render(values), render(values)
        assert first.get("Secret", "prod-gateway-secrets") != second.get(
            "Secret", "prod-gateway-secrets")  # the generated values are new each time
        assert first.get("Deployment", "prod-gateway") == second.get("Deployment", "prod-gateway")


def test_existing_secrets_leave_the_checksum_alone() -> None:
    values = {"secrets": {"existingSecret": "gw-secrets", "values": {"watermark": "x" * 40}}}
    assert pod_annotations(values)["checksum/secrets"] == pod_annotations(
        {"secrets": {"existingSecret": "gw-secrets"}})["checksum/secrets"]


def test_a_new_processor_key_rolls_vllm() -> None:
    values = {"vllm": {"enabled": True, "logitsProcessor": {"enabled": True}}}

    def vllm(key: str) -> Any:
        rendered = render({**values, "secrets": {"values": {"vllm_watermark": key}}})
        return rendered.get("Deployment", "prod-gateway-vllm")["spec"]["template"]["metadata"]

    assert vllm("a" * 40) == vllm("a" * 40)
    assert vllm("a" * 40)["annotations"]["checksum/secrets"] != (
        vllm("b" * 40)["annotations"]["checksum/secrets"])


def test_home_claim_alone_or_with_an_explicit_empty_dir() -> None:
    """No `emptyDir: null` needed: homeVolume is empty by default (an emptyDir)."""
    default = {v["name"]: v for v in pod_spec(deployment())["volumes"]}["home"]
    assert default == {"name": "home", "emptyDir": {"sizeLimit": "1Gi"}}
    claim = {v["name"]: v for v in pod_spec(deployment(HOME_CLAIM))["volumes"]}["home"]
    assert claim == {"name": "home", "persistentVolumeClaim": {"claimName": "gw-home"}}
    # The workaround the schema once required still works.
    old_style = {"homeVolume": {"emptyDir": None, **HOME_CLAIM["homeVolume"]}}
    assert {v["name"]: v for v in pod_spec(deployment(old_style))["volumes"]}["home"] == claim
    assert deployment(old_style)["spec"]["strategy"] == {"type": "Recreate"}
    with pytest.raises(HelmError, match="homeVolume: one volume source"):
        render({"homeVolume": {"emptyDir": {}, **HOME_CLAIM["homeVolume"]}})
    bigger = {"homeVolume": {"emptyDir": {"sizeLimit": "5Gi"}}}
    assert {v["name"]: v for v in pod_spec(deployment(bigger))["volumes"]}["home"] == {
        "name": "home", "emptyDir": {"sizeLimit": "5Gi"}}


def test_home_claim_is_never_mounted_by_two_pods() -> None:
    assert deployment(HOME_CLAIM)["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment()["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    shared = {"auth": {"jwksUrl": JWKS_URL}, "redis": {"statefulset": {"enabled": True}}}
    for many in ({"replicaCount": 2}, {"autoscaling": {"enabled": True}}):
        with pytest.raises(HelmError, match="one GATEWAY_HOME claim cannot serve several pods"):
            render({**HOME_CLAIM, **shared, **many})


def test_pods_stay_ready_without_an_upstream_by_default() -> None:
    def config(values: dict[str, Any] | None) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(render(values).get(
            "ConfigMap", "prod-gateway-config")["data"]["gateway.yaml"])
        return loaded

    assert config(None)["readiness_requires_upstream"] is False
    assert config({"config": {"readiness_requires_upstream": True}})[
        "readiness_requires_upstream"] is True


def test_progress_deadline() -> None:
    assert deployment()["spec"]["progressDeadlineSeconds"] == 600
    assert deployment({"progressDeadlineSeconds": 1800})["spec"][
        "progressDeadlineSeconds"] == 1800
