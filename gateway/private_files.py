"""Files only the gateway's own user may read: the audit log and the provenance ledger
(secrets are written by secret_store.py and devkeys.py)."""

from __future__ import annotations

import os
from pathlib import Path


def create_private(path: Path) -> None:
    """Create a database file owner-only (0600), in a new directory owner-only (0700), if
    it does not exist yet. SQLite gives the -wal and -shm files it makes the main file's
    mode, so they follow; an existing file keeps the mode its operator chose."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
