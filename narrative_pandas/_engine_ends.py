"""What a poll's news does to a job: progress, its outcome when it ends, a resubmission when
the service no longer knows it, a timeout."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._engine_base import MAX_SUBMIT_ROUNDS, EngineBase, LiveRequest
from ._frame import RowOutcome
from ._models import JobRecord, TokenCounts, shared

if TYPE_CHECKING:
    from ._decision_log import Verdict
    from ._progress import Phase

logger = logging.getLogger("narrative_pandas")

__all__ = ["JobEnds"]


class JobEnds(EngineBase):
    """The engine's part that turns observed jobs into row outcomes."""

    def _record_latency(self, live: LiveRequest, job: JobRecord) -> None:
        created, ended = job.created_at, job.updated_at
        service = None if created is None or ended is None else (ended - created).total_seconds()
        self._cadence.record(self._clock.now() - live.submitted_at, service)

    def _observe(self, job: JobRecord) -> None:
        live = self._outstanding.get(job.job_id)
        if live is None:
            return
        if job.is_terminal or job.state != live.state:
            self._poller.progressed()
            live.state = job.state
        if job.is_terminal:
            del self._outstanding[job.job_id]
            if not live.resumed:
                self._record_latency(live, job)
            self._conclude(live, job)
            # The freed slot takes its next request now, not after the rest of this poll.
            self._fill()
            self._wake.set()
            return
        phase: Phase | None = {"pending": "pending", "running": "running"}.get(job.state)  # type: ignore[assignment]
        if phase is not None and phase != live.phase:
            self._tracker.transition(live.request.rows, live.phase, phase, key=live.request.key)
            live.phase = phase

    def _conclude(self, live: LiveRequest, job: JobRecord) -> None:
        request = live.request
        usage = job.usage
        counts = TokenCounts.of(usage)
        if counts is not None:
            counts = shared(self._counts, counts)
        if usage is None and job.state == "completed" and job.has_result:
            # An answer without usage is counted, for the budget and the report, by an
            # estimate (_budget.py); the row's own token columns stay empty.
            usage = self._budget.estimated_usage(request, job.output)
            self.report.tokens_estimated = True
        self._budget.settle(request.key, usage)
        if usage is not None:
            self.report.prompt_tokens += usage.prompt_tokens
            self.report.completion_tokens += usage.completion_tokens
            self.report.total_tokens += usage.total_tokens
            self._tracker.add_tokens(usage.total_tokens, key=request.key)
        if job.state != "completed":
            self.report.failed += request.rows
            self._finish(
                request,
                RowOutcome(
                    error=job.failure_message(), job_id=job.job_id, usage=counts, status="failed"
                ),
                old=live.phase,
                new="failed",
            )
            self._journal_done(request.key, job.job_id)
            return
        output, error = self._spec.validate(job.output)
        if output is None:
            self.report.invalid += request.rows
            self._finish(
                request,
                RowOutcome(
                    error=error or "invalid output",
                    job_id=job.job_id,
                    usage=counts,
                    status="invalid",
                ),
                old=live.phase,
                new="failed",
            )
            self._journal_done(request.key, job.job_id)
            return
        self.report.completed += request.rows
        self._writes.result(request.key, output, usage, job.job_id, request.common.model)
        self._finish(
            request,
            RowOutcome(output=output, job_id=job.job_id, usage=counts, status="completed"),
            old=live.phase,
            new="completed",
        )

    def _journal_done(self, key: str, job_id: str) -> None:
        """The job ended or is gone: drop its entry (a newer claim of the same key stays)."""
        self._writes.settled(key, job_id)

    def _decided(self, job_id: str, verdict: Verdict, detail: str) -> None:
        """The poller judged a 404 of ``job_id``: the journal keeps it beside the request."""
        live = self._outstanding.get(job_id)
        if live is not None:
            self._decisions.record(live.request.key, verdict, job_id, detail)

    def _job_vanished(self, job_id: str) -> None:
        """404 on a job we know: expired or never kept. Resubmit it (it was never finished)."""
        live = self._outstanding.pop(job_id, None)
        if live is None:
            return
        logger.info("job %s is no longer known to the service; resubmitting its request", job_id)
        self._budget.settle(live.request.key, None)
        self._release_soon(live.request.key)
        self._writes.settled_now(live.request.key, job_id)  # before the request is claimed again
        self._tracker.transition(live.request.rows, live.phase, "queued", key=live.request.key)
        live.job_id = None
        live.phase = "queued"
        live.rounds += 1
        live.replaces = job_id
        # The next job starts afresh: an old 404 streak or "seen before" would judge its first
        # replica-lag 404 as retention (gone at once, paid again).
        live.ever_seen = live.resumed = False
        live.not_found_since, live.not_found_count, live.retry_get_at = None, 0, 0.0
        live.created_at, live.state = None, "pending"
        if live.rounds < MAX_SUBMIT_ROUNDS:
            self._queue.appendleft(live)
        else:
            self._decisions.given_up(live.request.key, job_id, live.rounds)
            self._finish(
                live.request,
                RowOutcome(error="the job disappeared from the service", status="failed"),
                old="queued",
                new="failed",
            )
        self._wake.set()

    def _expire_timeouts(self) -> None:
        timeout = self._options.timeout
        if timeout is None:
            return
        now = self._clock.now()
        for job_id, live in list(self._outstanding.items()):
            if now - live.submitted_at < timeout:
                continue
            del self._outstanding[job_id]
            self._budget.settle(live.request.key, None)
            self.report.timed_out += live.request.rows
            self._finish(
                live.request,
                RowOutcome(
                    error=f"timed out after {timeout:g}s (the job was still {live.phase}; it may "
                    "still finish and be billed — it stays journaled, so a later run collects "
                    "it)",
                    job_id=job_id,
                    status="timeout",
                ),
                old=live.phase,
                new="failed",
            )
