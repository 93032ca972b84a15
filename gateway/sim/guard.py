"""Playing a Llama Guard 3 model (SimSettings.guard_models): what it answers about a text,
and the log-probabilities vLLM returns with that answer.

The text judged is what Llama Guard 3 is asked about: in a completion prompt, the
conversation between the model card's `<BEGIN CONVERSATION>` and `<END CONVERSATION>`
(the whole prompt if it has no such markers; the gateway escapes caller text, so the
caller cannot add markers of their own); in a chat request, the last user message.

The verdict, deterministic from that text:

1. a `guard=` sim directive in it picks it (`[[sim:guard=safe]]`,
   `[[sim:guard=S9+S14]]`; see faults.py), and `guard_p=` sets P(unsafe);
2. otherwise the keyword table `KEYWORDS` decides: every row with a word that starts a
   word of the text adds its code, so "how does ransomware spread" is `unsafe\\nS14` and
   "a poem about the sea" is `safe`. It is a test double, not a classifier.

The answer is the verdict's tokens (`safe`; `unsafe`, `\\n`, `S`, `9`, `,`, ...) and then
the end of the sequence, so usage counts them as vLLM does (`safe` is 2 tokens with EOS).
Asked for logprobs, every token comes with its top alternatives: for the first one
`unsafe` at log(P) and `safe` at log(1 - P), P being `guard_p` or `UNSAFE_P` / `SAFE_P`,
then filler tokens far below; every later token is near certain. A log-probability of
-inf is written -9999.0, as vLLM writes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.sim.faults import Faults
from gateway.sim.tokenizer import Tokenizer

# code -> words whose presence (at the start of a word, any case) makes the text unsafe
KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("S1", ("murder", "assassinate")),  # violent crimes
    ("S9", ("nerve agent", "sarin", "anthrax", "pathogen", "bioweapon")),  # weapons
    ("S11", ("suicide",)),  # self-harm
    ("S14", ("malware", "ransomware", "keylogger")),  # code interpreter abuse (cyber)
)
UNSAFE_P = 0.97  # P(unsafe) said with an unsafe verdict, unless guard_p says otherwise
SAFE_P = 0.02  # P(unsafe) said with a safe verdict
MIN_LOGPROB = -9999.0  # vLLM's stand-in for -inf
SURE = -0.001  # the log-probability of every token after the first
EOS_TOKEN = "<|end|>"  # how logprobs name the end of the sequence (the chat template's)
# Alternatives below the verdict, in rank order, enough for vLLM's 20 top logprobs. No
# `Safe` or ` unsafe`: a reader that folds case and spaces (the gateway's does) would take
# them for the verdict, and P(unsafe) would no longer be exactly the one asked for.
FILLER = ("\n", "\n\n", " ", ",", ".", ":", "-", "S", EOS_TOKEN, "The", "I", "A", "This",
          *"0123456789")
_BEGIN = "<BEGIN CONVERSATION>"
_END = "<END CONVERSATION>"
_RULES = tuple((code, re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + ")",
                                 re.IGNORECASE)) for code, words in KEYWORDS)

Top = tuple[tuple[str, float], ...]  # the sampled token, then the alternatives by rank


@dataclass(frozen=True, slots=True)
class Verdict:
    """A guard's answer, as text (`safe`, `unsafe\\nS9,S14`), and its P(unsafe)."""

    text: str
    p_unsafe: float


def judged_text(prompt: str) -> str:
    """The conversation inside a Llama Guard prompt, or the prompt if it has none."""
    start, end = prompt.find(_BEGIN), prompt.rfind(_END)
    return prompt[start + len(_BEGIN):end] if 0 <= start < end else prompt


def judge(text: str, faults: Faults) -> Verdict:
    """The verdict on `text`: the directive's, else the keyword table's."""
    if faults.guard is not None:
        answer = faults.guard
    else:
        codes = [code for code, rule in _RULES if rule.search(text)]
        answer = "unsafe\n" + ",".join(codes) if codes else "safe"
    default = SAFE_P if answer == "safe" else UNSAFE_P
    return Verdict(answer, default if faults.guard_p is None else faults.guard_p)


def said(verdict: Verdict, tokenizer: Tokenizer) -> tuple[str, ...]:
    """The verdict's tokens, one text each."""
    return tuple(tokenizer.pieces(verdict.text))


def tops(verdict: Verdict, tokens: Sequence[str]) -> tuple[Top, ...]:
    """Each generated token's logprobs: itself, then its alternatives by rank. `tokens` are
    the tokens' own texts (Plan.token_texts), "" for EOS."""
    out = []
    for i, text in enumerate(tokens):
        token = text or EOS_TOKEN
        if i == 0:
            ranked = [("unsafe", _log(verdict.p_unsafe)), ("safe", _log(1.0 - verdict.p_unsafe))]
            chosen = dict(ranked).get(token, MIN_LOGPROB)
            below = -20.0
        else:
            ranked, chosen, below = [(token, SURE)], SURE, -8.0
        taken = {t for t, _ in ranked}
        fillers = [t for t in FILLER if t not in taken]
        ranked += [(t, below - rank) for rank, t in enumerate(fillers)]
        ranked.sort(key=lambda entry: -entry[1])  # stable: unsafe before safe at 0.5
        out.append(((token, chosen), *ranked))
    return tuple(out)


def _log(p: float) -> float:
    return math.log(p) if p > 0 else MIN_LOGPROB
