"""Development keys: files and modes, RFC 7638 kids, first-use creation, minted tokens."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.devkeys import (
    JWKS,
    PRIVATE,
    PUBLIC,
    DevKeyError,
    ensure_dev_keys,
    generate_keys,
    mint_token,
)
from gateway.pipeline.auth.keys import jwk_key, thumbprint


def test_generate_keys_writes_three_files(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    jwks_path = generate_keys(out)
    assert jwks_path == out / JWKS
    assert stat.S_IMODE((out / PRIVATE).stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    (jwk,) = orjson.loads(jwks_path.read_bytes())["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert jwk["kid"] == thumbprint(jwk)
    private = serialization.load_pem_private_key((out / PRIVATE).read_bytes(), None)
    public = serialization.load_pem_public_key((out / PUBLIC).read_bytes())
    assert isinstance(private, Ed25519PrivateKey)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert jwk_key(jwk).jwk.key.public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw) == raw
    assert not list(out.glob(".*"))  # no staging files left behind


def test_generate_keys_never_replaces_a_signing_key(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    before = (tmp_path / PRIVATE).read_bytes()
    with pytest.raises(FileExistsError):
        generate_keys(tmp_path)
    assert (tmp_path / PRIVATE).read_bytes() == before


def test_ensure_dev_keys_creates_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = ensure_dev_keys(home)
    assert first == home / "keys" / JWKS
    kid = orjson.loads(first.read_bytes())["keys"][0]["kid"]
    assert orjson.loads(ensure_dev_keys(home).read_bytes())["keys"][0]["kid"] == kid


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kids: list[str] = []

    def use() -> None:
        kids.append(jwt.get_unverified_header(mint_token(home, "public", "x"))["kid"])

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(kids)) == 1 and len(kids) == 8
    assert sorted(p.name for p in home.iterdir()) == ["keys"]  # staging dirs cleaned up


def test_mint_token_claims_and_header(tmp_path: Path) -> None:
    home = tmp_path / "home"
    before = int(time.time())
    minted = mint_token(home, "research", "alice", ttl=120, org="acme",
                        scopes=("admin", "read"))
    header = jwt.get_unverified_header(minted)
    jwk = orjson.loads((home / "keys" / JWKS).read_bytes())["keys"][0]
    assert header["alg"] == "EdDSA" and header["kid"] == jwk["kid"]
    payload = jwt.decode(minted, jwk_key(jwk).jwk, algorithms=["EdDSA"])
    assert payload["sub"] == "alice" and payload["tier"] == "research"
    assert payload["org"] == "acme" and payload["scope"] == "admin read"
    assert before <= payload["iat"] <= payload["exp"] - 120 <= int(time.time())
    other = jwt.decode(mint_token(home, "research", "alice"), jwk_key(jwk).jwk,
                       algorithms=["EdDSA"])
    assert other["jti"] != payload["jti"] and len(payload["jti"]) >= 16
    assert "org" not in other and "scope" not in other


def test_mint_token_custom_tier_claim(tmp_path: Path) -> None:
    minted = mint_token(tmp_path, tier="gold", sub="s", tier_claim="plan")
    payload = jwt.decode(minted, options={"verify_signature": False})
    assert payload["plan"] == "gold" and "tier" not in payload


def test_mint_without_the_private_key_says_so(tmp_path: Path) -> None:
    ensure_dev_keys(tmp_path)
    (tmp_path / "keys" / PRIVATE).unlink()
    with pytest.raises(DevKeyError, match="cannot mint"):
        mint_token(tmp_path, "public", "x")


def test_mint_with_a_corrupt_private_key_names_it(tmp_path: Path) -> None:
    ensure_dev_keys(tmp_path)
    (tmp_path / "keys" / PRIVATE).write_text("garbage\n")
    with pytest.raises(DevKeyError, match=f"^{tmp_path}/keys/{PRIVATE} is not an unencrypted "
                                          "Ed25519 private key in PEM$"):
        mint_token(tmp_path, "public", "x")


@pytest.mark.parametrize("left", [(PRIVATE,), (PUBLIC,), (PRIVATE, PUBLIC)])
def test_an_incomplete_key_set_is_reported_never_replaced(tmp_path: Path,
                                                          left: tuple[str, ...]) -> None:
    """A keys directory without its JWKS (a partial copy, a failed restore) may hold the
    only copy of a signing key that deployments trust: it is never renamed over."""
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in left:
        (keys / name).write_text(f"{name} as it was\n")
    with pytest.raises(DevKeyError, match=f"^{keys} holds no {JWKS}: an incomplete"):
        ensure_dev_keys(tmp_path)
    assert sorted(p.name for p in keys.iterdir()) == sorted(left)
    assert all((keys / name).read_text() == f"{name} as it was\n" for name in left)
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]  # no staging directory left


def test_an_empty_keys_directory_gets_a_key_set(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    assert ensure_dev_keys(tmp_path) == tmp_path / "keys" / JWKS


@pytest.mark.parametrize("where", ["home", "keys"])
def test_a_file_where_a_directory_belongs_is_reported(tmp_path: Path, where: str) -> None:
    home = tmp_path / "home"
    if where == "keys":
        home.mkdir()
    (tmp_path / "home" / "keys" if where == "keys" else home).write_text("x\n")
    expected = (f"GATEWAY_HOME {home} is not a directory" if where == "home"
                else f"{home}/keys is not a directory")
    with pytest.raises(DevKeyError, match=f"^{expected}"):
        mint_token(home, "public", "x")
