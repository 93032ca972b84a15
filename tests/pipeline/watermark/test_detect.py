"""detect(): payloads, forgeries, ledger matches and the calibrated decision."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.detect import detect
from gateway.pipeline.watermark.ledger import Ledger, Record
from gateway.pipeline.watermark.payload import encode_mark, make_payload, strip_marks
from tests.pipeline.watermark.helpers import (
    KID,
    OTHER_SECRET,
    REQUEST_ID,
    SECRET,
    edit_words,
    make_texts,
    run_filter,
)

TEXTS = make_texts(10, seed=3)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger.sqlite(tmp_path / "ledger.sqlite3")
    led.open()
    led.write([Record(REQUEST_ID if i == 0 else f"{i:032x}", KID if i == 0 else f"{i:016x}",
                      "public", "m", 1_750_000_000.0, "v1", tuple(fp.word_hashes(t)))
               for i, t in enumerate(TEXTS)])
    yield led
    led.store.close()


def test_marked_excerpt_is_attributed_by_its_payload(ledger: Ledger) -> None:
    marked, _ = run_filter(TEXTS[0])
    report = detect(" ".join(marked.split(" ")[10:70]), SECRET, ledger)
    assert report["result"] == "payload"
    assert report["attribution"]["key_id"] == KID
    assert report["attribution"]["request_id"] == REQUEST_ID
    (payload,) = report["payloads"]
    assert payload["signature"] == "valid" and payload["records"][0]["tier"] == "public"
    assert report["ledger"]["matches"][0]["decision"] == "match"
    orjson.dumps(report)  # JSON-able


def test_stripped_and_edited_text_is_attributed_by_the_ledger(ledger: Ledger) -> None:
    marked, _ = run_filter(TEXTS[0])
    for text in (strip_marks(marked), edit_words(strip_marks(marked), 0.2, seed=4)):
        report = detect(text, SECRET, ledger)
        assert report["result"] == "ledger"
        assert report["payloads"] == [] and report["marks"] == 0
        assert report["attribution"]["key_id"] == KID


def test_a_forged_mark_is_reported_as_forged(ledger: Ledger) -> None:
    forged = encode_mark(make_payload(OTHER_SECRET, KID, REQUEST_ID, 1, "v"))
    report = detect("Someone else wrote " + forged + "this sentence.", SECRET, ledger)
    assert report["result"] == "forged" and report["attribution"] is None
    assert report["payloads"][0]["signature"] == "forged"
    assert report["payloads"][0]["records"] == []


def test_unrelated_text_is_not_attributed(ledger: Ledger) -> None:
    for text in make_texts(5, seed=77):
        report = detect(text, SECRET, ledger)
        assert report["result"] == "none" and report["attribution"] is None
        assert all(m["decision"] != "match" for m in report["ledger"]["matches"])


def test_without_a_ledger_only_payloads_count() -> None:
    marked, _ = run_filter(TEXTS[0])
    assert detect(marked, SECRET, None)["result"] == "payload"
    report = detect(strip_marks(marked), SECRET, None)
    assert report["result"] == "none" and report["ledger"] is None
