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
    MARK,
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
    assert payload["corroborated"] is True and payload["ledger_check"]["status"] == "match"
    assert report["attribution"]["corroborated"] is True
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


# ------------------------------------------- a payload attributes only the text it came with
# QA round 4b: a genuine mark cut from key A's answer and pasted into other text made
# detect name key A. Now the ledger must hold the payload's request and the text must
# match that request's output; otherwise the result says so and A is not named.

def test_a_copied_payload_in_made_up_text_is_not_attributed(ledger: Ledger) -> None:
    made_up = ("I, the holder of this key, wrote this threatening letter myself "
               + MARK + "and I sign it.")
    report = detect(made_up, SECRET, ledger)
    assert report["result"] == "payload_unconfirmed" and report["attribution"] is None
    (payload,) = report["payloads"]
    assert payload["signature"] == "valid" and payload["key_id"] == KID
    assert payload["corroborated"] is False
    assert payload["ledger_check"]["status"] == "mismatch"
    assert payload["ledger_check"]["request_id"] == REQUEST_ID
    assert "does not match" in report["reason"] and "copied" in report["reason"]


def test_a_payload_spliced_into_another_keys_output_names_the_ledger_match(
        ledger: Ledger) -> None:
    words = TEXTS[1].split(" ")
    spliced = " ".join(words[:30]) + " " + MARK + " ".join(words[30:])
    report = detect(spliced, SECRET, ledger)
    assert report["result"] == "payload_unconfirmed"
    coverage = report["attribution"].pop("coverage")
    assert report["attribution"] == {"source": "ledger", "key_id": f"{1:016x}",
                                     "request_id": f"{1:032x}", "similarity": 1.0}
    assert coverage > 0.9  # the windows sharing an LSH band with the record (an estimate)
    assert report["payloads"][0]["ledger_check"]["status"] == "mismatch"
    assert f"of key {1:016x}" in report["reason"] and f"key {KID}" in report["reason"]


def test_a_payload_whose_request_the_ledger_lacks_is_not_attributed(ledger: Ledger) -> None:
    unknown = encode_mark(make_payload(SECRET, KID, "f" * 32, 1_750_000_000, "v1"))
    words = TEXTS[0].split(" ")
    report = detect(" ".join(words[:40]) + " " + unknown + " ".join(words[40:80]),
                    SECRET, ledger)
    assert report["result"] == "payload_unconfirmed"
    assert report["payloads"][0]["ledger_check"]["status"] == "not_found"
    assert report["payloads"][0]["records"] == []
    assert "holds no such request" in report["reason"]
    # The ledger still knows whose words these are: its match is the attribution.
    assert report["attribution"]["source"] == "ledger"
    assert report["attribution"]["key_id"] == KID


def test_a_quote_too_short_to_check_is_not_attributed(ledger: Ledger) -> None:
    marked, _ = run_filter(TEXTS[0])
    quote = " ".join(marked.split(" ")[:5])
    report = detect(quote, SECRET, ledger)
    assert report["payloads"][0]["signature"] == "valid"
    assert report["result"] == "payload_unconfirmed" and report["attribution"] is None
    assert report["payloads"][0]["ledger_check"]["status"] == "too_short"


def test_a_genuine_excerpt_inside_other_text_is_attributed_with_its_coverage(
        ledger: Ledger) -> None:
    marked, _ = run_filter(TEXTS[0])
    excerpt = " ".join(marked.split(" ")[:60])
    report = detect(excerpt + " " + make_texts(1, seed=99, words=200)[0], SECRET, ledger)
    assert report["result"] == "payload"
    att = report["attribution"]
    assert att["key_id"] == KID and att["corroborated"] is True and att["similarity"] == 1.0
    assert 0.05 < att["coverage"] < 0.5  # only the quoted part is the key's output
    whole = detect(marked, SECRET, ledger)["attribution"]
    assert whole["coverage"] == 1.0


def test_any_choice_of_the_payloads_request_corroborates(tmp_path: Path) -> None:
    led = Ledger.sqlite(tmp_path / "ledger.sqlite3")
    led.open()
    led.write([Record(REQUEST_ID, KID, "public", "m", 1.75e9, "v1", tuple(fp.word_hashes(t)))
               for t in TEXTS[:3]])  # n=3: one record per choice, one request id
    marked, _ = run_filter(TEXTS[2])
    report = detect(marked, SECRET, led)
    led.store.close()
    assert report["result"] == "payload" and report["attribution"]["corroborated"]
    assert len(report["payloads"][0]["records"]) == 3


def test_without_a_ledger_a_payload_says_it_is_uncorroborated() -> None:
    made_up = "Made-up words around " + MARK + "a copied mark."
    report = detect(made_up, SECRET, None)
    assert report["result"] == "payload"
    assert report["attribution"]["corroborated"] is False
    assert report["payloads"][0]["ledger_check"]["status"] == "no_ledger"
    assert "copied" in report["reason"]


def _ledger_of(tmp_path: Path, answers: list[tuple[str, str]]) -> Ledger:
    """A ledger holding (key id, text) answers, oldest first."""
    led = Ledger.sqlite(tmp_path / "ledger.sqlite3")
    led.open()
    led.write([Record(f"{i:032x}", key, "public", "m", 1.75e9 + i, "v1",
                      tuple(fp.word_hashes(text))) for i, (key, text) in enumerate(answers)])
    return led


def test_the_same_text_served_to_several_keys_is_ambiguous(tmp_path: Path) -> None:
    """Found by a black-box check: identical answers to one prompt were pinned on the
    earliest key (8 of 12 copies named the wrong subject), and with `limit` 5 the real
    one could drop off the list. No key may be named on a tie."""
    text = TEXTS[0]
    keys = ["a" * 16, "b" * 16, "c" * 16]
    led = _ledger_of(tmp_path, [(key, text) for key in keys for _ in range(2)])
    try:
        report = detect(text, SECRET, led, limit=1)
    finally:
        led.store.close()
    assert report["result"] == "ambiguous" and report["attribution"] is None
    assert sorted(c["key_id"] for c in report["ledger"]["candidates"]) == keys
    assert "3 keys" in report["reason"]
    assert len(report["ledger"]["matches"]) == 1


def test_the_key_whose_answer_explains_the_text_is_named_not_the_oldest(
        tmp_path: Path) -> None:
    """Two answers share a passage (boilerplate); an excerpt that also holds a sentence
    only bob's answer has was attributed to alice, whose record is older."""
    shared, alice_own, bob_own = make_texts(3, seed=5, words=40)
    led = _ledger_of(tmp_path, [("a" * 16, f"{shared} {alice_own}"),
                                ("b" * 16, f"{shared} {bob_own}")])
    try:
        report = detect(f"{shared} {bob_own}", SECRET, led)
        only_shared = detect(shared, SECRET, led)
    finally:
        led.store.close()
    assert report["result"] == "ledger" and report["attribution"]["key_id"] == "b" * 16
    assert report["attribution"]["coverage"] > report["ledger"]["matches"][1]["coverage"]
    assert only_shared["result"] == "ambiguous" and only_shared["attribution"] is None
