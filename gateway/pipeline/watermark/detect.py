"""Detection: who produced this text? Payloads first, then the ledger's fingerprints.

`detect(text, secret, ledger)` returns a JSON-able report:

    result       "payload" (a genuine mark), "ledger" (a fingerprint match), "forged"
                 (marks whose signature fails, and no match), or "none"
    attribution  {"key_id", "request_id", "source"} of the best evidence, or null
    payloads     every distinct payload found: key id, request ref, time, policy ref,
                 signature "valid" or "forged", and the ledger records it points to
    ledger       ranked matches (similarity = estimated Jaccard between a 24-shingle
                 window of the text and a stored chunk) with a decision each

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

from typing import Any

from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.ledger import MATCH, POSSIBLE, Ledger, Match
from gateway.pipeline.watermark.payload import count_marks, extract_payloads, verify


def decision(similarity: float) -> str:
    if similarity >= MATCH:
        return "match"
    return "possible" if similarity >= POSSIBLE else "none"


def _match_json(m: Match) -> dict[str, Any]:
    return {**m.record.as_json(), "similarity": round(m.similarity, 4),
            "chunks_matched": m.chunks, "decision": decision(m.similarity)}


def detect(text: str, secret: bytes, ledger: Ledger | None, limit: int = 5) -> dict[str, Any]:
    """Every payload in the text and the ledger's best matches, as JSON-able data."""
    payloads: list[dict[str, Any]] = []
    attribution: dict[str, Any] | None = None
    forged = False
    for p in extract_payloads(text):
        valid = verify(p, secret)
        entry = {**p.as_json(), "signature": "valid" if valid else "forged"}
        records = ledger.lookup(p.raw[9:17]) if valid and ledger is not None else []
        entry["records"] = [r.as_json() for r in records if r.key_id == p.key_id]
        payloads.append(entry)
        forged = forged or not valid
        if valid and attribution is None:
            rid = entry["records"][0]["request_id"] if entry["records"] else None
            attribution = {"source": "payload", "key_id": p.key_id, "request_id": rid,
                           "request_ref": p.request_ref}
    report: dict[str, Any] = {"payloads": payloads, "marks": count_marks(text),
                              "words": len(fp.words(text)), "ledger": None}
    if ledger is not None:
        matches = [m for m in ledger.match(text, limit) if m.similarity >= POSSIBLE]
        report["ledger"] = {"matches": [_match_json(m) for m in matches],
                            "thresholds": {"match": MATCH, "possible": POSSIBLE}}
        if attribution is None and matches and matches[0].similarity >= MATCH:
            top = matches[0].record
            attribution = {"source": "ledger", "key_id": top.key_id,
                           "request_id": top.request_id,
                           "similarity": round(matches[0].similarity, 4)}
    if attribution is not None:
        report["result"] = attribution["source"]
    else:
        report["result"] = "forged" if forged else "none"
    report["attribution"] = attribution
    return report
