"""Structure classifier: jailbreaks recognisable by their shape, scored on `jailbreak`,
and text in a language the classifiers cannot read, scored on its own category.

Four jailbreak signals, each a score in [0, 1]; the classifier reports their max:

- **many-shot**: fake dialogue turns embedded in one message ("User: ... Assistant: ...",
  "Q: ... A: ...", "Human:/AI:" at the start of a line; JSON keys, tags or bracketed
  labels anywhere: `"user":`, `"role": "assistant"`, `<bot>`, `[AI]`; or a chat template's
  own turn tokens: `<|start_header_id|>`, `<|im_start|>`, `[INST]`, ...). Score rises
  linearly from 0 at `turns.low` markers to 1 at `turns.high` (a pasted FAQ or a short
  transcript stays low).
- **override phrases**: admin-written regexes ("ignore all previous instructions", "you are
  now DAN", "developer mode enabled", ...), matched on folded text like rules.
- **persona cues**: weaker admin-written regexes, each common alone in ordinary text
  ("amoral", "never refuses", "stay in character", "without warnings", "not bound by");
  a persona jailbreak piles several up. Score rises linearly from 0 at `cues.low`
  distinct cues to 1 at `cues.high`.
- **smuggling**: text the reader cannot see or read: Unicode tag characters (outside emoji
  flag sequences), zero-width characters in bulk (outside emoji ZWJ sequences), bidi
  override controls, and long base64 runs that decode to readable text (an encoded
  instruction; base64 of binary data such as an image does not count).

**language** (`language.py`): the last user message or the whole text mostly in a
language other than those `language.readable` names scores `language.category`.

`scores_output` is the subset used by output moderation: output-scoped phrases and
invisible-character smuggling only (answers legitimately contain dialogues and base64).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

from gateway.pipeline.classify.language import LanguageCheck
from gateway.pipeline.classify.rules import any_of, compile_patterns, match_scores
from gateway.pipeline.classify.text import PromptText, fold
from gateway.policy.spec import StructureSpec

JAILBREAK = "jailbreak"

_TURN = re.compile(
    r"^[ \t>*_#-]*(?:user|human|assistant|ai|bot|chatbot|model|system|q|a|question|answer"
    r"|prompt|response|input|output)[ \t]*\**[ \t]*[:\uff1a]", re.IGNORECASE | re.MULTILINE)
# Turns opened by chat-template control tokens (Llama 3, ChatML, gpt-oss, Phi, Gemma,
# DeepSeek, Mistral), raw or as the shape stage neutralised them in chat text (control.py).
# Turns written as data: JSON keys ("user": ..., "role": "assistant"), tags (<user>) and
# bracketed labels ([AI]), anywhere in a line.
_MARKUP_TURN = re.compile(
    r"\"(?:user|assistant|human|ai|bot|model|gpt|chatgpt)\"\s*:"
    r"|\"role\"\s*:\s*\"(?:user|assistant|human|ai|bot|model)\""
    r"|<(?:user|assistant|human|ai|bot|model|gpt|chatgpt)>"
    r"|\[(?:user|assistant|human|ai|bot|model|gpt|chatgpt)\]", re.IGNORECASE)
_TEMPLATE_TURN = re.compile(
    r"[<\u2039](?:\|(?:start_header_id|im_start|start|user|assistant|system)\|"
    r"|\uff5c(?:user|assistant)\uff5c|start_of_turn)>|[\[\uff3b]/?INST\]", re.IGNORECASE)
_TAG = re.compile("[\U000e0000-\U000e007f]")
_FLAG_TAGS = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u180e\u2062\u2063\u2064]")
_BIDI_OVERRIDE = re.compile("[\u202d\u202e]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9_-]{16,}={0,2}")


def _ramp(count: int, low: int, high: int) -> float:
    if count <= low:
        return 0.0
    return min(1.0, (count - low) / (high - low))


def _is_emoji(char: str) -> bool:
    return unicodedata.category(char) == "So" or "\U0001f000" <= char <= "\U0001faff"


def _zero_width_count(text: str) -> int:
    """Zero-width characters, not counting a ZWJ that joins two emoji (👩‍💻)."""
    count = 0
    for m in _ZERO_WIDTH.finditer(text):
        i = m.start()
        if (m.group() == "\u200d" and 0 < i < len(text) - 1
                and _is_emoji(text[i - 1]) and _is_emoji(text[i + 1])):
            continue
        count += 1
    return count


def _readable(data: bytes) -> bool:
    """Decoded bytes that are mostly words: an encoded instruction, not an image or a key."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if len(decoded) < 16:
        return False
    letters = sum(c.isalpha() or c == " " for c in decoded)
    return letters / len(decoded) >= 0.8 and " " in decoded


def _encoded_text(text: str, min_chars: int) -> bool:
    for m in _BASE64.finditer(text):
        run = m.group()
        if len(run) < min_chars:
            continue
        # Words and identifiers are also base64 alphabet: require a mix of character kinds.
        if run.isalpha() or run.isdigit() or run.islower() or run.isupper():
            continue
        try:
            raw = base64.b64decode(run + "=" * (-len(run) % 4), altchars=b"-_"
                                   if "-" in run or "_" in run else None)
        except (binascii.Error, ValueError):
            continue
        if _readable(raw):
            return True
    return False


class StructureClassifier:
    """Seam: `async def score(text) -> {"jailbreak": score}` (computed inline)."""

    name = "structure"
    cheap = True

    def __init__(self, spec: StructureSpec) -> None:
        self.spec = spec
        self.phrases = compile_patterns(spec.phrases, ("prompt", "both"))
        self.any_phrase = any_of(self.phrases)  # one search rules out every phrase
        self.output_phrases = compile_patterns(spec.phrases, ("output", "both"))
        self.cues = compile_patterns(spec.cues, ("prompt",))
        self.any_cue = any_of(self.cues)
        self.language = LanguageCheck(spec.language) if spec.language.enabled else None

    def turns(self, text: str) -> int:
        return (len(_TURN.findall(text)) + len(_TEMPLATE_TURN.findall(text))
                + len(_MARKUP_TURN.findall(text)))

    def smuggling(self, text: str, encoded: bool = True) -> float:
        spec = self.spec
        if text.isascii():  # no tag, bidi or zero-width character: only base64 is left
            return spec.encoded_text_score if encoded and _encoded_text(
                text, spec.base64_chars) else 0.0
        tags = len(_TAG.findall(text)) - sum(len(m.group()) for m in _FLAG_TAGS.finditer(text))
        if tags >= spec.tag_chars:
            return spec.smuggling_score
        if len(_BIDI_OVERRIDE.findall(text)) >= spec.bidi_overrides:
            return spec.smuggling_score
        if _zero_width_count(text) >= spec.zero_width:
            return spec.smuggling_score
        if encoded and _encoded_text(text, spec.base64_chars):
            return spec.encoded_text_score
        return 0.0

    def cue_count(self, folded: str) -> int:
        """Distinct persona cues in the folded text."""
        if not self.cues or (self.any_cue is not None and self.any_cue.search(folded) is None):
            return 0
        return sum(1 for cue in self.cues if cue.regex.search(folded))

    def scores(self, text: PromptText) -> dict[str, float]:
        raw = text.full
        folded = fold(raw)
        phrase = match_scores(self.phrases, folded, self.any_phrase).get(JAILBREAK, 0.0)
        many_shot = _ramp(self.turns(raw), self.spec.turns_low, self.spec.turns_high)
        persona = _ramp(self.cue_count(folded), self.spec.cues_low, self.spec.cues_high)
        score = max(phrase, many_shot, persona, self.smuggling(raw))
        scores = {JAILBREAK: score} if score > 0 else {}
        if self.language is not None and self.foreign(text) is not None:
            scores[self.language.spec.category] = self.language.spec.score
        return scores

    def foreign(self, text: PromptText) -> str | None:
        """The unreadable language of the last user message, or of the whole text (a
        request in English around a long passage in another language)."""
        assert self.language is not None
        found = self.language.foreign(text.last_user) if text.last_user else None
        if found is None and text.full != text.last_user:
            found = self.language.foreign(text.full)
        return found

    def scores_output(self, raw: str, folded: str) -> dict[str, float]:
        score = max(match_scores(self.output_phrases, folded).get(JAILBREAK, 0.0),
                    self.smuggling(raw, encoded=False))
        return {JAILBREAK: score} if score > 0 else {}

    async def score(self, text: PromptText) -> dict[str, float]:
        return self.scores(text)
