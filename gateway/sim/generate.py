"""Deterministic text and fault directives.

Text depends only on (prompt, seed, choice index): the same request gives the same answer,
which lets tests compare direct and proxied responses word for word. Sentences are drawn
from a fixed vocabulary, capitalised and punctuated, so the output reads like prose.

Fault injection, for tests: a directive anywhere in the prompt, `[[sim:KEY=VALUE,...]]`,
or the same text in an `x-sim-fault` header. Keys:
  status=N           answer with HTTP N and vLLM's error body, before any byte
  reset              close the connection before answering
  drop_after=K       stream: K token chunks, then close the connection (no [DONE])
  stall_after=K      stream: K token chunks, then stall until the client goes away
  malformed_after=K  stream: K token chunks, then one malformed event
  ttft=SECONDS       override the time to first token
  tps=RATE           override tokens per second
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

_DIRECTIVE = re.compile(r"\[\[sim:([^\]]*)\]\]")

_WORDS = """
the of and a to in is that it was for on are as with his they at be this from have or
by one had not but what all were when we there can an your which their said if do will
each about how up out them then she many some so these would other into has more her
two like him see time could no make than first been its who now people my made over
did down only way find use may water long little very after words called just where
most know get through back much before go good new write our used me man too any day
same right look think also around another came come work three word must because does
part even place well such here take why things help put years different away again off
went old number great tell men say small every found still between name should home
big give air line set own under read last never us left end along while might next
sound below saw something thought both few those always looked show large often
together asked house world going want school important until form food keep children
feet land side without boy once animals life enough took sometimes four head above
kind began almost live page got earth need far hand high year mother light parts
country father let night following picture being study second eyes soon times story
boys since white days ever paper hard near sentence better best across during today
others however sure means knew try told young miles sun ways thing whole hear example
heard several change answer room sea against top turned learn point city play toward
five using himself usually river
"""
VOCAB = tuple(_WORDS.split())


@dataclass(frozen=True, slots=True)
class Faults:
    status: int | None = None
    reset: bool = False
    drop_after: int | None = None
    stall_after: int | None = None
    malformed_after: int | None = None
    ttft_s: float | None = None
    tps: float | None = None


def parse_faults(*sources: str) -> Faults:
    values: dict[str, str] = {}
    for source in sources:
        for match in _DIRECTIVE.finditer(source):
            for item in match.group(1).split(","):
                key, _, value = item.strip().partition("=")
                values[key] = value
    if not values:
        return Faults()

    def number(key: str) -> int | None:
        return int(values[key]) if values.get(key, "").isdigit() else None

    def real(key: str) -> float | None:
        try:
            return float(values[key]) if key in values else None
        except ValueError:
            return None

    return Faults(status=number("status"), reset="reset" in values,
                  drop_after=number("drop_after"), stall_after=number("stall_after"),
                  malformed_after=number("malformed_after"), ttft_s=real("ttft"),
                  tps=real("tps"))


def words(prompt: str, seed: int, index: int) -> Iterator[str]:
    """An endless, deterministic stream of token texts (each with its leading space)."""
    digest = hashlib.blake2b(f"{seed}\0{index}\0{prompt}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    while True:
        length = rng.randint(6, 16)
        for i in range(length):
            word = rng.choice(VOCAB)
            yield " " + (word.capitalize() if i == 0 else word) + ("." if i == length - 1
                                                                   else "")


def natural_length(prompt: str, seed: int, index: int) -> int:
    """How many tokens the 'model' wants to say before it stops by itself."""
    digest = hashlib.blake2b(f"len\0{seed}\0{index}\0{prompt}".encode(), digest_size=4)
    return 16 + int.from_bytes(digest.digest(), "big") % 49
