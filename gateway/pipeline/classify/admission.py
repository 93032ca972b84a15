"""How many prompts may wait on the contextual model at once: a limit that adapts.

When the machine is saturated the model answers after `contextual_timeout_s`, and the
static head's answer stands anyway: the prompt waited its whole budget for nothing, and
the model spent CPU the requests needed. The limit follows the model's punctuality, as
TCP's congestion window follows the network's: each answer in time raises it by 1/limit
(about one more prompt per limit's worth of answers in time), a late one halves it. When
lateness is no accident but the rule (a moving share of late answers reaches
`CLOSE_SHARE`), the model closes to all but one probe every `PROBE_S`; a probe answered
in time opens it to one prompt at a time. A prompt turned away keeps the static head's
answer at once (path `static_busy`), where it would have kept it after waiting the
whole budget.

Measured with bench/classify.py on the 2-core development machine: with an unpaced
simulator, unlimited, two or three model-bound prompts in four were late, and halving
alone still left 4% of all requests waiting the whole budget; with a paced one, without
overlap, about one model answer in 18 is late, several of them from one slow batch, and
closing on every late answer turned up to 42% of the prompts the model should have
read away from a model that mostly kept time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CEILING = 64  # the worker reads at most max_batch (16) prompts per pass anyway
# While closed, one prompt this often still goes to the model, to see whether it keeps
# time again; under saturation it is the only one that waits the whole budget.
PROBE_S = 1.0
# The late share is a moving average over about the last 1/WEIGHT answers: one late
# answer (or batch) alone (0.2) does not close the model, two close together (0.36) do.
WEIGHT = 0.2
CLOSE_SHARE = 0.3


class ModelAdmission:
    """Event-loop only (no locking): `enter()` before waiting on the model, then exactly one
    of `kept_time()`, `missed(budget_s)` or `left()` for each True it returned."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 adaptive: bool = True) -> None:
        # Not adaptive: every prompt waits for the model (`gateway eval classify`, where a
        # late answer must not change how the next rows are scored).
        self.adaptive = adaptive
        self.limit = float(CEILING)
        self.waiting = 0
        self.late_share = 0.0
        self._clock = clock
        self._next_probe = 0.0
        self._probing = False  # the one prompt let in while closed is waiting
        self._same_batch_until = 0.0

    @property
    def closed(self) -> bool:
        return self.limit < 1.0

    def enter(self) -> bool:
        if self.closed:
            now = self._clock()
            if self.waiting or now < self._next_probe:
                return False
            self._next_probe, self._probing = now + PROBE_S, True
        elif self.waiting >= int(self.limit):
            return False
        self.waiting += 1
        return True

    def left(self) -> None:
        """Gone without a verdict on the model (cancelled, failed)."""
        self.waiting -= 1
        self._probing = False

    def kept_time(self) -> None:
        """The model answered within its budget."""
        self.waiting -= 1
        probe, self._probing = self._probing, False
        if not self.adaptive:
            return
        self.late_share -= WEIGHT * self.late_share
        if self.closed:
            if probe:  # not one let in before it closed, still answering
                self.limit = 1.0
        else:
            self.limit = min(float(CEILING), self.limit + 1.0 / self.limit)

    def missed(self, budget_s: float) -> None:
        """The model's answer was late. Prompts that waited together (one slow batch) are
        late together, within `budget_s` of each other: they count as one late answer."""
        self.waiting -= 1
        self._probing = False
        now = self._clock()
        if not self.adaptive or now < self._same_batch_until:
            return
        self._same_batch_until = now + budget_s
        self.late_share += WEIGHT * (1.0 - self.late_share)
        if self.late_share >= CLOSE_SHARE:
            self.limit = 0.0
            self._next_probe = now + PROBE_S
        elif not self.closed:
            self.limit = max(1.0, self.limit / 2)
