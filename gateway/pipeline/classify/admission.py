"""How many prompts may wait on the contextual model at once: a limit that adapts.

When the machine is saturated the model answers after `contextual_timeout_s`, and the
static head's answer stands anyway: the prompt waited its whole budget for nothing, and
the model spent CPU the requests needed. So a late answer closes the model to all but
one probe every `PROBE_S`; a probe answered in time opens it to one prompt at a time, and
each answer in time then raises the limit by 1/limit (about one more prompt per limit's
worth of answers in time, as TCP's congestion window grows). A prompt turned away keeps
the static head's answer at once (path `static_busy`), where it would have kept it after
waiting the whole budget. Measured on the 2-core development machine with an unpaced
simulator (bench/classify.py), lateness strikes about one model-bound prompt in three
at random: halving the limit on a late answer instead of closing left 4% of all
requests waiting the whole budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CEILING = 64  # the worker reads at most max_batch (16) prompts per pass anyway
# While closed, one prompt this often still goes to the model, to see whether it keeps
# time again; under saturation it is the only one that waits the whole budget.
PROBE_S = 1.0


class ModelAdmission:
    """Event-loop only (no locking): `enter()` before waiting on the model, then exactly one
    `answered(in_time)` or `left()` for each True it returned."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 adaptive: bool = True) -> None:
        # Not adaptive: every prompt waits for the model (`gateway eval classify`, where a
        # late answer must not change how the next rows are scored).
        self.adaptive = adaptive
        self.limit = float(CEILING)
        self.waiting = 0
        self._clock = clock
        self._next_probe = 0.0
        self._probing = False  # the one prompt let in while closed is waiting

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

    def answered(self, in_time: bool) -> None:
        self.waiting -= 1
        probe, self._probing = self._probing, False
        if not self.adaptive:
            return
        if not in_time:
            self.limit = 0.0
            self._next_probe = self._clock() + PROBE_S
        elif self.closed:
            if probe:  # not one let in before it closed, still answering
                self.limit = 1.0
        else:
            self.limit = min(float(CEILING), self.limit + 1.0 / self.limit)
