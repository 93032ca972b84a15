"""Media parts per tier: which kinds a tier takes, and where vLLM may fetch them from."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from gateway.context import Principal, RequestContext
from gateway.pipeline.shape import MEDIA_KINDS, ShapeStage
from gateway.pipeline.tier import TierStage
from gateway.pipeline.tier.media import fetch_allowed
from gateway.policy.loader import load_policy
from gateway.policy.spec import PolicySpec
from tests.conftest import MODEL, ROOT, MintToken, Server

POLICY = load_policy(ROOT / "policies")
PNG = "data:image/png;base64,iVBORw0KGgo="
PARTS: dict[str, dict[str, Any]] = {
    "image_url": {"type": "image_url", "image_url": {"url": PNG}},
    "input_image": {"type": "input_image", "image_url": PNG},
    "image_embeds": {"type": "image_embeds", "image_embeds": "AAAA"},
    "audio_url": {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,UklG"}},
    "input_audio": {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
    "video_url": {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}},
    "file": {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "a.pdf"}},
}


def _with_hosts(hosts: tuple[str, ...]) -> PolicySpec:
    verified = POLICY.tiers["verified"]
    request = dataclasses.replace(verified.request, media_hosts=hosts)
    tiers = {**POLICY.tiers, "verified": dataclasses.replace(verified, request=request)}
    return dataclasses.replace(POLICY, tiers=tiers)


async def _run(tier: str, parts: list[dict[str, Any]], policy: PolicySpec = POLICY,
               ) -> Any:
    principal = Principal(sub="alice", tier=tier, expires_at=time.time() + 60)
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}]},
                {"role": "assistant", "content": "Send it."},
                {"role": "user", "content": [{"type": "text", "text": "here"}, *parts]}]
    ctx = RequestContext(request_id="r", route="chat", model="", principal=principal,
                         body={"model": MODEL, "messages": messages})
    assert (await ShapeStage().check(ctx)).allowed
    return await TierStage(policy, b"s" * 32).check(ctx)


def test_every_media_part_vllm_takes_has_a_case_here() -> None:
    assert set(PARTS) == set(MEDIA_KINDS)


@pytest.mark.parametrize("tier", ["public", "verified", "research", "trusted"])
@pytest.mark.parametrize("part_type", sorted(PARTS))
async def test_a_tier_takes_only_the_media_kinds_it_names(tier: str, part_type: str) -> None:
    decision = await _run(tier, [PARTS[part_type]])
    allowed = MEDIA_KINDS[part_type] in POLICY.tiers[tier].request.media
    assert decision.allowed is allowed
    if not allowed:
        error = decision.error
        assert error.http_status == 403 and error.code == "media_not_allowed"
        assert error.param == "messages[2].content[1]"  # the part, after the text part
        assert MEDIA_KINDS[part_type] in error.message


def test_the_shipped_tiers_take_media_as_documented() -> None:
    assert POLICY.tiers["public"].request.media == ()
    assert "embeds" not in POLICY.tiers["trusted"].request.media  # a tensor vLLM loads
    assert all(not t.request.media_hosts for t in POLICY.tiers.values())  # inline only


async def test_a_url_outside_the_tiers_hosts_is_refused_and_not_echoed() -> None:
    url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    decision = await _run("verified", [{"type": "image_url", "image_url": {"url": url}}])
    assert not decision.allowed
    assert decision.error.code == "media_url_not_allowed"
    assert decision.error.param == "messages[2].content[1]"
    assert "169.254" not in decision.error.message


@pytest.mark.parametrize(("url", "allowed"), [
    (PNG, True),
    ("DATA:image/png;base64,AA==", True),
    ("https://images.example.com/cat.png", True),
    ("http://images.example.com/cat.png?x=1#f", True),
    ("HTTPS://IMAGES.EXAMPLE.COM/cat.png", True),  # hosts are case-insensitive
    ("https://a.cdn.example.com/cat.png", True),
    ("https://media.internal:8443/cat.png", True),
    ("https://cdn.example.com/cat.png", False),  # "*.cdn" needs a label before it
    ("https://images.example.com.evil.test/cat.png", False),
    ("https://images.example.com@evil.test/cat.png", False),
    ("https://user:pw@images.example.com/cat.png", False),  # user info: refused outright
    ("https://images.example.com\\@evil.test/", False),  # parsers disagree on backslashes
    ("https://images.example.com /cat.png", False),
    ("https://images.example.com:8080/cat.png", False),  # a port must be listed with it
    ("https://media.internal/cat.png", False),  # listed with a port only
    ("https://images.example.com:99999/cat.png", False),  # not a port
    ("https://ímages.example.com/cat.png", False),
    ("file:///etc/passwd", False),
    ("ftp://images.example.com/cat.png", False),
    ("//images.example.com/cat.png", False),
    ("https:///cat.png", False),
    ("cat.png", False),
    ("", False),
])
def test_media_urls_need_a_listed_host(url: str, allowed: bool) -> None:
    hosts = ("images.example.com", "*.cdn.example.com", "media.internal:8443")
    assert fetch_allowed(url, hosts) is allowed


async def test_listed_hosts_pass_through_the_stage_and_the_part_is_forwarded() -> None:
    policy = _with_hosts(("images.example.com",))
    part = {"type": "image_url", "image_url": {"url": "https://images.example.com/a.png"}}
    assert (await _run("verified", [part], policy)).allowed
    assert not (await _run("verified", [part])).allowed  # shipped: inline only


async def test_media_in_any_message_counts() -> None:
    principal = Principal(sub="alice", tier="public", expires_at=time.time() + 60)
    body = {"model": MODEL, "messages": [
        {"role": "system", "content": [PARTS["image_url"]]},
        {"role": "user", "content": "describe the image above"}]}
    ctx = RequestContext(request_id="r", route="chat", model="", principal=principal,
                         body=body)
    assert (await ShapeStage().check(ctx)).allowed
    decision = await TierStage(POLICY, b"s" * 32).check(ctx)
    assert decision.error.code == "media_not_allowed"
    assert decision.error.param == "messages[0].content[0]"


async def test_over_http_with_the_sdk(gateway: Server, mint: MintToken) -> None:
    """The refusal is OpenAI's 403 the SDK raises, naming the part; an allowed tier's
    inline image reaches the backend."""
    content: Any = [{"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": PNG}}]
    messages: Any = [{"role": "user", "content": content}]
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key=mint(tier="public"),
                           max_retries=0) as public:
        with pytest.raises(openai.PermissionDeniedError) as info:
            await public.chat.completions.create(model=MODEL, messages=messages)
    error = info.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"]) == ("media_not_allowed", "messages[0].content[1]")
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key=mint(tier="verified"),
                           max_retries=0) as verified:
        answer = await verified.chat.completions.create(model=MODEL, messages=messages,
                                                        max_tokens=4)
    assert answer.choices[0].message.content
