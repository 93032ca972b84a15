"""Output filter factories: the payload marks and the ledger record, per tier.

Each factory has the pipeline's factory shape once bound to a runtime and the policy
version the pipeline was built from:

    partial(payload_filter, runtime=rt, policy_version=policy.version)

and returns None when it does not apply to the request (tier switched it off, JSON
mode or structured output for the payload, no ledger), so the chain skips it.
Put them last in the chain, payload before ledger: earlier filters (redaction,
moderation) then see unmarked text, and the ledger sees exactly what the client got.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.context import RequestContext
from gateway.pipeline.output import OutputFilter
from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.embed import PayloadFilter
from gateway.pipeline.watermark.ledger import MAX_STORED_TEXT, Ledger, Record
from gateway.pipeline.watermark.payload import encode_mark, key_id, make_payload
from gateway.pipeline.watermark.provenance import sign_provenance
from gateway.pipeline.watermark.runtime import WatermarkRuntime
from gateway.policy.spec import WatermarkSpec

_DEFAULT_SPEC = WatermarkSpec()
_STRUCTURED_FIELDS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice",
                      "guided_grammar")
_MAX_WORDS = fp.MAX_CHUNKS * fp.CHUNK + fp.SHINGLE
# A large delta (a whole non-streaming answer) is tokenised a piece at a time, and no
# further than the words a record keeps: the rest of an 8 MB answer is not read at all.
_PIECE = 64 * 1024

FilterFactory = Callable[[RequestContext], OutputFilter | None]


def _spec(ctx: RequestContext) -> WatermarkSpec:
    return ctx.tier_spec.watermark if ctx.tier_spec is not None else _DEFAULT_SPEC


def structured_output(body: dict[str, Any]) -> bool:
    """True when the output must follow a format a mark would break (JSON mode etc.)."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
        return True
    return any(body.get(name) is not None for name in _STRUCTURED_FIELDS)


def subject_key_id(ctx: RequestContext, runtime: WatermarkRuntime) -> str:
    """The key id of the request's subject (an unauthenticated request: the empty sub)."""
    return key_id(runtime.secret, ctx.principal.sub if ctx.principal is not None else "")


def vllm_xargs(ctx: RequestContext, runtime: WatermarkRuntime) -> dict[str, str]:
    """What to merge into the forwarded body's `vllm_xargs` for the statistical watermark
    (gateway.vllm_plugin); the shape stage has already dropped any client value."""
    return {"gateway_key_id": subject_key_id(ctx, runtime)}


def provenance_header(ctx: RequestContext, runtime: WatermarkRuntime,
                      texts: Sequence[str] | None = None) -> str | None:
    """The x-gateway-provenance value for this response (texts: non-streaming only),
    or None when the request id cannot go into a header as is."""
    try:
        return sign_provenance(runtime.secret, ctx.request_id, subject_key_id(ctx, runtime),
                               runtime.clock(), texts)
    except ValueError:
        return None


def payload_filter(ctx: RequestContext, runtime: WatermarkRuntime,
                   policy_version: str) -> OutputFilter | None:
    if not _spec(ctx).payload or ctx.route == "embeddings" or structured_output(ctx.body):
        return None
    raw = make_payload(runtime.secret, subject_key_id(ctx, runtime), ctx.request_id,
                       runtime.clock(), policy_version)
    prompt = ctx.body.get("prompt") if ctx.route == "completions" else None
    counter = runtime.metrics.watermarked.labels(ctx.tier, "payload") \
        if runtime.metrics is not None else None

    def on_finish(marks: int) -> None:
        if marks:
            ctx.watermark_key_id = subject_key_id(ctx, runtime)  # for the audit record
            if counter is not None:
                counter.inc()

    return PayloadFilter(encode_mark(raw), prompt if isinstance(prompt, str) else "",
                         on_finish)


@dataclass(slots=True)
class _Pending:
    """A response's ledger state, apart from the filter so a finaliser can flush it."""

    ledger: Ledger
    template: Record
    clock: Callable[[], float]
    tokenizer: fp.Tokenizer = field(default_factory=fp.Tokenizer)
    hashes: list[int] = field(default_factory=list)
    text: list[str] | None = None
    text_len: int = 0


def _submit(state: _Pending) -> None:
    if len(state.hashes) < _MAX_WORDS:
        state.hashes.extend(state.tokenizer.finish())
    if not state.hashes:
        return  # nothing but tool calls, or nothing at all: no text to trace
    t = state.template
    state.ledger.submit(Record(
        request_id=t.request_id, key_id=t.key_id, tier=t.tier, model=t.model,
        created=state.clock(), policy_version=t.policy_version,
        word_hashes=tuple(state.hashes[:_MAX_WORDS]),
        text="".join(state.text) if state.text is not None else None))


class LedgerFilter:
    """OutputFilter that passes text through unchanged and fingerprints it on the way.

    Words are hashed as they pass (the tokenizer holds back at most a partial word);
    `finish` queues the record, which the ledger's worker thread fingerprints and
    writes, so the response is never delayed. A response that never finishes (client
    gone, upstream cut) is recorded too, with what passed, when the filter is dropped.
    """

    __slots__ = ("__weakref__", "_done", "_state")

    def __init__(self, ledger: Ledger, template: Record, store_text: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self._state = _Pending(ledger, template, clock, text=[] if store_text else None)
        self._done = weakref.finalize(self, _submit, self._state)
        self._done.atexit = False

    def feed(self, delta: str) -> str:
        state = self._state
        for start in range(0, len(delta), _PIECE):  # the tokenizer is blind to the cuts
            if len(state.hashes) >= _MAX_WORDS:
                break
            state.hashes.extend(state.tokenizer.feed(delta[start:start + _PIECE]))
        if state.text is not None and state.text_len < MAX_STORED_TEXT:
            state.text.append(delta)
            state.text_len += len(delta)
        return delta

    def finish(self) -> str:
        self._done()
        return ""


def ledger_filter(ctx: RequestContext, runtime: WatermarkRuntime,
                  policy_version: str) -> OutputFilter | None:
    spec = _spec(ctx)
    if runtime.ledger is None or not spec.ledger or ctx.route == "embeddings":
        return None
    template = Record(request_id=ctx.request_id, key_id=subject_key_id(ctx, runtime),
                      tier=ctx.tier, model=ctx.model, created=0.0,
                      policy_version=policy_version, word_hashes=())
    return LedgerFilter(runtime.ledger, template, spec.store_text, runtime.clock)


def watermark_filters(runtime: WatermarkRuntime, policy_version: str
                      ) -> tuple[FilterFactory, FilterFactory]:
    """Both factories bound, in chain order: payload, then ledger."""
    return (partial(payload_filter, runtime=runtime, policy_version=policy_version),
            partial(ledger_filter, runtime=runtime, policy_version=policy_version))
