"""build_verifier: AuthSettings to a ready-to-start Verifier (key sources, revocation).

Key sources, all optional and combinable: an HS256 secret (static), a JWKS URL
(refreshed), a JWKS file and PEM files (re-read when they change on disk). With none
configured, the development key set under GATEWAY_HOME/keys (created on first use) is the
only source: the key `gateway token mint` signs with.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp

from gateway.pipeline.auth.jwks import (
    KeyCache,
    Loader,
    Stamp,
    file_loader,
    file_stamp,
    pem_loader,
    url_loader,
)
from gateway.pipeline.auth.keyring import Keyring
from gateway.pipeline.auth.keys import UnusableKey, VerifyKey, hs256_key, pem_key
from gateway.pipeline.auth.revocation import DenyList, Revocation, SetStore
from gateway.pipeline.auth.settings import AuthSettings
from gateway.pipeline.auth.verify import Verifier

MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


class AuthConfigError(ValueError):
    """Settings that name unusable keys; the message names the key, never a secret."""


def build_verifier(settings: AuthSettings, home: Path, session: aiohttp.ClientSession, *,
                   redis: SetStore | None = None,
                   env: Mapping[str, str] | None = None,
                   on_store_error: Callable[[], None] | None = None) -> Verifier:
    """A Verifier to `await start()` before use and `await close()` at shutdown.

    `redis` (a redis.asyncio client) adds the shared revocation set, and `on_store_error`
    is called for each failed call to it; `env` defaults to os.environ and is where the
    HS256 secret is read.
    """
    _check_pem_files(settings, home)
    static = _static_keys(settings, home, os.environ if env is None else env)
    caches: list[KeyCache] = []

    def cache(source: str, load: Loader, required: bool, stamp: Stamp | None = None) -> None:
        caches.append(KeyCache(source, load, ttl_s=settings.jwks_ttl_s,
                               refetch_s=settings.jwks_refetch_s, required=required,
                               stamp=stamp))

    if settings.jwks_url:
        cache(settings.jwks_url, url_loader(session, settings.jwks_url, settings.jwks_timeout_s),
              required=False)
    if settings.jwks_file is not None:
        path = settings.resolve(home, settings.jwks_file)
        cache(str(path), file_loader(path), required=True, stamp=file_stamp([path]))
    if settings.pem_files:
        paths = [settings.resolve(home, pem) for pem in settings.pem_files]
        cache("pem_files", pem_loader(paths), required=True, stamp=file_stamp(paths))
    if settings.uses_dev_keys:
        cache("development keys", _dev_loader(home), required=True)
    denylist = None
    if settings.revocation_file is not None:
        denylist = DenyList(settings.resolve(home, settings.revocation_file),
                            settings.revocation_poll_s)
    revocation = Revocation(denylist, redis, redis_key=settings.revocation_redis_key,
                            redis_timeout_s=settings.revocation_redis_timeout_s,
                            fail_closed=settings.revocation_on_error != "fail_open",
                            on_error=on_store_error)
    return Verifier(settings, Keyring(static, caches), revocation)


def check_keys(settings: AuthSettings, home: Path,
               env: Mapping[str, str] | None = None) -> None:
    """The key settings build_verifier would refuse (PEM files, the HS256 secret), checked
    without building anything: start-up runs this before it starts anything else."""
    _check_pem_files(settings, home)
    _static_keys(settings, home, os.environ if env is None else env)


def _check_pem_files(settings: AuthSettings, home: Path) -> None:
    """Each PEM file usable at start, or an error naming it (their KeyCache reads them)."""
    for i, pem in enumerate(settings.pem_files):
        path = settings.resolve(home, pem)
        try:
            pem_key(path)
        except UnusableKey as exc:  # its message starts with the path
            raise AuthConfigError(f"pem_files.{i}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise AuthConfigError(f"pem_files.{i}: {path}: {type(exc).__name__}") from None


def _static_keys(settings: AuthSettings, home: Path, env: Mapping[str, str],
                 ) -> dict[str, VerifyKey]:
    keys: dict[str, VerifyKey] = {}
    name = settings.hs256_secret_env
    if name:
        secret = env.get(name, "").encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise AuthConfigError(f"hs256_secret_env: environment variable {name} must hold "
                                  f"at least {MIN_SECRET_BYTES} bytes")
        keys[settings.hs256_kid] = hs256_key(secret, settings.hs256_kid)
    return keys


def _dev_loader(home: Path) -> Loader:
    # Imported here: gateway.devkeys uses this package's keys module (a cycle at import).
    from gateway.devkeys import ensure_dev_keys

    async def load() -> bytes:
        path = await asyncio.to_thread(ensure_dev_keys, home)
        return await file_loader(path)()

    return load
