"""URLs without their passwords: audit stores, ledgers and upstreams in messages and labels."""

from __future__ import annotations

from gateway.urls import redact


def test_passwords_are_masked_and_nothing_else_changes() -> None:
    url = "postgresql://gw:s3cret-pw@db.internal:5432/audit"
    assert redact(url) == "postgresql://gw:***@db.internal:5432/audit"
    assert redact("postgresql://db/audit") == "postgresql://db/audit"
    assert (redact("postgresql://gw:pw@h1:5432,h2:5432/audit?sslmode=require&password=pw")
            == "postgresql://gw:***@h1:5432,h2:5432/audit?sslmode=require&password=***")
    assert redact("https://u:p@host:8443/x?y=1") == "https://u:***@host:8443/x?y=1"
    assert redact("http://host:1") == "http://host:1"
