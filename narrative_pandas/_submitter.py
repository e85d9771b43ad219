"""The submit side of a run: claim, POST once, and settle every unknown outcome.

For each request the engine hands over, :class:`Submitter` answers with one
:class:`SubmitResult` and never raises (except cancellation):

1. claim the request in the journal (``_claims``): a live claim of another run means *wait*
   for its job; a job already journaled means *poll it*; a cached result means *done*; a claim
   taken over from a dead owner is reconciled before anything is sent;
2. POST it. Created -> the job id is journaled before the job is polled. Surely not created
   (4xx, 429/502/503 after the client's retries, a connection that never sent) -> the claim is
   released and the engine may retry. Anything else (timeout, connection cut after sending,
   500/504, a 200 we cannot read, any unexpected exception) is *unknown*: the claim stays,
   marked ``unknown``, and the listing is searched (``_reconcile``) until it says "found" or
   "absent"; while it cannot be read the row waits (bounded by the run's ``timeout``) and is
   never resubmitted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._body import encode_body
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    CacheLockedError,
    NotFoundError,
    PermissionDeniedError,
)
from ._reconcile import SETTLE_S, Reconciler, Verdict, Wanted, content_key

if TYPE_CHECKING:
    from ._cache import CachedResult, Claim
    from ._claims import ClaimBook
    from ._client import Client
    from ._clock import Clock
    from ._job_request import JobRequest

__all__ = ["ABSENT_ROUNDS", "SubmitResult", "Submitter"]

logger = logging.getLogger("narrative_pandas")

#: POSTs under one claim whose outcome was unknown and then proved absent, before giving up.
ABSENT_ROUNDS = 5
#: Waits between searches of a listing that cannot be read: doubling from the first to the max.
UNREACHABLE_FIRST_WAIT_S = 1.0
UNREACHABLE_MAX_WAIT_S = 15.0

SubmitKind = Literal["job", "cached", "wait", "retry", "failed", "fatal", "unknown"]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """How a submission ended.

    ``job``: poll ``job_id`` (``how``: ``posted`` by us, ``reconciled`` from an unknown outcome,
    ``shared`` with another run that holds or held the claim). ``cached``: ``result`` is done.
    ``wait``: another live run holds the claim. ``retry``: surely not created, may be sent again.
    ``failed``: a row-level error. ``fatal``: a run-level error. ``unknown``: the outcome could
    not be settled in time (the claim stays journaled for a later run).
    """

    kind: SubmitKind
    job_id: str | None = None
    how: Literal["posted", "reconciled", "shared"] = "posted"
    result: CachedResult | None = None
    error: BaseException | None = None
    message: str = ""


class Submitter:
    """Claims and POSTs requests for one engine; see the module docstring."""

    def __init__(
        self,
        client: Client,
        claims: ClaimBook | None,
        reconciler: Reconciler,
        clock: Clock,
        *,
        timeout: float | None,
        refresh: bool,
        stopping: Callable[[], bool],
        trusted: Callable[[], bool],
    ) -> None:
        self._client = client
        self._claims = claims
        self._reconciler = reconciler
        self._clock = clock
        self._timeout = timeout
        self._refresh = refresh
        self._stopping = stopping
        self._trusted = trusted  # True once a POST of this run succeeded

    async def submit(self, request: JobRequest, claim: Claim | None = None) -> SubmitResult:
        """Claim (unless ``claim`` was taken already), then POST or reconcile ``request``."""
        claims = self._claims
        if claims is None:
            return await self._post(request, since=time.time())
        if claim is None:
            try:
                claim = await claims.claim(
                    request.key, request.tag, check_results=not self._refresh
                )
            except CacheLockedError as exc:  # nothing sent: stop the run, naming the file
                return SubmitResult("fatal", error=exc)
        if claim.outcome == "cached":
            return SubmitResult("cached", result=claim.result)
        if claim.outcome == "held":
            return SubmitResult("wait")
        entry = claim.entry
        assert entry is not None
        if claim.outcome == "job":
            assert entry.job_id is not None
            return SubmitResult("job", job_id=entry.job_id, how="shared")
        if claim.outcome == "taken_over":
            # The dead owner may have sent its POST: the listing decides before we send ours.
            logger.info("took over a claim of a run that is gone; reconciling it first")
            verdict = await self.settle(request, since=entry.submitted_at)
            settled = await self._after_unknown(request, verdict)
            if settled is not None:
                return settled
        return await self._post(request, since=entry.submitted_at)

    async def _post(self, request: JobRequest, *, since: float) -> SubmitResult:
        for _ in range(ABSENT_ROUNDS):
            try:
                job_id = await self._client.create_job(encode_body(request))
            except (AuthenticationError, PermissionDeniedError, NotFoundError) as exc:
                await self._release(request)
                return SubmitResult("fatal", error=exc)
            except BadRequestError as exc:
                await self._release(request)
                return SubmitResult("failed" if self._trusted() else "fatal", error=exc)
            except (APIStatusError, APIConnectionError) as exc:
                # 429/502/503 after the client's retries, or a request that was never sent.
                await self._release(request)
                if isinstance(exc, APIConnectionError) and not self._trusted():
                    # This run never reached the service, even through the client's retries:
                    # a wrong base_url or no network. Say so now, not after minutes of rounds.
                    return SubmitResult("fatal", error=exc)
                return SubmitResult("retry", error=exc)
            except Exception as exc:  # unknown: 500/504, timeout, cut after sending, bad JSON...
                logger.info("a POST's outcome is unknown (%s); reconciling", type(exc).__name__)
                if self._claims is not None:
                    await self._claims.unknown(request.key)
                verdict = await self.settle(request, since=since)
                settled = await self._after_unknown(request, verdict)
                if settled is not None:
                    return settled
                continue  # surely never created: POST again under the same claim
            await self._journal_job(request, job_id)
            return SubmitResult("job", job_id=job_id)
        await self._release(request)
        return SubmitResult(
            "failed",
            message=f"not submitted: {ABSENT_ROUNDS} POSTs got no readable answer and the job "
            "listing shows none of them",
        )

    async def _after_unknown(self, request: JobRequest, verdict: Verdict) -> SubmitResult | None:
        """The result for a settled unknown outcome; None when the job surely does not exist."""
        if verdict.kind == "found":
            assert verdict.job is not None
            await self._journal_job(request, verdict.job.job_id)
            return SubmitResult("job", job_id=verdict.job.job_id, how="reconciled")
        if verdict.kind == "fatal":
            return SubmitResult("fatal", error=verdict.error)
        if verdict.kind == "unknown":
            return SubmitResult("unknown", message=verdict.reason)
        return None

    async def settle(self, request: JobRequest, *, since: float) -> Verdict:
        """Search the listing until the outcome is known, or the run's timeout / a stop ends
        the wait (verdict ``unknown``); never earlier than :data:`SETTLE_S` from now."""
        started = self._clock.now()
        await self._clock.sleep(SETTLE_S)  # a job created moments ago may not be listed yet
        wanted = Wanted(request.tag, content_key(request.body), since)
        wait = UNREACHABLE_FIRST_WAIT_S
        while True:
            verdict = await self._reconciler.find(wanted)
            if verdict.kind != "unknown" or self._stopping():
                return verdict
            left = None if self._timeout is None else started + self._timeout - self._clock.now()
            if left is not None and left <= 0:
                return Verdict(
                    "unknown",
                    reason=f"timed out after {self._timeout:g}s: {verdict.reason}",
                )
            await self._clock.sleep(wait if left is None else min(wait, left))
            wait = min(UNREACHABLE_MAX_WAIT_S, wait * 2)

    async def _journal_job(self, request: JobRequest, job_id: str) -> None:
        if self._claims is None:
            return
        try:
            await self._claims.job(request.key, job_id, request.tag)
        except Exception:  # the job exists and is polled; the claim still marks it unsettled
            logger.warning("could not journal job %s", job_id, exc_info=True)

    async def _release(self, request: JobRequest) -> None:
        if self._claims is None:
            return
        try:
            await self._claims.release(request.key)
        except Exception:  # kept claims are reconciled by whoever comes next: safe, just slower
            logger.debug("could not release a claim", exc_info=True)
