"""Combination (max per category) and the tier action truth table."""

from __future__ import annotations

import pytest

from gateway.pipeline.classify.verdict import combine, decide, matched, verdict
from gateway.policy.spec import CategorySpec
from tests.pipeline.classify.conftest import POLICY


def test_combine_keeps_the_max_per_category_and_derives_benign() -> None:
    scores = combine([{"cyber": 0.2, "fraud": 0.7}, {"cyber": 0.9}, {"benign": 1.0}, {}])
    assert scores == {"cyber": 0.9, "fraud": 0.7, "benign": pytest.approx(0.1)}
    assert combine([]) == {"benign": 1.0}
    assert combine([{"cyber": 3.0, "fraud": -1.0}]) == {"cyber": 1.0, "fraud": 0.0,
                                                         "benign": 0.0}


def test_matched_uses_each_category_threshold_and_never_benign() -> None:
    categories = {"cyber": CategorySpec("cyber", "d", threshold=0.8),
                  "fraud": CategorySpec("fraud", "d", threshold=0.3)}
    scores = {"cyber": 0.79, "fraud": 0.3, "other": 0.6, "benign": 0.9}
    assert matched(scores, categories) == ("other", "fraud")  # undefined: 0.5


@pytest.mark.parametrize(("tier", "categories", "action"), [
    ("public", (), "allow"),
    ("public", ("cyber",), "block"),
    ("public", ("jailbreak",), "block"),
    ("verified", ("fraud",), "block"),
    ("research", ("cyber",), "flag"),
    ("research", ("jailbreak",), "flag"),
    ("research", ("cyber", "jailbreak"), "flag"),
    ("research", ("cyber", "fraud"), "block"),
    ("research", ("cbrn",), "block"),
    ("research", ("unverified",), "block"),
    ("trusted", ("cyber", "unverified"), "allow"),
    ("trusted", ("cbrn",), "block"),  # "nothing blocked but the worst"
    ("trusted", ("child_safety", "cyber"), "block"),
    ("trusted", (), "allow"),
])
def test_tier_action_truth_table(tier: str, categories: tuple[str, ...], action: str) -> None:
    assert decide(categories, POLICY.tiers[tier]) == action
    scores = {c: 0.95 for c in categories}
    v = verdict(scores, POLICY.categories, POLICY.tiers[tier])
    assert v.action == action
    assert set(v.categories) == set(categories)


def test_no_tier_means_any_match_blocks() -> None:
    assert decide(("cyber",), None) == "block"
    assert decide((), None) == "allow"


def test_categories_sorted_by_score() -> None:
    v = verdict({"cyber": 0.6, "fraud": 0.9, "benign": 0.1}, POLICY.categories,
                POLICY.tiers["public"])
    assert v.categories == ("fraud", "cyber")
