"""When to poll next: an interval that adapts to the jobs in flight, and the due time of the
oldest job learned from the latencies seen.

The interval is a fraction of the oldest outstanding job's age (a long job is not polled every
50 ms) and, with many jobs in flight, about the time in which :data:`JOBS_PER_POLL` of them
should finish (one listing request pays for several finishes), within
[:data:`MIN_POLL_INTERVAL_S`, :data:`MAX_POLL_INTERVAL_S`].

**Due time.** Jobs of one kind take about as long as each other. Once a few have finished, the
shortest latency seen says when the oldest outstanding job may be done at the earliest. While
that moment is still ahead, the next poll is *at* it (no sooner than
:data:`MIN_POLL_INTERVAL_S`, no later than :data:`MAX_POLL_INTERVAL_S`): with waves of equally
long jobs a poll lands as the first jobs of a wave end, not up to one interval later, and the
polls that could only find "still running" in between are not made. Once the oldest job is due,
the interval applies. The observation bound (3 x the mean latency and more) is never reached by
this wait, since it is at most the shortest latency.

**Waves.** When the recent jobs took about as long as each other (the middle 80% of their
latencies within :data:`AGREE_SPREAD_S` or :data:`AGREE_SPREAD_SHARE` of the median, as the
server stamped them: ``updated_at - created_at``, which no poll of ours delays), each
outstanding job's end is predicted: its POST's answer plus that latency. The next poll is then
placed when :data:`JOBS_PER_POLL` jobs are expected done, or when the first of them has waited
:data:`DUE_MAX_WAIT_S`, never sooner than :data:`DUE_MIN_INTERVAL_S` after the last one began
(:data:`MIN_POLL_INTERVAL_S` for jobs shorter than :data:`SHORT_JOB_S`).
With waves of equal jobs at C=500 that turned a poll every 50 ms (a freed slot waited half of
it on average) into polls timed to the ends, and nothing between waves.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable

__all__ = [
    "JOBS_PER_POLL",
    "MAX_POLL_INTERVAL_S",
    "MIN_POLL_INTERVAL_S",
    "POLL_AGE_FRACTION",
    "PollCadence",
]

#: Adaptive poll interval: a fraction of the oldest outstanding job's age, within bounds.
POLL_AGE_FRACTION = 0.1
#: ... and at most the time in which about this many of the outstanding jobs should finish.
JOBS_PER_POLL = 15
MIN_POLL_INTERVAL_S = 0.05
MAX_POLL_INTERVAL_S = 5.0
#: Finished jobs needed before their shortest latency is trusted as a due time.
DUE_AFTER_JOBS = 3
#: Longest the first wave's polls wait for its POSTs to go out (see ``holds_for_ramp``).
RAMP_HOLD_MAX_S = 2.0
#: Recent latencies kept to tell whether jobs take about as long as each other ("Waves").
RECENT_LATENCIES = 64
#: Finished jobs needed before their latencies are compared.
AGREE_AFTER_JOBS = 8
#: Latencies agree when the middle 80% lie within this many seconds ...
AGREE_SPREAD_S = 0.03
#: ... or within this share of their median.
AGREE_SPREAD_SHARE = 0.15
#: With agreeing latencies: the least time between the starts of two polls ...
DUE_MIN_INTERVAL_S = 0.02
#: ... for jobs at least this long. Shorter ones keep MIN_POLL_INTERVAL_S: jobs that end as
#: soon as they start make the client's own CPU the limit, and each poll costs a wave of
#: claims written to a disk cache (20,000 rows: 5% more CPU at 20 ms than at 50 ms).
SHORT_JOB_S = 0.1
#: ... and the longest a job expected done waits for a poll.
DUE_MAX_WAIT_S = 0.025
#: A job expected done this long before a poll began and still not seen is late, not due: it
#: no longer hastens polls (the interval applies to it).
LATE_AFTER_S = 0.05


class PollCadence:
    """The poll timing of one run (see module doc); ``fixed`` is the user's ``poll_interval``."""

    def __init__(self, fixed: float | None = None) -> None:
        self.fixed = fixed
        self.mean_latency = 0.0
        self.min_latency = math.inf
        self.finished = 0
        self.due_polls = 0
        self._recent: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self._agreed: float | None = None
        self._agreed_stale = False

    def record(self, latency: float, service_latency: float | None = None) -> None:
        """A job submitted by this run ended ``latency`` seconds after its submission (by our
        clock: when its POST answered to when a poll saw it end); ``service_latency``: the
        server's stamps of its creation and end apart, when it stamped both."""
        self.finished += 1
        self.mean_latency += (latency - self.mean_latency) / self.finished
        self.min_latency = min(self.min_latency, latency)
        # Stamps that cannot be true (an executor's clock behind or ahead) are not used: ours
        # then, which only errs early (it lacks the time our POST's answer took to read).
        if service_latency is not None and 0 <= service_latency <= latency:
            latency = service_latency
        self._recent.append(latency)
        self._agreed_stale = True

    def agreed_latency(self) -> float | None:
        """The latency recent jobs agree on (their 10th percentile), or None when they do not
        (see "Waves" in the module doc)."""
        if self._agreed_stale:
            self._agreed_stale = False
            self._agreed = None
            if len(self._recent) >= AGREE_AFTER_JOBS:
                ordered = sorted(self._recent)
                n = len(ordered)
                low, median, high = ordered[n // 10], ordered[n // 2], ordered[(9 * n) // 10]
                if high - low <= max(AGREE_SPREAD_S, AGREE_SPREAD_SHARE * median):
                    self._agreed = low
        return self._agreed

    def interval(self, now: float, submitted: Iterable[float], count: int) -> float:
        """Seconds between polls with ``count`` jobs outstanding, submitted at ``submitted``."""
        if self.fixed is not None:
            return self.fixed
        if not count:
            return MIN_POLL_INTERVAL_S
        oldest_age = now - min(submitted)
        by_age = POLL_AGE_FRACTION * oldest_age
        # Many jobs in flight finish often: poll about every JOBS_PER_POLL / outstanding of a
        # job's life, so a listing request pays for several finishes while the next
        # submission waits little.
        latency = self.mean_latency or oldest_age
        by_throughput = JOBS_PER_POLL * latency / count
        interval = min(by_age, max(by_throughput, MIN_POLL_INTERVAL_S))
        return min(MAX_POLL_INTERVAL_S, max(MIN_POLL_INTERVAL_S, interval))

    def holds_for_ramp(self, now: float, *, posting: int, oldest_submitted: float) -> bool:
        """True while the first wave is still being submitted: no job of the run has ended
        yet, ``posting`` POSTs are in flight or queued for a connection (the engine asks only
        while more are queued than the client has connections), and the oldest job is younger
        than :data:`RAMP_HOLD_MAX_S`.

        Reads go before waiting POSTs (``_request_slots``), so a poll during the ramp would
        overtake it: at C=500 the polls of the first second (each reading every update so far)
        took the CPU and the server's time the first 500 POSTs needed, and the ramp took 2.5 s
        instead of 0.6. Holding them costs nothing a poll could have found, save for jobs
        shorter than the ramp (seen once it ends, or after the cap). A user's fixed
        ``poll_interval`` is never held.
        """
        if self.fixed is not None or self.finished or not posting:
            return False
        return now - oldest_submitted < RAMP_HOLD_MAX_S

    def next_poll(
        self, now: float, submitted: list[float], *, started: float | None = None
    ) -> float:
        """When to poll next (clock time): after the interval, or when the oldest job is due.

        ``started``: when the poll that just ended began. The adaptive interval counts from
        there, not from its end: a sweep that read for 100 ms at C=500 (its completions' POSTs
        going out meanwhile) is followed by the next one 50 ms after it began, not 50 ms after it
        ended, so the completions of a wave are seen at the interval the cadence chose. A
        user's fixed ``poll_interval`` still counts from the end.
        """
        interval = self.interval(now, submitted, len(submitted))
        begun = now if started is None or self.fixed is not None else min(started, now)
        at = max(now, begun + interval)
        if self.fixed is not None or self.finished < DUE_AFTER_JOBS or not submitted:
            return at
        agreed = self.agreed_latency()
        if agreed is not None:
            self.due_polls += 1
            return self._when_due(now, begun, sorted(submitted), agreed, at)
        due = min(submitted) + self.min_latency
        if due < now + MIN_POLL_INTERVAL_S:  # the oldest may be done already: the interval
            return at
        self.due_polls += 1
        return min(due, now + MAX_POLL_INTERVAL_S)

    def _when_due(
        self, now: float, begun: float, submitted: list[float], latency: float, at: float
    ) -> float:
        """The next poll when jobs take ``latency`` each (see "Waves" in the module doc);
        ``submitted`` ascending, ``at``: the interval's choice, kept for jobs that are late."""
        late = bisect.bisect_right(submitted, begun - LATE_AFTER_S - latency)
        waiting = bisect.bisect_right(submitted, begun - latency) - late
        if waiting >= JOBS_PER_POLL:
            due = begun
        else:
            if waiting:  # expected done by the last poll's start: ending any moment
                first = begun
            elif late < len(submitted):
                first = submitted[late] + latency
            else:
                first = math.inf
            due = first + DUE_MAX_WAIT_S
            nth = late + JOBS_PER_POLL - 1
            if nth < len(submitted):
                due = min(due, submitted[nth] + latency)
        if late:  # jobs long expected and not seen: the interval still looks for them
            due = min(due, at)
        least = DUE_MIN_INTERVAL_S if latency >= SHORT_JOB_S else MIN_POLL_INTERVAL_S
        due = max(due, begun + least, now)
        return min(due, now + MAX_POLL_INTERVAL_S)
