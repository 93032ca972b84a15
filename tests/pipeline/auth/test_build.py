"""build_verifier: every key source from settings, and the zero-configuration default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.devkeys import mint_token
from gateway.pipeline.auth import AuthConfigError, AuthSettings, AuthStage, build_verifier
from gateway.pipeline.auth.jwks import KeySetUnavailable
from gateway.pipeline.auth.keys import thumbprint
from gateway.pipeline.auth.verify import AuthFailure, Verifier
from tests.pipeline.auth.conftest import Provider
from tests.pipeline.auth.helpers import (
    ED_KEY,
    RSA_KEY,
    claims,
    forge_hs256,
    public_jwk,
    sign,
    token,
)

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def started() -> AsyncIterator[list[Verifier]]:
    verifiers: list[Verifier] = []
    yield verifiers
    for verifier in verifiers:
        await verifier.close()


async def build(started: list[Verifier], session: aiohttp.ClientSession, home: Path,
                env: dict[str, str] | None = None, **settings: Any) -> Verifier:
    verifier = build_verifier(AuthSettings(**settings), home, session, env=env or {})
    await verifier.start()
    started.append(verifier)
    return verifier


async def test_default_verifies_development_tokens(tmp_path: Path, session: aiohttp.ClientSession,
                                                   started: list[Verifier]) -> None:
    """`gateway token mint` and `gateway serve` with one GATEWAY_HOME, no configuration."""
    home = tmp_path / "home"
    verifier = await build(started, session, home)  # creates the keys on first use
    minted = mint_token(home, "research", "bob", org="acme", scopes=("admin",))
    principal = await AuthStage(verifier).authenticate([f"Bearer {minted}"], False)
    assert (principal.sub, principal.tier, principal.org, principal.scopes) == (
        "bob", "research", "acme", frozenset({"admin"}))
    again = await build(started, session, home)  # a restart keeps the same keys
    await again.verify(minted)
    with pytest.raises(AuthFailure, match="unknown_kid"):
        await again.verify(token("ed"))  # a stranger's Ed25519 key


async def test_mint_first_then_serve(tmp_path: Path, session: aiohttp.ClientSession,
                                     started: list[Verifier]) -> None:
    home = tmp_path / "home"
    minted = mint_token(home, "public", "carol", tier_claim="plan")
    verifier = await build(started, session, home, tier_claim="plan")
    assert (await verifier.verify(minted)).tier == "public"


async def test_dev_keys_not_trusted_once_a_source_is_configured(
        tmp_path: Path, session: aiohttp.ClientSession, started: list[Verifier],
        provider: Provider) -> None:
    home = tmp_path / "home"
    minted = mint_token(home, "public", "carol")
    provider.jwks = {"keys": [public_jwk(ED_KEY, kid="ed")]}
    verifier = await build(started, session, home, jwks_url=provider.url)
    await verifier.verify(token("ed"))
    with pytest.raises(AuthFailure, match="unknown_kid"):
        await verifier.verify(minted)


async def test_hs256_only_when_configured(tmp_path: Path, session: aiohttp.ClientSession,
                                          started: list[Verifier]) -> None:
    hs = forge_hs256({"alg": "HS256", "typ": "JWT"}, claims(), SECRET.encode())
    default = await build(started, session, tmp_path)
    with pytest.raises(AuthFailure, match="bad_alg"):
        await default.verify(hs)
    configured = await build(started, session, tmp_path, env={"JWT_SECRET": SECRET},
                             hs256_secret_env="JWT_SECRET")
    assert (await configured.verify(hs)).sub == "alice"
    with_kid = forge_hs256({"alg": "HS256", "kid": "hs256"}, claims(), SECRET.encode())
    await configured.verify(with_kid)


@pytest.mark.parametrize("env", [{}, {"JWT_SECRET": ""}, {"JWT_SECRET": "too-short-secret"}])
async def test_hs256_secret_must_exist_and_be_long(tmp_path: Path, env: dict[str, str],
                                                   session: aiohttp.ClientSession) -> None:
    settings = AuthSettings(hs256_secret_env="JWT_SECRET")
    with pytest.raises(AuthConfigError, match="JWT_SECRET must hold at least 32") as caught:
        build_verifier(settings, tmp_path, session, env=env)
    assert "too-short" not in str(caught.value)


async def test_pem_files_relative_to_home(tmp_path: Path, session: aiohttp.ClientSession,
                                          started: list[Verifier]) -> None:
    (tmp_path / "rsa.pem").write_bytes(RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    verifier = await build(started, session, tmp_path, pem_files=(Path("rsa.pem"),))
    kid = thumbprint(public_jwk(RSA_KEY))
    await verifier.verify(sign(RSA_KEY, "RS256", claims(), {"kid": kid}))
    await verifier.verify(sign(RSA_KEY, "RS256", claims()))  # the only key: kid optional


@pytest.mark.parametrize("content", [None, b"not a pem", b"-----BEGIN PRIVATE KEY-----\n"])
async def test_bad_pem_files_fail_the_build(tmp_path: Path, content: bytes | None,
                                            session: aiohttp.ClientSession) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AuthConfigError, match=r"pem_files\.0: .*key\.pem"):
        build_verifier(AuthSettings(pem_files=(path,)), tmp_path, session)


async def test_jwks_file(tmp_path: Path, session: aiohttp.ClientSession,
                         started: list[Verifier]) -> None:
    (tmp_path / "jwks.json").write_bytes(orjson.dumps({"keys": [public_jwk(ED_KEY, kid="ed")]}))
    verifier = await build(started, session, tmp_path, jwks_file=tmp_path / "jwks.json")
    await verifier.verify(token("ed"))
    missing = build_verifier(AuthSettings(jwks_file=Path("absent.json")), tmp_path, session)
    with pytest.raises(KeySetUnavailable):
        await missing.start()
    await missing.close()


async def test_revocation_file_from_settings(tmp_path: Path, session: aiohttp.ClientSession,
                                             started: list[Verifier]) -> None:
    home = tmp_path / "home"
    minted = mint_token(home, "public", "dave")
    jti = jwt.decode(minted, options={"verify_signature": False})["jti"]
    (home / "revoked.txt").write_text(f"{jti}\n")
    verifier = await build(started, session, home, revocation_file=Path("revoked.txt"))
    with pytest.raises(AuthFailure, match="revoked"):
        await verifier.verify(minted)
    await verifier.verify(mint_token(home, "public", "dave"))  # a fresh jti


def _pem(private: Any) -> bytes:
    return bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _kubelet_update(directory: Path, name: str, content: bytes) -> None:
    """How the kubelet updates a mounted Secret: a new timestamped directory, then one
    atomic rename of the `..data` symlink; the file itself is a symlink through it."""
    version = directory / f"..{len(list(directory.iterdir()))}"
    version.mkdir()
    (version / name).write_bytes(content)
    link = directory / "..data_tmp"
    link.symlink_to(version.name)
    link.rename(directory / "..data")
    if not (directory / name).is_symlink():
        (directory / name).symlink_to(f"..data/{name}")


async def test_key_files_are_read_again_when_their_secret_changes(
        tmp_path: Path, session: aiohttp.ClientSession, started: list[Verifier]) -> None:
    """Rotation through a mounted Secret (`auth.keys.existingSecret` in the chart) needed a
    restart for PEM files, and up to the TTL or the miss throttle for a JWKS file; pods
    started after the update accepted the new key and older ones did not."""
    pems, jwks = tmp_path / "pem", tmp_path / "jwks"
    pems.mkdir()
    jwks.mkdir()
    _kubelet_update(pems, "key.pem", _pem(RSA_KEY))
    _kubelet_update(jwks, "jwks.json", orjson.dumps({"keys": [public_jwk(ED_KEY, kid="old")]}))
    verifier = await build(started, session, tmp_path, pem_files=(pems / "key.pem",),
                           jwks_file=jwks / "jwks.json")
    rsa_kid = thumbprint(public_jwk(RSA_KEY))
    await verifier.verify(sign(RSA_KEY, "RS256", claims(), {"kid": rsa_kid}))
    await verifier.verify(sign(ED_KEY, "EdDSA", claims(), {"kid": "old"}))
    with pytest.raises(AuthFailure):  # a miss before the update: the throttle starts
        await verifier.verify(sign(ED_KEY, "EdDSA", claims(), {"kid": "new"}))

    _kubelet_update(pems, "key.pem", _pem(ED_KEY))  # the RSA key is withdrawn
    _kubelet_update(jwks, "jwks.json", orjson.dumps({"keys": [public_jwk(ED_KEY, kid="new")]}))
    await asyncio.sleep(1.1)  # one file check
    await verifier.verify(sign(ED_KEY, "EdDSA", claims(), {"kid": "new"}))
    await verifier.verify(sign(ED_KEY, "EdDSA", claims(), {"kid": thumbprint(
        public_jwk(ED_KEY))}))
    for private, alg, kid in ((RSA_KEY, "RS256", rsa_kid), (ED_KEY, "EdDSA", "old")):
        for _ in range(2):  # the withdrawn keys' tokens, cached verdicts included
            await asyncio.sleep(0.6)
            with pytest.raises(AuthFailure):
                await verifier.verify(sign(private, alg, claims(), {"kid": kid}))


async def test_a_pem_file_that_is_gone_is_a_withdrawn_key(
        tmp_path: Path, session: aiohttp.ClientSession, started: list[Verifier]) -> None:
    """A key that leaves a mounted Secret leaves as its file: the kubelet removes it. The
    whole read failed then, and the last set, withdrawn key included, kept serving."""
    keys = tmp_path / "keys"
    keys.mkdir()
    _kubelet_update(keys, "a.pem", _pem(RSA_KEY))
    (keys / "..data" / "b.pem").write_bytes(_pem(ED_KEY))
    (keys / "b.pem").symlink_to("..data/b.pem")
    verifier = await build(started, session, tmp_path,
                           pem_files=(keys / "a.pem", keys / "b.pem"))
    ed_kid = thumbprint(public_jwk(ED_KEY))
    await verifier.verify(sign(ED_KEY, "EdDSA", claims(), {"kid": ed_kid}))
    _kubelet_update(keys, "a.pem", _pem(RSA_KEY))  # a new version without b.pem
    (keys / "b.pem").unlink()
    await asyncio.sleep(1.1)
    rsa_kid = thumbprint(public_jwk(RSA_KEY))
    await verifier.verify(sign(RSA_KEY, "RS256", claims(), {"kid": rsa_kid}))
    await asyncio.sleep(0.1)
    with pytest.raises(AuthFailure):
        await verifier.verify(sign(ED_KEY, "EdDSA", claims(), {"kid": ed_kid}))
