"""Schemathesis hooks (loaded by file path through SCHEMATHESIS_HOOKS, never by pytest).

Generated model names are random strings, so nearly every completion would stop at a 404
before the stages and the upstream; most bodies get the served model instead, so the run
reaches the relay and checks real answers against the document, and half of those ask
for a stream, so every server-sent event is checked too. A quarter keep their random
name, so the 404 path stays in the run. The choice hangs on the generated body, so a
seed replays the same run.
"""

from __future__ import annotations

import zlib
from typing import Any

import schemathesis

SERVED_MODEL = "sim-llama-3-8b-instruct"  # the embedded simulator's model


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str):
        return body
    choice = zlib.crc32(repr(sorted(body.items(), key=repr)).encode())
    if choice % 4 == 0:
        return body
    if choice & 4:
        return {**body, "model": SERVED_MODEL, "stream": True,
                "stream_options": {"include_usage": bool(choice & 8)}}
    return {**body, "model": SERVED_MODEL}
