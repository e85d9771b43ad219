"""The engine's submit side: one task per request that leaves the queue, which claims it,
POSTs it once (``_submitter``) and turns what happened into the row's next step."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ._engine_base import MAX_SUBMIT_ROUNDS, EngineBase, LiveRequest
from ._engine_resume import CLAIM_WAIT_POLL_S
from ._frame import RowOutcome
from ._submitter import SubmitResult

if TYPE_CHECKING:
    from ._cache import Claim

logger = logging.getLogger("narrative_pandas")

__all__ = ["SubmitSide"]

#: Wait before a round of resubmission (at most MAX_SUBMIT_ROUNDS of them, after the client's
#: own retries gave up): doubling from the first (an outage outlasts the client's retries).
RETRY_ROUND_FIRST_WAIT_S = 2.0
RETRY_ROUND_MAX_WAIT_S = 30.0


class SubmitSide(EngineBase):
    """The engine's part that sends requests and applies what their submissions answered."""

    def _start_submit(self, live: LiveRequest, claim: Claim | None = None) -> None:
        self._spawn(self._submit(live, claim), self._posting)

    async def _submit(self, live: LiveRequest, claim: Claim | None = None) -> None:
        """One submission task: it always ends in an applied result or a row outcome."""
        request = live.request
        try:
            slots = self._options.slots
            if slots is not None and request.key not in self._leases:
                await slots.acquire()
                self._leases.add(request.key)
                if self.stopping:
                    self._budget.settle(request.key, None)
                    await self._release(request.key)
                    self._queue.appendleft(live)
                    return
            result = await self._submitter.submit(request, claim)
            await self._apply(live, result)
        except asyncio.CancelledError:
            raise  # the wind-down settles the row: "submission outcome unknown; journaled"
        except Exception as exc:  # a bug or a broken cache: the row says so; nothing escapes
            logger.error("submitting a request failed unexpectedly", exc_info=True)
            self._budget.settle(request.key, None)
            self._release_soon(request.key)
            if request.key not in self.outcomes:
                self.report.failed += request.rows
                self._finish(
                    request,
                    RowOutcome(
                        error=f"failed while submitting ({type(exc).__name__}: {exc}); if a job "
                        "was created its claim stays journaled and a later run reconciles it",
                        status="failed",
                    ),
                    old=live.phase,
                    new="failed",
                )
        finally:
            self._wake.set()

    async def _apply(self, live: LiveRequest, result: SubmitResult) -> None:
        """Turn a submission's result into the row's next step."""
        request = live.request
        if result.kind == "job":
            assert result.job_id is not None
            if result.how == "shared":
                self.report.shared += request.rows
            else:
                self._any_post_succeeded = True
                if result.how == "posted":
                    self.report.submitted += 1
                else:
                    self.report.reconciled += 1
            if live.replaces is not None:
                self._decisions.replaced(request.key, result.job_id, live.replaces, result.how)
                live.replaces = None
            self._adopt(live, result.job_id, self._clock.now(), resumed=False, reserved=True)
            return
        self._budget.settle(request.key, None)
        await self._release(request.key)
        if result.kind == "cached":
            assert result.result is not None
            self._finish_cached(live, result.result, old=live.phase)
        elif result.kind == "wait":
            self._wait_on_claim(live)
            self._next_claim_check = min(
                self._next_claim_check, self._clock.now() + CLAIM_WAIT_POLL_S
            )
        elif result.kind == "fatal":
            assert result.error is not None
            self._set_fatal(result.error)
            self._queue.appendleft(live)
        elif result.kind == "retry":
            live.rounds += 1
            if live.rounds < MAX_SUBMIT_ROUNDS and not self.stopping:
                wait = RETRY_ROUND_FIRST_WAIT_S * 2 ** (live.rounds - 1)
                logger.info(
                    "requeueing a request in %.0fs after %s", wait, type(result.error).__name__
                )
                await self._clock.sleep(min(RETRY_ROUND_MAX_WAIT_S, wait))
                self._queue.append(live)
            else:
                self._fail(live, f"not submitted: {result.error}")
        elif result.kind == "failed":
            self._fail(live, result.message or f"not submitted: {result.error}")
        else:  # unknown, and the run's timeout (or a stop) ended the wait
            stopped = self._stop_reason
            if stopped is None:
                self.report.timed_out += request.rows
            self._finish(
                request,
                RowOutcome(
                    error=f"{stopped + ': ' if stopped else ''}submission outcome unknown "
                    f"({result.message}); it was never resubmitted, and its claim stays "
                    "journaled so a later run reconciles it",
                    status=stopped or "timeout",
                ),
                old=live.phase,
                new="stopped" if stopped else "failed",
            )
