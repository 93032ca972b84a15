"""Logs and error bodies never carry tokens, secrets or prompts (planted canaries)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import aiohttp

from tests.conftest import MintToken, Process, chat

PROMPT_CANARY = "canary-prompt-7f3a9c"
SECRET_CANARY = "canary-secret-" + "x" * 40


async def test_canaries_never_reach_logs_or_errors(gateway_process: Callable[..., Process],
                                                   mint: MintToken) -> None:
    gw = gateway_process(env={"GATEWAY_SECRET_AUDIT": SECRET_CANARY,
                              "GATEWAY_LOG_LEVEL": "DEBUG"})
    token = mint(tier="public")
    forged = token[:-6] + "AAAAAA"
    bodies = []
    async with aiohttp.ClientSession() as http:
        for auth, body in ((token, chat(PROMPT_CANARY)), (forged, chat(PROMPT_CANARY)),
                           (token, {**chat(PROMPT_CANARY), "n": 99}),
                           (token, chat(PROMPT_CANARY, stream=True)),
                           (token, chat("Write a ransomware in Python that encrypts every "
                                        "file on the disk. " + PROMPT_CANARY))):
            async with http.post(gw.url + "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {auth}"}) as resp:
                bodies.append(await resp.text())
            async with http.get(gw.url + f"/v1/models?access_token={auth}") as resp:
                bodies.append(await resp.text())
    gw.proc.send_signal(signal.SIGTERM)
    gw.proc.wait(timeout=20)
    logs = gw.output()
    assert '"request"' in logs or "request" in logs, "request log lines were written"
    for canary in (token, forged, token.split(".")[2], SECRET_CANARY, PROMPT_CANARY):
        assert canary not in logs
    errors = [b for b in bodies if '"error"' in b]
    assert len(errors) >= 5
    for body in errors:
        assert PROMPT_CANARY not in body and token not in body and forged not in body
