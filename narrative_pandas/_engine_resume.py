"""Jobs the journal already holds: picked up at a run's start, and waited on while another
live run holds a request's claim (its job is shared, its answer served from the cache)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from ._claims import owner_alive
from ._engine_base import EngineBase, LiveRequest
from ._frame import RowOutcome

if TYPE_CHECKING:
    from ._cache import Claim, JournalEntry

logger = logging.getLogger("narrative_pandas")

__all__ = ["CLAIM_WAIT_POLL_S", "JournalAndClaims"]

#: Rows waiting on another run's claim re-read the journal and the cache this often.
CLAIM_WAIT_POLL_S = 0.2


class JournalAndClaims(EngineBase):
    """The engine's part that meets jobs and claims of earlier and concurrent runs."""

    async def _resume_from_journal(self) -> None:
        """Pick up journaled jobs; claims of runs that are gone are taken over and reconciled
        (one listing walk for all of them), claims of live runs are waited on."""
        claims = self._claims
        if claims is None or not self._queue:
            return
        keys = [live.request.key for live in self._queue]
        if self._cache is not None and self._cache.persistent:
            entries = await asyncio.to_thread(
                self._cache.journal_get_many, keys, self._options.journal_max_age
            )
        else:
            assert self._cache is not None
            entries = self._cache.journal_get_many(keys, max_age=self._options.journal_max_age)
        if not entries:
            return
        now = self._clock.now()
        remaining: deque[LiveRequest] = deque()
        claimless: list[LiveRequest] = []
        for live in self._queue:
            entry = entries.get(live.request.key)
            if entry is None:
                remaining.append(live)
            elif entry.job_id:
                self._adopt(live, entry.job_id, now, resumed=True)
            else:
                claimless.append(live)
        self._queue = remaining
        found = await claims.claim_many(
            ((live.request.key, live.request.tag) for live in claimless),
            check_results=not self._options.refresh,
        )
        for live in claimless:
            claim = found[live.request.key]
            if claim.outcome == "taken_over":  # reconciled in a task of its own, batched
                self._budget.reserve(live.request)
                self._start_submit(live, claim)
            else:
                self._apply_claim_now(live, claim)
        logger.info("resuming %d journaled job(s) instead of resubmitting", len(self._outstanding))

    def _apply_claim_now(self, live: LiveRequest, claim: Claim) -> None:
        """A claim met at resume that needs no request: adopt, serve, wait, or queue."""
        if claim.outcome == "job" and claim.entry is not None and claim.entry.job_id:
            self._adopt(live, claim.entry.job_id, self._clock.now(), resumed=False)
            self.report.shared += live.request.rows
        elif claim.outcome == "cached" and claim.result is not None:
            self._finish_cached(live, claim.result, old="queued")
        elif claim.outcome == "held":
            self._wait_on_claim(live)
        else:  # new / ours: ours to submit
            self._queue.appendleft(live)

    async def _check_waiting(self) -> None:
        """Rows waiting on another run's claim: serve its cached result, poll its job, or claim
        the request ourselves once that claim is gone (its owner ended or died)."""
        claims = self._claims
        assert claims is not None
        keys = list(self._waiting)
        results, entries = await claims.read(keys)
        now = self._clock.now()
        for key in keys:
            live = self._waiting.get(key)
            if live is None:
                continue
            entry: JournalEntry | None = entries.get(key)
            if key in results and not self._options.refresh:
                del self._waiting[key]
                self._finish_cached(live, results[key], old=live.phase)
            elif entry is not None and entry.job_id:
                del self._waiting[key]
                self._adopt(live, entry.job_id, now, resumed=False)
                self.report.shared += live.request.rows
            elif entry is None or not owner_alive(entry):
                del self._waiting[key]  # claim it again: new, or taken over and reconciled
                self._queue.appendleft(live)
            elif self._options.timeout is not None and now - live.submitted_at >= (
                self._options.timeout
            ):
                del self._waiting[key]
                self.report.timed_out += live.request.rows
                self._finish(
                    live.request,
                    RowOutcome(
                        error=f"timed out after {self._options.timeout:g}s waiting for another "
                        "run that is submitting the same request",
                        status="timeout",
                    ),
                    old=live.phase,
                    new="failed",
                )
