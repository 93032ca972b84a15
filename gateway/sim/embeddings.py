"""/v1/embeddings: a deterministic unit vector per input text."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import time
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.sim.protocol import Prompt, SimError, model_of, text_inputs
from gateway.sim.settings import SimSettings
from gateway.sim.tokenizer import Tokenizer

DIMENSIONS = 384


def vector(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """Gaussian components seeded by the text, normalised to length 1."""
    seed = hashlib.blake2b(text.encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(seed, "big"))
    values = [rng.gauss(0.0, 1.0) for _ in range(DIMENSIONS)][:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _inputs(value: Any, tokenizer: Tokenizer) -> list[Prompt]:
    return text_inputs(value, "input", tokenizer)


def embeddings_body(body: Mapping[str, Any], settings: SimSettings,
                    tokenizer: Tokenizer) -> dict[str, Any]:
    model = model_of(body, settings)
    inputs = _inputs(body.get("input"), tokenizer)
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = DIMENSIONS
    if type(dimensions) is not int or not 1 <= dimensions <= DIMENSIONS:
        raise SimError(400, f"dimensions must be an integer in 1..{DIMENSIONS}", "dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise SimError(400, "encoding_format must be 'float' or 'base64'", "encoding_format")
    for prompt in inputs:
        if prompt.tokens > settings.max_model_len:
            raise SimError(400, f"This model's maximum context length is "
                                f"{settings.max_model_len} tokens. However, you requested "
                                f"{prompt.tokens} tokens in the input for embedding "
                                f"generation. Please reduce the length of the input.", "input")
    data = []
    for i, prompt in enumerate(inputs):
        values = vector(prompt.text, dimensions)
        embedding: list[float] | str = values if encoding == "float" else \
            base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"index": i, "object": "embedding", "embedding": embedding})
    tokens = sum(p.tokens for p in inputs)
    return {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": model, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                      "prompt_tokens_details": None}}
