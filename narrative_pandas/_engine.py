"""The job engine: turns unique requests into finished outcomes, paying for each at most once.

One engine runs one run. It

- serves what the cache already holds, and picks up jobs the journal says were already submitted
  (claims of runs that are gone are reconciled through the job listing, by their tag);
- keeps at most ``concurrency`` jobs unfinished, submitting the next request as soon as one ends;
- polls many outstanding jobs with few requests: one ``GET /jobs`` sweep (newest updates first,
  paging only down to what the previous sweep already saw) answers for all of them, and
  ``GET /jobs/{id}`` is used for a few jobs and for stragglers;
- never creates two jobs for one request: each POST is preceded by a claim in the journal that
  other runs (threads, processes) respect, and a POST whose outcome is unknown stays unknown
  until the listing settles it (``_submitter``, ``_claims``, ``_reconcile``);
- ends every request in exactly one :class:`RowOutcome`.

Run-level failures (bad key, no permission, unknown data plane) stop submitting at once and are
raised after what is in flight has been journaled; row-level problems become outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Literal

from ._cadence import MAX_POLL_INTERVAL_S, RAMP_HOLD_MAX_S
from ._claims import live_run
from ._engine_base import (
    EngineOptions,
    EngineReport,
    LiveRequest,
    SlotLimiter,
    StopReason,
)
from ._engine_ends import JobEnds
from ._engine_resume import CLAIM_WAIT_POLL_S, JournalAndClaims
from ._engine_submit import SubmitSide
from ._frame import RowOutcome

if TYPE_CHECKING:
    from ._progress import Phase

__all__ = [
    "Engine",
    "EngineOptions",
    "EngineReport",
    "SlotLimiter",
    "StopReason",
]

logger = logging.getLogger("narrative_pandas")

#: After a stop, how long the last look at outstanding jobs may take before the run returns.
WIND_DOWN_POLL_S = 0.3


class Engine(SubmitSide, JournalAndClaims, JobEnds):
    """Runs one set of unique requests to outcomes. Create, then ``await engine.run()``.

    Its state and shared steps are :class:`~._engine_base.EngineBase`'s; here is the run's
    course: the cache, the journal, the loop that fills slots and polls, and the wind-down."""

    # ------------------------------------------------------------------ main

    async def run(self) -> dict[str, RowOutcome]:
        """Drive every request to an outcome; raise a run-level error after journaling."""
        self._loop = asyncio.get_running_loop()
        if self._claims is None:
            return await self._run()
        with live_run(self._claims.owner):  # our claims count as alive while this runs
            self._claims.start_heartbeat()
            try:
                return await self._run()
            finally:
                await asyncio.shield(self._end_submit_side())

    async def _run(self) -> dict[str, RowOutcome]:
        try:
            return await self._run_to_end()
        finally:
            self._writes.flush()  # what the last polls ended

    async def _run_to_end(self) -> dict[str, RowOutcome]:
        try:
            await self._serve_from_cache()
            await self._resume_from_journal()
            await self._main_loop()
        except asyncio.CancelledError:
            self._stop_reason = self._stop_reason or "interrupted"
            await asyncio.shield(self._wind_down())
            raise
        except Exception as exc:  # a bug or a broken cache: a run-level error, tasks wound down
            self._set_fatal(exc)
            await asyncio.shield(self._wind_down())
            raise
        if self._fatal is not None or self._stop_reason is not None:
            await self._wind_down()
        if self._fatal is not None:
            raise self._fatal
        self._settle_unfinished("internal error: the run ended without an outcome for this row")
        self.report.status = self._stop_reason or "done"
        await self._drain_releases()
        return self.outcomes

    async def _end_submit_side(self) -> None:
        await self._reconciler.close()
        if self._claims is not None:
            self._claims.write_jobs()  # job ids answered in the run's last turn of the loop
            await self._claims.stop_heartbeat()

    async def _serve_from_cache(self) -> None:
        pending = self._requests
        if self._cache is not None and not self._options.refresh and pending:
            keys = [r.key for r in pending]
            if self._cached is not None:
                hits = self._cached
            elif self._cache.persistent:  # a file may wait for its lock: never on the loop
                hits = await asyncio.to_thread(self._cache.get_many, keys)
            else:
                hits = self._cache.get_many(keys)
            for request in pending:
                hit = hits.get(request.key)
                if hit is not None:
                    self._finish_cached(LiveRequest(request), hit, old="queued")
        for request in pending:
            if request.key not in self.outcomes:
                self._queue.append(LiveRequest(request))

    async def _main_loop(self) -> None:
        next_poll = self._clock.now()
        while True:
            self._fill()
            if not (self._queue or self._posting or self._outstanding or self._waiting):
                return
            if self.stopping:
                return
            now = self._clock.now()
            if self._waiting and now >= self._next_claim_check:
                await self._check_waiting()
                self._next_claim_check = self._clock.now() + CLAIM_WAIT_POLL_S
                continue
            if self._outstanding and now >= next_poll and not self._ramp_holds(now):
                await self._until_stopped(self._poll())
                if self.stopping:
                    return
                self._expire_timeouts()
                self._tracker.tick()
                next_poll = self._cadence.next_poll(
                    self._clock.now(),
                    [live.submitted_at for live in self._outstanding.values()],
                    started=now,
                )
                continue
            wait_for = next_poll - now if self._outstanding else MAX_POLL_INTERVAL_S
            if wait_for <= 0:  # held for the ramp: a POST ending wakes the loop, or the cap
                wait_for = RAMP_HOLD_MAX_S / 10
            if self._waiting:
                wait_for = min(wait_for, self._next_claim_check - now)
            self._wake.clear()
            await self._clock.wait(self._wake, max(0.0, wait_for))

    def _ramp_holds(self, now: float) -> bool:
        """The first wave's polls wait while its POSTs queue for connections
        (``PollCadence.holds_for_ramp``); not with a cluster's leases, whose waits only a
        finished job ends."""
        if self._options.slots is not None or self._cadence.finished:
            return False
        if len(self._posting) <= self._client.max_connections:  # no queue a read could overtake
            return False
        oldest = min(live.submitted_at for live in self._outstanding.values())
        return self._cadence.holds_for_ramp(
            now, posting=len(self._posting), oldest_submitted=oldest
        )

    def _fill(self) -> None:
        """Submit from the queue while slots are free and the budget allows."""
        # Until one POST has succeeded, send one at a time: a bad key, a forbidden or unknown data
        # plane or an unknown model then costs one request, not ``concurrency`` of them.
        while (
            self._queue
            and not self.stopping
            and len(self._outstanding) + len(self._posting) < self._options.concurrency
            and (self._any_post_succeeded or not self._posting)
        ):
            live = self._queue[0]
            if not self._budget.allows(live.request):
                if not self._outstanding and not self._posting:
                    self._give_up_queue("budget")
                return
            self._queue.popleft()
            self._budget.reserve(live.request)
            self._start_submit(live)

    def _give_up_queue(self, why: Literal["budget", "cancelled", "interrupted"]) -> None:
        limit = self._options.max_total_tokens
        messages = {
            "budget": f"not submitted: max_total_tokens={limit} would be exceeded "
            f"(used {self._budget.used})",
            "cancelled": "not submitted (cancelled)",
            "interrupted": "not submitted (interrupted)",
        }
        while self._queue:
            live = self._queue.popleft()
            self.report.not_submitted += live.request.rows
            self._finish(
                live.request,
                RowOutcome(error=messages[why], status=why),
                old="queued",
                new="stopped",
            )

    # ------------------------------------------------------------------ poll

    def _poll_interval(self) -> float:
        now = self._clock.now()
        submitted = [live.submitted_at for live in self._outstanding.values()]
        return self._cadence.interval(now, submitted, len(submitted))

    async def _poll(self) -> None:
        self.report.polls += 1
        try:
            self.report.listing_sweeps += await self._poller.poll(
                self._outstanding,
                interval=self._poll_interval(),
                mean_latency=self._cadence.mean_latency,
            )
        finally:
            self._writes.flush(wait=True)  # what polls ended, in one write (_finished.py)
        self.report.direct_gets = self._poller.direct_gets
        self.report.listing_mode = self._poller.sweeper.mode

    async def _until_stopped(self, work: Any) -> None:
        """Run ``work`` (a poll) unless the run is stopped first: then it is cancelled at once,
        so a stalled request never delays ``cancel()`` or Ctrl-C."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, stopped, return_exceptions=True)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()

    # ------------------------------------------------------------------ stop

    async def _wind_down(self) -> None:
        """Stop: let POSTs on the wire finish (journaling their jobs), then settle every row."""
        if self._posting:
            _, still = await asyncio.wait(set(self._posting), timeout=self._options.submit_grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
                logger.warning(
                    "%d submission(s) did not answer in time; their claims stay journaled and "
                    "the next run reconciles them through the job listing",
                    len(still),
                )
        if self._fatal is None and self._outstanding:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._poll(), timeout=min(self._options.submit_grace, WIND_DOWN_POLL_S)
                )
        reason: Literal["cancelled", "interrupted"] = self._stop_reason or "cancelled"
        for job_id, live in list(self._outstanding.items()):
            self._finish(
                live.request,
                RowOutcome(
                    error=f"still {live.phase} when {reason}; a later run collects the job",
                    job_id=job_id,
                    status=reason,
                ),
                old=live.phase,
                new="stopped",
            )
        self._outstanding.clear()
        self._queue.extend(self._waiting.values())  # another run submits these: not us
        self._waiting.clear()
        self._give_up_queue(reason)
        # A POST cancelled at the grace limit:
        self._settle_unfinished(
            f"submission outcome unknown when {reason}; a later run finds the job", status=reason
        )
        self.report.status = "error" if self._fatal is not None else reason
        await self._drain_releases()

    def _settle_unfinished(self, error: str, *, status: str = "failed") -> None:
        """Give every request still without an outcome this one (so the frame and the report
        always agree, whatever happened to the task that owned it)."""
        new: Phase = "stopped" if status in ("cancelled", "interrupted") else "failed"
        for request in self._requests:
            if request.key not in self.outcomes:
                if new == "failed":
                    self.report.failed += request.rows
                self._finish(request, RowOutcome(error=error, status=status), old="queued", new=new)
