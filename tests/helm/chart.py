"""The chart rendered and linted by the real Helm engine, manifests checked by Kubernetes' schemas.

Helm comes from the `helm-python-sdk` package (`import helm_python`): Helm's Go SDK built
as a shared library and bound with ctypes, so no helm binary is involved. `lint` is its
public `helm_python.lint`. Rendering goes through the library's `helm_render` entry point
directly because `Chart.render` (0.2.x) does not pass on the two options these tests need:
`kube_version` (pin .Capabilities.KubeVersion) and `api_versions` (the API groups that
.Capabilities.APIVersions.Has sees, e.g. the Prometheus Operator's). This is what
`helm template --kube-version ... --api-versions ...` does.

Manifests are validated with `kubernetes-validate` (strict: unknown fields are errors)
against the same Kubernetes version Helm renders for.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "gateway"
KUBE_VERSION = "1.35.0"
RELEASE = "prod"
NAMESPACE = "ai"
MONITORING_API = ("monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor",
                  "monitoring.coreos.com/v1/PrometheusRule")
# Kinds from CRDs that kubernetes-validate has no schema for; checked structurally instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
             ("monitoring.coreos.com/v1", "PrometheusRule")}

HelmError = helm_python.HelmError
# libyaml's parser when PyYAML has it: the dashboard alone is 50 kB of YAML per render.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Rendered:
    """One render: every manifest, with the template it came from."""

    manifests: tuple[tuple[str, dict[str, Any]], ...]
    notes: str

    def all(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for _, m in self.manifests if kind is None or m["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [m for m in self.all(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)} of {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [f"{m['kind']}/{m['metadata']['name']}" for _, m in self.manifests]

    def has(self, kind: str, name: str) -> bool:
        return any(m["metadata"]["name"] == name for m in self.all(kind))


@functools.cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render(values: dict[str, Any] | None = None, *, api_versions: tuple[str, ...] = (),
           namespace: str = NAMESPACE, release: str = RELEASE) -> Rendered:
    """`helm template prod helm/gateway -n ai --kube-version ... --api-versions ...`."""
    opts = {"name": release, "namespace": namespace, "is_install": True,
            "kube_version": f"v{KUBE_VERSION}", "api_versions": list(api_versions)}
    raw = _native.call_string("helm_render", _chart()._raw(),
                              None if values is None else json.dumps(values), json.dumps(opts))
    files: dict[str, str] = json.loads(raw)
    manifests: list[tuple[str, dict[str, Any]]] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        manifests.extend((path, doc) for doc in yaml.load_all(text, Loader=_LOADER) if doc)
    return Rendered(tuple(manifests), notes)


def lint(values: dict[str, Any] | None = None) -> list[str]:
    """`helm lint --strict`: the messages at warning level or above."""
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    return [m["error"] for m in report["messages"] if m["severity"] >= 2] + list(report["errors"])


def validate(rendered: Rendered) -> None:
    """Every manifest against the Kubernetes schemas; CRD kinds by their required shape."""
    for path, manifest in rendered.manifests:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in CRD_KINDS:
            assert manifest["metadata"]["name"] and isinstance(manifest["spec"], dict), path
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            raise AssertionError(f"{path}: {manifest['kind']}/{manifest['metadata']['name']}:"
                                 f" {where}: {exc.message}") from None


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}
