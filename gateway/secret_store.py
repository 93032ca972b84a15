"""Server secrets: from the environment, else generated once under GATEWAY_HOME.

GATEWAY_SECRET_<NAME> (hex or text, at least 32 bytes) wins; otherwise a random 32-byte
secret is created in <home>/secrets/<name> with mode 0600 on first use. Fleets must set the
environment (or mount the same Secret) so every replica shares it. Credentials chosen
elsewhere (`given_secret`: the backends' API key) come from the environment only.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

MIN_BYTES = 32


class SecretError(ValueError):
    """A secret set in the environment that is too short; the message names the variable."""


def load_secret(home: Path, name: str, env: Mapping[str, str] | None = None) -> bytes:
    env = os.environ if env is None else env
    variable = f"GATEWAY_SECRET_{name.upper()}"
    value = env.get(variable)
    if value:
        raw = value.encode()
        if len(raw) < MIN_BYTES:  # the message never shows the value: it is a secret
            raise SecretError(f"{variable}: must be at least {MIN_BYTES} bytes, "
                              f"not {len(raw)}")
        return raw
    path = home / "secrets" / name
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = secrets.token_bytes(MIN_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return raw


def given_secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """GATEWAY_SECRET_<NAME> as set, for a credential the operator chooses (a backend's
    API key): never generated, any length; None when unset or empty."""
    env = os.environ if env is None else env
    return env.get(f"GATEWAY_SECRET_{name.upper()}") or None
