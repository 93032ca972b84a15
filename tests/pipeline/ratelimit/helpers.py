"""A real redis-server that tests can start, stop, freeze and thaw."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis.asyncio

Clients = Callable[..., redis.asyncio.Redis]  # (pool_size=None) -> client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process that tests may stop and start again on the same port."""

    binary: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not _pings(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        """Hang the server (SIGSTOP): connections stay open and nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self, pool_size: int | None = None) -> redis.asyncio.Redis:
        """A client; with `pool_size`, one whose callers queue for a connection (as a
        gateway's should) instead of failing past the pool's size."""
        if pool_size is None:
            return redis.asyncio.Redis(host="127.0.0.1", port=self.port)
        pool = redis.asyncio.BlockingConnectionPool(host="127.0.0.1", port=self.port,
                                                    max_connections=pool_size)
        return redis.asyncio.Redis.from_pool(pool)
