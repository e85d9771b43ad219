"""One poll of a run's outstanding jobs: listing sweeps, then direct GETs for what is overdue.

The engine owns the jobs and their outcomes; the poller only *looks* and reports what it saw
through callbacks: a job record (``observe``), a job that is gone for good (``vanished``), a
run-level error (``fatal``), and what it decided about a 404 (``decided``, for the journal).
Per poll:

1. with more than :data:`FEW_JOBS` outstanding and a usable listing, one sweep
   (:class:`~._sweep.ListingSweeper`, by update or by creation);
2. when reading by update, jobs past their observation bound (or all, when the watchdog fires)
   are looked for by identity in one sweep by creation;
3. what is still overdue is fetched with ``GET /jobs/{id}`` (at most
   :data:`~._observation.MAX_DIRECT_GETS`), and 404s are judged by
   :func:`~._observation.not_found_verdict` (replica lag or retention).

The bounds are in ``_observation.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from ._exceptions import APIError, AuthenticationError, NotFoundError, PermissionDeniedError
from ._models import JobRecord
from ._observation import (
    MAX_DIRECT_GETS,
    WATCHDOG_POLLS,
    first_404_decision,
    found_decision,
    gone_decision,
    not_found_verdict,
    observation_bound,
)
from ._sweep import ListingSweeper, SweepResult

if TYPE_CHECKING:
    from ._client import Client
    from ._clock import Clock
    from ._decision_log import Verdict

__all__ = ["FEW_JOBS", "Poller", "Watched"]

logger = logging.getLogger("narrative_pandas")

#: With at most this many outstanding jobs, poll each with ``GET /jobs/{id}``; more use the listing.
FEW_JOBS = 3
#: Longest one sweep may take: a listing slower than this (a stalled or trickling answer) is
#: abandoned for this poll, and after :data:`STALLS_TO_GIVE_UP` such sweeps for the run.
SWEEP_DEADLINE_S = 5.0
STALLS_TO_GIVE_UP = 2


class Watched(Protocol):
    """What the poller reads and writes of an outstanding job (the engine's ``_Live``)."""

    state: str
    submitted_at: float
    confirmed_at: float
    resumed: bool
    ever_seen: bool
    created_at: datetime | None
    not_found_since: float | None
    not_found_count: int
    retry_get_at: float
    fetched_at: float


class Poller:
    """Looks at a run's outstanding jobs as cheaply as the listing allows (see module doc)."""

    def __init__(
        self,
        client: Client,
        clock: Clock,
        *,
        data_plane_id: str | None,
        observe: Callable[[JobRecord], None],
        vanished: Callable[[str], None],
        fatal: Callable[[BaseException], None],
        decided: Callable[[str, Verdict, str], None] | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self.sweeper = ListingSweeper(client, data_plane_id=data_plane_id)
        self._observe = observe
        self._vanished = vanished
        self._fatal = fatal
        self._decided = decided or (lambda job_id, verdict, detail: None)
        self._ours: set[str] = set()
        self._quiet_polls = 0
        self._stalls = 0
        self.direct_gets = 0
        self.watchdog_fired = 0

    def track(self, job_id: str) -> None:
        """``job_id`` is this run's from now on (called as each POST answers): a job created
        while a sweep is being read is ours, not another client's, when its page shows it."""
        self._ours.add(job_id)

    def progressed(self) -> None:
        """An outstanding job changed: the watchdog starts counting again."""
        self._quiet_polls = 0

    async def poll(
        self, outstanding: Mapping[str, Watched], *, interval: float, mean_latency: float
    ) -> int:
        """Look at every outstanding job that is due; returns the listing sweeps made."""
        self._ours.update(outstanding)
        now = self._clock.now()
        # Quiet only counts once a job is older than the usual latency: a wave of jobs that all
        # take about as long is not a stall (the watchdog would GET them all every wave).
        if any(now - live.submitted_at > mean_latency for live in outstanding.values()):
            self._quiet_polls += 1
        watchdog = self._quiet_polls > WATCHDOG_POLLS
        if watchdog:
            self._quiet_polls = 0
            self.watchdog_fired += 1
            logger.info(
                "no job changed in %d polls; looking at each outstanding job", WATCHDOG_POLLS
            )
        sweeps = 0
        if len(outstanding) > FEW_JOBS and self.sweeper.usable:
            sweeps += 1
            # Each record is applied as its page is read: a completion frees its slot (and its
            # next POST leaves) while the rest of the sweep is still being read.
            await self._within_deadline(
                self.sweeper.sweep(
                    list(outstanding),
                    ours=self._ours,
                    oldest_created=_oldest_created(outstanding),
                    found=lambda job_id, record, beyond: self._apply_one(
                        job_id, record, outstanding, verifying=beyond
                    ),
                )
            )
            if self.sweeper.mode == "updated":
                overdue = self._overdue(outstanding, interval, mean_latency, everyone=watchdog)
                if len(overdue) > 1:
                    sweeps += 1
                    found = await self._within_deadline(
                        self.sweeper.verify(overdue, oldest_created=_oldest_created(outstanding))
                    )
                    self._apply(found, outstanding, verifying=True)
            due = self._overdue(outstanding, interval, mean_latency, everyone=False)
            if watchdog:
                due = sorted(outstanding, key=lambda job_id: outstanding[job_id].fetched_at)
        else:  # few jobs, or no usable listing: each job in turn, the longest unseen first
            due = sorted(outstanding, key=lambda job_id: outstanding[job_id].confirmed_at)
        now = self._clock.now()
        due = [job_id for job_id in due if outstanding[job_id].retry_get_at <= now]
        if due:
            await self._get_each(due[:MAX_DIRECT_GETS], outstanding)
        return sweeps

    async def _within_deadline(self, sweep: Coroutine[Any, Any, SweepResult]) -> SweepResult:
        """A sweep, given up after :data:`SWEEP_DEADLINE_S` (the jobs are then fetched)."""
        try:
            return await asyncio.wait_for(sweep, SWEEP_DEADLINE_S)
        except asyncio.TimeoutError:
            self._stalls += 1
            if self._stalls >= STALLS_TO_GIVE_UP:
                self.sweeper.give_up(
                    f"the job listing took more than {SWEEP_DEADLINE_S:g} s to answer "
                    f"{self._stalls} times; polling job by job instead"
                )
            return SweepResult(failed=True)

    def _overdue(
        self,
        outstanding: Mapping[str, Watched],
        interval: float,
        mean_latency: float,
        *,
        everyone: bool,
    ) -> list[str]:
        """Jobs unseen for longer than their observation bound, the longest unseen first."""
        now = self._clock.now()
        if everyone:
            due = list(outstanding)
        else:
            due = [
                job_id
                for job_id, live in outstanding.items()
                if now - live.confirmed_at
                >= observation_bound(now - live.submitted_at, interval, mean_latency)
            ]
        due.sort(key=lambda job_id: outstanding[job_id].confirmed_at)
        return due

    def _apply(
        self, result: SweepResult, outstanding: Mapping[str, Watched], *, verifying: bool
    ) -> None:
        for job_id, record in result.records.items():
            self._apply_one(job_id, record, outstanding, verifying=verifying)

    def _apply_one(
        self,
        job_id: str,
        record: Mapping[str, Any],
        outstanding: Mapping[str, Watched],
        *,
        verifying: bool = False,
    ) -> None:
        live = outstanding.get(job_id)
        if live is None:
            return
        try:
            job = JobRecord.of(record)
        except ValidationError:
            logger.debug("skipping a job record of an unexpected shape")
            return
        self._seen(live, job, missed=verifying)

    def _seen(self, live: Watched, job: JobRecord, *, missed: bool) -> None:
        """A job's record was read: it exists, and it is observed now."""
        if live.not_found_since is not None:  # the end of a 404 streak: it was not gone
            self._decided(
                job.job_id,
                *found_decision(
                    not_found_for=self._clock.now() - live.not_found_since,
                    attempts=live.not_found_count,
                ),
            )
        live.confirmed_at = self._clock.now()
        live.ever_seen = True
        live.not_found_since = None
        live.not_found_count = 0
        if job.created_at is not None:
            live.created_at = job.created_at
        if missed and (job.is_terminal or job.state != live.state):
            # The sweeps by update did not show this change: the listing's order is off by
            # at least this much.
            self.sweeper.note_missed_update(job.updated_at)
        self._observe(job)

    async def _get_each(self, job_ids: Iterable[str], outstanding: Mapping[str, Watched]) -> None:
        async def one(job_id: str) -> None:
            live = outstanding.get(job_id)
            if live is None:
                return
            self.direct_gets += 1
            live.fetched_at = self._clock.now()
            try:
                job = await self._client.get_job(job_id)
            except NotFoundError:
                self._not_found(job_id, live)
                return
            except (AuthenticationError, PermissionDeniedError) as exc:
                self._fatal(exc)
                return
            except APIError as exc:
                logger.info("polling a job failed (%s); will try again", exc)
                return
            if outstanding.get(job_id) is live:
                self._seen(live, JobRecord.from_job(job), missed=self.sweeper.mode == "updated")

        await asyncio.gather(*(one(job_id) for job_id in job_ids))

    def _not_found(self, job_id: str, live: Watched) -> None:
        """A 404: replica lag while it may be, else the job is gone (retention)."""
        now = self._clock.now()
        ever_seen = live.ever_seen or live.resumed
        if live.not_found_since is None:
            live.not_found_since = now
            live.not_found_count = 0
            self._decided(job_id, *first_404_decision(ever_seen=ever_seen))
        live.not_found_count += 1
        verdict, retry_in = not_found_verdict(
            ever_seen=ever_seen,
            age=now - live.submitted_at,
            not_found_for=now - live.not_found_since,
            attempts=live.not_found_count,
        )
        if verdict == "wait":
            live.retry_get_at = now + retry_in
            logger.debug("a job answered 404 (replica lag?); asking again in %.2f s", retry_in)
            return
        self._decided(
            job_id,
            *gone_decision(
                ever_seen=ever_seen,
                age=now - live.submitted_at,
                not_found_for=now - live.not_found_since,
                attempts=live.not_found_count,
            ),
        )
        logger.info(
            "a job %s answered 404 for %.1f s (%d times): it is gone; resubmitting its request",
            "seen before" if live.ever_seen or live.resumed else "never seen",
            now - live.not_found_since,
            live.not_found_count,
        )
        self._vanished(job_id)


def _oldest_created(outstanding: Mapping[str, Any]) -> datetime | None:
    """The server's ``created_at`` of our oldest outstanding job, where it is known."""
    stamps = [live.created_at for live in outstanding.values() if live.created_at is not None]
    return min(stamps) if stamps else None
