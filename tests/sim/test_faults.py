"""Fault directives, as a truth table."""

from __future__ import annotations

import pytest

from gateway.sim.faults import Faults, FaultSyntaxError, parse_faults
from gateway.sim.prose import FEATURES


@pytest.mark.parametrize(("prompt", "header", "faults"), [
    ("plain prompt", "", Faults()),
    ("[[sim:status=503]] hi", "", Faults(status=503)),
    ("before [[sim:reset]] after", "", Faults(reset=True)),
    ("[[sim:reset=0]]", "", Faults()),
    ("[[sim: drop_after=3 , tps=20]]", "", Faults(drop_after=3, tps=20.0)),
    ("[[sim:stall_after=0]]", "", Faults(stall_after=0)),
    ("[[sim:malformed_after=2,ttft=0.25]]", "", Faults(malformed_after=2, ttft_s=0.25)),
    ("[[sim:tps=5]] and [[sim:tps=7]]", "", Faults(tps=7.0)),
    ("", "status=429", Faults(status=429)),
    ("", "[[sim:ttft=1]]", Faults(ttft_s=1.0)),
    ("[[sim:status=500,tps=3]]", "status=502", Faults(status=502, tps=3.0)),
    ("[sim:status=500] [[other:x]]", "", Faults()),
    ("[[sim:prose]]", "", Faults(prose=frozenset())),
    ("[[sim:prose=code + cjk,tps=0]]", "", Faults(prose=frozenset({"code", "cjk"}), tps=0.0)),
    ("[[sim:prose=all]]", "", Faults(prose=FEATURES)),
    ("[[sim:guard=safe]]", "", Faults(guard="safe")),
    ("[[sim:guard=UNSAFE]]", "", Faults(guard="unsafe")),
    ("[[sim:guard=S9]]", "", Faults(guard="unsafe\nS9")),
    ("[[sim:guard= s9 + S14 +S9, guard_p=0.7]]", "", Faults(guard="unsafe\nS9,S14",
                                                           guard_p=0.7)),
    ("[[sim:guard_p=1]]", "", Faults(guard_p=1.0)),
    ("[[sim:guard=S99,ttft=2]]", "", Faults(guard="unsafe\nS99", ttft_s=2.0)),
])
def test_directives(prompt: str, header: str, faults: Faults) -> None:
    assert parse_faults(prompt, header) == faults


@pytest.mark.parametrize("directive", [
    "[[sim:status=200]]", "[[sim:status=600]]", "[[sim:status=abc]]", "[[sim:drop_after=-1]]",
    "[[sim:drop_after=1.5]]", "[[sim:ttft=-1]]", "[[sim:tps=nan]]", "[[sim:tps=inf]]",
    "[[sim:ttft=soon]]", "[[sim:drop_afer=3]]", "[[sim:prose=code+poetry]]", "[[sim:prose=1]]",
    "[[sim:guard]]", "[[sim:guard=maybe]]", "[[sim:guard=S0]]", "[[sim:guard=S100]]",
    "[[sim:guard=S9+]]", "[[sim:guard=safe+S9]]", "[[sim:guard=9]]", "[[sim:guard_p=1.5]]",
    "[[sim:guard_p=-0.1]]", "[[sim:guard_p=nan]]", "[[sim:guard_p]]", "[[sim:guards=S9]]",
])
def test_bad_directives_are_refused(directive: str) -> None:
    with pytest.raises(FaultSyntaxError):
        parse_faults(directive)
