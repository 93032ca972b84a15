"""The adaptive limit on prompts waiting for the contextual model."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.pipeline.classify.admission import (
    CEILING,
    OPEN_AFTER,
    PROBE_S,
    PROBE_SHARE,
    START,
    ModelAdmission,
)

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


def _answer_all(admission: ModelAdmission) -> None:
    for _ in range(admission.waiting):
        admission.kept_time()


def _grown(clock: Clock) -> ModelAdmission:
    """A model that has kept time long enough to take up to the ceiling."""
    admission = ModelAdmission(clock)
    while _fill(admission) < CEILING:
        _answer_all(admission)
    return admission


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


def test_the_limit_starts_small_and_doubles_with_each_round_of_answers_in_time() -> None:
    admission = ModelAdmission(Clock())
    assert _fill(admission) == START
    for expected in (8, 16, 32, 64):  # one more per answer in time
        _answer_all(admission)
        assert _fill(admission) == expected
    _answer_all(admission)
    assert _fill(admission) == CEILING
    admission.left()
    assert admission.waiting == CEILING - 1 and admission.enter()


def test_a_late_batch_leaves_one_prompt_waiting_then_slow_start_to_half_the_limit() -> None:
    clock = Clock()
    admission = _grown(clock)
    for _ in range(CEILING):  # one slow batch: every prompt waiting on it is late
        admission.missed(BUDGET_S)
    assert admission.limit == 1.0 and _fill(admission) == 1
    while admission.limit < CEILING / 2:  # doubling, with each round of answers
        _answer_all(admission)
        _fill(admission)
    assert admission.limit == CEILING / 2
    _answer_all(admission)  # then about one more per limit's worth of answers
    assert _fill(admission) == CEILING / 2 and admission.limit < CEILING / 2 + 1


def test_a_late_answer_now_and_then_drops_the_limit_but_does_not_close() -> None:
    clock = Clock()
    admission = ModelAdmission(clock)
    for _ in range(20):  # one late answer in ten
        assert admission.enter()
        _late(admission, clock)
        assert admission.limit == 1.0
        for _ in range(9):
            assert admission.enter()
            admission.kept_time()
        assert not admission.closed and admission.limit > 1.0


def test_late_answers_close_together_close_the_model_to_one_probe_a_period() -> None:
    clock = Clock()
    admission = _closed(clock)
    assert not admission.enter() and not admission.probe()
    clock.now += PROBE_S
    assert admission.probe()  # a probe, in the background: still no prompt waits
    assert not admission.enter() and admission.waiting == 0
    assert not admission.probe()  # one at a time, and no second probe this period
    clock.now += BUDGET_S
    admission.probed(BUDGET_S * 2, BUDGET_S)
    clock.now += PROBE_S / 2
    assert not admission.probe()  # the late probe restarted the period
    clock.now += PROBE_S / 2
    assert admission.probe()
    admission.probed(None, BUDGET_S)  # it failed: no verdict, and the period runs on
    assert admission.closed and not admission.probe()


def test_one_slow_batch_counts_once_and_answers_from_before_it_closed_do_not_open_it(
        ) -> None:
    clock = Clock()
    admission = _grown(clock)
    for _ in range(8):  # eight prompts of one batch, late together
        admission.missed(BUDGET_S)
    assert not admission.closed and admission.limit == 1.0
    clock.now += BUDGET_S
    admission.missed(BUDGET_S)  # a second slow batch: lateness is the rule now
    assert admission.closed
    for _ in range(CEILING - 9):  # the rest, in time
        admission.kept_time()
    assert admission.closed and admission.waiting == 0 and not admission.enter()


def _probe(admission: ModelAdmission, clock: Clock, seconds: float) -> None:
    clock.now += PROBE_S
    assert admission.probe()
    admission.probed(seconds, BUDGET_S)


PUNCTUAL_S = PROBE_SHARE * BUDGET_S  # the slowest answer to a probe that counts as in time


def test_probes_in_time_in_a_row_open_it_to_one_prompt_then_slow_start_follows() -> None:
    clock = Clock()
    admission = _closed(clock)
    for _ in range(OPEN_AFTER - 1):
        _probe(admission, clock, PUNCTUAL_S)
    # Within its budget, but read alone it should have been quicker: the count restarts.
    assert PUNCTUAL_S * 1.01 < BUDGET_S
    _probe(admission, clock, PUNCTUAL_S * 1.01)
    for _ in range(OPEN_AFTER - 1):
        _probe(admission, clock, PUNCTUAL_S)
    assert admission.closed
    _probe(admission, clock, PUNCTUAL_S)
    assert admission.limit == 1.0 and not admission.probe()
    assert admission.enter() and not admission.enter()
    admission.kept_time()  # 1 -> 2
    assert _fill(admission) == 2
    _answer_all(admission)  # 2 -> 4: START
    assert _fill(admission) == START
    _answer_all(admission)  # then about one more per limit's worth
    assert _fill(admission) == START
    _answer_all(admission)
    assert _fill(admission) == START + 1
    _answer_all(admission)
    for _ in range(10_000):
        admission.enter()
        admission.kept_time()
    assert admission.limit == CEILING and admission.waiting == 0


def test_no_probe_while_prompts_from_before_it_closed_still_wait() -> None:
    clock = Clock()
    admission = _grown(clock)
    admission.missed(BUDGET_S)
    clock.now += BUDGET_S
    admission.missed(BUDGET_S)
    assert admission.closed
    clock.now += PROBE_S
    assert not admission.probe()  # their batch would make the probe late
    for _ in range(CEILING - 2):
        admission.kept_time()
    assert admission.closed and admission.probe()


def test_not_adaptive_every_prompt_waits_for_the_model() -> None:
    clock = Clock()
    admission = ModelAdmission(clock, adaptive=False)
    for _ in range(10):
        assert admission.enter()
        _late(admission, clock)
    assert not admission.closed and _fill(admission) == CEILING
