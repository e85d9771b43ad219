"""The observation guarantee, the watchdog, and what a 404 for one of our jobs means.

**Observation bound.** Every outstanding job is *seen* (its record read in a listing sweep, or
fetched by ``GET /jobs/{id}``) at least once every

    min(30 s, max(1 s, 4 poll intervals, 3 x the mean latency of this run's jobs, age / 4))

where *age* is the time since it was submitted. A job overdue is first looked for by identity in
the listing (a sweep by creation, which finds many overdue jobs in one request), then fetched on
its own (at most :data:`MAX_DIRECT_GETS` per poll, the longest unseen first). So a listing that
lies (skewed clocks, wrong totals, a stale replica) delays a job by one bound, never forever; and
a job pending for minutes costs a request about every 30 s, not every poll.

**Watchdog.** When no outstanding job has changed for :data:`WATCHDOG_POLLS` polls (counted
only while some job is older than the mean latency seen, so a wave of equally long jobs is not
taken for a stall), every
outstanding job counts as overdue for the next poll, whatever the sweeps claimed.

**Not found is not lost.** A 404 for a job never seen yet is read-replica lag: it is fetched
again with backoff (0.25 s doubling to 4 s) for up to :data:`LAG_BOUND_S` after its submission,
and looked for in every sweep meanwhile. A 404 for a job seen before (or resumed from an earlier
run) is retention only if it persists for :data:`GONE_CONFIRM_S`. Only then is the request
resubmitted (through the engine's requeue path). Each streak's first verdict and its final one
(found again, or gone) are recorded in the journal with the texts built here (``_decision_log``).
"""

from __future__ import annotations

from typing import Literal

from ._decision_log import Verdict

__all__ = [
    "GONE_CONFIRM_S",
    "LAG_BOUND_S",
    "MAX_DIRECT_GETS",
    "WATCHDOG_POLLS",
    "first_404_decision",
    "found_decision",
    "gone_decision",
    "not_found_verdict",
    "observation_bound",
]

OBSERVE_MIN_S = 1.0
OBSERVE_MAX_S = 30.0
OBSERVE_POLLS = 4
OBSERVE_LATENCIES = 3.0
OBSERVE_AGE_FRACTION = 0.25
#: Per-job GETs per poll at most (the rest wait for the next poll).
MAX_DIRECT_GETS = 16
#: Polls without any change in the outstanding jobs before the watchdog looks at each of them.
WATCHDOG_POLLS = 10
#: A job never seen answers 404 for up to this long after submission before it counts as lost.
LAG_BOUND_S = 30.0
#: A job seen before must answer 404 for this long before it counts as gone (retention).
GONE_CONFIRM_S = 3.0
NOT_FOUND_FIRST_RETRY_S = 0.25
NOT_FOUND_MAX_RETRY_S = 4.0


def observation_bound(age: float, poll_interval: float, mean_latency: float) -> float:
    """Seconds a job may go unseen before it is looked for by identity (see module doc)."""
    bound = max(
        OBSERVE_MIN_S,
        OBSERVE_POLLS * poll_interval,
        OBSERVE_LATENCIES * mean_latency,
        OBSERVE_AGE_FRACTION * age,
    )
    return min(OBSERVE_MAX_S, bound)


def not_found_verdict(
    *, ever_seen: bool, age: float, not_found_for: float, attempts: int
) -> tuple[Literal["wait", "gone"], float]:
    """After a 404: ``("wait", retry_in_seconds)`` while it may be replica lag, else ``"gone"``.

    ``age`` is the time since submission, ``not_found_for`` since the first 404 of this streak,
    ``attempts`` the 404s in the streak so far (1 for the first).
    """
    may_lag = not_found_for < GONE_CONFIRM_S if ever_seen else age < LAG_BOUND_S
    if not may_lag:
        return "gone", 0.0
    delay = min(NOT_FOUND_MAX_RETRY_S, NOT_FOUND_FIRST_RETRY_S * 2.0 ** max(0, attempts - 1))
    return "wait", delay


def first_404_decision(*, ever_seen: bool) -> tuple[Verdict, str]:
    """The decision recorded at the first 404 of a streak."""
    if ever_seen:
        return "retention_check", (
            f"404 for a job seen before: confirming for {GONE_CONFIRM_S:g} s before it counts "
            "as gone (retention)"
        )
    return "replica_lag", (
        f"404 treated as replica lag: asking again for up to {LAG_BOUND_S:g} s after "
        "submission, and looking for it in the listing meanwhile"
    )


def found_decision(*, not_found_for: float, attempts: int) -> tuple[Verdict, str]:
    """The decision recorded when a job that answered 404 is read again."""
    return "found_after_404", (
        f"found again after {attempts} x 404 over {not_found_for:.1f} s: nothing resubmitted"
    )


def gone_decision(
    *, ever_seen: bool, age: float, not_found_for: float, attempts: int
) -> tuple[Verdict, str]:
    """The decision recorded when a job counts as gone (its request is resubmitted)."""
    if ever_seen:
        return "gone_after_retention", (
            f"gone after retention: 404 for {not_found_for:.1f} s ({attempts} times) after "
            "being seen; resubmitting its request"
        )
    return "lag_bound_exceeded", (
        f"lag bound exceeded: 404 for {age:.1f} s since submission ({attempts} times), never "
        "seen; resubmitting its request"
    )
