"""How many prompts may wait on the contextual model at once: a limit that adapts.

When the machine is saturated the model answers after `contextual_timeout_s`, and the
static head's answer stands anyway: the prompt waited its whole budget for nothing, and
the model spent CPU the requests needed. The limit follows the model's punctuality, as
TCP's congestion window follows the network's. It starts at `START` prompts; each answer
in time raises it by one (slow start: it doubles with each round of answers) up to a
threshold, and by 1/limit above it (about one more prompt per limit's worth of answers
in time). A late answer is the time-out of TCP: the threshold becomes half the limit and
the limit one prompt, since every prompt already waiting on the slow model is late too.
When lateness is no accident but the rule (a moving share of late answers reaches
`CLOSE_SHARE`), the model closes: every prompt keeps the static head's answer at once
(path `static_busy`), where it would have kept it after waiting the whole budget. While
closed, one prompt every `PROBE_S` is also put to the model in the background, a probe
that no request waits for; `OPEN_AFTER` probes in a row answered within `PROBE_SHARE` of
the budget open the model again, to one prompt at a time.

Measured with bench/classify.py on the 2-core development machine: with an unpaced
simulator, unlimited, two or three model-bound prompts in four were late, and halving
alone still left 4% of all requests waiting the whole budget; with a paced one, without
overlap, about one model answer in 18 is late, several of them from one slow batch, and
closing on every late answer turned up to 42% of the prompts the model should have
read away from a model that mostly kept time. Unpaced, about 1% of all requests still
waited the whole budget (19-45 in 3,600): the p99. A trace showed where they came from:
a limit of 64 (the start) or 32 (halved once) let 8-12 prompts wait on one slow batch,
and a request waited on every probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CEILING = 64  # the worker reads at most max_batch (16) prompts per pass anyway
START = 4  # at first: one slow batch at start-up makes at most this many prompts late
# While closed, one prompt this often also goes to the model, to see whether it keeps
# time again, and this many in time in a row open it: one alone is often luck. A probe
# is read alone, so it counts as in time only within this share of its budget: on a
# saturated machine one prompt alone still came back in 30-46 ms of 50, and prompts let
# in after it were late again within 0.2 s.
PROBE_S = 1.0
OPEN_AFTER = 2
PROBE_SHARE = 0.5
# The late share is a moving average over about the last 1/WEIGHT answers: one late
# answer (or batch) alone (0.2) does not close the model, two close together (0.36) do.
WEIGHT = 0.2
CLOSE_SHARE = 0.3


class ModelAdmission:
    """Event-loop only (no locking): `enter()` before waiting on the model, then exactly one
    of `kept_time()`, `missed(budget_s)` or `left()` for each True it returned; `probe()`
    before a probe, then `probed(...)` for each True it returned."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 adaptive: bool = True) -> None:
        # Not adaptive: every prompt waits for the model (`gateway eval classify`, where a
        # late answer must not change how the next rows are scored).
        self.adaptive = adaptive
        self.limit = float(START if adaptive else CEILING)
        self._threshold = float(CEILING)  # slow start below it
        self.waiting = 0
        self.late_share = 0.0
        self._clock = clock
        self._next_probe = 0.0
        self._probing = False
        self._in_time = 0  # probes in time in a row
        self._same_batch_until = 0.0

    @property
    def closed(self) -> bool:
        return self.limit < 1.0

    @property
    def full(self) -> bool:
        """Whether `enter()` would turn a prompt away now."""
        return self.closed or self.waiting >= int(self.limit)

    def enter(self) -> bool:
        if self.full:
            return False
        self.waiting += 1
        return True

    def probe(self) -> bool:
        """Closed: whether to put a prompt to the model now, in the background. One at a
        time, once every PROBE_S, and not while prompts from before it closed still wait
        (their batch would make the probe late)."""
        if not self.closed or self._probing or self.waiting:
            return False
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe, self._probing = now + PROBE_S, True
        return True

    def probed(self, seconds: float | None, budget_s: float) -> None:
        """The probe took `seconds` (None: it failed, no verdict) of its budget."""
        self._probing = False
        if seconds is None:
            return
        if seconds > PROBE_SHARE * budget_s:
            self._in_time = 0
            self._late(self._clock())
            return
        self._kept()
        self._in_time += 1
        if self._in_time >= OPEN_AFTER and self.closed:
            self.limit, self._threshold, self._in_time = 1.0, float(START), 0

    def left(self) -> None:
        """Gone without a verdict on the model (cancelled, failed)."""
        self.waiting -= 1

    def kept_time(self) -> None:
        """The model answered within its budget. While closed, an answer to a prompt let in
        before it closed does not open it: only probes do."""
        self.waiting -= 1
        if not self.adaptive:
            return
        self._kept()
        if not self.closed:
            step = 1.0 if self.limit < self._threshold else 1.0 / self.limit
            self.limit = min(float(CEILING), self.limit + step)

    def missed(self, budget_s: float) -> None:
        """The model's answer was late. Prompts that waited together (one slow batch) are
        late together, within `budget_s` of each other: they count as one late answer."""
        self.waiting -= 1
        now = self._clock()
        if not self.adaptive or now < self._same_batch_until:
            return
        self._same_batch_until = now + budget_s
        self._late(now)

    def _kept(self) -> None:
        self.late_share -= WEIGHT * self.late_share

    def _late(self, now: float) -> None:
        self.late_share += WEIGHT * (1.0 - self.late_share)
        if self.late_share >= CLOSE_SHARE:
            self.limit = 0.0
            self._next_probe = now + PROBE_S
        elif not self.closed:
            self._threshold, self.limit = max(1.0, self.limit / 2), 1.0
