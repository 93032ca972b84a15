"""Every known JWT attack is refused with its reason; good tokens become Principals."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.context import Principal
from gateway.pipeline.auth.cache import TokenCache
from gateway.pipeline.auth.jwks import KeyCache, url_loader
from gateway.pipeline.auth.keyring import Keyring
from gateway.pipeline.auth.keys import hs256_key
from gateway.pipeline.auth.settings import AuthSettings
from gateway.pipeline.auth.verify import REASONS, AuthFailure, Verifier
from tests.pipeline.auth.conftest import Provider, start_provider
from tests.pipeline.auth.helpers import (
    ATTACKER,
    EC_KEY,
    ED_KEY,
    RSA_KEY,
    Clock,
    b64,
    claims,
    forge,
    forge_ed25519,
    forge_hs256,
    public_jwk,
    sign,
    static_verifier,
    token,
    verify_key,
)


def now() -> int:
    return int(time.time())


def at(**offsets: int) -> dict[str, Any]:
    """Time claims relative to the moment of the call (parameters outlive import time)."""
    return {claim: now() + offset for claim, offset in offsets.items()}


async def refused(verifier: Verifier, tok: str) -> str:
    with pytest.raises(AuthFailure) as caught:
        await verifier.verify(tok)
    assert caught.value.reason in REASONS
    return caught.value.reason


@pytest.mark.parametrize("kid", ["rsa", "ec", "ed"])
async def test_each_algorithm_verifies_to_a_principal(kid: str) -> None:
    exp = now() + 600
    tok = token(kid, org="acme", scope="admin read", exp=exp)
    principal = await static_verifier().verify(tok)
    assert principal == Principal(sub="alice", tier="public", org="acme",
                                  scopes=frozenset({"admin", "read"}), jti="jti-1",
                                  expires_at=float(exp))


async def test_scope_as_a_list_and_custom_claim_names() -> None:
    tok = token("ed", plan="research", tier=None, team="blue", scope=["a", "b"])
    principal = await static_verifier(tier_claim="plan", org_claim="team").verify(tok)
    assert (principal.tier, principal.org, principal.scopes) == ("research", "blue",
                                                                 frozenset({"a", "b"}))


# --- algorithm attacks -------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("kid", ["ed", None])
async def test_alg_none_is_refused(alg: str, kid: str | None) -> None:
    header = {"alg": alg, "typ": "JWT"} | ({"kid": kid} if kid else {})
    verifier = static_verifier(("ed",))
    assert await refused(verifier, forge(header, claims())) == "bad_alg"
    assert verifier.signature_checks == 0


def _public_pem(private: Any) -> bytes:
    return bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.mark.parametrize("kid, private", [("rsa", RSA_KEY), ("ec", EC_KEY), ("ed", ED_KEY)])
async def test_hs256_signed_with_the_public_key_is_refused(kid: str, private: Any) -> None:
    """Algorithm confusion: the verifier's public key used as an HMAC secret."""
    secrets = [_public_pem(private), _public_pem(private).strip(),
               b64(public_jwk(private)).encode()]
    verifier = static_verifier()
    for secret in secrets:
        tok = forge_hs256({"alg": "HS256", "typ": "JWT", "kid": kid}, claims(), secret)
        assert await refused(verifier, tok) == "bad_alg"
    assert verifier.signature_checks == 0


async def test_hs256_confusion_still_refused_when_hs256_is_configured() -> None:
    secret = b"s" * 32
    verifier = Verifier(AuthSettings(), Keyring({"rsa": verify_key("rsa"),
                                                 "hs256": hs256_key(secret, "hs256")}))
    pem = _public_pem(RSA_KEY)
    confused = forge_hs256({"alg": "HS256", "kid": "rsa"}, claims(), pem)
    assert await refused(verifier, confused) == "bad_alg"
    # ...and the public key is no HMAC secret for the HS256 key either.
    assert await refused(verifier, forge_hs256({"alg": "HS256", "kid": "hs256"}, claims(),
                                               pem)) == "bad_signature"
    good = forge_hs256({"alg": "HS256", "kid": "hs256"}, claims(), secret)
    assert (await verifier.verify(good)).sub == "alice"


async def test_an_asymmetric_alg_other_than_the_keys_is_refused() -> None:
    tok = sign(RSA_KEY, "RS256", claims(), {"kid": "ec"})  # RS256 under the ES256 key's kid
    assert await refused(static_verifier(), tok) == "bad_alg"
    unsupported = sign(RSA_KEY, "PS256", claims(), {"kid": "rsa"})
    assert await refused(static_verifier(), unsupported) == "bad_alg"


# --- time claims -------------------------------------------------------------------------


@pytest.mark.parametrize("offsets, reason", [
    ({"exp": -100}, "expired"),
    ({"nbf": 100}, "not_yet_valid"),
    ({"iat": 100, "exp": 700}, "not_yet_valid"),
])
async def test_time_claims_outside_leeway(offsets: dict[str, int], reason: str) -> None:
    assert await refused(static_verifier(), token("ed", **at(**offsets))) == reason


@pytest.mark.parametrize("offsets", [{"exp": -10}, {"nbf": 10}, {"iat": 10}])
async def test_time_claims_inside_leeway_pass(offsets: dict[str, int]) -> None:
    await static_verifier().verify(token("ed", **at(**offsets)))


async def test_leeway_is_configurable() -> None:
    assert await refused(static_verifier(leeway_s=0), token("ed", **at(exp=-10))) == "expired"


async def test_a_token_valid_for_longer_than_allowed_is_refused() -> None:
    """`exp: 10**30` was a credential that never expires."""
    year = 366 * 86400
    assert await refused(static_verifier(), token("ed", exp=10**30)) == "too_long_lived"
    assert await refused(static_verifier(), token("ed", **at(exp=year + 60))) == \
        "too_long_lived"
    await static_verifier().verify(token("ed", **at(exp=year - 60)))
    await static_verifier(max_lifetime_s=None).verify(token("ed", exp=10**30))
    assert await refused(static_verifier(max_lifetime_s=3600),
                         token("ed", **at(exp=7200))) == "too_long_lived"


# --- required and checked claims ---------------------------------------------------------


@pytest.mark.parametrize("over", [
    {"exp": None}, {"iat": None}, {"sub": None}, {"tier": None}, {"sub": ""}, {"tier": ""},
    {"sub": 42}, {"tier": ["admin"]}, {"org": 7}, {"jti": 5}, {"scope": 3},
    {"scope": ["ok", 1]}, {"iat": "yesterday"}, {"exp": "abc"}, {"nbf": "x"},
    {"exp": str(int(time.time()) + 3600)},  # a number in a string: not a NumericDate
    {"exp": "60"}, {"nbf": str(int(time.time()) + 3600)},  # not "expired", "not yet valid"
    {"iat": str(int(time.time()) + 3600)},
])
async def test_missing_or_mistyped_claims(over: dict[str, Any]) -> None:
    assert await refused(static_verifier(), token("ed", **over)) == "bad_claims"


async def test_issuer_checked_when_configured() -> None:
    verifier = static_verifier(issuer="https://idp.example")
    assert await refused(verifier, token("ed", iss="https://evil.example")) == "bad_claims"
    assert await refused(verifier, token("ed")) == "bad_claims"  # iss missing
    await verifier.verify(token("ed", iss="https://idp.example"))


async def test_audience_checked_when_configured() -> None:
    verifier = static_verifier(audience=("gateway", "gateway-staging"))
    assert await refused(verifier, token("ed", aud="other-api")) == "bad_claims"
    assert await refused(verifier, token("ed")) == "bad_claims"  # aud missing
    await verifier.verify(token("ed", aud="gateway"))
    await verifier.verify(token("ed", aud=["other-api", "gateway-staging"]))


# --- kid attacks -------------------------------------------------------------------------


@pytest.mark.parametrize("kid", [
    "../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/dev/zero", "' OR '1'='1", "1; DROP "
    "TABLE keys; --", "ed\x00", "x" * 300, "x" * 4000, "", "ED", "https://evil.example/key",
])
async def test_kid_injection_is_only_a_dictionary_miss(kid: str) -> None:
    private, alg = ED_KEY, "EdDSA"
    assert await refused(static_verifier(), sign(private, alg, claims(), {"kid": kid})) \
        == "unknown_kid"


@pytest.mark.parametrize("kid", [123, 1.5, True, None, ["ed"], {"kid": "ed"}])
async def test_kid_that_is_not_a_string(kid: Any) -> None:
    tok = forge({"alg": "EdDSA", "kid": kid}, claims(), b"sig")
    assert await refused(static_verifier(), tok) == "malformed"


async def test_a_token_without_kid_needs_a_single_key() -> None:
    tok = sign(ED_KEY, "EdDSA", claims())
    assert await refused(static_verifier(), tok) == "unknown_kid"
    await static_verifier(("ed",)).verify(tok)
    null_kid = forge_ed25519(ED_KEY, {"alg": "EdDSA", "kid": None}, claims())
    assert await refused(static_verifier(("ed",)), null_kid) == "malformed"


async def test_hostile_kids_never_reach_the_key_provider() -> None:
    """kid never becomes part of a URL, a path or a query: the provider only sees its path."""
    provider = await start_provider(Provider(jwks={"keys": [public_jwk(ED_KEY, kid="ed")]}))
    clock = Clock()
    try:
        async with aiohttp.ClientSession() as session:
            cache = KeyCache("idp", url_loader(session, provider.url, 2), ttl_s=300,
                             refetch_s=30, clock=clock)
            verifier = Verifier(AuthSettings(), Keyring(caches=[cache]))
            for kid in ("../../admin", "?kid=1", "#frag", "%2e%2e/secret"):
                clock.advance(31)
                assert await refused(verifier, sign(ED_KEY, "EdDSA", claims(),
                                                    {"kid": kid})) == "unknown_kid"
    finally:
        await provider.stop()
    assert set(provider.requests) == {"/jwks.json"}


# --- keys the token brings along ---------------------------------------------------------


async def test_jku_x5u_x5c_and_jwk_headers_are_ignored() -> None:
    """An attacker-hosted key set that would vouch for the attacker's key is never fetched."""
    attacker = await start_provider(Provider(jwks={"keys": [public_jwk(ATTACKER, kid="a")]}))
    attacker_jwk = public_jwk(ATTACKER)
    headers_list: list[dict[str, Any]] = [
        {"jku": attacker.url}, {"x5u": attacker.url}, {"jwk": attacker_jwk},
        {"jwk": attacker_jwk, "jku": attacker.url, "x5c": ["MIIB..."]}]
    verifier = static_verifier()
    try:
        for extra in headers_list:
            # Under a trusted kid the signature does not match that key...
            forged = sign(ATTACKER, "EdDSA", claims(tier="admin"), {"kid": "ed", **extra})
            assert await refused(verifier, forged) == "bad_signature"
            # ...under the attacker's own kid (or none) there is no key at all.
            for kid in ({"kid": "a"}, {}):
                forged = forge_ed25519(ATTACKER, {"alg": "EdDSA", **kid, **extra},
                                       claims(tier="admin"))
                assert await refused(verifier, forged) == "unknown_kid"
    finally:
        await attacker.stop()
    assert attacker.hits == 0


async def test_jwk_header_ignored_even_with_a_single_trusted_key() -> None:
    forged = sign(ATTACKER, "EdDSA", claims(), {"jwk": public_jwk(ATTACKER)})
    assert await refused(static_verifier(("ed",)), forged) == "bad_signature"


# --- tampering and strangers' keys -------------------------------------------------------


@pytest.mark.parametrize("kid", ["rsa", "ec", "ed"])
async def test_tampered_payload_with_the_original_signature(kid: str) -> None:
    header, _, signature = token(kid, tier="public").split(".")
    tampered = f"{header}.{b64(claims(tier='admin'))}.{signature}"
    assert await refused(static_verifier(), tampered) == "bad_signature"


async def test_stripped_or_garbage_signature() -> None:
    header, payload, _ = token("ed").split(".")
    verifier = static_verifier()
    assert await refused(verifier, f"{header}.{payload}.") == "bad_signature"
    assert await refused(verifier, f"{header}.{payload}.{b64(b'x' * 64)}") == "bad_signature"


async def test_token_from_a_key_not_in_the_set() -> None:
    verifier = static_verifier()
    assert await refused(verifier, sign(ATTACKER, "EdDSA", claims(), {"kid": "ed"})) \
        == "bad_signature"
    assert await refused(verifier, sign(ATTACKER, "EdDSA", claims(), {"kid": "stranger"})) \
        == "unknown_kid"


# --- shape, size, crit -------------------------------------------------------------------


async def test_oversized_token_is_refused_before_decoding() -> None:
    verifier = static_verifier()
    big = token("ed", padding="x" * 9000)
    assert await refused(verifier, big) == "too_large"
    assert await refused(verifier, "!" * 10_000) == "too_large"  # not even a JWT
    assert verifier.signature_checks == 0
    small = static_verifier(max_token_bytes=300)
    assert await refused(small, token("rsa")) == "too_large"


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["http://example.com/ext"], [], "exp"])
async def test_crit_header_is_refused(crit: Any) -> None:
    verifier = static_verifier()
    assert await refused(verifier, token("ed", headers={"crit": crit})) == "crit"
    assert verifier.signature_checks == 0


@pytest.mark.parametrize("tok", [
    "", "abc", "a.b", "a.b.c.d", "....", "e30.e30.", f"{b64([1])}.{b64({})}.",
    f"{b64(b'not json')}.{b64({})}.", "eyJ!.e30.", f"{b64({'kid': 'ed'})}.{b64({})}.",
    "Bearer " + "a.b.c",
])
async def test_malformed_tokens(tok: str) -> None:
    assert await refused(static_verifier(), tok) == "malformed"


async def test_payload_that_is_not_an_object() -> None:
    header = {"alg": "EdDSA", "kid": "ed"}
    signing_input = f"{b64(header)}.{b64([1, 2])}"
    tok = f"{signing_input}.{b64(ED_KEY.sign(signing_input.encode()))}"
    assert await refused(static_verifier(), tok) == "malformed"


# --- the verified-token cache ------------------------------------------------------------


async def test_ten_verifications_cost_one_signature_check() -> None:
    verifier = static_verifier()
    tok = token("rsa")
    for _ in range(10):
        await verifier.verify(tok)
    assert verifier.signature_checks == 1
    await verifier.verify(token("rsa", jti="another"))
    assert verifier.signature_checks == 2


async def test_cached_entries_expire_with_the_token() -> None:
    clock = Clock(now=time.time())
    verifier = static_verifier(cache=TokenCache(clock=clock))
    exp = now() + 60
    tok = token("ed", exp=exp)
    await verifier.verify(tok)
    await verifier.verify(tok)
    assert verifier.signature_checks == 1
    clock.now = exp + 1  # the cache's clock passes exp: the next call verifies afresh
    await verifier.verify(tok)
    assert verifier.signature_checks == 2


async def test_failures_are_not_cached() -> None:
    verifier = static_verifier()
    for _ in range(3):
        await refused(verifier, sign(ATTACKER, "EdDSA", claims(), {"kid": "ed"}))
    assert verifier.signature_checks == 3


async def test_cache_off() -> None:
    verifier = static_verifier(cache=TokenCache(max_entries=0))
    tok = token("ed")
    for _ in range(3):
        await verifier.verify(tok)
    assert verifier.signature_checks == 3


async def test_no_token_content_in_failures() -> None:
    tok = token("ed", sub="secret-subject", **at(exp=-100))
    with pytest.raises(AuthFailure) as caught:
        await static_verifier().verify(tok)
    assert str(caught.value) == "expired" and caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_reasons_are_the_documented_bounded_set() -> None:
    assert set(REASONS) == {"missing", "malformed", "expired", "not_yet_valid", "bad_signature",
                            "unknown_kid", "bad_claims", "revoked", "too_large", "bad_alg",
                            "crit", "multiple_headers", "query_token", "too_long_lived"}


def test_pyjwt_encodes_what_we_forge() -> None:
    """Guard for the helpers: a forged HS256 token is what pyjwt itself would produce."""
    secret = b"k" * 32
    header = {"alg": "HS256", "typ": "JWT"}
    ours = forge_hs256(header, {"a": 1}, secret)
    assert jwt.decode(ours, secret, algorithms=["HS256"]) == {"a": 1}

