"""A real PostgreSQL server on loopback for the Postgres backends' tests.

`initdb` into a temporary directory and `postgres` on a free port, run as an unprivileged
user when the tests run as root (PostgreSQL refuses to run as root). Binaries come from
PATH or Debian's /usr/lib/postgresql/<version>/bin. Where PostgreSQL is not installed the
tests are skipped, unless GATEWAY_REQUIRE_POSTGRES=1 (as in CI), where that is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> pwd.struct_passwd | None:
    """Run as `postgres` (or `nobody`) when root: PostgreSQL will not run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root, and there is no postgres or nobody user to run PostgreSQL")


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = _as_user()

    def _as(self) -> dict[str, Any]:
        """Popen switches user itself (not runuser, which would stand between our
        signals and postgres and turn a fast shutdown into a 2 s SIGTERM-then-kill)."""
        if self.user is None:
            return {"cwd": self.dir}
        return {"cwd": self.dir, "user": self.user.pw_uid, "group": self.user.pw_gid,
                "extra_groups": []}

    def start(self) -> None:
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        data = self.dir / "data"
        subprocess.run([str(self.bin / "initdb"), "-D", str(data), "-U", "gateway",
                        "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, **self._as())
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.dir), "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._as())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("postgres did not start")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://gateway@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: ends open sessions
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _binaries()
    missing = None
    if bin_dir is None:
        missing = "PostgreSQL is not installed (apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed (the `postgres` extra)"
    if missing is not None:
        if os.environ.get("GATEWAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{missing}, and GATEWAY_REQUIRE_POSTGRES=1 requires it")
        pytest.skip(f"{missing}; set GATEWAY_REQUIRE_POSTGRES=1 to make this a failure")
    assert bin_dir is not None
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()


_databases = iter(range(1, 10_000))


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database for the test."""
    return postgres_server.create_database(f"test_{next(_databases)}")
