"""Relaying a backend's answer to the client through the output filters.

Streams are parsed event by event as bytes arrive (never buffered whole); each text
delta goes through the response's filter chain, and the client's response is prepared
only when the first event is ready, so a backend that fails before that can still be
retried elsewhere, and a request it refuses in its first event (vLLM reports some 4xx
that way) gets that status. A stream must answer: one that ends without a choice chunk
failed. The idle timeout bounds the wait between data events; comment lines (keep-alive
pings) are neither progress nor passed on (a ping would send the headers, and with them
the chance to retry or to answer the right status).

The model's other text, reasoning (`reasoning_content`) and tool-call arguments, goes
through a side chain per field (moderation and redaction, no watermark: a mark inside
JSON arguments would break them), so output moderation cannot be avoided by asking for a
tool call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import aiohttp
import orjson
from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import (
    AuditUnavailable,
    BadGateway,
    BadRequest,
    GatewayError,
    GatewayTimeout,
    Unavailable,
    normalise_upstream_error,
)
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.pipeline.classify.moderation import OutputBlocked
from gateway.pipeline.output import LOGPROBS_HEADER, FilterChain, asks_logprobs
from gateway.pipeline.upstream.client import RetryUpstream, refusal
from gateway.pipeline.upstream.echo import withhold_echo
from gateway.pipeline.upstream.http import UpstreamResponse
from gateway.pipeline.upstream.reading import BodyTooLarge, read_bounded
from gateway.pipeline.upstream.sse import (
    DONE,
    DONE_EVENT,
    MAX_EVENT_BYTES,
    EventTooLarge,
    SSEParser,
    frame,
    frame_json,
)
from gateway.pipeline.upstream.tokens import CHARS_PER_TOKEN

log = logging.getLogger("gateway.relay")

ChainFactory = Callable[[RequestContext], FilterChain | None]

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # ask reverse proxies in front of us not to buffer
}


def _text_key(ctx: RequestContext) -> str:
    return "content" if ctx.route == "chat" else "text"


REASONING_KEYS = ("reasoning_content", "reasoning")  # vLLM's name, and its newer one
SideKey = tuple[str, int]  # ("reasoning_content", 0) or ("tool", tool call index)


def _side_texts(holder: dict[str, Any]) -> list[tuple[SideKey, dict[str, Any], str]]:
    """(which, the dict holding it, its key) for each side text in a message or delta."""
    found: list[tuple[SideKey, dict[str, Any], str]] = []
    for key in REASONING_KEYS:
        if isinstance(holder.get(key), str):
            found.append(((key, 0), holder, key))
    calls = holder.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            index = call.get("index", position)
            found.append((("tool", index if type(index) is int else position), function,
                          "arguments"))
    return found


def _side_tail(holder: dict[str, Any], which: SideKey, tail: str) -> None:
    """Put what a side chain held back into a delta (appended where the field is)."""
    kind, index = which
    if kind != "tool":
        holder[kind] = holder.get(kind, "") + tail if isinstance(holder.get(kind), str) \
            else tail
        return
    calls = holder.setdefault("tool_calls", [])
    for call in calls:
        if isinstance(call, dict) and call.get("index") == index and \
                isinstance(call.get("function"), dict):
            call["function"]["arguments"] = call["function"].get("arguments", "") + tail
            return
    calls.append({"index": index, "function": {"arguments": tail}})


def _blank_side_texts(holder: dict[str, Any]) -> None:
    for key in REASONING_KEYS:
        holder.pop(key, None)
    holder.pop("tool_calls", None)


def _record_usage(ctx: RequestContext, usage: Any) -> None:
    """The backend's token counts: a count that is not a non-negative integer counts as 0,
    and counts past what the model could have read and written (`usage_ceiling`), or a
    completion longer than max_tokens allows (`completion_ceiling`), are no report at all
    (the gateway's own count stands): the rate limiter would otherwise charge them, and
    lock the caller out for as long as they take to pay back."""
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt = prompt if type(prompt) is int and prompt > 0 else 0
    completion = completion if type(completion) is int and completion > 0 else 0
    if ctx.usage_ceiling is not None and prompt + completion > ctx.usage_ceiling:
        return
    if ctx.completion_ceiling is not None and completion > ctx.completion_ceiling:
        return
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = prompt, completion
    ctx.usage.reported = True


# Far above the n any tier allows: an index past it is a broken answer, and it bounds the
# per-choice state a stream keeps.
_MAX_CHOICE_INDEX = 1024
_BROKEN_ANSWER = "The upstream server sent a broken answer"
_MALFORMED_EVENT = "The upstream server sent a malformed event"
_TOO_LARGE_ANSWER = "The upstream server's answer is larger than the gateway accepts"
_TOO_LARGE_EVENT = "The upstream server sent an event larger than the gateway accepts"


def _choice_shape_ok(choice: Any, holder_key: str | None, text_key: str) -> bool:
    """A choice as OpenAI's schema has it, in the parts the relay reads: an object with a
    small non-negative integer index, a string or null finish_reason, and its text (in
    the object at `holder_key`, or in the choice itself) a string or null."""
    if not isinstance(choice, dict):
        return False
    index = choice.get("index", 0)
    finish = choice.get("finish_reason")
    if type(index) is not int or not 0 <= index < _MAX_CHOICE_INDEX or not (
            finish is None or isinstance(finish, str)):
        return False
    holder = choice.get(holder_key) if holder_key is not None else choice
    if holder is None:
        return True
    text = holder.get(text_key) if isinstance(holder, dict) else None
    return isinstance(holder, dict) and (text is None or isinstance(text, str))


def _answer_shape_ok(ctx: RequestContext, data: dict[str, Any]) -> bool:
    """A whole (non-streamed) answer's choices, each as `_choice_shape_ok` has it. A
    completion without a `choices` list is broken too: nothing in it would pass the output
    filters (moderation, watermark), so none of it may reach the client."""
    if ctx.route == "embeddings":
        return True
    choices = data.get("choices")
    holder_key = "message" if ctx.route == "chat" else None
    return isinstance(choices, list) and all(
        _choice_shape_ok(c, holder_key, _text_key(ctx)) for c in choices)


def _record_answer(ctx: RequestContext, data: dict[str, Any]) -> None:
    """The answer's id and model (and its choices' finish reasons) for the trace span."""
    ident, model = data.get("id"), data.get("model")
    ctx.response_id = ident if isinstance(ident, str) else None
    ctx.response_model = model if isinstance(model, str) else None
    if "choices" in data:  # a stream's are noted chunk by chunk
        ctx.finish_reasons = tuple(c["finish_reason"] for c in data.get("choices") or ()
                                   if isinstance(c, dict)
                                   and isinstance(c.get("finish_reason"), str))


TextsHeaders = Callable[[list[str]], dict[str, str]]


async def relay_json(ctx: RequestContext, resp: UpstreamResponse,
                     chains: ChainFactory, idle_s: float,
                     headers_for: TextsHeaders | None = None,
                     side_chains: ChainFactory | None = None,
                     max_bytes: int = MAX_EVENT_BYTES) -> web.Response:
    """Non-streaming: read the whole answer (at most `max_bytes`), filter each choice,
    respond."""
    try:
        if resp.arrived:  # with its headers, as a short answer does: no timer to set
            raw = await read_bounded(resp, max_bytes)
        else:
            async with asyncio.timeout(idle_s):
                raw = await read_bounded(resp, max_bytes)
        data = orjson.loads(raw)
    except BodyTooLarge:
        raise RetryUpstream(BadGateway(_TOO_LARGE_ANSWER), "too_large") from None
    except TimeoutError:
        raise GatewayTimeout("The upstream server stopped sending its answer") from None
    except (aiohttp.ClientError, orjson.JSONDecodeError):
        raise RetryUpstream(BadGateway(_BROKEN_ANSWER), "malformed") from None
    if not isinstance(data, dict) or not _answer_shape_ok(ctx, data):
        raise RetryUpstream(BadGateway(_BROKEN_ANSWER), "malformed")
    _record_usage(ctx, data.get("usage"))
    if not ctx.usage.reported and ctx.route != "embeddings":
        # No usable usage block (real vLLM always sends one): charge the text it sent.
        ctx.usage.completion_tokens = _estimated_tokens(data)
    if ctx.route != "embeddings" and _filter_choices(ctx, data, chains, side_chains):
        raw = orjson.dumps(data)
    _record_answer(ctx, data)  # after the filters: a blocked choice ends in content_filter
    if ctx.output_action == "flag":  # output moderation flagged the answer it served
        ctx.response_headers["x-gateway-decision"] = "flag"
    if headers_for is not None and ctx.route != "embeddings":
        ctx.response_headers.update(headers_for(_texts(ctx, data)))
    await ctx.hold()  # a verdict still being reached (overlap)
    return web.Response(body=raw, content_type="application/json",
                        headers=ctx.response_headers)


def _estimated_tokens(data: dict[str, Any]) -> int:
    chars = 0
    for choice in data.get("choices") or ():
        holder = choice.get("message", choice) if isinstance(choice, dict) else None
        if isinstance(holder, dict):
            chars += sum(len(v) for v in (holder.get("content"), holder.get("text"))
                         if isinstance(v, str))
            chars += sum(len(owner[key]) for _, owner, key in _side_texts(holder))
    return math.ceil(chars / CHARS_PER_TOKEN)


def _texts(ctx: RequestContext, data: dict[str, Any]) -> list[str]:
    texts = []
    for choice in data.get("choices") or ():
        holder = choice.get("message") if ctx.route == "chat" else choice
        text = holder.get(_text_key(ctx)) if isinstance(holder, dict) else None
        texts.append(text if isinstance(text, str) else "")
    return texts


def _filter_choices(ctx: RequestContext, data: dict[str, Any], chains: ChainFactory,
                    side_chains: ChainFactory | None) -> bool:
    changed = False
    key = _text_key(ctx)
    for choice in data.get("choices") or ():
        holder = choice.get("message") if ctx.route == "chat" else choice
        if not isinstance(holder, dict):
            continue
        hides = False
        try:
            if isinstance(holder.get(key), str) and (chain := chains(ctx)) is not None:
                holder[key] = chain.apply(holder[key])
                changed, hides = True, chain.hides_text
            for _, owner, field_key in _side_texts(holder):
                side = side_chains(ctx) if side_chains is not None else None
                if side is not None:
                    owner[field_key] = side.apply(owner[field_key])
                    changed, hides = True, hides or side.hides_text
        except OutputBlocked:
            # Nothing of a blocked choice leaves the gateway, as OpenAI's content filter.
            if isinstance(holder.get(key), str):
                holder[key] = ""
            _blank_side_texts(holder)
            choice["finish_reason"] = "content_filter"
            changed = hides = True
        if hides and asks_logprobs(ctx.body):
            ctx.response_headers[LOGPROBS_HEADER] = "withheld"
        if hides and choice.get("logprobs") is not None:
            choice["logprobs"] = None  # its tokens spell out what the filters withheld
            changed = True
    return changed


class _UpstreamBroke(Exception):
    """The upstream stream failed after the client's response began."""

    def __init__(self, error: GatewayError, kind: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.kind = kind


class _ClientStalled(Exception):
    """The client accepted none of the stream for the idle time: it is the one silent."""


class StreamRelay:
    """One streaming response: upstream SSE in, filtered SSE out.

    The idle timer runs while a write to the client waits for room, as the upstream is
    not read meanwhile. When it runs out there, the client is the one that went silent
    (it stopped reading, or reads slower than the model writes): its connection is
    dropped and the request counts as the client's (499), not as an upstream time-out.
    """

    def __init__(self, request: web.Request, ctx: RequestContext, chains: ChainFactory,
                 metrics: Metrics, ttfb_s: float, idle_s: float,
                 on_end: Callable[[RequestContext, int], Awaitable[bool]] | None = None,
                 side_chains: ChainFactory | None = None,
                 lifecycle: Lifecycle | None = None,
                 max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._request = request
        self._max_event_bytes = max_event_bytes
        self._lifecycle = lifecycle
        self._timer: asyncio.Timeout | None = None
        self._cut = False  # the drain time ran out: end now
        self._side_chains = side_chains
        self._side: dict[tuple[int, SideKey], FilterChain | None] = {}
        self._on_end = on_end
        self._ctx = ctx
        self._chains = chains
        self._metrics = metrics
        self._ttfb_s = ttfb_s
        self._idle_s = idle_s
        self._text_key = _text_key(ctx)
        self._choice_chains: dict[int, FilterChain | None] = {}
        self._finished: set[int] = set()  # choices whose chain has run finish()
        self._meta: dict[str, Any] = {}  # id/object/created/model of the last chunk
        self._blocked_index = 0
        self._relayed = 0  # text chunks sent: the token count if usage never arrives
        self._done = False
        self._answered = False  # a chunk with choices came
        self._begun = False  # an event for the client exists: failures end the stream now
        # A choice's last chunk, held until the next event: vLLM names its build
        # (system_fingerprint) on the stream's last event, which is the usage chunk the
        # gateway asks for and drops when the client did not; the held chunk takes it.
        self._held: tuple[dict[str, Any], bytes] | None = None
        self._last_sent: float | None = None
        self._writing = False  # a write to the client is waiting for room
        self._ttft = metrics.ttft.labels(ctx.route, ctx.tier)
        self._itl = metrics.itl.labels(ctx.route, ctx.tier)
        self.response: web.StreamResponse | None = None

    async def run(self, upstream: UpstreamResponse) -> web.StreamResponse:
        self._metrics.open_streams.inc()
        try:
            if self._lifecycle is not None:
                with self._lifecycle.cuttable(self.cut):
                    await self._pump(upstream)
            else:
                await self._pump(upstream)
        except _UpstreamBroke as exc:
            if exc.kind not in ("output_blocked", "shutdown"):  # not the upstream's fault
                log.warning("upstream stream broke (%s) for request %s", exc.kind,
                            self._ctx.request_id)
                self._metrics.upstream_errors.labels(exc.kind).inc()
            if held := self._release():
                await self._send(held)
            await self._end(exc.error.http_status)
            if exc.kind == "output_blocked" and self._ctx.client_wants_usage:
                await self._send(self._usage_frame())
            await self._send(frame_json(exc.error.body()))
        except ConnectionResetError:
            self._ctx.client_gone = True  # counted by the observe middleware
        except _ClientStalled:
            self._drop_client()
        except Exception as exc:
            if self.response is None:
                raise  # nothing sent yet: a retry elsewhere, or the middleware's answer
            # After the 200 went out the middleware cannot answer any more: the stream
            # ends here, with the error event (never left open with no end).
            if not isinstance(exc, GatewayError):
                log.exception("stream relay failed for request %s", self._ctx.request_id)
                exc = GatewayError("Internal error")
            await self._end(exc.http_status)
            await self._send(frame_json(exc.body()))
        finally:
            self._metrics.open_streams.dec()
            if not self._ctx.usage.reported:
                self._ctx.usage.completion_tokens = self._relayed
        assert self.response is not None
        return self.response

    async def _pump(self, upstream: UpstreamResponse) -> None:
        parser = SSEParser(self._max_event_bytes)
        loop = asyncio.get_running_loop()
        idle = self._idle_s
        # Moving the deadline on every chunk costs a timer handle each time; moving it only
        # once it is nearer than `idle` keeps the silence allowed within [idle, idle + slack].
        slack = min(1.0, idle / 10)
        try:
            async with asyncio.timeout(self._ttfb_s) as timer:
                self._timer = timer
                deadline = None
                async for chunk in upstream.content.iter_any():
                    payloads = parser.feed(chunk)
                    now = loop.time()
                    if (payloads or parser.pending_data) and not self._cut and (
                            deadline is None or deadline - now < idle):
                        deadline = now + idle + slack
                        timer.reschedule(deadline)
                    out = await self._translate_all(payloads)
                    if out:
                        await self._send(b"".join(out))
                        self._observe_latency()
                    if self._done:
                        upstream.expect_end()  # only the body's framing is left
                        break
        except TimeoutError:
            if self._cut:
                error = Unavailable("The gateway is shutting down; retry the request")
                if not self._begun:
                    raise error from None  # nothing sent: a plain 503, not a retry
                raise _UpstreamBroke(error, "shutdown") from None
            if self._writing:
                raise _ClientStalled from None
            self._raise(GatewayTimeout(
                "The upstream server stopped sending tokens" if self._begun
                else "The upstream server did not start answering in time"), "timeout")
        except aiohttp.ClientError:
            self._raise(BadGateway("The upstream server closed the stream early"), "reset")
        except EventTooLarge:
            self._raise(BadGateway(_TOO_LARGE_EVENT), "too_large")
        finally:
            self._timer = None  # a Timeout that has exited cannot be rescheduled
        if not self._done:
            self._raise(BadGateway("The upstream server closed the stream early"), "truncated")
        if await self._end(200):
            await self._send(DONE_EVENT)
        else:  # its audit record could not be written (audit.on_error: fail_closed)
            await self._send(frame_json(AuditUnavailable().body()))

    def _drop_client(self) -> None:
        """A client that stopped reading gets no error event (it would not read that
        either): its connection is closed, without waiting for what it still owes."""
        log.warning("client accepted nothing for %gs, connection closed (request %s)",
                    self._idle_s, self._ctx.request_id)
        self._ctx.client_gone = True  # counted by the observe middleware
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def _usage_frame(self) -> bytes:
        """The usage chunk the client asked for, on a stream the gateway ended itself: the
        tokens it relayed (the generation is cancelled; they are what is charged)."""
        usage = self._ctx.usage
        prompt = self._ctx.prompt_tokens_used
        done = usage.completion_tokens
        return frame_json({**self._meta, "choices": [], "usage": {
            "prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}})

    def cut(self) -> None:
        """End the stream now, with an error event (the drain time ran out)."""
        self._cut = True
        if self._timer is not None:
            self._timer.reschedule(asyncio.get_running_loop().time())

    async def _end(self, status: int) -> bool:
        """The response is about to end: account for it before the client can see that.
        False when `on_end` says it must not end as a success."""
        if not self._ctx.usage.reported:
            self._ctx.usage.completion_tokens = self._relayed
        _record_answer(self._ctx, self._meta)
        return self._on_end is None or await self._on_end(self._ctx, status)

    async def _translate_all(self, payloads: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        try:
            for payload in payloads:
                framed = self._translate(payload)
                if framed is not None:
                    out.append(framed)
                    self._begun = True
        except _UpstreamBroke:
            # Good events came before the bad one in the same read: they go out first, and
            # the failure then ends a stream that has begun.
            if out:
                await self._send(b"".join(out))
            raise
        except OutputBlocked as blocked:
            out.append(self._release())
            out.append(self._content_filter_chunk(payload))
            await self._send(b"".join(out))
            message = f"The response was stopped by output moderation: " \
                      f"{', '.join(blocked.categories)}"
            raise _UpstreamBroke(BadRequest(message, code="content_policy_violation"),
                                 "output_blocked") from None
        return out

    def _content_filter_chunk(self, payload: bytes) -> bytes:
        """The blocked event, emptied, with finish_reason content_filter (as OpenAI)."""
        if payload == DONE:
            return frame_json(self._synthetic(self._blocked_index, "", "content_filter"))
        event = orjson.loads(payload)
        for choice in event.get("choices") or ():
            holder = choice.get("delta") if self._text_key == "content" else choice
            if isinstance(holder, dict):
                holder[self._text_key] = ""
                _blank_side_texts(holder)
            choice["finish_reason"] = "content_filter"
            if choice.get("logprobs") is not None:
                choice["logprobs"] = None
        self._ctx.finish_reasons = ("content_filter",)
        event.pop("usage", None)
        return frame_json(event)

    def _observe_latency(self) -> None:
        now = time.perf_counter()
        if self._last_sent is None:
            self._ttft.observe(now - self._ctx.started)
        else:
            self._itl.observe(now - self._last_sent)
        self._last_sent = now

    def _raise(self, error: GatewayError, kind: str) -> NoReturn:
        if not self._begun:
            if isinstance(error, GatewayTimeout):
                raise error
            raise RetryUpstream(error, kind)
        raise _UpstreamBroke(error, kind)

    async def _send(self, data: bytes) -> None:
        self._begun = True
        if self.response is None:
            await self._ctx.hold()  # a verdict still being reached (overlap)
            self.response = web.StreamResponse(headers={**SSE_HEADERS,
                                                        **self._ctx.response_headers})
            await self.response.prepare(self._request)
        # Left set when the write fails: the idle timer's cancellation passes through here
        # before the pump sees the time-out.
        self._writing = True
        await self.response.write(data)
        self._writing = False

    def _translate(self, payload: bytes) -> bytes | None:
        """The framed events to send for one upstream event (after the chunk held back
        before it, if any), or None to send nothing now."""
        if payload == DONE:
            if not self._answered:  # the client would get an empty answer, and no error
                self._raise(BadGateway("The upstream server ended the stream without an "
                                       "answer"), "truncated")
            self._done = True
            tail = self._flush_unfinished() or b""
            return self._release() + tail or None
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._raise(BadGateway(_MALFORMED_EVENT), "malformed")
        if not isinstance(event, dict):
            self._raise(BadGateway(_MALFORMED_EVENT), "malformed")
        if "error" in event:
            self._upstream_error(event["error"], payload)
        if event.get("usage") is not None:
            _record_usage(self._ctx, event["usage"])
        choices = event.get("choices")
        if choices is not None and not isinstance(choices, list):
            self._raise(BadGateway(_MALFORMED_EVENT), "malformed")
        if not choices:
            if self._ctx.client_wants_usage:
                return self._release() + frame(payload)
            self._carry_fingerprint(event)
            return self._release() or None
        self._answered = True
        if not self._meta:
            self._meta = {k: event[k] for k in ("id", "object", "created", "model") if k in event}
        strip_usage = not self._ctx.client_wants_usage and event.get("usage") is not None
        changed = self._filter(choices)
        if strip_usage:
            del event["usage"]
        framed = frame_json(event) if changed or strip_usage else frame(payload)
        held = self._release()
        if not self._ctx.client_wants_usage and any(
                isinstance(c, dict) and c.get("finish_reason") is not None for c in choices):
            self._held, self._begun = (event, framed), True
            return held or None
        return held + framed

    def _upstream_error(self, error: Any, payload: bytes) -> NoReturn:
        """An error event. As the stream's first, a 4xx one (a request the backend
        refuses, such as a schema it cannot compile) is the answer, with that status:
        retrying cannot help, and the backend did nothing wrong. A 5xx one (the engine
        failed) is retried elsewhere and counted against the backend, as a stream that
        ends before its first event; once the stream has begun it ends it."""
        code = error.get("code") if isinstance(error, dict) else None
        if not self._begun and type(code) is int and 400 <= code < 500:
            raise refusal(code, payload, self._ctx.body)
        # Its message may quote the request, as a refusal's may: the same check applies.
        error = withhold_echo(normalise_upstream_error(502, payload), self._ctx.body)
        self._raise(BadGateway(error.message), "midstream_error")

    def _release(self) -> bytes:
        """The held chunk's frame, now to be sent (empty when none is held)."""
        if self._held is None:
            return b""
        framed = self._held[1]
        self._held = None
        return framed

    def _carry_fingerprint(self, event: dict[str, Any]) -> None:
        """A dropped usage chunk's system_fingerprint goes onto the chunk held before it,
        the last with choices: where vLLM puts it when the client asked for no usage."""
        fingerprint = event.get("system_fingerprint")
        if self._held is not None and fingerprint is not None:
            held = self._held[0]
            held["system_fingerprint"] = fingerprint
            self._held = (held, frame_json(held))

    def _filter(self, choices: list[Any]) -> bool:
        """Run each choice's delta through its chain; True when any text changed."""
        changed = False
        holder_key = "delta" if self._text_key == "content" else None
        for choice in choices:
            if not _choice_shape_ok(choice, holder_key, self._text_key):
                self._raise(BadGateway(_MALFORMED_EVENT), "malformed")
            index = choice.get("index", 0)
            finish = choice.get("finish_reason")
            if finish is not None:
                self._ctx.finish_reasons += (finish,)
            holder = choice.get("delta") if holder_key is not None else choice
            if holder is None:
                continue
            text = holder.get(self._text_key)
            sides = _side_texts(holder)
            if (isinstance(text, str) and text) or any(o[k] for _, o, k in sides):
                self._relayed += 1  # a token: of the answer, its reasoning or a tool call
            changed = self._filter_side(index, holder, sides, finish is not None) or changed
            chain = self._chain(index)
            if chain is None:
                continue
            if chain.hides_text and self.response is None and asks_logprobs(self._ctx.body):
                self._ctx.response_headers[LOGPROBS_HEADER] = "withheld"  # before headers go
            if chain.hides_text and choice.get("logprobs") is not None:
                # The tokens would spell out text the filters hold back or replace.
                choice["logprobs"] = None
                changed = True
            new = chain.feed(text) if isinstance(text, str) else ""
            if finish is not None:
                self._finished.add(index)
                new += chain.finish()
            if new != (text or ""):
                holder[self._text_key] = new
                changed = True
        return changed

    def _filter_side(self, index: int, holder: dict[str, Any],
                     sides: list[tuple[SideKey, dict[str, Any], str]], finish: bool) -> bool:
        """Reasoning and tool-call argument deltas through their side chains; on the
        choice's last event, what they held back. True when any text changed."""
        if self._side_chains is None:
            return False
        changed = False
        for which, owner, key in sides:
            chain = self._side_chain(index, which)
            if chain is not None:
                new = chain.feed(owner[key])
                if new != owner[key]:
                    owner[key] = new
                    changed = True
        if finish:
            for which, tail in self._finish_side(index):
                _side_tail(holder, which, tail)
                changed = True
        return changed

    def _side_chain(self, index: int, which: SideKey) -> FilterChain | None:
        if (index, which) not in self._side:
            assert self._side_chains is not None
            self._side[(index, which)] = self._side_chains(self._ctx)
        return self._side[(index, which)]

    def _finish_side(self, index: int) -> list[tuple[SideKey, str]]:
        """Finish the choice's side chains (once): the non-empty tails."""
        tails = []
        for (choice, which), chain in list(self._side.items()):
            if choice == index and chain is not None:
                self._side[(choice, which)] = None  # finished
                tail = chain.finish()
                if tail:
                    tails.append((which, tail))
        return tails

    def _flush_unfinished(self) -> bytes | None:
        """A backend that ended without finish_reason: release what the filters hold."""
        out = []
        for index, chain in self._choice_chains.items():
            if chain is None or index in self._finished:
                continue
            self._finished.add(index)
            self._blocked_index = index
            tail = chain.finish()
            if tail:
                out.append(frame_json(self._synthetic(index, tail, None)))
        for index in sorted({choice for choice, _ in self._side}):
            self._blocked_index = index
            tails = self._finish_side(index)
            if tails:
                event = self._synthetic(index, "", None)
                holder = event["choices"][0].get("delta") or event["choices"][0]
                for which, tail in tails:
                    _side_tail(holder, which, tail)
                out.append(frame_json(event))
        return b"".join(out) or None

    def _synthetic(self, index: int, text: str, finish: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": index, "finish_reason": finish}
        if self._text_key == "content":
            entry["delta"] = {"content": text}
        else:
            entry["text"] = text
        return {**self._meta, "choices": [entry]}

    def _chain(self, index: int) -> FilterChain | None:
        if index not in self._choice_chains:
            self._choice_chains[index] = self._chains(self._ctx)
        return self._choice_chains[index]
