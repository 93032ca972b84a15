"""The adaptive limit on prompts waiting for the contextual model."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.pipeline.classify.admission import CEILING, PROBE_S, ModelAdmission


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def _fill(admission: ModelAdmission) -> int:
    entered = 0
    while admission.enter():
        entered += 1
    return entered


def test_an_idle_model_takes_up_to_the_ceiling() -> None:
    admission = ModelAdmission(Clock())
    assert _fill(admission) == CEILING
    admission.left()
    assert admission.waiting == CEILING - 1 and admission.enter()


def test_a_late_answer_closes_the_model_to_all_but_one_probe_a_period() -> None:
    clock = Clock()
    admission = ModelAdmission(clock)
    _fill(admission)
    admission.answered(False)
    for _ in range(CEILING - 1):  # the rest of the slow batch
        admission.answered(True)
    assert admission.closed and not admission.enter()
    clock.now += PROBE_S
    assert admission.enter()  # the probe
    assert not admission.enter()  # one at a time, and no second probe this period
    admission.answered(False)
    clock.now += PROBE_S / 2
    assert not admission.enter()  # the late probe restarted the period
    clock.now += PROBE_S / 2
    assert admission.enter()


def test_a_probe_in_time_opens_one_at_a_time_then_grows_about_one_per_limit() -> None:
    clock = Clock()
    admission = ModelAdmission(clock)
    admission.enter()
    admission.answered(False)
    clock.now += PROBE_S
    assert admission.enter()
    admission.answered(True)
    assert admission.limit == 1.0
    assert admission.enter() and not admission.enter()
    admission.answered(True)  # 1 -> 2
    assert _fill(admission) == 2
    for _ in range(2):
        admission.answered(True)  # 2 -> 2.5 -> 2.9
    assert 2.8 < admission.limit < 3.0
    for _ in range(10_000):
        admission.enter()
        admission.answered(True)
    assert admission.limit == CEILING and admission.waiting == 0
