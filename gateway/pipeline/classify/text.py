"""What is classified (PromptText), how text is folded before matching, and prompt hashes.

`prompt_text(ctx)` is every word the caller sent that reaches the model: for chat, the
text of the messages whose role is configured (`classifiers.roles`, by default every
role: a client's system, developer, assistant or tool message is rendered into the prompt
as much as a user message is) with their names, reasoning and tool call ids (templates may
render those too), the arguments of earlier tool calls, the tool definitions (names,
descriptions, parameter schemas), and the words of any output constraint (JSON schema,
regex, grammar, choices: guided decoding forces the model to write them, so "Sure, here is
the ransomware:" as a required prefix is as much the caller's words as a message), joined
with blank lines, with the last user message also kept on its own. The tier's own
system prompt, which the tier stage put first, is not the caller's words and is left out.
For completions it is the prompt (with its `suffix` and any output constraint), less the
tier's system prompt that the tier stage put in front of it. Token-id prompts cannot be read and are
marked `opaque` (the stage scores them as the unverified category).

`fold(text)` is the normalisation rules and phrases see, per character: invisible
characters (zero-width, bidi controls, tag characters, soft hyphens, variation selectors)
and combining marks are dropped, Cyrillic and Greek letters that look Latin become the
Latin letter, so do small capitals (U+1D00 and kin), and the rest is NFKD-decomposed
(accents dropped), NFKC-composed and casefolded. So `r\u200bansom\u00adware`,
`spyw\u0301are`, `k\u0435ylogger` (a Cyrillic e) and fullwidth letters match like plain
text. It is applied per character, so fold(a + b) == fold(a) + fold(b), which the output
moderation window relies on.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass
from typing import Any

from gateway.context import RequestContext
from gateway.pipeline.shape import part_text
from gateway.policy.spec import CALLER_ROLES, TierSpec

INVISIBLE = frozenset((
    0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0,
    *range(0x200B, 0x2010),  # zero-width space/non-joiner/joiner, LRM, RLM
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    *range(0x2060, 0x2070),  # word joiner, invisible operators, bidi isolates
    *range(0xFE00, 0xFE10),  # variation selectors
    *range(0xE0000, 0xE0080),  # tag characters
))


@dataclass(frozen=True, slots=True)
class PromptText:
    """The classified text of one request."""

    full: str  # every included message (or the prompt), joined by blank lines
    last_user: str  # the last user message ("" when there is none); the prompt for completions
    opaque: bool = False  # part of the prompt was token ids: not readable here
    # Characters at the end of `full` that are output constraints (schemas, regexes): the
    # rules, structure and the guard read them all. The embedding model, trained on
    # prose, reads `prose` and, on their own, the constraints' `phrases` (strings of three
    # words or more: descriptions, long property names, choices): a schema's vocabulary
    # read with the prompt looked like an injection to it, and a list of labels (a
    # moderation schema's enum) like the harms it names.
    constraints: int = 0
    phrases: str = ""

    @property
    def prose(self) -> str:
        return self.full[:len(self.full) - self.constraints].rstrip() if self.constraints \
            else self.full

    @classmethod
    def of(cls, text: str) -> PromptText:
        return cls(full=text, last_user=text)

    def clipped(self, limit: int) -> PromptText:
        """Text over `limit` characters kept as its first and last halves (a blank line
        between, so no pattern matches across the cut). Itself when nothing is that long:
        the common case, on every request."""
        if len(self.full) <= limit and len(self.last_user) <= limit:
            return self
        return PromptText(_clip(self.full, limit), _clip(self.last_user, limit), self.opaque,
                          min(self.constraints, limit // 2), _clip(self.phrases, limit))


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n\n{text[len(text) - half:]}"


# Typographic quotes fold to ASCII ones, so patterns can write `don't` once.
QUOTES = {0x2018: "'", 0x2019: "'", 0x201B: "'", 0x2032: "'", 0x02BC: "'",
          0x201C: '"', 0x201D: '"', 0x201F: '"', 0x2033: '"'}
# The one character casefold keeps that IGNORECASE still equates with another (U+0131,
# dotless i, with i):
# folded here, lower-case patterns match folded text alike with or without IGNORECASE
# (rules.case_flags relies on it; a test checks every code point).
CASELESS = {0x0131: "i"}  # a str.translate table

# Letters of other scripts drawn like a Latin letter, which a reader takes for one
# (Unicode's confusables, the common Cyrillic and Greek ones; casefolded targets).
HOMOGLYPHS = {chr(code): latin for latin, codes in (
    ("a", (0x0430, 0x0410, 0x03B1, 0x0391)),  # Cyrillic a, A; Greek alpha, Alpha
    ("b", (0x0432, 0x0412, 0x0392)),  # Cyrillic ve, Ve; Greek Beta
    ("c", (0x0441, 0x0421)),  # Cyrillic es, Es
    ("d", (0x0501,)),  # Cyrillic komi de
    ("e", (0x0435, 0x0415, 0x0451, 0x0401, 0x0395)),  # Cyrillic ie, Ie, io, Io; Greek Epsilon
    ("h", (0x04BB, 0x041D, 0x0397)),  # Cyrillic shha, En; Greek Eta
    ("i", (0x0456, 0x0406, 0x04CF, 0x03B9, 0x0399)),  # Cyrillic i, I, palochka; Greek iota
    ("j", (0x0458, 0x0408)),  # Cyrillic je, Je
    ("k", (0x043A, 0x041A, 0x03BA, 0x039A)),  # Cyrillic ka, Ka; Greek kappa, Kappa
    ("m", (0x043C, 0x041C, 0x039C)),  # Cyrillic em, Em; Greek Mu
    ("n", (0x039D,)),  # Greek Nu
    ("o", (0x043E, 0x041E, 0x03BF, 0x039F)),  # Cyrillic o, O; Greek omicron, Omicron
    ("p", (0x0440, 0x0420, 0x03C1, 0x03A1)),  # Cyrillic er, Er; Greek rho, Rho
    ("q", (0x051B,)),  # Cyrillic qa
    ("r", (0x0433,)),  # Cyrillic ghe (a lower-case r in most fonts' italics and handwriting)
    ("s", (0x0455, 0x0405)),  # Cyrillic dze, Dze
    ("t", (0x0442, 0x0422, 0x03A4)),  # Cyrillic te, Te; Greek Tau
    ("v", (0x03BD,)),  # Greek nu
    ("w", (0x051D,)),  # Cyrillic we
    ("x", (0x0445, 0x0425, 0x03C7, 0x03A7)),  # Cyrillic ha, Ha; Greek chi, Chi
    ("y", (0x0443, 0x0423, 0x03C5, 0x03A5)),  # Cyrillic u, U; Greek upsilon, Upsilon
    ("z", (0x0396,)),  # Greek Zeta
) for code in codes} | {chr(code): latin for latin, code in (
    # Small capitals (NFKC keeps them): the letters of "ꜱᴍᴀʟʟ ᴄᴀᴘꜱ" text generators.
    ("a", 0x1D00), ("b", 0x0299), ("c", 0x1D04), ("d", 0x1D05), ("e", 0x1D07),
    ("f", 0xA730), ("g", 0x0262), ("h", 0x029C), ("i", 0x026A), ("j", 0x1D0A),
    ("k", 0x1D0B), ("l", 0x029F), ("m", 0x1D0D), ("n", 0x0274), ("o", 0x1D0F),
    ("p", 0x1D18), ("q", 0xA7AF), ("r", 0x0280), ("s", 0xA731), ("t", 0x1D1B),
    ("u", 0x1D1C), ("v", 0x1D20), ("w", 0x1D21), ("y", 0x028F), ("z", 0x1D22),
)}


class _Fold(dict[int, str]):
    """str.translate table computed per code point on first use (C speed afterwards)."""

    def __missing__(self, code: int) -> str:
        value = "" if code in INVISIBLE else QUOTES.get(code) or _plain(chr(code))
        self[code] = value
        return value


def _plain(char: str) -> str:
    if char in HOMOGLYPHS:
        return HOMOGLYPHS[char]
    bare = "".join(c for c in unicodedata.normalize("NFKD", char)
                   if not unicodedata.combining(c))
    return unicodedata.normalize("NFKC", bare).casefold().translate(CASELESS)


_FOLD = _Fold()


def fold(text: str) -> str:
    return text.translate(_FOLD)


def fold_char(char: str) -> str:
    return _FOLD[ord(char)]


def _content_text(content: Any) -> tuple[str, bool]:
    """Text of one message's content (string or parts); True when it had token ids."""
    if isinstance(content, str):
        return content, False
    if isinstance(content, list):
        texts = [text for text in map(part_text, content) if text is not None]
        return "\n".join(texts), False
    return "", content is not None


def _prompt_parts(prompt: Any) -> tuple[list[str], bool]:
    if isinstance(prompt, str):
        return [prompt], False
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            return list(prompt), False
        return [p for p in prompt if isinstance(p, str)], True  # token ids
    return [], prompt is not None


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value, keys excluded, depth first (tool schemas)."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def _tool_call_text(message: dict[str, Any]) -> list[str]:
    """The ids, names and arguments of the tool calls in an (assistant) message."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    return [s for call in calls if isinstance(call, dict)
            for s in (call.get("id"), *_strings(call.get("function"))) if isinstance(s, str)]


# A message's own strings a template may render besides its content.
_MESSAGE_TEXT_KEYS = ("name", "tool_call_id", "reasoning_content", "reasoning")


def _message_extras(message: dict[str, Any]) -> list[str]:
    return [value for key in _MESSAGE_TEXT_KEYS
            if isinstance(value := message.get(key), str)]


# Request fields that constrain the output (guided decoding): their words are forced into
# the answer, a prefix the model then continues.
CONSTRAINT_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex",
                     "guided_choice", "guided_grammar")
# JSON Schema's own vocabulary: keys (and `type` values) that say nothing of the caller's.
_SCHEMA_WORDS = frozenset({
    "type", "properties", "required", "items", "enum", "const", "description", "title",
    "pattern", "additionalProperties", "minLength", "maxLength", "minimum", "maximum",
    "minItems", "maxItems", "$defs", "definitions", "$ref", "$schema", "anyOf", "oneOf",
    "allOf", "format", "default", "name", "strict", "schema", "json_schema", "json",
    "regex", "choice", "grammar", "structural_tag", "whitespace_pattern", "examples",
    "prefixItems", "uniqueItems", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "nullable", "not", "if", "then", "else", "dependentRequired",
})


def _constraint_text(body: dict[str, Any]) -> list[str]:
    """The caller's words in the output constraints: strings, and object keys that are
    not JSON Schema's own (a property name is a phrase the answer must contain)."""
    found: list[str] = []
    stack = [body.get(field) for field in reversed(CONSTRAINT_FIELDS)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            for key, value in reversed(item.items()):
                if key in ("type", "format", "$ref", "$schema"):
                    continue  # a schema type name, a format or a reference: no words
                stack.append(value)
                if key not in _SCHEMA_WORDS:  # `ransomware_source` reads as two words
                    stack.append(key.replace("_", " ").replace("-", " "))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return [text for text in found if text]


def _tool_definitions(tools: Any) -> list[str]:
    if not isinstance(tools, list):
        return []
    texts = ("\n".join(s for s in _strings(tool.get("function")) if s)
             for tool in tools if isinstance(tool, dict))
    return [text for text in texts if text]


def _injected(tier: TierSpec | None, messages: list[Any]) -> bool:
    """True when messages[0] is the system message the tier stage put there."""
    if tier is None or tier.system_prompt.mode == "none" or not messages:
        return False
    return bool(messages[0] == {"role": "system", "content": tier.system_prompt.text})


def prompt_text(ctx: RequestContext, roles: tuple[str, ...] = CALLER_ROLES) -> PromptText:
    """The text the classifiers see for this request (see the module docstring)."""
    body = ctx.body
    tier = ctx.tier_spec
    if "messages" in body and isinstance(body["messages"], list):
        messages = body["messages"]
        parts: list[str] = []
        last_user, opaque = "", False
        for message in messages[1:] if _injected(tier, messages) else messages:
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            text, ids = _content_text(message.get("content"))
            opaque = opaque or (ids and role in roles)
            if role == "user":
                last_user = text
            if role in roles:
                parts.extend(t for t in (*_message_extras(message), text,
                                         *_tool_call_text(message)) if t)
        parts.extend(_tool_definitions(body.get("tools")))
        return _with_constraints(parts, last_user, opaque, _constraint_text(body))
    texts, opaque = _prompt_parts(body.get("prompt"))
    prefix = tier.system_prompt.prompt_prefix if tier is not None else ""
    if prefix:
        texts = [t.removeprefix(prefix) for t in texts]
    suffix = body.get("suffix")  # vLLM refuses it; a backend that takes it renders it
    extra = [suffix] if isinstance(suffix, str) and suffix else []
    return _with_constraints([*texts, *extra], texts[-1] if texts else "", opaque,
                             _constraint_text(body))


def carries_token_ids(body: dict[str, Any], roles: tuple[str, ...] = CALLER_ROLES) -> bool:
    """`prompt_text(ctx, roles).opaque` without building the text: all a chain without a
    classifier needs to know (token ids are scored as unverified)."""
    messages = body.get("messages")
    if "messages" in body and isinstance(messages, list):
        return any(isinstance(message, dict) and message.get("role") in roles
                   and _content_text(message.get("content"))[1] for message in messages)
    return _prompt_parts(body.get("prompt"))[1]


def _with_constraints(parts: list[str], last_user: str, opaque: bool,
                      constraints: list[str]) -> PromptText:
    tail = "\n\n".join(constraints)
    if not tail:
        return PromptText(full="\n\n".join(parts), last_user=last_user, opaque=opaque)
    full = "\n\n".join([*parts, tail])
    phrases = "\n".join(text for text in constraints if len(text.split()) >= 3)
    return PromptText(full=full, last_user=last_user, opaque=opaque, constraints=len(tail),
                      phrases=phrases)


def prompt_hash(secret: bytes, text: str) -> str:
    """Keyed hash of a prompt for audit records: stable per secret, not reversible.

    Same construction as `gateway.audit.record.AuditKeys.prompt_hash`, so both agree.
    """
    return hmac.new(secret, b"prompt\0" + text.encode(), hashlib.sha256).hexdigest()
