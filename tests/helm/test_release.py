"""The files a release mounts, served by a real `gateway serve`: a minted token gets in.

The rendered ConfigMaps and Secrets are written where the pod would see them (under a
temporary directory instead of /etc/gateway) and the environment is the container's, so
this checks the chart's wiring end to end: config keys the gateway accepts, the policy
directory, the JWKS Secret, the revocation list and the GATEWAY_SECRET_* variables.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from gateway.devkeys import generate_keys, mint_token
from tests.helm.chart import env, pod_spec, render


def _write(directory: Path, files: dict[str, str | bytes]) -> None:
    directory.mkdir(parents=True)
    for name, content in files.items():
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _post(url: str, token: str) -> int:
    body = json.dumps({"model": "sim-llama-3-8b-instruct", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "Hello!"}]}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_rendered_release_serves_a_minted_token(
        tmp_path: Path, gateway_process: Callable[..., Any]) -> None:
    admin = tmp_path / "admin"  # the operator's machine: the signing key stays here
    jwks = generate_keys(admin / "keys").read_text()
    revoked = mint_token(admin, tier="public", sub="mallory")
    jti = jwt.decode(revoked, options={"verify_signature": False})["jti"]
    rendered = render({"auth": {"keys": {"jwks": jwks}, "revokedJtis": [jti]}})

    etc = tmp_path / "etc"
    data = {m["metadata"]["name"]: m["data"] for m in rendered.all("ConfigMap")}
    secrets = {m["metadata"]["name"]: {k: base64.b64decode(v) for k, v in m["data"].items()}
               for m in rendered.all("Secret")}
    config = data["prod-gateway-config"]["gateway.yaml"].replace("/etc/gateway/", f"{etc}/")
    _write(etc / "config", {"gateway.yaml": config})
    _write(etc / "policies", data["prod-gateway-policies"])
    _write(etc / "revocation", data["prod-gateway-revocation"])
    _write(etc / "keys", dict(secrets["prod-gateway-keys"]))

    container = pod_spec(rendered.get("Deployment", "prod-gateway"))["containers"][0]
    process_env = {"GATEWAY_HOME": str(tmp_path / "pod-home"),
                   "GATEWAY_CONFIG": str(etc / "config/gateway.yaml"),
                   "GATEWAY_POLICIES": str(etc / "policies")}
    for name, item in env(container).items():
        if name.startswith("GATEWAY_SECRET_"):
            ref = item["valueFrom"]["secretKeyRef"]
            process_env[name] = secrets[ref["name"]][ref["key"]].decode()
    gateway = gateway_process("--host", "127.0.0.1", env=process_env)

    assert _post(gateway.url, mint_token(admin, tier="public", sub="alice")) == 200
    assert _post(gateway.url, revoked) == 401
    other = tmp_path / "other"  # a key the release does not trust
    generate_keys(other / "keys")
    assert _post(gateway.url, mint_token(other, tier="public", sub="eve")) == 401
