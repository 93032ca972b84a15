"""The adaptive limit on prompts waiting for the contextual model."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.pipeline.classify.admission import CEILING, PROBE_S, ModelAdmission

BUDGET_S = 0.05


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


def _late(admission: ModelAdmission, clock: Clock) -> None:
    admission.missed(BUDGET_S)
    clock.now += BUDGET_S  # a later batch


def _closed(clock: Clock) -> ModelAdmission:
    admission = ModelAdmission(clock)
    for _ in range(2):
        assert admission.enter()
        _late(admission, clock)
    assert admission.closed
    return admission


def test_an_idle_model_takes_up_to_the_ceiling() -> None:
    admission = ModelAdmission(Clock())
    assert _fill(admission) == CEILING
    admission.left()
    assert admission.waiting == CEILING - 1 and admission.enter()


def test_a_late_answer_now_and_then_halves_the_limit_and_no_more() -> None:
    clock = Clock()
    admission = ModelAdmission(clock)
    for _ in range(20):  # one late answer in ten
        assert admission.enter()
        _late(admission, clock)
        for _ in range(9):
            assert admission.enter()
            admission.kept_time()
        assert not admission.closed
    assert 1.0 <= admission.limit < CEILING / 2


def test_late_answers_close_together_close_the_model_to_one_probe_a_period() -> None:
    clock = Clock()
    admission = _closed(clock)
    assert not admission.enter()
    clock.now += PROBE_S
    assert admission.enter()  # the probe
    assert not admission.enter()  # one at a time, and no second probe this period
    admission.missed(BUDGET_S)
    clock.now += PROBE_S / 2
    assert not admission.enter()  # the late probe restarted the period
    clock.now += PROBE_S / 2
    assert admission.enter()


def test_one_slow_batch_counts_once_and_answers_from_before_it_closed_do_not_open_it(
        ) -> None:
    clock = Clock()
    admission = ModelAdmission(clock)
    assert _fill(admission) == CEILING
    for _ in range(8):  # eight prompts of one batch, late together
        admission.missed(BUDGET_S)
    assert not admission.closed and admission.limit == CEILING / 2
    clock.now += BUDGET_S
    admission.missed(BUDGET_S)  # a second slow batch: lateness is the rule now
    assert admission.closed
    for _ in range(CEILING - 9):  # the rest, in time
        admission.kept_time()
    assert admission.closed and admission.waiting == 0 and not admission.enter()


def test_a_probe_in_time_opens_one_at_a_time_then_grows_about_one_per_limit() -> None:
    clock = Clock()
    admission = _closed(clock)
    clock.now += PROBE_S
    assert admission.enter()
    admission.kept_time()
    assert admission.limit == 1.0
    assert admission.enter() and not admission.enter()
    admission.kept_time()  # 1 -> 2
    assert _fill(admission) == 2
    for _ in range(2):
        admission.kept_time()  # 2 -> 2.5 -> 2.9
    assert 2.8 < admission.limit < 3.0
    for _ in range(10_000):
        admission.enter()
        admission.kept_time()
    assert admission.limit == CEILING and admission.waiting == 0


def test_not_adaptive_every_prompt_waits_for_the_model() -> None:
    clock = Clock()
    admission = ModelAdmission(clock, adaptive=False)
    for _ in range(10):
        assert admission.enter()
        _late(admission, clock)
    assert not admission.closed and _fill(admission) == CEILING
