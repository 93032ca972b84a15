"""The x-gateway-provenance header: sign, verify, tamper."""

from __future__ import annotations

import pytest

from gateway.pipeline.watermark.provenance import sign_provenance, verify_provenance
from tests.pipeline.watermark.helpers import KID, OTHER_SECRET, REQUEST_ID, SECRET


def test_signed_header_verifies_with_and_without_content() -> None:
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1_700_000_000.7, ["Hello.", "Hi."])
    assert value.startswith(f"v=1; rid={REQUEST_ID}; kid={KID}; t=1700000000; h=")
    result = verify_provenance(value, SECRET)
    assert result.valid
    assert result.as_json()["request_id"] == REQUEST_ID
    assert verify_provenance(value, SECRET, ["Hello.", "Hi."]).valid
    content = verify_provenance(value, SECRET, ["Hello!", "Hi."])
    assert not content.valid and "content" in (content.error or "")
    streaming = sign_provenance(SECRET, REQUEST_ID, KID, 1)
    assert "h=" not in streaming and verify_provenance(streaming, SECRET).valid


@pytest.mark.parametrize("edit", [
    lambda v: v.replace("t=1700000000", "t=1700000001"),
    lambda v: v.replace(f"kid={KID}", "kid=0000000000000000"),
    lambda v: v.replace("v=1; ", "v=1; x=2; "),
    lambda v: v[:-3] + "AAA",
    lambda v: v.split("; sig=")[0],
    lambda v: "garbage",
    lambda v: v + "; sig=again",
])
def test_tampered_values_fail(edit: object) -> None:
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1_700_000_000, ["x"])
    assert callable(edit)
    assert not verify_provenance(edit(value), SECRET).valid


def test_another_secret_fails_and_unsafe_request_ids_are_refused() -> None:
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1)
    assert not verify_provenance(value, OTHER_SECRET).valid
    with pytest.raises(ValueError):
        sign_provenance(SECRET, "a;b", KID, 1)


def test_a_header_without_a_content_hash_is_not_valid_for_a_text() -> None:
    streaming = sign_provenance(SECRET, REQUEST_ID, KID, 1)
    result = verify_provenance(streaming, SECRET, ["any text at all"])
    assert not result.valid and result.signature == "valid"
    assert result.content == "not_checked" and "not checked" in (result.error or "")
    assert result.as_json()["content"] == "not_checked"
    alone = verify_provenance(streaming, SECRET)
    assert alone.valid and (alone.signature, alone.content) == ("valid", "not_given")


def test_the_json_says_what_was_checked() -> None:
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1, ["Hello."])
    for texts, expected in ((["Hello."], (True, "valid", "match")),
                            (["Hello!"], (False, "valid", "mismatch")),
                            (None, (True, "valid", "not_given"))):
        out = verify_provenance(value, SECRET, texts).as_json()
        assert (out["valid"], out["signature"], out["content"]) == expected
    bad = verify_provenance(value, OTHER_SECRET, ["Hello."]).as_json()
    assert (bad["valid"], bad["signature"], bad["content"]) == (False, "invalid", "not_checked")
