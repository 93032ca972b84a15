"""Detection: who produced this text? Payloads first, then the ledger's fingerprints.

`detect(text, secret, ledger)` returns a JSON-able report:

    result       "payload" (a genuine mark, backed by the ledger or no ledger to ask),
                 "payload_unconfirmed" (genuine marks, none backed by the ledger: see
                 below), "ledger" (a fingerprint match), "ambiguous" (fingerprint
                 matches to several keys that explain the text equally well: the same
                 text, or the same boilerplate, was produced for each; no key is named),
                 "forged" (marks whose signature fails, and no match), or "none"
    reason       one sentence for a human: why this result
    attribution  {"key_id", "request_id", "source", ...} of the best evidence, or null;
                 from a payload it also says "corroborated" (true: the ledger holds the
                 payload's request and the text matches that request's output)
    payloads     every distinct payload found: key id, request ref, time, policy ref,
                 signature "valid" or "forged", the ledger records it points to, and for a
                 valid one "corroborated" and "ledger_check" {"status", "similarity",
                 "coverage"}, status "match", "mismatch", "too_short", "not_found" or
                 "no_ledger"
    ledger       ranked matches (similarity = estimated Jaccard between a 24-shingle
                 window of the text and a stored chunk; coverage = the share of the
                 text's windows that score MATCH against one of the record's chunks,
                 among those sharing an LSH band with it) with a decision each, and for
                 "ambiguous" the candidates (one per key)

A ledger match names a key only when it explains the text better than any other key's
records: ranked by coverage, then similarity. A passage shared by several answers (a
closing line, a filler sentence) matches each of them; what the text has beyond it
decides, and when nothing does (identical answers to the same prompt) the result is
"ambiguous": the ledger cannot tell which of those keys leaked it, and never picks one by
age or order.

A payload is not bound to the text around it: its run of invisible characters can be cut
from one answer and pasted into any text. So a payload only attributes the text when the
ledger agrees: the ledger holds the request the payload names (same key), and the text
matches that request's output (some window of it scores MATCH against the record's
chunks; `coverage` is the share of windows that do, so a quote inside other text shows
as such). When the ledger has no such request, or the text does not match it, the
result is "payload_unconfirmed", the payload's key is not named in the attribution, and
a ledger match to another record (if any) is the attribution instead. Without a ledger
nothing can be checked: the result stays "payload" with "corroborated": false.

Calibration of the ledger decision. The score is the share of 64 MinHash values two
windows of ~25 words have in common. For text the gateway never produced, what two
windows share is a few common word pairs ("of the", "if the"), so the true Jaccard is
mostly under 0.05; the estimate's standard error there is ≤ 0.03, and reaching
MATCH = 0.3 by chance (19 of 64 values at J = 0.05) has probability ~1e-7 per pair.
Text that really shares phrasing (code idioms, licence boilerplate) scores higher: over
3,000 human passages (Python documentation, docstrings, licences) against the bench's
ledger of 5,400 generated responses the highest score seen was 0.20-0.22 (0 of 3,000
attributed), so MATCH = 0.3 keeps a margin above the worst human text observed, while
an excerpt with a fifth of its words substituted or deleted still scores 0.61 on median
(5th percentile 0.33) against its own record. Scores in [POSSIBLE, MATCH) are reported
as "possible" and never attribute. bench/watermark.py re-measures all of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.ledger import MATCH, POSSIBLE, Ledger, Match, Stored
from gateway.pipeline.watermark.payload import Payload, count_marks, extract_payloads, verify

_COPIED = "the payload could have been copied from other text"
CANDIDATES = 50  # ledger matches weighed before naming a key (at least `limit`)
# Two keys whose best records are this close in coverage and similarity explain the text
# equally well: a MinHash estimate of 64 values has a standard error of up to 0.06.
TIE = 0.06


def decision(similarity: float) -> str:
    if similarity >= MATCH:
        return "match"
    return "possible" if similarity >= POSSIBLE else "none"


def _match_json(m: Match) -> dict[str, Any]:
    return {**m.record.as_json(), "similarity": round(m.similarity, 4),
            "coverage": round(m.coverage, 4), "chunks_matched": m.chunks,
            "decision": decision(m.similarity)}


def _ranked(ledger: Ledger, windows: Sequence[tuple[int, ...]], limit: int) -> list[Match]:
    """Ledger matches, the best explanation of the text (coverage, then similarity) first."""
    found = [m for m in ledger.match_signatures(windows, max(limit, CANDIDATES))
             if m.similarity >= POSSIBLE]
    return sorted(found, key=lambda m: (m.coverage, m.similarity), reverse=True)


def _rivals(ranked: list[Match]) -> list[Match]:
    """The best match of each key that explains the text as well as the top one."""
    if not ranked or ranked[0].similarity < MATCH:
        return []
    top = ranked[0]
    best: dict[str, Match] = {}
    for m in ranked:
        if (m.similarity >= MATCH and m.coverage >= top.coverage - TIE
                and m.similarity >= top.similarity - TIE):
            best.setdefault(m.record.key_id, m)
    return list(best.values())


def _check(ledger: Ledger | None, windows: Sequence[tuple[int, ...]], shingles: int,
           records: list[Stored]) -> tuple[dict[str, Any], Stored | None]:
    """The ledger's word on one valid payload, and the record that backs it (if any)."""
    if ledger is None:
        return {"status": "no_ledger", "similarity": None, "coverage": None}, None
    best: tuple[float, float, Stored] | None = None
    for record in records:
        scores = ledger.compare(windows, record)
        if scores is None:
            continue  # the record's fingerprints are gone (retention)
        top = max(scores, default=0.0)
        coverage = sum(s >= MATCH for s in scores) / len(scores) if scores else 0.0
        if best is None or (top, coverage) > best[:2]:
            best = (top, coverage, record)
    if best is None:
        return {"status": "not_found", "similarity": None, "coverage": None}, None
    top, coverage, record = best
    check = {"status": "match", "similarity": round(top, 4), "coverage": round(coverage, 4),
             "request_id": record.request_id}
    if top >= MATCH:
        return check, record
    # A text shorter than a chunk can reach only shingles/chunk-size, even verbatim.
    chunk = min(fp.CHUNK, max(1, record.words - 1))
    check["status"] = "too_short" if shingles / chunk < MATCH else "mismatch"
    return check, None


def _describe(p: Payload, check: dict[str, Any]) -> str:
    """Why a genuine payload does not attribute the text: what the mark claims, and why
    the ledger does not back the claim (the key is the mark's word, not an attribution)."""
    claim = (f"a mark claims request {check.get('request_id') or p.request_ref} of key "
             f"{p.key_id}, unconfirmed")
    status = check["status"]
    if status == "not_found":
        return (f"{claim}: the ledger holds no such request (not written yet if it ended "
                f"under a second ago, purged, kept out of the ledger, or {_COPIED})")
    if status == "too_short":
        return (f"{claim}: the text is too short to check against that request's output "
                f"(similarity {check['similarity']}), and {_COPIED}")
    return (f"{claim}: the text does not match that request's output (similarity "
            f"{check['similarity']} < {MATCH}), and {_COPIED}")


def detect(text: str, secret: bytes, ledger: Ledger | None, limit: int = 5) -> dict[str, Any]:
    """Every payload in the text and the ledger's best matches, as JSON-able data."""
    hashes = fp.word_hashes(text)
    windows = fp.query_signatures(hashes) if ledger is not None else []
    shingles = len(fp.shingles(hashes))
    payloads: list[dict[str, Any]] = []
    attribution: dict[str, Any] | None = None
    forged = False
    unconfirmed: list[str] = []
    for p in extract_payloads(text):
        valid = verify(p, secret)
        entry = {**p.as_json(), "signature": "valid" if valid else "forged"}
        records = ledger.lookup(p.raw[9:17]) if valid and ledger is not None else []
        records = [r for r in records if r.key_id == p.key_id]
        entry["records"] = [r.as_json() for r in records]
        forged = forged or not valid
        entry["corroborated"] = False
        if valid:
            check, backing = _check(ledger, windows, shingles, records)
            entry["ledger_check"] = check
            entry["corroborated"] = backing is not None
            if backing is None and ledger is not None:
                unconfirmed.append(_describe(p, check))
            elif attribution is None:
                rid = backing.request_id if backing is not None else (
                    records[0].request_id if records else None)
                attribution = {"source": "payload", "key_id": p.key_id, "request_id": rid,
                               "request_ref": p.request_ref,
                               "corroborated": backing is not None}
                if backing is not None:
                    attribution.update(similarity=check["similarity"],
                                       coverage=check["coverage"])
        payloads.append(entry)
    report: dict[str, Any] = {"payloads": payloads, "marks": count_marks(text),
                              "words": len(hashes), "ledger": None}
    ranked: list[Match] = []
    rivals: list[Match] = []
    if ledger is not None:
        ranked = _ranked(ledger, windows, limit)
        rivals = _rivals(ranked)
        report["ledger"] = {"matches": [_match_json(m) for m in ranked[:limit]],
                            "thresholds": {"match": MATCH, "possible": POSSIBLE}}
        if len(rivals) > 1:
            report["ledger"]["candidates"] = [_match_json(m) for m in rivals]
        if attribution is None and len(rivals) == 1:
            (top,) = rivals
            attribution = {"source": "ledger", "key_id": top.record.key_id,
                           "request_id": top.record.request_id,
                           "similarity": round(top.similarity, 4),
                           "coverage": round(top.coverage, 4)}
    others = len({m.record.key_id for m in ranked if m.similarity >= MATCH}
                 - {attribution["key_id"] if attribution is not None else ""})
    report["result"], report["reason"] = _result(attribution, forged, unconfirmed, others,
                                                 len(rivals))
    report["attribution"] = attribution
    return report


def _result(attribution: dict[str, Any] | None, forged: bool, unconfirmed: list[str],
            others: int, tied: int) -> tuple[str, str]:
    source = attribution["source"] if attribution is not None else None
    if source == "payload" and attribution is not None:
        if not attribution["corroborated"]:
            return "payload", (f"a genuine payload of key {attribution['key_id']}, not "
                               f"checked against a ledger (none available): {_COPIED}")
        reason = (f"a genuine payload of key {attribution['key_id']}, and the text matches "
                  f"its request's output in the ledger")
        if others:
            reason += (f"; the ledger matches it to {others} other key(s) too (the same text "
                       "was produced for them)")
        if unconfirmed:
            reason += "; another payload is not backed by the ledger: " + unconfirmed[0]
        return "payload", reason
    ambiguous = (f"the ledger matches the text equally well to the output of {tied} keys "
                 "(the same text was produced for each; see ledger.candidates): it cannot "
                 "say which one this copy came from")
    if unconfirmed:
        reason = unconfirmed[0]
        if attribution is not None:
            reason += (f"; the ledger matches the text to request "
                       f"{attribution['request_id']} of key {attribution['key_id']} "
                       f"(similarity {attribution['similarity']})")
        elif tied > 1:
            reason += "; " + ambiguous
        return "payload_unconfirmed", reason
    if source == "ledger" and attribution is not None:
        return "ledger", (f"no genuine payload; the ledger matches the text to request "
                          f"{attribution['request_id']} of key {attribution['key_id']} "
                          f"(similarity {attribution['similarity']}, "
                          f"{attribution['coverage']:.0%} of the text)")
    if tied > 1:
        return "ambiguous", "no genuine payload; " + ambiguous
    if forged:
        return "forged", "marks whose signature fails (not made with this secret), no match"
    return "none", "no genuine payload and no ledger match"
