# ruff: noqa: RUF001
"""Watermark and provenance benchmark (issue 6): `make bench-watermark`.

Part one (bench/watermark_gateway.py) sends generated responses through a real gateway
and simulator: round trip, attribution through the admin detect endpoint, and the cost on
streams against a gateway with watermarking off, in the same run.

Part two drives the output filters directly (no server) over generated responses: long, varied
prose with code blocks, JSON, lists, links, emoji (ZWJ families, flags, skin tones), RTL
(Arabic, Hebrew) and CJK, through random chunkings (streaming) and whole (non-streaming).

Reports
  - payload round trip: streamed == non-streamed, strip(marked) == original, a valid
    payload with the right key, no mark inside code/URLs/JSON;
  - excerpt attribution (50-120 words): marks intact -> payload key; marks stripped ->
    ledger; stripped and 20% of words substituted or deleted -> ledger;
  - false attribution on human text never produced here: passages from Python's own
    documentation and docstrings on disk (pydoc_data.topics, stdlib module docstrings)
    and license texts under /usr/share/common-licenses when present;
  - filter cost per chunk (p50/p99) for PayloadFilter and LedgerFilter;
  - ledger query time at --records records (synthetic fingerprints, bulk-inserted).

    python bench/watermark.py [--responses N] [--records N] [--quick]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# --------------------------------------------------------------------------- prose

_NOUNS = """system network request model server cache policy token budget limit tenant
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
reef island coast harbour lantern candle mirror window door staircase corridor garden
melody rhythm chorus verse poem novel story legend myth symbol ritual festival custom
engine piston turbine valve circuit sensor battery charger antenna satellite rocket
compiler parser lexer grammar function closure variable pointer allocator scheduler
"""

_VERBS = """builds checks compares describes explains handles improves measures observes
prepares reduces shapes tracks updates validates balances carries covers delivers drives
extends follows gathers guides holds keeps leads limits moves opens protects reaches
records repairs replaces returns reveals rewrites serves shares shifts signals splits
supports tests touches traces transforms trims turns welcomes widens yields absorbs
adjusts anchors blends borrows calms captures clears collects combines connects counts
crosses defends delays divides doubles drafts earns echoes encodes enters escapes
"""

_ADJECTIVES = """quiet careful steady bright narrow broad ancient modern gentle rapid slow
hidden visible distant local global simple complex fragile robust subtle obvious rare
common early late warm cold heavy light sharp smooth rough clear vague formal casual
brief lengthy modest generous strict flexible silent noisy humble proud eager patient
curious stubborn honest clever lucky remote central northern southern eastern western
urban rural coastal alpine tropical arid fertile barren golden silver crimson azure
"""

_ADVERBS = """quickly slowly carefully quietly openly rarely often usually gradually
suddenly firmly gently plainly roughly barely nearly mostly partly fairly deeply widely
"""
NOUNS, VERBS, ADJECTIVES, ADVERBS = (w.split() for w in (_NOUNS, _VERBS, _ADJECTIVES,
                                                          _ADVERBS))

CONNECT = ["However", "Meanwhile", "In practice", "As a result", "For example",
           "In other words", "By contrast", "Later", "At first", "Still", "Even so",
           "In the end", "On balance", "To be fair", "Above all"]

RTL = ["مرحبا بكم في المكتبة الكبيرة، حيث تجدون الكتب القديمة والجديدة.",
       "السوق مزدحم في الصباح، والناس يشترون الخبز والفاكهة.",
       "تعلم اللغة يحتاج إلى صبر ووقت وممارسة يومية.",
       "שלום לכולם, היום נדבר על ההיסטוריה של העיר העתיקה.",
       "הספרייה פתוחה בכל יום מהבוקר ועד הערב.",
       "הים היה שקט והשמש שקעה מאחורי ההרים."]

CJK = ["这个系统每天处理大量的请求，并且记录每一次访问。",
       "我们在山谷里走了很久，终于看到了远处的村庄！",
       "数据需要仔细检查，否则结果可能不准确？",
       "東京の朝はとても静かで、駅には人が少なかった。",
       "この方法は簡単ですが、注意が必要です。",
       "图书馆里有很多古老的书籍和地图。"]

EMOJI = ["👨‍👩‍👧‍👦", "🇯🇵", "🇺🇸", "👍🏽", "🧑🏿‍💻", "❤️", "🏳️‍🌈", "👩‍🔬", "✨", "🙂",
         "e\u0301", "n\u0303", "1️⃣"]


def _sentence(rng: random.Random, topic: list[str]) -> str:
    n = lambda: rng.choice(topic) if rng.random() < 0.7 else rng.choice(NOUNS)  # noqa: E731
    a, v, d = (lambda: rng.choice(ADJECTIVES)), (lambda: rng.choice(VERBS)), (
        lambda: rng.choice(ADVERBS))
    forms = [
        lambda: f"The {a()} {n()} {v()} the {n()} {d()}",
        lambda: f"Every {n()} {v()} a {a()} {n()} before the {n()} {v()} it",
        lambda: f"A {a()} {n()} rarely {v()} the {n()} of the {a()} {n()}",
        lambda: f"When the {n()} {v()} the {n()}, the {n()} {v()} {d()}",
        lambda: f"{rng.choice(CONNECT)}, the {n()} {v()} its {a()} {n()}",
        lambda: f"Nobody expected that the {n()} would {v()[:-1]} the {a()} {n()} "
                f"so {d()}",
        lambda: f"Our {n()} {v()} {d()}, and the {a()} {n()} {v()} the {n()}",
        lambda: f"Between the {n()} and the {n()} lies a {a()} {n()} that {v()} "
                f"{rng.randint(2, 999)} {n()}s",
        lambda: f"If a {n()} {v()} the {n()}, then each {a()} {n()} {v()} too",
        lambda: f"The {n()} of {rng.choice(['the', 'a', 'our', 'their'])} {n()} "
                f"{v()} the {a()} {n()} and {v()} the {n()}",
    ]
    s = rng.choice(forms)()
    s = s[0].upper() + s[1:]
    return s + rng.choice(".....!?")


def _code_block(rng: random.Random) -> str:
    name, arg = rng.choice(VERBS)[:-1], rng.choice(NOUNS)
    return (f"```python\ndef {name}_{arg}({arg}s, limit={rng.randint(2, 99)}):\n"
            f"    \"\"\"{rng.choice(ADJECTIVES).capitalize()} {arg}s, at most limit.\"\"\"\n"
            f"    out = [x for x in {arg}s if x is not None]\n    return out[:limit]\n```")


def _json_block(rng: random.Random) -> str:
    body = (f'{{"id": {rng.randint(1, 9999)}, "name": "{rng.choice(ADJECTIVES)} '
            f'{rng.choice(NOUNS)}", "tags": ["a b", "{rng.choice(NOUNS)}"]}}')
    return f"```json\n{body}\n```"


def _paragraph(rng: random.Random, topic: list[str]) -> str:
    parts = [_sentence(rng, topic) for _ in range(rng.randint(2, 6))]
    roll = rng.random()
    if roll < 0.15:
        parts.insert(rng.randrange(len(parts) + 1),
                     f"See https://example.org/{rng.choice(NOUNS)}/{rng.randint(1, 99)} "
                     f"or [the {rng.choice(NOUNS)} notes](https://docs.example.com/a b).")
    elif roll < 0.3:
        parts.insert(rng.randrange(len(parts) + 1),
                     f"Call `{rng.choice(NOUNS)}.{rng.choice(VERBS)}(x, y)` with care.")
    elif roll < 0.4:
        parts.insert(rng.randrange(len(parts) + 1),
                     f"Results {rng.choice(EMOJI)} look good {rng.choice(EMOJI)} "
                     f"for the {rng.choice(topic)} {rng.choice(EMOJI)} team.")
    return " ".join(parts)


def make_response(rng: random.Random) -> str:
    """One long, varied, Markdown-ish response."""
    topic = rng.sample(NOUNS, 12)
    blocks: list[str] = []
    for _ in range(rng.randint(3, 8)):
        roll = rng.random()
        if roll < 0.1:
            blocks.append(_code_block(rng))
        elif roll < 0.16:
            blocks.append(_json_block(rng))
        elif roll < 0.24:
            blocks.append("\n".join(f"- {_sentence(rng, topic)}" for _ in range(3)))
        elif roll < 0.3:
            blocks.append(" ".join(rng.sample(RTL, 2)))
        elif roll < 0.36:
            blocks.append("".join(rng.sample(CJK, 3)))
        else:
            blocks.append(_paragraph(rng, topic))
    if rng.random() < 0.3:
        blocks.insert(0, f"## The {rng.choice(ADJECTIVES)} {rng.choice(topic)}")
    return "\n\n".join(blocks)


# --------------------------------------------------------------------- human text

def human_passages(limit: int, rng: random.Random) -> list[str]:
    """Passages of 50-120 words of human-written text found on disk."""
    sources: list[str] = []
    import pydoc_data.topics as topics  # the Python reference manual, as text

    sources.extend(topics.topics.values())
    stdlib = Path(os.__file__).parent
    for path in sorted(stdlib.rglob("*.py")):
        if {"test", "tests", "idlelib", "site-packages"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 50:
                    sources.append(doc)
    licenses = Path("/usr/share/common-licenses")
    if licenses.is_dir():
        for path in sorted(licenses.iterdir()):
            if path.is_file():
                sources.append(path.read_text(errors="replace"))
    passages: list[str] = []
    for text in sources:
        words = text.split()
        i = 0
        while i + 50 <= len(words):
            n = rng.randint(50, 120)
            passages.append(" ".join(words[i:i + n]))
            i += n
    rng.shuffle(passages)
    return passages[:limit]


# ------------------------------------------------------------------------ helpers

import watermark_gateway as wg  # noqa: E402

from gateway.context import Principal, RequestContext  # noqa: E402
from gateway.pipeline.output import FilterChain  # noqa: E402
from gateway.pipeline.watermark import fingerprint as fp  # noqa: E402
from gateway.pipeline.watermark.detect import detect  # noqa: E402
from gateway.pipeline.watermark.filters import (  # noqa: E402
    ledger_filter,
    payload_filter,
    subject_key_id,
)
from gateway.pipeline.watermark.ledger import Ledger, Prepared, Record, SqliteStore  # noqa: E402
from gateway.pipeline.watermark.payload import (  # noqa: E402
    MARK_LEN,
    extract_payloads,
    strip_marks,
    verify,
)
from gateway.pipeline.watermark.runtime import WatermarkRuntime  # noqa: E402
from gateway.policy.spec import TierSpec  # noqa: E402

SECRET = os.urandom(32)
TIER = TierSpec(name="public", models=("*",))
_MARK_RUN = re.compile(f"[\ufe00-\ufe0f\U000e0100-\U000e01ef]{{{MARK_LEN}}}")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_INLINE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"https?://\S+")


def _chunks(text: str, rng: random.Random) -> Iterator[str]:
    """A simulated token stream: mostly 1-8 characters, sometimes bigger bursts."""
    i = 0
    while i < len(text):
        n = rng.choice((1, 2, 3, 4, 4, 5, 6, 8, 16, 40))
        yield text[i:i + n]
        i += n


def _ctx(i: int) -> RequestContext:
    return RequestContext(request_id=uuid.uuid4().hex, route="chat", body={"model": "m"},
                          model="m", principal=Principal(sub=f"user-{i}", tier="public"),
                          tier="public", tier_spec=TIER)


def _mark_offsets(out: str) -> list[int]:
    offsets, removed = [], 0
    for m in _MARK_RUN.finditer(out):
        offsets.append(m.start() - removed)
        removed += MARK_LEN
    return offsets


def _forbidden(text: str) -> list[tuple[int, int]]:
    spans = [m.span() for m in _FENCE.finditer(text)]
    spans += [m.span() for m in _INLINE.finditer(text)]
    spans += [m.span() for m in _URL.finditer(text)]
    return spans


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _prose_run(marked: str) -> list[str]:
    """The words of the longest run of consecutive prose paragraphs in a response."""
    best: list[str] = []
    run: list[str] = []
    for block in marked.split("\n\n"):
        plain = strip_marks(block)
        prose = not plain.startswith(("```", "- ", "#")) and plain.isascii()
        if prose:
            run.extend(block.split(" "))
            if len(run) > len(best):
                best = list(run)
        else:
            run = []
    return best


def _edit(words: list[str], rate: float, rng: random.Random) -> list[str]:
    vocab = NOUNS + VERBS + ADJECTIVES
    out = []
    for w in words:
        if rng.random() < rate:
            if rng.random() < 0.5:
                out.append(rng.choice(vocab))
        else:
            out.append(w)
    return out


@dataclass
class Results:
    lines: list[str] = field(default_factory=list)

    def add(self, label: str, value: str) -> None:
        self.lines.append(f"  {label:<58} {value}")
        print(self.lines[-1], flush=True)


# ---------------------------------------------------------------------- scenarios

@dataclass
class Produced:
    ctx: RequestContext
    original: str
    marked: str


async def run_filters(args: argparse.Namespace, rng: random.Random, ledger: Ledger,
                      out: Results) -> list[Produced]:
    started = time.time()
    runtime = WatermarkRuntime(SECRET, ledger, clock=lambda: started)
    produced: list[Produced] = []
    payload_ns: list[int] = []
    ledger_ns: list[int] = []
    whole_ns: list[int] = []
    ok = identical = stripped = genuine = misplaced = marks = chars = 0
    for i in range(args.responses):
        text = make_response(rng)
        ctx = _ctx(i)
        # non-streaming: one feed of the whole text, then finish
        f = payload_filter(ctx, runtime, "a1b2c3d4e5f6")
        assert f is not None
        t0 = time.perf_counter_ns()
        whole = FilterChain((f,)).apply(text)
        whole_ns.append(time.perf_counter_ns() - t0)
        # streaming: random chunks through payload then ledger, each timed
        p = payload_filter(ctx, runtime, "a1b2c3d4e5f6")
        led = ledger_filter(ctx, runtime, "a1b2c3d4e5f6")
        assert p is not None and led is not None
        pieces: list[str] = []
        for chunk in _chunks(text, rng):
            t0 = time.perf_counter_ns()
            piece = p.feed(chunk)
            t1 = time.perf_counter_ns()
            led.feed(piece)
            t2 = time.perf_counter_ns()
            payload_ns.append(t1 - t0)
            ledger_ns.append(t2 - t1)
            pieces.append(piece)
        tail = p.finish()
        led.feed(tail)
        led.finish()
        streamed = "".join(pieces) + tail
        found = extract_payloads(streamed)
        kid = subject_key_id(ctx, runtime)
        checks = (streamed == whole, strip_marks(streamed) == text,
                  len(found) == 1 and found[0].key_id == kid and verify(found[0], SECRET))
        bad = [o for o in _mark_offsets(streamed)
               if any(a < o < b for a, b in _forbidden(text))]
        identical += checks[0]
        stripped += checks[1]
        genuine += checks[2]
        misplaced += bool(bad)
        ok += all(checks) and not bad
        marks += len(_mark_offsets(streamed))
        chars += len(text)
        produced.append(Produced(ctx, text, streamed))
    n = args.responses
    out.add("responses (chars, avg)", f"{n} ({chars // n})")
    out.add("streamed == non-streamed", f"{identical}/{n}")
    out.add("strip(marked) == original", f"{stripped}/{n}")
    out.add("one genuine payload, right key", f"{genuine}/{n}")
    out.add("responses with a mark in code/inline code/URL", f"{misplaced}/{n}")
    out.add("payload round trip (all of the above)", f"{ok / n:.1%}")
    out.add("marks per 1,000 characters of text", f"{1000 * marks / chars:.2f}")
    out.add("PayloadFilter.feed per chunk p50 / p99",
            f"{_pct(payload_ns, .5) / 1e3:.1f} / {_pct(payload_ns, .99) / 1e3:.1f} us")
    out.add("LedgerFilter.feed per chunk p50 / p99",
            f"{_pct(ledger_ns, .5) / 1e3:.1f} / {_pct(ledger_ns, .99) / 1e3:.1f} us")
    out.add("PayloadFilter whole response (non-streaming) p50 / p99",
            f"{_pct(whole_ns, .5) / 1e6:.2f} / {_pct(whole_ns, .99) / 1e6:.2f} ms")
    return produced


def attribution(produced: list[Produced], ledger: Ledger, rng: random.Random,
                out: Results) -> None:
    kinds = {"marks intact -> payload": 0, "marks stripped -> ledger": 0,
             "stripped + 20% words edited -> ledger": 0}
    tried = 0
    ms: list[float] = []
    edited_scores: list[float] = []
    for item in produced:
        words = _prose_run(item.marked)
        if len(words) < 50:
            continue
        tried += 1
        n = rng.randint(50, min(120, len(words)))
        start = rng.randrange(len(words) - n + 1)
        excerpt = " ".join(words[start:start + n])
        kid = subject_key_id(item.ctx, WatermarkRuntime(SECRET))
        plain = strip_marks(excerpt)
        edited = " ".join(_edit(plain.split(), 0.2, rng))
        for label, text, source in (("marks intact -> payload", excerpt, "payload"),
                                    ("marks stripped -> ledger", plain, "ledger"),
                                    ("stripped + 20% words edited -> ledger", edited, "ledger")):
            t0 = time.perf_counter()
            report = detect(text, SECRET, ledger)
            ms.append((time.perf_counter() - t0) * 1e3)
            att = report["attribution"]
            kinds[label] += bool(att and att["source"] == source and att["key_id"] == kid)
            top = report["ledger"]["matches"][:1]
            if label.startswith("stripped +"):
                edited_scores.append(top[0]["similarity"] if top and top[0]["key_id"] == kid
                                     else 0.0)
    for label, hits in kinds.items():
        out.add(f"excerpt attribution, {label}", f"{hits}/{tried} = {hits / tried:.1%}")
    out.add("similarity of edited excerpts to their record p5 / p50",
            f"{_pct(edited_scores, .05):.3f} / {_pct(edited_scores, .5):.3f}")
    out.add("detect() per excerpt p50 / p99",
            f"{_pct(ms, .5):.1f} / {_pct(ms, .99):.1f} ms")


def false_attribution(ledger: Ledger, rng: random.Random, limit: int, out: Results) -> None:
    passages = human_passages(limit, rng)
    wrong = possible = payloads = 0
    best = 0.0
    for text in passages:
        report = detect(text, SECRET, ledger)
        wrong += report["attribution"] is not None
        payloads += bool(report["payloads"])
        matches = report["ledger"]["matches"]
        possible += bool(matches)
        if matches:
            best = max(best, matches[0]["similarity"])
    out.add("human passages (Python docs, docstrings, licences)", f"{len(passages)}")
    out.add("false attribution (any source)", f"{wrong}/{len(passages)}")
    out.add("false payloads found", f"{payloads}")
    out.add("'possible' (>= 0.2, never attributed)", f"{possible}")
    out.add("highest ledger similarity on human text", f"{best:.3f} (match >= 0.3)")


def ledger_at_scale(records: int, chunks: int, rng: random.Random, out: Results) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite3"
        store = SqliteStore(path, cache_mib=1024)
        store.open()
        ledger = Ledger(store)
        now = time.time()
        t0 = time.perf_counter()
        batch: list[Prepared] = []
        for i in range(records):
            created = now - rng.random() * 30 * 86400  # spread over 30 day tables
            rec = Record(uuid.UUID(int=rng.getrandbits(128)).hex, f"{i:016x}", "public",
                         "m", created, "v1", ())
            sigs = [os.urandom(2 * fp.PERMS) for _ in range(chunks)]
            bands = [[(b, rng.getrandbits(48)) for b in range(fp.BANDS)]
                     for _ in range(chunks)]
            batch.append(Prepared(rec, sigs, bands))
            if len(batch) == 50_000:
                store.add(batch)
                batch = []
        real = [make_response(rng) for _ in range(50)]
        store.add(batch)
        ledger.write([Record(uuid.uuid4().hex, f"real{i:012x}", "public", "m", now, "v1",
                             tuple(fp.word_hashes(t))) for i, t in enumerate(real)])
        load_s = time.perf_counter() - t0
        size = path.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("*-wal"))
        out.add("ledger records (synthetic + 50 real)",
                f"{records + 50:,} x {chunks} chunks, {records * chunks * fp.BANDS:,} band rows")
        out.add("bulk load time / file size", f"{load_s:.0f} s / {size / 2**20:.0f} MiB")
        hit_ms, miss_ms, hits = [], [], 0
        for i, text in enumerate(real):
            words = strip_marks(text).split()
            start = rng.randrange(max(1, len(words) - 60))
            t0 = time.perf_counter()
            matches = ledger.match(" ".join(words[start:start + 60]))
            hit_ms.append((time.perf_counter() - t0) * 1e3)
            hits += bool(matches and matches[0].record.key_id == f"real{i:012x}")
        for text in human_passages(50, rng):
            t0 = time.perf_counter()
            ledger.match(text)
            miss_ms.append((time.perf_counter() - t0) * 1e3)
        out.add("match() on 60-word excerpts of real records p50 / p99",
                f"{_pct(hit_ms, .5):.1f} / {_pct(hit_ms, .99):.1f} ms ({hits}/50 found)")
        out.add("match() on unrelated human text p50 / p99",
                f"{_pct(miss_ms, .5):.1f} / {_pct(miss_ms, .99):.1f} ms")
        store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", type=int, default=400)
    parser.add_argument("--ledger-extra", type=int, default=5000,
                        help="more generated responses in the ledger, as decoys")
    parser.add_argument("--human", type=int, default=3000, help="human passages to test")
    parser.add_argument("--records", type=int, default=1_000_000,
                        help="ledger size for the query-time test (0 to skip)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per synthetic record")
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gateway-responses", type=int, default=150,
                        help="responses sent through the gateway")
    parser.add_argument("--streams", type=int, default=48, help="streams for the cost test")
    parser.add_argument("--tps", type=int, default=50, help="simulated tokens/s per stream")
    args = parser.parse_args()
    if args.quick:
        args.responses, args.ledger_extra, args.human, args.records = 60, 300, 300, 20_000
        args.gateway_responses, args.streams, args.tps = 20, 8, 200
    rng = random.Random(args.seed)
    out = Results()
    print("through the gateway and the simulator:")
    gw = await wg.start_gateways()
    try:
        texts = [make_response(rng) for _ in range(args.gateway_responses)]
        sent = await wg.round_trip(gw, texts, out.add, _forbidden, _mark_offsets)
        await wg.attribution(gw, sent, rng, _prose_run, _edit, out.add)
        await wg.stream_cost(gw, args.streams, args.tps, out.add)
    finally:
        wg.stop_gateways(gw)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.sqlite(Path(tmp) / "ledger.sqlite3")
        await ledger.start()
        print("payload filter and ledger filter over simulated streams:")
        produced = await run_filters(args, rng, ledger, out)
        ledger.write([Record(uuid.uuid4().hex, f"decoy{i:011x}", "public", "m", time.time(),
                             "v1", tuple(fp.word_hashes(make_response(rng))))
                      for i in range(args.ledger_extra)])
        await ledger.flush()
        print(f"attribution ({args.responses} responses + {args.ledger_extra} decoys):")
        attribution(produced, ledger, rng, out)
        print("false attribution on human text:")
        false_attribution(ledger, rng, args.human, out)
        await ledger.close()
    if args.records:
        print("ledger at scale:")
        ledger_at_scale(args.records, args.chunks, rng, out)
    print("summary:\n" + "\n".join(out.lines))


if __name__ == "__main__":
    asyncio.run(main())
