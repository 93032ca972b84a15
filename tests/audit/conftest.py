from __future__ import annotations

from pathlib import Path

import pytest

from gateway.audit.store import SqliteStore
from tests.audit.records import N_CHAIN, make_record


@pytest.fixture
def chain_db(tmp_path: Path) -> Path:
    """An intact audit database of N_CHAIN records, req-1 .. req-N."""
    path = tmp_path / "audit.sqlite3"
    store = SqliteStore(path)
    store.append([make_record(i) for i in range(1, N_CHAIN + 1)])
    store.close()
    return path
