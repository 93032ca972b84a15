"""End to end with the official openai SDK: gateway + simulator over loopback."""

from __future__ import annotations

import asyncio
import unicodedata

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, MintToken, Server, StartGateway, StartSim

MESSAGES = [{"role": "user", "content": "Tell me about the sea"}]


def _async_client(server: Server, token: str = "unused") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0)


async def test_async_chat_non_stream_matches_direct(gateway: Server, sim: Server,
                                                    token: str) -> None:
    async with _async_client(gateway, token) as via, _async_client(sim) as direct:
        got = await via.chat.completions.create(model=MODEL, messages=MESSAGES, seed=3,
                                                max_tokens=12)
        want = await direct.chat.completions.create(model=MODEL, messages=MESSAGES, seed=3,
                                                    max_tokens=12)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].message.content
    assert got.usage is not None and got.usage.completion_tokens == 12
    assert got.choices[0].finish_reason == "length"


async def test_async_chat_stream_with_and_without_usage(gateway: Server, token: str) -> None:
    async with _async_client(gateway, token) as client:
        for include_usage in (False, True):
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, seed=3, max_tokens=12, stream=True,
                stream_options={"include_usage": include_usage})
            chunks = [chunk async for chunk in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage_chunks = [c for c in chunks if c.usage is not None]
            assert len(usage_chunks) == (1 if include_usage else 0)
            assert text
        whole = await client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=3,
                                                     max_tokens=12)
    assert text == whole.choices[0].message.content
    assert usage_chunks[0].usage is not None and usage_chunks[0].usage.completion_tokens == 12


async def test_async_completions_stream_and_not(gateway: Server, token: str) -> None:
    async with _async_client(gateway, token) as client:
        whole = await client.completions.create(model=MODEL, prompt="Once upon", max_tokens=8,
                                                seed=1)
        stream = await client.completions.create(model=MODEL, prompt="Once upon",
                                                 max_tokens=8, seed=1, stream=True)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens == 8


def _sync_round_trip(url: str, token: str) -> tuple[str, str, list[str]]:
    with OpenAI(base_url=url + "/v1", api_key=token, max_retries=0) as client:
        whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=5,
                                               max_tokens=10)
        with client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=5,
                                            max_tokens=10, stream=True) as stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        models = [m.id for m in client.models.list()]
    return whole.choices[0].message.content or "", text, models


async def test_sync_client_stream_and_not(gateway: Server, token: str) -> None:
    whole, streamed, models = await asyncio.to_thread(_sync_round_trip, gateway.url, token)
    assert whole and whole == streamed
    assert models == [MODEL]


async def test_embeddings_and_models_pass_through(gateway: Server, token: str) -> None:
    async with _async_client(gateway, token) as client:
        result = await client.embeddings.create(model=MODEL, input=["a", "b"])
        models = await client.models.list()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    assert [m.id for m in models.data] == [MODEL]


async def test_models_retrieve_sees_what_the_tier_may_use(
        start_sim: StartSim, start_gateway: StartGateway, mint: MintToken) -> None:
    """The SDK's models.retrieve (GET /v1/models/{id}); a model the tier may not use is
    as unknown as one nobody serves."""
    big = "org/llama-3-70b-instruct"  # an id with a slash, as Hugging Face names go
    sim = await start_sim(models=(MODEL, big))
    gateway = await start_gateway(sim.url)
    async with _async_client(gateway, mint(tier="research")) as client:
        assert (await client.models.retrieve(big)).id == big
    async with _async_client(gateway, mint(tier="public")) as client:  # 8b models only
        assert (await client.models.retrieve(MODEL)).id == MODEL
        for hidden in (big, "nope"):
            with pytest.raises(openai.NotFoundError) as info:
                await client.models.retrieve(hidden)
            assert info.value.code == "model_not_found", hidden
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    counted = {(s.labels["tier"], s.labels["status"]): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "gateway_requests_total" and "models" in s.labels["route"]}
    assert counted == {("research", "200"): 1, ("public", "200"): 1, ("public", "404"): 2}


async def test_unknown_model_is_404_model_not_found(gateway: Server, token: str) -> None:
    async with _async_client(gateway, token) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="nope", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert info.value.status_code == 404


async def test_a_long_unknown_model_name_is_not_echoed_whole(gateway: Server,
                                                             token: str) -> None:
    name = "m" * 70 + "z" * 180  # within the 256 characters a model name may have
    async with _async_client(gateway, token) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model=name, messages=MESSAGES)
        message = str(info.value.body["message"])  # type: ignore[index]
        assert "m" * 64 + "..." in message and "z" not in message and len(message) < 200
        with pytest.raises(openai.BadRequestError) as too_long:  # beyond: refused as such
            await client.chat.completions.create(model=name + "z" * 100_000,
                                                 messages=MESSAGES)
    message = str(too_long.value.body["message"])  # type: ignore[index]
    assert message == "'model' must be at most 256 characters"


async def test_an_unknown_model_name_is_quoted_without_its_invisible_characters(
        gateway: Server, token: str) -> None:
    """A right-to-left override, a zero-width space and a NUL in the name come back as
    escapes: the message an SDK prints or a log keeps reads as what was sent."""
    async with _async_client(gateway, token) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt\u202ex\u200b\x00y",
                                                 messages=MESSAGES)
    message = str(info.value.body["message"])  # type: ignore[index]
    assert "'gpt\\u202ex\\u200b\\u0000y'" in message
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in message)


async def test_n_choices_streamed(gateway: Server, token: str) -> None:
    async with _async_client(gateway, token) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2,
                                                      max_tokens=5, stream=True)
        texts = {0: "", 1: ""}
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
    assert texts[0] and texts[1] and texts[0] != texts[1]
