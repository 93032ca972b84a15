"""Fault directives: how a test asks the simulator to misbehave on one request.

A directive sits anywhere in the prompt text (the last user message of a chat request,
the prompt of a completion request) or in the `x-sim-fault` header:

    [[sim:KEY=VALUE,KEY=VALUE,...]]

The header may also carry the bare list (`x-sim-fault: drop_after=3,tps=20`). Several
directives merge, later ones winning; the header comes last. Keys:

  status=N           answer HTTP N (400..599) with vLLM's error body, before any byte
  reset              close the connection before answering
  drop_after=K       stream: K token chunks, then close the connection (no [DONE]);
                     non-stream: close the connection instead of answering
  stall_after=K      stream: K token chunks, then send nothing until the client leaves;
                     non-stream: never answer
  malformed_after=K  stream: K token chunks, then a `data: {not json` event, then the
                     rest as usual; non-stream: a 200 whose body is not JSON
  ttft=SECONDS       override the time to first token
  tps=RATE           override tokens per second (0: as fast as possible)
  prose[=F+F...]     answer in long Markdown-ish prose (prose.py) instead of short
                     sentences; F adds code, json, links, emoji, rtl or cjk (all: every
                     one). Not a fault, like ttft and tps: a way to ask for other text
  guard=VERDICT      guard models only (SimSettings.guard_models; others ignore it):
                     the verdict, instead of the keyword table of guard.py. VERDICT is
                     `safe`, `unsafe` (no code: the gateway scores it unverified), or
                     codes joined by `+` (`S9+S14` answers `unsafe\nS9,S14`). Codes are
                     S1..S14, Llama Guard 3's; S15..S99 play a newer guard's codes
  guard_p=P          guard models only: P(unsafe) in 0..1, as the first token's
                     log-probabilities tell it (default 0.97 for an unsafe verdict,
                     0.02 for a safe one)

An unknown key or a bad value is a 400, so a typo cannot silently disable a fault.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gateway.sim.prose import FEATURES

_DIRECTIVE = re.compile(r"\[\[sim:([^\]]*)\]\]")
_KEYS = frozenset({"status", "reset", "drop_after", "stall_after", "malformed_after", "ttft",
                   "tps", "prose", "guard", "guard_p"})
_CODE = re.compile(r"S([1-9]\d?)", re.IGNORECASE)


class FaultSyntaxError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Faults:
    status: int | None = None
    reset: bool = False
    drop_after: int | None = None
    stall_after: int | None = None
    malformed_after: int | None = None
    ttft_s: float | None = None
    tps: float | None = None
    prose: frozenset[str] | None = None  # None: the usual sentences
    guard: str | None = None  # a guard model's answer: "safe", "unsafe\nS9,S14"; None: judge
    guard_p: float | None = None  # a guard model's P(unsafe); None: from the verdict


def parse_faults(prompt: str = "", header: str = "") -> Faults:
    """The faults asked for by directives in the prompt text and the header."""
    lists = _DIRECTIVE.findall(prompt)
    if header:
        lists += _DIRECTIVE.findall(header) if "[[sim:" in header else [header]
    values: dict[str, str] = {}
    for items in lists:
        for item in items.split(","):
            key, _, value = item.strip().partition("=")
            if key:
                values[key] = value.strip()
    if not values:
        return Faults()
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise FaultSyntaxError(f"unknown sim directive key {unknown[0]!r}")

    def count(key: str) -> int | None:
        return _integer(key, values[key], 0, 1 << 31) if key in values else None

    def number(key: str) -> float | None:
        return _number(key, values[key]) if key in values else None

    status = values.get("status")
    return Faults(status=None if status is None else _integer("status", status, 400, 599),
                  reset=values.get("reset") in ("", "1", "true"),
                  drop_after=count("drop_after"), stall_after=count("stall_after"),
                  malformed_after=count("malformed_after"), ttft_s=number("ttft"),
                  tps=number("tps"),
                  prose=_features(values["prose"]) if "prose" in values else None,
                  guard=_verdict(values["guard"]) if "guard" in values else None,
                  guard_p=_probability(values["guard_p"]) if "guard_p" in values else None)


def _verdict(value: str) -> str:
    """`safe` | `unsafe` | `S9+S14` as Llama Guard 3 says it: `safe`, `unsafe\nS9,S14`."""
    if value.lower() in ("safe", "unsafe"):
        return value.lower()
    codes = [c.strip() for c in value.split("+")]
    matches = [_CODE.fullmatch(c) for c in codes]
    if not all(matches):
        raise FaultSyntaxError(f"sim directive guard wants safe, unsafe or codes like "
                               f"S9+S14, got {value!r}")
    return "unsafe\n" + ",".join(dict.fromkeys(f"S{m[1]}" for m in matches if m))


def _probability(value: str) -> float:
    number = _number("guard_p", value)
    if number > 1:
        raise FaultSyntaxError(f"sim directive guard_p wants a number in 0..1, got {value!r}")
    return number


def _features(value: str) -> frozenset[str]:
    asked = frozenset(FEATURES if value == "all"
                      else filter(None, (f.strip() for f in value.split("+"))))
    unknown = sorted(asked - FEATURES)
    if unknown:
        raise FaultSyntaxError(f"sim directive prose knows {'+'.join(sorted(FEATURES))} "
                               f"or all, got {unknown[0]!r}")
    return asked


def _integer(key: str, value: str, low: int, high: int) -> int:
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise FaultSyntaxError(f"sim directive {key} wants an integer in {low}..{high}, "
                               f"got {value!r}")
    return int(value)


def _number(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not math.isfinite(number) or number < 0:
        raise FaultSyntaxError(f"sim directive {key} wants a number >= 0, got {value!r}")
    return number
