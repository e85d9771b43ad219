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
"""

from __future__ import annotations

import math
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


class PollCadence:
    """The poll timing of one run (see module doc); ``fixed`` is the user's ``poll_interval``."""

    def __init__(self, fixed: float | None = None) -> None:
        self.fixed = fixed
        self.mean_latency = 0.0
        self.min_latency = math.inf
        self.finished = 0
        self.due_polls = 0

    def record(self, latency: float) -> None:
        """A job submitted by this run ended ``latency`` seconds after its submission."""
        self.finished += 1
        self.mean_latency += (latency - self.mean_latency) / self.finished
        self.min_latency = min(self.min_latency, latency)

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
        due = min(submitted) + self.min_latency
        if due < now + MIN_POLL_INTERVAL_S:  # the oldest may be done already: the interval
            return at
        self.due_polls += 1
        return min(due, now + MAX_POLL_INTERVAL_S)
