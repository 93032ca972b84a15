"""AuthSettings: defaults, validation, and coercion from YAML-shaped data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.pipeline.auth.settings import AuthSettings
from gateway.settings import _build


def test_defaults_use_development_keys() -> None:
    settings = AuthSettings()
    assert settings.uses_dev_keys and not settings.problems()
    assert (settings.tier_claim, settings.leeway_s, settings.max_token_bytes,
            settings.jwks_refetch_s, settings.cache_size) == ("tier", 30.0, 8192, 30.0, 10_000)
    for configured in ({"jwks_url": "https://idp.example/jwks"}, {"jwks_file": Path("j")},
                       {"pem_files": (Path("k.pem"),)}, {"hs256_secret_env": "S"}):
        assert not AuthSettings(**configured).uses_dev_keys


def test_coerced_from_yaml_shaped_data() -> None:
    settings = _build(AuthSettings, {
        "jwks_url": "https://idp.example/.well-known/jwks.json", "pem_files": ["a.pem", "b.pem"],
        "audience": "gateway,gateway-staging", "leeway_s": "10", "cache_size": 5,
        "revocation_file": "revoked.txt", "issuer": "https://idp.example/"})
    assert settings.pem_files == (Path("a.pem"), Path("b.pem"))
    assert settings.audience == ("gateway", "gateway-staging")
    assert settings.leeway_s == 10.0 and settings.revocation_file == Path("revoked.txt")


@pytest.mark.parametrize("over, key", [
    ({"jwks_url": "http://idp.example/jwks"}, "jwks_url"),
    ({"jwks_url": "file:///etc/jwks.json"}, "jwks_url"),
    ({"jwks_url": "https://"}, "jwks_url"),
    ({"hs256_secret_env": ""}, "hs256_secret_env"),
    ({"tier_claim": ""}, "tier_claim"),
    ({"org_claim": ""}, "org_claim"),
    ({"hs256_kid": ""}, "hs256_kid"),
    ({"max_token_bytes": 100}, "max_token_bytes"),
    ({"jwks_ttl_s": 0.0}, "jwks_ttl_s"),
    ({"revocation_redis_timeout_s": 0.0}, "revocation_redis_timeout_s"),
    ({"revocation_on_error": "maybe"}, "revocation_on_error"),
])
def test_problems_name_the_key(over: dict[str, Any], key: str) -> None:
    problems = AuthSettings(**over).problems()
    assert len(problems) == 1 and problems[0].startswith(f"{key}:")


def test_plain_http_only_on_loopback() -> None:
    for url in ("http://127.0.0.1:8000/jwks", "http://localhost/jwks", "http://[::1]/jwks"):
        assert not AuthSettings(jwks_url=url).problems()


def test_relative_paths_are_under_home() -> None:
    settings = AuthSettings()
    assert settings.resolve(Path("/h"), Path("keys/jwks.json")) == Path("/h/keys/jwks.json")
    assert settings.resolve(Path("/h"), Path("/etc/jwks.json")) == Path("/etc/jwks.json")
