"""Keys, token builders and forgeries shared by the auth tests (plain functions, no mocks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.pipeline.auth.cache import TokenCache
from gateway.pipeline.auth.keyring import Keyring
from gateway.pipeline.auth.keys import VerifyKey, jwk_key
from gateway.pipeline.auth.revocation import Revocation
from gateway.pipeline.auth.settings import AuthSettings
from gateway.pipeline.auth.verify import Verifier

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ATTACKER = ed25519.Ed25519PrivateKey.generate()
SIGNERS: dict[str, tuple[PrivateKey, str]] = {
    "rsa": (RSA_KEY, "RS256"), "ec": (EC_KEY, "ES256"), "ed": (ED_KEY, "EdDSA")}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def public_jwk(private: PrivateKey, **extra: Any) -> dict[str, Any]:
    public = private.public_key()
    jwk: dict[str, Any]
    if isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, **extra}


def verify_key(kid: str) -> VerifyKey:
    private, alg = SIGNERS[kid]
    return jwk_key(public_jwk(private, kid=kid, alg=alg))


def claims(**over: Any) -> dict[str, Any]:
    """Valid claims; a keyword set to None removes that claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "tier": "public", "iat": now, "exp": now + 600,
                            "jti": "jti-1"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(private: PrivateKey, alg: str, payload: dict[str, Any],
         headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, private, algorithm=alg, headers=headers)


def token(kid: str = "ed", headers: dict[str, Any] | None = None, **over: Any) -> str:
    private, alg = SIGNERS[kid]
    return sign(private, alg, claims(**over), {"kid": kid, **(headers or {})})


def b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand: whatever header an attacker likes."""
    return f"{b64(header)}.{b64(payload)}.{b64(signature) if signature else ''}"


def forge_ed25519(private: ed25519.Ed25519PrivateKey, header: dict[str, Any],
                  payload: dict[str, Any]) -> str:
    """Properly signed, with a header pyjwt would refuse to write (e.g. a null kid)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{b64(private.sign(signing_input.encode()))}"


def forge_hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def static_verifier(keys: tuple[str, ...] = ("rsa", "ec", "ed"), *,
                    revocation: Revocation | None = None, cache: TokenCache | None = None,
                    **settings: Any) -> Verifier:
    static = {kid: verify_key(kid) for kid in keys}
    return Verifier(AuthSettings(**settings), Keyring(static), revocation, cache)
