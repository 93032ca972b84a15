# ruff: noqa: RUF001
"""Long, varied prose for the `prose` sim directive (benchmarks of the output filters).

The default answer (generate.py) is a few sentences of the tokenizer's own words: right
for exact token accounting, too plain to exercise what output filters care about. Prose
mode composes Markdown-ish answers instead: a heading now and then, paragraphs of
sentences built from templates over a few hundred words (each answer leans on a topic of
its own, so answers differ as much as real ones do), bulleted lists and, when asked,
fenced code, JSON, links and inline code, emoji (ZWJ families, flags, skin tones,
combining marks), right-to-left scripts and CJK.

Like everything the simulator says it depends only on the random source it is given
(seeded from prompt, seed and choice index). The text is spelt in the tokenizer's tokens
(`Tokenizer.pieces`), so usage counts what /tokenize would count, and characters longer
than a token's bytes (emoji, most non-Latin letters) arrive across tokens, as they do
from a byte-level BPE.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.sim.tokenizer import Tokenizer


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# What `prose=a+b` may ask for on top of paragraphs, lists and headings; `prose=all` is all.
FEATURES = frozenset({"code", "json", "links", "emoji", "rtl", "cjk"})

NOUNS = _words("""system network request model server cache policy token budget limit tenant
gateway window signal pattern record ledger stream packet buffer queue worker thread
process kernel memory disk volume cluster region replica shard index table column row
query plan schedule deadline report review draft chapter section paragraph sentence
argument theory proof lemma method result sample dataset feature label metric error
failure outage incident alert dashboard chart graph trend forecast estimate margin risk
harbor river mountain valley forest meadow garden orchard village market street bridge
tower castle library museum theatre kitchen bakery recipe flavor spice harvest season
winter summer autumn spring morning evening journey voyage traveler merchant sailor
painter writer teacher student doctor nurse engineer farmer pilot captain judge lawyer
contract clause treaty border tariff currency price wage pension loan credit interest
planet comet orbit telescope galaxy nebula photon electron molecule protein enzyme cell
tissue organ muscle nerve vessel climate storm rainfall drought glacier ocean current
reef island coast harbour lantern candle mirror door staircase corridor
melody rhythm chorus verse poem novel story legend myth symbol ritual festival custom
engine piston turbine valve circuit sensor battery charger antenna satellite rocket
compiler parser lexer grammar function closure variable pointer allocator scheduler
""")

VERBS = _words("""builds checks compares describes explains handles improves measures observes
prepares reduces shapes tracks updates validates balances carries covers delivers drives
extends follows gathers guides holds keeps leads limits moves opens protects reaches
records repairs replaces returns reveals rewrites serves shares shifts signals splits
supports tests touches traces transforms trims turns welcomes widens yields absorbs
adjusts anchors blends borrows calms captures clears collects combines connects counts
crosses defends delays divides doubles drafts earns echoes encodes enters escapes
""")

ADJECTIVES = _words("""quiet careful steady bright narrow broad ancient modern gentle rapid slow
hidden visible distant local global simple complex fragile robust subtle obvious rare
common early late warm cold heavy light sharp smooth rough clear vague formal casual
brief lengthy modest generous strict flexible silent noisy humble proud eager patient
curious stubborn honest clever lucky remote central northern southern eastern western
urban rural coastal alpine tropical arid fertile barren golden silver crimson azure
""")

ADVERBS = _words("""quickly slowly carefully quietly openly rarely often usually gradually
suddenly firmly gently plainly roughly barely nearly mostly partly fairly deeply widely
""")

CONNECT = ("However", "Meanwhile", "In practice", "As a result", "For example",
           "In other words", "By contrast", "Later", "At first", "Still", "Even so",
           "In the end", "On balance", "To be fair", "Above all")

RTL = ("مرحبا بكم في المكتبة الكبيرة، حيث تجدون الكتب القديمة والجديدة.",
       "السوق مزدحم في الصباح، والناس يشترون الخبز والفاكهة.",
       "تعلم اللغة يحتاج إلى صبر ووقت وممارسة يومية.",
       "שלום לכולם, היום נדבר על ההיסטוריה של העיר העתיקה.",
       "הספרייה פתוחה בכל יום מהבוקר ועד הערב.",
       "הים היה שקט והשמש שקעה מאחורי ההרים.")

CJK = ("这个系统每天处理大量的请求，并且记录每一次访问。",
       "我们在山谷里走了很久，终于看到了远处的村庄！",
       "数据需要仔细检查，否则结果可能不准确？",
       "東京の朝はとても静かで、駅には人が少なかった。",
       "この方法は簡単ですが、注意が必要です。",
       "图书馆里有很多古老的书籍和地图。")

EMOJI = ("👨‍👩‍👧‍👦", "🇯🇵", "🇺🇸", "👍🏽", "🧑🏿‍💻", "❤️", "🏳️‍🌈", "👩‍🔬", "✨", "🙂",
         "e\u0301", "n\u0303", "1️⃣")


@dataclass(frozen=True, slots=True)
class Prose:
    """Prose answers with `features`, spelt in `tokenizer`'s tokens."""

    features: frozenset[str]
    tokenizer: Tokenizer

    def pieces(self, rng: random.Random) -> Iterator[str | None]:
        """Token texts without end; None after each whole answer, where the model may stop
        (with `ignore_eos` or `min_tokens` it goes on with another answer)."""
        separator = ""
        while True:
            yield from self.tokenizer.pieces(separator + compose(rng, self.features))
            yield None
            separator = "\n\n"


def compose(rng: random.Random, features: frozenset[str] = FEATURES) -> str:
    """One answer: an optional heading, then 3..8 blocks separated by blank lines."""
    topic = rng.sample(NOUNS, 12)
    # Block kinds by cumulative chance; a kind not asked for falls through to a paragraph.
    kinds: tuple[tuple[float, str, Callable[[], str]], ...] = (
        (0.10, "code", lambda: _code_block(rng)),
        (0.16, "json", lambda: _json_block(rng)),
        (0.24, "", lambda: "\n".join(f"- {_sentence(rng, topic)}" for _ in range(3))),
        (0.30, "rtl", lambda: " ".join(rng.sample(RTL, 2))),
        (0.36, "cjk", lambda: "".join(rng.sample(CJK, 3))),
    )
    blocks: list[str] = []
    for _ in range(rng.randint(3, 8)):
        roll = rng.random()
        block = next((make for limit, need, make in kinds
                      if roll < limit and (not need or need in features)), None)
        blocks.append(block() if block is not None else _paragraph(rng, topic, features))
    if rng.random() < 0.3:
        blocks.insert(0, f"## The {rng.choice(ADJECTIVES)} {rng.choice(topic)}")
    return "\n\n".join(blocks)


def _sentence(rng: random.Random, topic: list[str]) -> str:
    def n() -> str:  # mostly the answer's topic, sometimes any noun
        return rng.choice(topic) if rng.random() < 0.7 else rng.choice(NOUNS)

    def a() -> str:
        return rng.choice(ADJECTIVES)

    def v() -> str:
        return rng.choice(VERBS)

    def d() -> str:
        return rng.choice(ADVERBS)

    forms: tuple[Callable[[], str], ...] = (
        lambda: f"The {a()} {n()} {v()} the {n()} {d()}",
        lambda: f"Every {n()} {v()} a {a()} {n()} before the {n()} {v()} it",
        lambda: f"A {a()} {n()} rarely {v()} the {n()} of the {a()} {n()}",
        lambda: f"When the {n()} {v()} the {n()}, the {n()} {v()} {d()}",
        lambda: f"{rng.choice(CONNECT)}, the {n()} {v()} its {a()} {n()}",
        lambda: f"Nobody expected that the {n()} would {v()[:-1]} the {a()} {n()} so {d()}",
        lambda: f"Our {n()} {v()} {d()}, and the {a()} {n()} {v()} the {n()}",
        lambda: f"Between the {n()} and the {n()} lies a {a()} {n()} that {v()} "
                f"{rng.randint(2, 999)} {n()}s",
        lambda: f"If a {n()} {v()} the {n()}, then each {a()} {n()} {v()} too",
        lambda: f"The {n()} of {rng.choice(['the', 'a', 'our', 'their'])} {n()} "
                f"{v()} the {a()} {n()} and {v()} the {n()}",
    )
    text = rng.choice(forms)()
    return text[0].upper() + text[1:] + rng.choice(".....!?")


def _paragraph(rng: random.Random, topic: list[str], features: frozenset[str]) -> str:
    parts = [_sentence(rng, topic) for _ in range(rng.randint(2, 6))]
    roll = rng.random()
    extra = None
    if roll < 0.15 and "links" in features:
        extra = (f"See https://example.org/{rng.choice(NOUNS)}/{rng.randint(1, 99)} or "
                 f"[the {rng.choice(NOUNS)} notes](https://docs.example.com/a b).")
    elif 0.15 <= roll < 0.3 and "code" in features:
        extra = f"Call `{rng.choice(NOUNS)}.{rng.choice(VERBS)}(x, y)` with care."
    elif 0.3 <= roll < 0.4 and "emoji" in features:
        extra = (f"Results {rng.choice(EMOJI)} look good {rng.choice(EMOJI)} for the "
                 f"{rng.choice(topic)} {rng.choice(EMOJI)} team.")
    if extra is not None:
        parts.insert(rng.randrange(len(parts) + 1), extra)
    return " ".join(parts)


def _code_block(rng: random.Random) -> str:
    name, arg = rng.choice(VERBS)[:-1], rng.choice(NOUNS)
    return (f"```python\ndef {name}_{arg}({arg}s, limit={rng.randint(2, 99)}):\n"
            f"    \"\"\"{rng.choice(ADJECTIVES).capitalize()} {arg}s, at most limit.\"\"\"\n"
            f"    out = [x for x in {arg}s if x is not None]\n    return out[:limit]\n```")


def _json_block(rng: random.Random) -> str:
    body = (f'{{"id": {rng.randint(1, 9999)}, "name": "{rng.choice(ADJECTIVES)} '
            f'{rng.choice(NOUNS)}", "tags": ["a b", "{rng.choice(NOUNS)}"]}}')
    return f"```json\n{body}\n```"
