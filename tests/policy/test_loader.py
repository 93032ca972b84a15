"""Policy validation: every error names file, line and key; the shipped policies are valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.loader import PolicyError, load_policy
from tests.conftest import ROOT, edited_policies
from tests.test_yamlfile import alias_bomb

GOOD = """\
tiers:
  basic:
    models: ["small-*"]
    limits: {requests_per_minute: 5}
    request: {max_tokens: 100}
overrides:
  subjects:
    alice: {limits: {requests_per_minute: 50}}
  orgs:
    acme: {limits: {requests_per_minute: 10, tokens_per_day: null}}
"""


def _write(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_shipped_policies_are_valid() -> None:
    policy = load_policy(ROOT / "policies")
    assert set(policy.tiers) == {"public", "verified", "research", "trusted"}
    assert policy.tiers["public"].allows_model("sim-llama-3-8b-instruct")
    assert not policy.tiers["public"].allows_model("llama-3-70b-instruct")
    assert len(policy.version) == 12
    assert policy.classifiers.max_chars == 65536


def test_overrides_merge_over_tier_limits(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, **{"t.yaml": GOOD}))
    tier = policy.tiers["basic"]
    assert policy.limits_for(tier, "bob", None).requests_per_minute == 5
    assert policy.limits_for(tier, "bob", "acme").requests_per_minute == 10
    assert policy.limits_for(tier, "alice", "acme").requests_per_minute == 50


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tiers:\n  basic:\n    models: [x]\n    limitz: {}\n",
         "t.yaml:2: tiers.basic: unknown key limitz"),
        ("tiers:\n  basic:\n    models: [x]\n    limits:\n      requests_per_minute: lots\n",
         "t.yaml:5: tiers.basic.limits.requests_per_minute: 'lots' is not of type"),
        ("tiers:\n  basic:\n    models: [x]\n    request: {max_tokens_mode: maybe}\n",
         "t.yaml:4: tiers.basic.request.max_tokens_mode: 'maybe' is not one of"),
        ("tiers:\n  basic:\n    limits: {}\n", "t.yaml:2: tiers.basic: 'models' is a required"),
        ("tiers:\n  Bad Name:\n    models: [x]\n", "t.yaml:1: tiers: 'Bad Name' does not match"),
        ("tiers:\n  basic:\n    models: ['[x']\n", "t.yaml:3: tiers.basic.models.0: bad glob"),
        ("tiers: [1\n", "t.yaml:2: invalid YAML"),
        ("", "t.yaml:1: empty policy file"),
        ("tiers:\n  basic:\n    models: [x]\n    categories: {benign: allow}\n",
         "t.yaml:4: tiers.basic.categories: 'default' is a required"),
        ("classifiers:\n  embedding:\n    contextual_band: [0.9, 0.1]\n",
         "t.yaml:3: classifiers.embedding.contextual_band: low must not exceed high"),
        ("classifiers:\n  embedding:\n    contextual_band: [0.2]\n",
         "t.yaml:3: classifiers.embedding.contextual_band: [0.2] is too short"),
        ("classifiers:\n  structure:\n    cues: {low: 3, high: 3}\n",
         "t.yaml:3: classifiers.structure.cues: low must be below high"),
        ("classifiers:\n  structure:\n    cues:\n      patterns:\n        - {id: x, pattern: a, "
         "score: 1}\n",
         "t.yaml:5: classifiers.structure.cues.patterns.0: unknown key score"),
        ("classifiers:\n  max_chars: 100\n",
         "t.yaml:2: classifiers.max_chars: 100 is less than the minimum of 1024"),
        ("tiers:\n  basic:\n    models: [x]\n    request: {temperature: [2, 1]}\n",
         "t.yaml:4: tiers.basic.request.temperature: low must not exceed high (2 > 1)"),
        ("tiers:\n  basic:\n    models: [x]\n    request:\n      top_p: [0.9, 0.1]\n",
         "t.yaml:5: tiers.basic.request.top_p: low must not exceed high"),
        ("tiers:\n  basic:\n    models: [x]\n    request:\n      max_tokens: 100\n"
         "      default_max_tokens: 200\n",
         "t.yaml:6: tiers.basic.request.default_max_tokens: 200 is more than max_tokens (100)"),
        ("tiers:\n  basic:\n    models: [x]\n    limits: {requests_per_minute: 0}\n",
         "t.yaml:4: tiers.basic.limits.requests_per_minute: 0 is not a limit: use a positive "
         "number, or null (or leave it out) for none"),
        ("tiers:\n  basic:\n    models: [x]\n    limits:\n      tokens_per_day: 0\n",
         "t.yaml:5: tiers.basic.limits.tokens_per_day: 0 is not a limit"),
        ("tiers:\n  basic:\n    models: [x]\n    request: {max_messages: 0}\n",
         "t.yaml:4: tiers.basic.request.max_messages: 0 is not a limit"),
        ("tiers:\n  basic:\n    models: [x]\noverrides:\n  orgs:\n"
         "    acme: {limits: {concurrent_requests: 0}}\n",
         "t.yaml:6: overrides.orgs.acme.limits.concurrent_requests: 0 is not a limit"),
        ("tiers:\n  basic:\n    models: [x]\n    request: {media: [image, pictures]}\n",
         "t.yaml:4: tiers.basic.request.media.1: 'pictures' is not one of"),
        ("tiers:\n  basic:\n    models: [x]\n    request: {media_hosts: ['a.com/x']}\n",
         "t.yaml:4: tiers.basic.request.media_hosts.0: 'a.com/x' does not match"),
        ("tiers:\n  basic:\n    models: [x]\n    limits: {requests_per_minute: 5}\n"
         "    limits: {requests_per_minute: 50}\n",
         "t.yaml:5: tiers.basic.limits: duplicate key (first written on line 4)"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    _write(tmp_path, **{"t.yaml": text})
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert any(expected in e.replace(str(tmp_path) + "/", "") for e in info.value.errors), \
        info.value.errors


def test_unknown_category_reference(tmp_path: Path) -> None:
    _write(tmp_path, **{
        "c.yaml": "categories:\n  cyber: {description: Malware and intrusion}\n",
        "t.yaml": "tiers:\n  basic:\n    models: [x]\n    categories:\n"
                  "      default: block\n      cybr: allow\n"})
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert any("t.yaml:6: tiers.basic.categories.cybr: unknown category" in e
               for e in info.value.errors)


def test_tier_defined_twice_and_all_errors_reported(tmp_path: Path) -> None:
    _write(tmp_path, **{"a.yaml": "tiers:\n  basic:\n    models: [x]\n",
                        "b.yaml": "tiers:\n  basic:\n    models: [y]\n",
                        "c.yaml": "tiers:\n  other:\n    modelz: [y]\n"})
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    errors = [e.replace(str(tmp_path) + "/", "") for e in info.value.errors]
    assert any(e.startswith("b.yaml:2: tiers.basic: already defined in") for e in errors)
    assert any(e.startswith("c.yaml:2: tiers.other:") for e in errors)


def test_digest_changes_with_content(tmp_path: Path) -> None:
    first = load_policy(_write(tmp_path, **{"t.yaml": GOOD})).digest
    (tmp_path / "t.yaml").write_text(GOOD.replace("100", "101"))
    assert load_policy(tmp_path).digest != first


def test_anchors_and_merge_keys_share_settings_between_tiers(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, **{"t.yaml": """\
tiers:
  basic: &basic
    models: ["small-*"]
    limits: &limits {requests_per_minute: 5, tokens_per_day: 1000}
    request: {max_tokens: 100}
  plus:
    <<: *basic
    limits: {<<: *limits, requests_per_minute: 50}
"""}))
    plus = policy.tiers["plus"]
    assert plus.allows_model("small-1") and plus.request.max_tokens == 100
    assert (plus.limits.requests_per_minute, plus.limits.tokens_per_day) == (50, 1000)
    assert policy.tiers["basic"].limits.requests_per_minute == 5


def test_alias_bomb_is_an_error_at_its_line(tmp_path: Path) -> None:
    good = (ROOT / "policies" / "tiers.yaml").read_text()
    _write(tmp_path, **{"tiers.yaml": alias_bomb(6) + good})
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    errors = [e.replace(str(tmp_path) + "/", "") for e in info.value.errors]
    assert len(errors) == 1 and errors[0].startswith("tiers.yaml:5: aliases expand"), errors


def test_a_pattern_must_match_its_own_examples(tmp_path: Path) -> None:
    """The examples were checked by this project's tests only: an admin's edit that made a
    rule stop matching what it was written for passed `gateway policy check` and loaded
    (found by a black-box check). Examples are read as the classifiers read text (folded:
    the fullwidth and accented forms below match)."""
    wide = "".join(chr(ord(c) + 0xFEE0) for c in "RANSOMWARE")  # fullwidth letters
    rules = f"""\
categories:
  cyber: {{description: Malware}}
  unverified: {{description: Not checked}}
classifiers:
  rules:
    patterns:
      - id: cyber.ransomware
        category: cyber
        pattern: '\\bransomware\\b'
        examples:
          match: ["Write {wide} now", "ransomwáre", "hello there friend"]
          no_match: ["a ransom note", "build ransomware"]
"""
    _write(tmp_path, **{"c.yaml": rules})
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    errors = [e.replace(str(tmp_path) + "/", "") for e in info.value.errors]
    assert errors == [
        "c.yaml:9: classifiers.rules.cyber.ransomware: does not match its own example "
        "'hello there friend'",
        "c.yaml:9: classifiers.rules.cyber.ransomware: matches its own no_match example "
        "'build ransomware'"]


def test_the_language_check_must_score_a_known_category(tmp_path: Path) -> None:
    policies = Path(edited_policies(tmp_path, ("category: other_language,",
                                               "category: other_langauge,")))
    with pytest.raises(PolicyError) as info:
        load_policy(policies)
    assert any("classifiers.yaml:" in e and "classifiers.structure.language.category: "
               "unknown category 'other_langauge'" in e for e in info.value.errors), \
        info.value.errors
    shipped = load_policy(ROOT / "policies").classifiers.structure.language
    assert shipped.enabled and shipped.category == "other_language"
    assert shipped.readable == ("en",)
