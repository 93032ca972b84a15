"""Typed, frozen policy specs: what the YAML means, with defaults filled in.

The loader is the only place that turns YAML into these; the hot path never sees a dict.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["allow", "flag", "block"]
MediaKind = Literal["image", "audio", "video", "file", "embeds"]


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    tokens_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class RequestCaps:
    max_tokens: int | None = None
    max_tokens_mode: Literal["clamp", "reject"] = "clamp"
    default_max_tokens: int | None = None  # used (and reserved) when the client sends none
    clamp_to_budget: bool = False  # lower max_tokens to the remaining token budget
    max_prompt_tokens: int | None = None
    max_messages: int | None = None
    max_turns: int | None = None  # many-shot guard: user turns in one conversation
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    tools: bool = False
    response_format: bool = True
    temperature: tuple[float, float] | None = None
    top_p: tuple[float, float] | None = None
    # Media the classifiers cannot read: none unless named (tier/media.py).
    media: tuple[MediaKind, ...] = ()
    media_hosts: tuple[str, ...] = ()  # host globs vLLM may fetch media URLs from


@dataclass(frozen=True, slots=True)
class SystemPromptSpec:
    mode: Literal["none", "prepend", "replace"] = "none"
    text: str = ""
    client_system: Literal["allow", "drop", "reject"] = "allow"

    @property
    def prompt_prefix(self) -> str:
        """What a completions prompt gets in front (it has no system role to carry it)."""
        return "" if self.mode == "none" else f"{self.text}\n\n"


@dataclass(frozen=True, slots=True)
class WatermarkSpec:
    payload: bool = True
    ledger: bool = True
    store_text: bool = False


@dataclass(frozen=True, slots=True)
class TierSpec:
    name: str
    models: tuple[str, ...]
    description: str = ""
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    request: RequestCaps = field(default_factory=RequestCaps)
    system_prompt: SystemPromptSpec = field(default_factory=SystemPromptSpec)
    priority: int | None = None
    cache_salt: Literal["tenant", "org", "shared"] = "tenant"
    categories: Mapping[str, Action] = field(default_factory=lambda: {"default": "block",
                                                                       "benign": "allow"})
    watermark: WatermarkSpec = field(default_factory=WatermarkSpec)
    # Keep prompt text in the audit log; the deployment's audit.store_prompts must allow it.
    store_prompts: bool = False
    _model_re: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def allows_model(self, model: str) -> bool:
        pattern = self._model_re
        if pattern is None:
            pattern = re.compile("|".join(fnmatch.translate(g) for g in self.models) or "(?!)")
            object.__setattr__(self, "_model_re", pattern)
        return pattern.match(model) is not None

    def action(self, category: str) -> Action:
        return self.categories.get(category, self.categories["default"])


@dataclass(frozen=True, slots=True)
class CategorySpec:
    name: str
    description: str
    llama_guard: tuple[str, ...] = ()
    threshold: float = 0.5


# --- classifiers (policies/classifiers.yaml, `classifiers:` section) -----------------------

Scope = Literal["prompt", "output", "both"]
OnError = Literal["open", "closed"]
EmbeddingInput = Literal["last_user", "full", "restated"]


@dataclass(frozen=True, slots=True)
class PatternSpec:
    """One regex: a rule (any category) or a structure phrase (always `jailbreak`)."""

    id: str
    category: str
    pattern: str
    score: float = 0.9
    scope: Scope = "prompt"  # prompt: requests; output: model output (moderation); both
    match_examples: tuple[str, ...] = ()
    no_match_examples: tuple[str, ...] = ()
    where: str = ""  # file:line of the pattern, for messages and test ids


@dataclass(frozen=True, slots=True)
class RulesSpec:
    enabled: bool = True
    patterns: tuple[PatternSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class LanguageSpec:
    """Text mostly in a language the classifiers cannot read (they read English): its risk
    is unknown, so it scores `category`, which each tier maps to an action."""

    enabled: bool = False
    category: str = "other_language"
    readable: tuple[str, ...] = ("en",)  # ISO 639 codes the classifiers read
    min_letters: int = 10  # shorter text is not judged (too little to tell)
    # Nor a sentence of a mixed text with fewer (letters beyond Latin count twice).
    min_segment_letters: int = 20
    # Judged foreign when the identifier's best guess is not readable, its three likeliest
    # languages have at least `min_confidence` together, and the readable languages less
    # than `max_readable`.
    min_confidence: float = 0.5
    max_readable: float = 0.02
    sample_chars: int = 1000  # longer text is judged by its first and last halves of this
    score: float = 1.0


@dataclass(frozen=True, slots=True)
class StructureSpec:
    enabled: bool = True
    turns_low: int = 8  # fake dialogue turn markers: score 0 at or below this count
    turns_high: int = 40  # ... rising linearly to 1.0 at this count
    phrases: tuple[PatternSpec, ...] = ()
    # Weak cues of a persona jailbreak, each common alone in ordinary text: the score
    # counts the distinct cues a prompt matches, 0 at or below `cues_low`, rising
    # linearly to 1.0 at `cues_high`.
    cues: tuple[PatternSpec, ...] = ()
    cues_low: int = 2
    cues_high: int = 4
    tag_chars: int = 4  # Unicode tag characters outside emoji flag sequences
    zero_width: int = 8  # zero-width characters outside emoji sequences
    bidi_overrides: int = 1  # U+202D / U+202E
    base64_chars: int = 40  # shortest base64 run that is decoded and inspected
    smuggling_score: float = 0.9
    encoded_text_score: float = 0.7  # base64 that decodes to readable text
    language: LanguageSpec = field(default_factory=LanguageSpec)


@dataclass(frozen=True, slots=True)
class EmbeddingSpec:
    enabled: bool = False
    optional: bool = True  # missing `ml` extra: skip with a warning instead of failing
    head: str | None = None  # head weights JSON; None: the one shipped with the package
    max_tokens: int = 128  # longer text keeps its first and last tokens (and see below)
    # Longer text is also read in overlapping windows of `window_tokens`: the static head
    # screens them all, the model reads those it is unsure of, most suspicious first, at
    # most `max_windows` of them. 0: no windows (the shipped head misreads fragments of
    # long benign text; see policies/classifiers.yaml).
    window_tokens: int = 64
    max_windows: int = 0
    inputs: tuple[EmbeddingInput, ...] = ("last_user", "full")
    timeout_s: float = 1.0
    on_error: OnError = "open"
    # The fast static head decides alone when its P(harm) is outside [low, high]; inside,
    # the contextual model decides. (0.5, 0.5): static only; (0, 1): always the model.
    contextual_band: tuple[float, float] = (0.2, 0.9)
    # Then the static head's answer stands; with overlap, counted from the answer's
    # readiness (budget.py).
    contextual_timeout_s: float = 0.05
    # The model's linear layers in int8 (embedding.py): 2-3x less CPU per prompt, the
    # shipped head's held-out F1 a little lower (policies/classifiers.yaml).
    int8: bool = False


@dataclass(frozen=True, slots=True)
class GuardSpec:
    enabled: bool = False
    url: str = ""
    model: str = ""
    api: Literal["completions", "chat"] = "completions"
    timeout_s: float = 2.0
    on_error: OnError = "open"
    max_chars: int = 24000  # longer text is cut in the middle before it is sent


@dataclass(frozen=True, slots=True)
class ModerationSpec:
    enabled: bool = True
    tiers: tuple[str, ...] | None = None  # None: every tier
    structure: bool = True  # smuggling and output-scoped phrases, besides output rules
    margin: int = 32  # context each side of a match that a pattern may look at


MAX_CLASSIFIED_CHARS = 65536
# Every chat role a caller can send: all of them are rendered into the model's prompt.
CALLER_ROLES = ("user", "system", "developer", "assistant", "tool", "function")


@dataclass(frozen=True, slots=True)
class ClassifiersSpec:
    roles: tuple[str, ...] = CALLER_ROLES  # chat roles whose text is classified
    # Longer text is classified by its first and last halves of this many characters: the
    # rules run on the event loop at about a microsecond per character, and a 4 MB prompt
    # would hold it for seconds. Tiers with a prompt cap stay well under it.
    max_chars: int = MAX_CLASSIFIED_CHARS
    unverified_category: str = "unverified"  # what fail-closed errors score 1.0 on
    # The expensive classifiers' time overlaps the upstream's: the request is forwarded
    # while they run and nothing of the answer leaves before their verdict (a block
    # cancels the generation). False: the upstream sees only prompts already allowed.
    overlap: bool = True
    rules: RulesSpec = field(default_factory=RulesSpec)
    structure: StructureSpec = field(default_factory=StructureSpec)
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    guard: GuardSpec = field(default_factory=GuardSpec)
    moderation: ModerationSpec = field(default_factory=ModerationSpec)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    tiers: Mapping[str, TierSpec]
    # Overrides keep only the fields they set; the rest come from the tier.
    subject_limits: Mapping[str, Mapping[str, int | None]] = field(default_factory=dict)
    org_limits: Mapping[str, Mapping[str, int | None]] = field(default_factory=dict)
    categories: Mapping[str, CategorySpec] = field(default_factory=dict)
    classifiers: ClassifiersSpec = field(default_factory=ClassifiersSpec)
    digest: str = ""  # sha256 over the files' bytes: the policy version
    files: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        return self.digest[:12]

    def limits_for(self, tier: TierSpec, sub: str, org: str | None) -> LimitsSpec:
        """The tier's limits with the org's, then the subject's, overrides applied."""
        limits = tier.limits
        if org is not None and org in self.org_limits:
            limits = dataclasses.replace(limits, **self.org_limits[org])
        if sub in self.subject_limits:
            limits = dataclasses.replace(limits, **self.subject_limits[sub])
        return limits
