"""Key material: thumbprints, inferred algorithms, what a key set may and may not hold."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.pipeline.auth.keys import (
    UnusableKey,
    hs256_key,
    infer_alg,
    jwk_key,
    parse_jwks,
    pem_key,
    thumbprint,
)
from tests.pipeline.auth.helpers import EC_KEY, ED_KEY, RSA_KEY, PrivateKey, public_jwk


def test_thumbprint_matches_rfc_8037_example() -> None:
    """RFC 8037 appendix A.3: the Ed25519 example key's RFC 7638 thumbprint."""
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    # Only the required members count, in any order, whatever else the JWK carries.
    assert thumbprint({"x": jwk["x"], "kid": "k", "use": "sig", "crv": "Ed25519",
                       "kty": "OKP"}) == thumbprint(jwk)


@pytest.mark.parametrize("jwk, alg", [
    ({"kty": "OKP", "crv": "Ed25519"}, "EdDSA"),
    ({"kty": "EC", "crv": "P-256"}, "ES256"),
    ({"kty": "RSA"}, "RS256"),
    ({"kty": "EC", "crv": "P-384"}, None),
    ({"kty": "OKP", "crv": "X25519"}, None),
    ({"kty": "oct"}, None),
])
def test_alg_inferred_from_type_and_curve(jwk: dict[str, str], alg: str | None) -> None:
    assert infer_alg(jwk) == alg


def test_jwk_without_alg_or_kid() -> None:
    key = jwk_key(public_jwk(EC_KEY))
    assert key.alg == "ES256" and key.kid == thumbprint(public_jwk(EC_KEY)) == key.thumb


@pytest.mark.parametrize("extra", [
    {"use": "enc"},
    {"key_ops": ["encrypt"]},
    {"key_ops": "verify"},
    {"alg": "HS256"},
    {"alg": "none"},
    {"alg": "ES256"},  # does not fit an RSA key
    {"alg": "RS512"},  # not an algorithm we accept
    {"kid": 7},
    {"kid": ""},
])
def test_unusable_entries(extra: dict[str, object]) -> None:
    with pytest.raises(UnusableKey):
        jwk_key(public_jwk(RSA_KEY, **extra))


def test_symmetric_and_unknown_types_are_never_taken_from_a_key_set() -> None:
    for jwk in ({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
                {"kty": "OKP", "crv": "X25519", "x": "abc"}, {"kty": "EC", "crv": "P-256"}):
        with pytest.raises(UnusableKey):
            jwk_key(jwk)


def test_weak_rsa_key_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(UnusableKey, match="2048"):
        jwk_key(public_jwk(weak))


def test_private_members_are_dropped() -> None:
    from jwt.algorithms import OKPAlgorithm

    private_jwk = OKPAlgorithm.to_jwk(ED_KEY, as_dict=True)
    assert "d" in private_jwk
    key = jwk_key(private_jwk)
    assert key.jwk.key.__class__.__name__.endswith("PublicKey")


def test_parse_jwks_keeps_usable_keys_only() -> None:
    doc = {"keys": [public_jwk(ED_KEY, kid="a"), public_jwk(EC_KEY, kid="b", use="enc"),
                    "junk", {"kty": "oct", "k": "AAAA", "kid": "c"},
                    public_jwk(RSA_KEY, kid="a")]}  # duplicate kid: the first wins
    keys = parse_jwks(orjson.dumps(doc), "test")
    assert list(keys) == ["a"] and keys["a"].alg == "EdDSA"


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"keys": {}}', b'{"keys": []}',
                                 b'{"keys": [{"kty": "oct", "k": "AAAA"}]}'])
def test_parse_jwks_rejects_unusable_documents(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_jwks(raw, "test")


@pytest.mark.parametrize("private, alg", [(ED_KEY, "EdDSA"), (EC_KEY, "ES256"),
                                          (RSA_KEY, "RS256")])
def test_pem_files(tmp_path: Path, private: PrivateKey, alg: str) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    key = pem_key(path)
    assert key.alg == alg and key.kid == thumbprint(public_jwk(private))


def test_pem_of_an_unsupported_curve(tmp_path: Path) -> None:
    path = tmp_path / "p384.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(UnusableKey, match=r"p384\.pem"):
        pem_key(path)


def test_hs256_key() -> None:
    key = hs256_key(b"x" * 32, "shared")
    assert (key.kid, key.alg) == ("shared", "HS256")
