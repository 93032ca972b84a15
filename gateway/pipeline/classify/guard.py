"""Guard classifier: a Llama Guard 3 model served by vLLM, asked about the request.

Off by default (`classifiers.guard.enabled`). Two ways to ask, as vLLM serves them:

- `api: completions` (default): POST /v1/completions with Llama Guard 3's own prompt
  (the model card's template, categories S1-S14, the text as the single `User:` turn),
  `max_tokens` small, `temperature` 0 and `logprobs: 5`, so the first generated token's
  top log-probabilities give P(unsafe). The prompt starts at `<|start_header_id|>`:
  vLLM's tokenizer adds `<|begin_of_text|>` itself.
- `api: chat`: POST /v1/chat/completions with the text as one user message (the model's
  chat template builds the same prompt) and `logprobs: true, top_logprobs: 5`.

The caller's text is the one part of that prompt nobody else wrote, so `escape` neutralises
whatever in it the tokenizer or the template reads as structure before it goes in (both
APIs: the chat template pastes the message in verbatim too): a `<` that opens a Llama 3
special token (`<|eot_id|>`, `<|start_header_id|>`, any `<|...|>`: vLLM turns those
strings into the real tokens, and has no per-request switch to stop it) or a template
marker (`<BEGIN ...>`, `<END CONVERSATION>`, ...) becomes U+2039 (a single angle quote),
and the colon of a `User:` or `Agent:` turn label at the start of a line becomes U+FF1A
(a fullwidth colon). Otherwise a caller could close the conversation, answer `safe` for
the guard and open a harmless "last User message" for it to judge.

The answer is `safe` or `unsafe\\nS1,S10`. The score is P(unsafe) from the first token's
log-probabilities when present (the `unsafe` token's probability, else 1 - P(`safe`)),
else 1.0 for `unsafe` and 0.0 for `safe`. It goes to every category whose `llama_guard`
list names a returned code (categories.yaml). An `unsafe` with no code, or with a code no
category claims (a newer guard's code, a mapping an admin removed), scores the unverified
category: the guard said unsafe, and that must not pass as safe. Unclaimed codes are also
logged (the codes, never the text) and counted in
`gateway_classifier_errors_total{classifier="guard", outcome="unknown_code"}`. Time-outs
and errors are handled by the chain (`timeout_s`, `on_error: open|closed`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from gateway.pipeline.classify.text import PromptText
from gateway.pipeline.upstream.http import UpstreamHTTP
from gateway.pipeline.upstream.reading import SMALL_BODY_BYTES, BodyTooLarge, read_bounded
from gateway.policy.spec import CategorySpec, GuardSpec

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.classify")

CATEGORIES = (
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\n"
    "S5: Defamation.\nS6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\n"
    "S9: Indiscriminate Weapons.\nS10: Hate.\nS11: Self-Harm.\nS12: Sexual Content.\n"
    "S13: Elections.\nS14: Code Interpreter Abuse.")

TEMPLATE = (
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in 'User' messages in conversations according our "
    "safety policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\nUser: {text}\n\n<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")

_CODE = re.compile(r"\bS(\d{1,2})\b")
# A `<` that opens a special token (every Llama 3 one starts with `<|`) or a template
# marker (`<BEGIN CONVERSATION>`, `<END UNSAFE CONTENT CATEGORIES>`, ...; the model may not
# care about case or spaces, so neither do we).
_OPENER = re.compile(r"<(?=\||\s*/?\s*(?:BEGIN|END)\b)", re.IGNORECASE)
# The template's turn labels (`User: ...`, `Agent: ...`) at the start of any line, as
# str.splitlines() (and a model) sees lines.
_BREAK = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_ROLE = re.compile(rf"(?:^|(?<=[{_BREAK}]))([^\S{_BREAK}]*(?:user|agent)[^\S{_BREAK}]*):",
                   re.IGNORECASE)
_LOOKALIKE_LT = "\u2039"  # single left-pointing angle quotation mark
_LOOKALIKE_COLON = "\\1\uff1a"  # the label, then a fullwidth colon
MAX_TOKENS = 20
TOP_LOGPROBS = 5


class GuardError(RuntimeError):
    """The guard answered with an error status or something that is not a verdict."""


def escape(text: str) -> str:
    """Caller text made safe to paste into the guard's prompt: no special token, template
    marker or turn label of its own survives, and it still reads the same to the model
    (`<|eot_id|>` -> `\u2039|eot_id|>`, `Agent: safe` -> `Agent\uff1a safe`). It only
    replaces `<` and `:`, so it cannot make a new one either."""
    return _ROLE.sub(_LOOKALIKE_COLON, _OPENER.sub(_LOOKALIKE_LT, text))


def guard_prompt(text: str) -> str:
    """The completions prompt for caller text (escaped here)."""
    return TEMPLATE.format(categories=CATEGORIES, text=escape(text))


def clip(text: str, max_chars: int) -> str:
    """Cut the middle out of text longer than max_chars (the ask is often at either end)."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "\n[...]\n" + text[-half:]


def parse(answer: str) -> tuple[bool, tuple[str, ...]]:
    """`safe` -> (False, ()); `unsafe\\nS1,S10` -> (True, ("S1", "S10"))."""
    lines = answer.strip().splitlines()
    first = lines[0].strip().lower() if lines else ""
    if first not in ("safe", "unsafe"):
        raise GuardError(f"unexpected guard answer {answer[:40]!r}")
    if first == "safe":
        return False, ()
    codes = tuple(dict.fromkeys(f"S{int(n)}" for n in _CODE.findall("\n".join(lines[1:]))))
    return True, codes


def _unsafe_probability(top: Mapping[str, float]) -> float | None:
    """P(unsafe) from the first token's top log-probabilities {token: logprob}."""
    stripped: dict[str, float] = {}
    for token, logprob in top.items():
        key = token.strip().lower()
        if key and key not in stripped:
            stripped[key] = logprob
    if "unsafe" in stripped:
        return math.exp(stripped["unsafe"])
    if "safe" in stripped:
        return max(0.0, 1.0 - math.exp(stripped["safe"]))
    return None


def _first_top_logprobs(choice: Mapping[str, Any], api: str) -> dict[str, float]:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return {}
    if api == "chat":
        content = logprobs.get("content") or []
        if not content or not isinstance(content[0], dict):
            return {}
        return {t["token"]: float(t["logprob"]) for t in content[0].get("top_logprobs") or []
                if isinstance(t, dict) and "token" in t and "logprob" in t}
    tops = logprobs.get("top_logprobs") or []
    first = tops[0] if tops else None
    return {str(k): float(v) for k, v in first.items()} if isinstance(first, dict) else {}


class GuardClassifier:
    """Seam: `async def score(text) -> {category: P(unsafe)}` via an HTTP call to vLLM."""

    name = "guard"
    cheap = False

    def __init__(self, spec: GuardSpec, http: UpstreamHTTP,
                 categories: Mapping[str, CategorySpec], unverified: str,
                 metrics: Metrics | None = None, api_key: str | None = None) -> None:
        self.spec = spec
        self.http = http  # a call per request: the lean client
        # The guard's own vLLM --api-key (GATEWAY_SECRET_GUARD_API_KEY): not the backends'
        # key, as the policy may point the guard at another host.
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.unverified = unverified
        self.metrics = metrics
        self.code_to_categories: dict[str, list[str]] = {}
        for name, category in categories.items():
            for code in category.llama_guard:
                self.code_to_categories.setdefault(code, []).append(name)

    def _request(self, text: str) -> tuple[str, dict[str, Any]]:
        base = self.spec.url.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        common: dict[str, Any] = {"model": self.spec.model, "max_tokens": MAX_TOKENS,
                                  "temperature": 0, "stream": False}
        if self.spec.api == "chat":
            return base + "/v1/chat/completions", {
                **common, "messages": [{"role": "user", "content": escape(text)}],
                "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        return base + "/v1/completions", {**common, "prompt": guard_prompt(text),
                                          "logprobs": TOP_LOGPROBS}

    async def ask(self, text: str) -> tuple[bool, tuple[str, ...], float]:
        """(unsafe, codes, P(unsafe)) for one text."""
        url, body = self._request(clip(text, self.spec.max_chars))
        resp = await self.http.post(url, orjson.dumps(body), self._headers)
        try:
            if resp.status != 200:  # a redirect too: never followed
                raise GuardError(f"guard answered HTTP {resp.status}")
            try:
                data = orjson.loads(await read_bounded(resp, SMALL_BODY_BYTES))
            except (BodyTooLarge, orjson.JSONDecodeError):
                raise GuardError("guard answer is not a JSON object of a sane size") from None
        finally:
            resp.release()
        try:
            choice = data["choices"][0]
            answer = (choice["message"]["content"] if self.spec.api == "chat"
                      else choice["text"])
        except (KeyError, IndexError, TypeError):
            raise GuardError("guard answer has no choices") from None
        if not isinstance(answer, str):
            raise GuardError("guard answer is not text")
        unsafe, codes = parse(answer)
        probability = _unsafe_probability(_first_top_logprobs(choice, self.spec.api))
        if probability is None:
            probability = 1.0 if unsafe else 0.0
        return unsafe, codes, probability

    def quick(self, text: PromptText) -> None:
        return None  # always a round trip to the guard model

    async def score(self, text: PromptText) -> dict[str, float]:
        if not text.full.strip():
            return {}
        unsafe, codes, probability = await self.ask(text.full)
        if not unsafe:
            return {}
        targets = [c for code in codes for c in self.code_to_categories.get(code, ())]
        unknown = [code for code in codes if code not in self.code_to_categories]
        if unknown:
            log.warning("guard answered unsafe with codes no category claims (%s): scored "
                        "as %s", ",".join(unknown), self.unverified)
            if self.metrics is not None:
                self.metrics.classifier_errors.labels(self.name, "unknown_code").inc()
        if unknown or not codes:
            targets.append(self.unverified)
        return {category: probability for category in targets}
