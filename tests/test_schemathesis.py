"""Property-based run of the OpenAPI document against a live gateway, over every route
(schemathesis, a few thousand generated cases): no 5xx, and every response conforms to
the document - its status, content type, headers, and body schema (each SSE event of a
stream too). The run must reach the upstream often enough for that to mean something."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, MintToken, Process

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "unsupported_method")
HOOKS = Path(__file__).parent / "hardening" / "st_hooks.py"
EXAMPLES, CHAT_EXAMPLES = 560, 460  # per operation: some 3,200 cases in all
# The trusted tier with short answers: a few thousand generations stay fast, and a
# request for more than the cap is clamped (answered), not refused.
TRUSTED_CAPS = ("      max_tokens: 32768\n      default_max_tokens: 2048\n      n: 16\n",
                "      max_tokens: 32\n      max_tokens_mode: clamp\n"
                "      default_max_tokens: 8\n      n: 2\n")


def _fuzz_policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", directory)
    tiers = directory / "tiers.yaml"
    text = tiers.read_text()
    assert TRUSTED_CAPS[0] in text, "the trusted tier's caps moved: update TRUSTED_CAPS"
    tiers.write_text(text.replace(*TRUSTED_CAPS))
    return directory


def _statuses(url: str) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """(route, status) -> requests answered, and route -> streams that sent a token."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    answered: Counter[tuple[str, str]] = Counter()
    streamed: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_requests_total":
                answered[s.labels["route"], s.labels["status"]] += int(s.value)
            elif s.name == "gateway_time_to_first_token_seconds_count":
                streamed[s.labels["route"]] += int(s.value)
    return answered, streamed


def _run(st: str, url: str, token: str, cwd: Path, examples: int,
         selection: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [st, "run", url + "/openapi.json", "-H", f"Authorization: Bearer {token}",
         "--checks", ",".join(CHECKS), "--max-examples", str(examples), "--workers", "1",
         "--seed", "20261127", "--no-color", "--request-timeout", "20", *selection],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)})


def _generated(output: str) -> int:
    counts = re.findall(r"^\s*(\d+) generated", output, re.MULTILINE)
    assert counts, output[-4000:]
    return int(counts[-1])


@pytest.mark.timeout(300)
def test_every_response_conforms_and_none_is_a_server_error(
        gateway_process: Callable[..., Process], mint: MintToken, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.fail("schemathesis is a test dependency: pip install -e '.[test]'")
    gw = gateway_process(env={"GATEWAY_LOG_LEVEL": "WARNING",
                              "GATEWAY_POLICIES": str(_fuzz_policies(tmp_path))})
    token = mint(tier="trusted", scopes=("admin",))
    # Generation is CPU-bound and single-threaded: chat (the costliest schema, fewer
    # examples) in one process, every other route in another, so two cores share the work.
    runs = [_run(st, gw.url, token, tmp_path, examples, [f"--{side}-path-regex", "^/v1/chat/"])
            for side, examples in (("include", CHAT_EXAMPLES), ("exclude", EXAMPLES))]
    outputs = [run.communicate(timeout=280)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-4000:]
    cases = sum(_generated(output) for output in outputs)
    assert cases >= 3000, outputs
    answered, streamed = _statuses(gw.url)
    assert not [k for k in answered if k[1].startswith("5")], answered
    # Conformance of success bodies was checked only if there were successes to check.
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                  "/admin/v1/audit", "/admin/v1/watermark/detect"):
        assert answered[route, "200"] >= 20, (route, answered)
    assert streamed["chat"] >= 5 and streamed["chat"] + streamed["completions"] >= 10, streamed
    print(*(re.findall(r"in [0-9.]+s =", output) for output in outputs))
    print(f"{cases} cases; answered {sorted(answered.items())}; streamed {dict(streamed)}")
