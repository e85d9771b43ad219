"""The job engine: turns unique requests into finished outcomes, paying for each at most once.

One engine runs one run. It

- serves what the cache already holds, and picks up jobs the journal says were already submitted
  (reconciling POSTs whose outcome was never learned through the job listing, by their tag);
- keeps at most ``concurrency`` jobs unfinished, submitting the next request as soon as one ends;
- polls many outstanding jobs with few requests: one ``GET /jobs`` sweep (newest updates first,
  paging only down to what the previous sweep already saw) answers for all of them, and
  ``GET /jobs/{id}`` is used for a few jobs and for stragglers;
- never creates two jobs for one request: the intent is journaled before each POST, and a POST
  whose outcome is unknown is reconciled through the listing before anything is resent;
- ends every request in exactly one :class:`RowOutcome`.

Run-level failures (bad key, no permission, unknown data plane) stop submitting at once and are
raised after what is in flight has been journaled; row-level problems become outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import ValidationError

from ._cache import call_off_loop
from ._clock import Clock, system_clock
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APIUnknownOutcomeError,
    AuthenticationError,
    BadRequestError,
    CacheLockedError,
    NotFoundError,
    PermissionDeniedError,
)
from ._frame import RowOutcome
from ._models import InferenceUsage, Job, TokenCounts, parse_timestamp

if TYPE_CHECKING:
    from ._cache import Cache
    from ._client import Client
    from ._progress import Phase, ProgressTracker
    from ._schema import OutputSpec

__all__ = [
    "Engine",
    "EngineOptions",
    "EngineReport",
    "JobRequest",
    "RequestCommon",
    "SlotLimiter",
    "StopReason",
    "request_tag",
]

logger = logging.getLogger("narrative_pandas")

StopReason = Literal["cancelled", "interrupted"]

#: With at most this many outstanding jobs, poll each with ``GET /jobs/{id}``; more use the listing.
FEW_JOBS = 3
#: Largest page the service serves.
MAX_PER_PAGE = 500
#: Pages one listing sweep may read before the rest are left to per-job GETs.
MAX_SWEEP_PAGES = 8
#: Server-time slack when deciding that a listing page is older than the previous sweep.
WATERMARK_MARGIN_S = 0.5
#: A job not confirmed by a complete sweep for this long is fetched on its own.
STRAGGLER_AFTER_S = 30.0
#: Per-job GETs per poll at most (the rest wait for the next poll).
MAX_STRAGGLER_GETS = 16
#: Adaptive poll interval: a fraction of the oldest outstanding job's age, within bounds.
POLL_AGE_FRACTION = 0.1
#: ... and at most the time in which about this many of the outstanding jobs should finish.
JOBS_PER_POLL = 15
MIN_POLL_INTERVAL_S = 0.05
MAX_POLL_INTERVAL_S = 5.0
#: Pages of the listing searched for the tag of a POST whose outcome is unknown.
RECONCILE_PAGES = 4
#: How often a reconciliation that found nothing looks again before resubmitting.
RECONCILE_ATTEMPTS = 2
RECONCILE_DELAY_S = 1.0
#: Rounds of resubmission after the client's own retries gave up (429/5xx/connection).
MAX_SUBMIT_ROUNDS = 5
#: How long a stopping run waits for POSTs already on the wire, so their job ids are journaled.
SUBMIT_GRACE_S = 5.0
#: Completion tokens assumed for the budget before any job has completed and without max_tokens.
DEFAULT_COMPLETION_ESTIMATE = 256


#: Tags the library adds to every job: one to find its jobs, one per request to reconcile POSTs.
LIBRARY_TAG = "narrative-pandas"
TAG_PREFIX = "npd-"


def request_tag(key: str) -> str:
    """The per-request tag: found through the job listing when a POST's outcome is unknown."""
    return TAG_PREFIX + key[:32]


@dataclass(frozen=True)
class RequestCommon:
    """What every request of a run shares: held once, not once per row."""

    data_plane_id: str
    model: str
    inference_config: Mapping[str, Any]
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One unique request of a run: its fingerprint, its messages and how many rows share it.

    The JSON body is built when it is sent (``body``), so a run holds each row's text once.
    """

    key: str
    messages: tuple[tuple[str, str], ...]
    common: RequestCommon
    rows: int
    prompt_tokens_estimate: int

    @property
    def tag(self) -> str:
        return request_tag(self.key)

    @property
    def body(self) -> dict[str, Any]:
        """The body of ``POST /model-inference/run``."""
        common = self.common
        return {
            "data_plane_id": common.data_plane_id,
            "model": common.model,
            "messages": [{"role": role, "text": text} for role, text in self.messages],
            "inference_config": common.inference_config,
            "tags": [*common.tags, LIBRARY_TAG, self.tag],
        }

    @classmethod
    def from_body(
        cls, key: str, body: Mapping[str, Any], *, rows: int, prompt_tokens_estimate: int
    ) -> JobRequest:
        """Rebuild a request from a recorded body (``attach``)."""
        own = (LIBRARY_TAG, request_tag(key))
        common = RequestCommon(
            data_plane_id=body["data_plane_id"],
            model=body["model"],
            inference_config=body["inference_config"],
            tags=tuple(t for t in body.get("tags") or () if t not in own),
        )
        messages = tuple((m["role"], m["text"]) for m in body["messages"])
        return cls(key, messages, common, rows, prompt_tokens_estimate)


class SlotLimiter(Protocol):
    """A limit on unfinished jobs shared beyond this engine (e.g. across Dask workers).

    ``acquire`` waits for a free slot; ``release`` gives one back. The engine takes one slot per
    job before its POST and gives it back when the job ends or the run stops waiting for it.
    """

    async def acquire(self) -> None: ...

    async def release(self) -> None: ...


@dataclass(frozen=True)
class EngineOptions:
    """How a run behaves; validated by the caller before the engine starts."""

    concurrency: int = 64
    poll_interval: float | None = None
    timeout: float | None = None
    max_total_tokens: int | None = None
    refresh: bool = False
    journal_max_age: float | None = 7 * 24 * 3600.0
    submit_grace: float = SUBMIT_GRACE_S
    data_plane_id: str | None = None
    slots: SlotLimiter | None = None


@dataclass
class EngineReport:
    """What one run did, in numbers; becomes part of ``out.attrs["narrative"]``."""

    unique_requests: int = 0
    cached: int = 0
    resumed: int = 0
    reconciled: int = 0
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    invalid: int = 0
    timed_out: int = 0
    not_submitted: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    polls: int = 0
    listing_sweeps: int = 0
    status: str = "running"


@dataclass(slots=True)
class _Live:
    """A request that has left the queue: being posted, or a job we are waiting for."""

    request: JobRequest
    job_id: str | None = None
    phase: Phase = "queued"
    submitted_at: float = 0.0
    confirmed_at: float = 0.0
    resumed: bool = False
    rounds: int = 0


@dataclass
class _Budget:
    """Token budget: completed tokens plus an estimate for what is in flight."""

    limit: int | None
    max_tokens: int | None
    used: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    completions: int = 0
    completion_tokens: int = 0
    largest_completion: int = 0

    def estimate(self, request: JobRequest) -> int:
        if self.max_tokens is not None:
            completion = self.max_tokens
        elif self.completions:
            completion = max(
                self.largest_completion, math.ceil(1.5 * self.completion_tokens / self.completions)
            )
        else:
            completion = DEFAULT_COMPLETION_ESTIMATE
        return request.prompt_tokens_estimate + completion

    def allows(self, request: JobRequest) -> bool:
        if self.limit is None:
            return True
        return self.used + sum(self.in_flight.values()) + self.estimate(request) <= self.limit

    def reserve(self, request: JobRequest) -> None:
        if self.limit is not None:
            self.in_flight[request.key] = self.estimate(request)

    def settle(self, key: str, usage: InferenceUsage | None) -> None:
        self.in_flight.pop(key, None)
        if usage is not None:
            self.used += usage.total_tokens
            self.completions += 1
            self.completion_tokens += usage.completion_tokens
            self.largest_completion = max(self.largest_completion, usage.completion_tokens)


class _Fatal(Exception):
    """Internal: a run-level error seen by a task, carried to the main loop."""


class Engine:
    """Runs one set of unique requests to outcomes. Create, then ``await engine.run()``."""

    def __init__(
        self,
        client: Client,
        requests: Sequence[JobRequest],
        spec: OutputSpec,
        *,
        cache: Cache | None,
        options: EngineOptions,
        tracker: ProgressTracker,
        run_id: str,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._requests = list(requests)
        self._spec = spec
        self._cache = cache
        self._options = options
        self._tracker = tracker
        self._run_id = run_id
        self._clock = clock or system_clock
        self.outcomes: dict[str, RowOutcome] = {}
        self.report = EngineReport(unique_requests=len(self._requests))
        self._queue: deque[_Live] = deque()
        self._outstanding: dict[str, _Live] = {}
        self._posting: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop_reason: StopReason | None = None
        self._fatal: BaseException | None = None
        self._any_post_succeeded = False
        self._watermark: datetime | None = None
        max_tokens = None
        if self._requests:
            max_tokens = self._requests[0].common.inference_config.get("max_tokens")
        self._budget = _Budget(options.max_total_tokens, max_tokens)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leases: set[str] = set()
        self._listing_usable = True
        self._mean_latency = 0.0
        self._finished_jobs = 0
        self._largest_page = 0
        self._release_tasks: set[asyncio.Task[None]] = set()
        self._lease_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ control

    def stop(self, reason: StopReason = "cancelled") -> None:
        """Stop submitting (thread-safe). Submitted jobs stay journaled; the run winds down."""
        loop = self._loop
        if loop is None:
            self._stop_reason = self._stop_reason or reason
            return
        with contextlib.suppress(RuntimeError):  # loop already closed: nothing left to stop
            loop.call_soon_threadsafe(self._request_stop, reason)

    def _request_stop(self, reason: StopReason) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None or self._fatal is not None

    # ------------------------------------------------------------------ main

    async def run(self) -> dict[str, RowOutcome]:
        """Drive every request to an outcome; raise a run-level error after journaling."""
        self._loop = asyncio.get_running_loop()
        try:
            self._serve_from_cache()
            await self._resume_from_journal()
            await self._main_loop()
        except asyncio.CancelledError:
            self._stop_reason = self._stop_reason or "interrupted"
            await asyncio.shield(self._wind_down())
            raise
        if self._fatal is not None or self._stop_reason is not None:
            await self._wind_down()
        if self._fatal is not None:
            raise self._fatal
        self.report.status = self._stop_reason or "done"
        await self._drain_releases()
        return self.outcomes

    def _serve_from_cache(self) -> None:
        pending = self._requests
        if self._cache is not None and not self._options.refresh and pending:
            hits = self._cache.get_many(r.key for r in pending)
            for request in pending:
                hit = hits.get(request.key)
                if hit is None:
                    continue
                self._finish(
                    request,
                    RowOutcome(
                        output=hit.output,
                        job_id=hit.job_id,
                        usage=TokenCounts.of(hit.usage),
                        status="cached",
                    ),
                    old="queued",
                    new="cached",
                )
                self.report.cached += request.rows
        for request in pending:
            if request.key not in self.outcomes:
                self._queue.append(_Live(request))

    async def _resume_from_journal(self) -> None:
        if self._cache is None or not self._queue:
            return
        entries = self._cache.journal_get_many(
            (live.request.key for live in self._queue), max_age=self._options.journal_max_age
        )
        if not entries:
            return
        now = self._clock.now()
        remaining: deque[_Live] = deque()
        intents: list[_Live] = []
        for live in self._queue:
            entry = entries.get(live.request.key)
            if entry is None:
                remaining.append(live)
            elif entry.job_id:
                self._adopt(live, entry.job_id, now, resumed=True)
            else:
                intents.append(live)
        self._queue = remaining
        if intents:
            found = await self._find_tagged_jobs({live.request.tag: live for live in intents})
            for live in intents:
                job = found.get(live.request.tag)
                if job is None:
                    self._queue.appendleft(live)
                else:
                    self._adopt(live, job.job_id, now, resumed=True)
                    self.report.reconciled += 1
                    if self._cache is not None:
                        self._cache.journal_job(
                            live.request.key, job.job_id, live.request.tag, self._run_id
                        )
        logger.info("resuming %d journaled job(s) instead of resubmitting", len(self._outstanding))

    def _adopt(self, live: _Live, job_id: str, now: float, *, resumed: bool) -> None:
        live.job_id = job_id
        live.phase = "pending"
        live.submitted_at = now
        live.confirmed_at = now
        live.resumed = resumed
        self._outstanding[job_id] = live
        self._budget.reserve(live.request)
        if self._options.slots is not None:
            task = asyncio.create_task(self._lease_for_adopted(live.request.key))
            self._lease_tasks.add(task)
            task.add_done_callback(self._lease_tasks.discard)
        if resumed:
            self.report.resumed += live.request.rows
        self._tracker.transition(live.request.rows, "queued", "pending")

    async def _main_loop(self) -> None:
        next_poll = self._clock.now()
        while True:
            self._fill()
            if not self._queue and not self._posting and not self._outstanding:
                return
            if self.stopping:
                return
            now = self._clock.now()
            if self._outstanding and now >= next_poll:
                await self._poll()
                self._expire_timeouts()
                self._tracker.tick()
                next_poll = self._clock.now() + self._poll_interval()
                continue
            wait_for = next_poll - now if self._outstanding else MAX_POLL_INTERVAL_S
            self._wake.clear()
            await self._clock.wait(self._wake, max(0.0, wait_for))

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
            task = asyncio.create_task(self._submit(live))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)

    def _give_up_queue(self, why: Literal["budget", "cancelled", "interrupted"]) -> None:
        limit = self._options.max_total_tokens
        messages = {
            "budget": f"not submitted: max_total_tokens={limit} would be exceeded "
            f"(used {self._budget.used})",
            "cancelled": "cancelled: not submitted",
            "interrupted": "interrupted: not submitted",
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

    # ------------------------------------------------------------------ submit

    async def _submit(self, live: _Live) -> None:
        request = live.request
        slots = self._options.slots
        if slots is not None and request.key not in self._leases:
            await slots.acquire()
            self._leases.add(request.key)
            if self.stopping:
                self._budget.settle(request.key, None)
                await self._release(request.key)
                self._queue.appendleft(live)
                return
        try:
            job_id = await self._post_once_or_reconcile(live)
        except _Fatal:
            self._budget.settle(request.key, None)
            await self._release(request.key)
            self._queue.appendleft(live)
            self._wake.set()
            return
        except (APIStatusError, APIConnectionError) as exc:
            self._budget.settle(request.key, None)
            await self._release(request.key)
            live.rounds += 1
            if live.rounds < MAX_SUBMIT_ROUNDS and not self.stopping:
                logger.info("requeueing a request after %s", type(exc).__name__)
                self._queue.append(live)
            else:
                self._finish(
                    request,
                    RowOutcome(error=f"not submitted: {exc}", status="failed"),
                    old="queued",
                    new="failed",
                )
                self.report.failed += request.rows
            self._wake.set()
            return
        if job_id is None:  # reconciliation says: never created; try again
            self._budget.settle(request.key, None)
            await self._release(request.key)
            live.rounds += 1
            if live.rounds < MAX_SUBMIT_ROUNDS and not self.stopping:
                self._queue.appendleft(live)
            else:
                self._finish(
                    request,
                    RowOutcome(
                        error="not submitted: the service never confirmed the job", status="failed"
                    ),
                    old="queued",
                    new="failed",
                )
            self._wake.set()
            return
        if self._cache is not None:
            self._cache.journal_job(request.key, job_id, request.tag, self._run_id)
        self.report.submitted += 1
        self._any_post_succeeded = True
        now = self._clock.now()
        live.job_id = job_id
        live.phase = "pending"
        live.submitted_at = now
        live.confirmed_at = now
        self._outstanding[job_id] = live
        self._tracker.transition(request.rows, "queued", "pending")
        self._wake.set()

    async def _post_once_or_reconcile(self, live: _Live) -> str | None:
        """POST the request; on an unknown outcome, look for its tag before deciding."""
        request = live.request
        if self._cache is not None:
            try:  # durable before the POST; in a thread, as the file may be locked for a while
                await call_off_loop(
                    self._cache, self._cache.journal_intent, request.key, request.tag, self._run_id
                )
            except CacheLockedError as exc:  # nothing sent: stop the run, say which file
                self._set_fatal(exc)
                raise _Fatal from exc
        try:
            job = await self._client.run_model_inference(request.body)
        except (AuthenticationError, PermissionDeniedError, NotFoundError) as exc:
            self._set_fatal(exc)
            raise _Fatal from exc
        except BadRequestError as exc:
            if not self._any_post_succeeded:
                self._set_fatal(exc)
                raise _Fatal from exc
            raise
        except APIUnknownOutcomeError:
            logger.info("a POST's outcome is unknown; reconciling through the job listing")
            for attempt in range(RECONCILE_ATTEMPTS):
                found = await self._find_tagged_jobs({request.tag: live})
                if request.tag in found:
                    self.report.reconciled += 1
                    return found[request.tag].job_id
                if attempt + 1 < RECONCILE_ATTEMPTS:
                    await self._clock.sleep(RECONCILE_DELAY_S)
            return None
        return job.job_id

    def _set_fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._wake.set()

    async def _find_tagged_jobs(self, wanted: Mapping[str, _Live]) -> dict[str, Job]:
        """Search the newest jobs for the given requests (the contract has no filter by tag).

        A job matches by our per-request tag in its recorded ``input``, or, where the server
        records the input without tags, by the same model and messages (the same request).
        """
        found: dict[str, Job] = {}
        by_content = {_content_key(live.request.body): tag for tag, live in wanted.items()}
        plane = self._options.data_plane_id
        consumed = 0
        for _ in range(RECONCILE_PAGES):
            try:
                listing = await self._client.list_jobs(
                    type="model_inference",
                    data_plane_id=plane,
                    order_by="created_at_desc",
                    per_page=MAX_PER_PAGE,
                    offset=consumed,
                )
            except (AuthenticationError, PermissionDeniedError) as exc:
                self._set_fatal(exc)
                raise _Fatal from exc
            except APIError as exc:
                logger.warning("could not search the job listing: %s", exc)
                break
            for job in listing.records:
                if job.state in ("failed", "cancelled"):
                    continue
                tags = [t for t in _tags_of(job) if t in wanted]
                if not tags and isinstance(job.input, Mapping):
                    match = by_content.get(_content_key(job.input))
                    tags = [match] if match is not None else []
                for tag in tags:
                    found.setdefault(tag, job)
            consumed += len(listing.records)
            self._largest_page = max(self._largest_page, len(listing.records))
            last = _last_page(
                len(listing.records),
                listing.total_records,
                consumed,
                MAX_PER_PAGE,
                self._largest_page,
            )
            if len(found) == len(wanted) or last:
                break
        return found

    # ------------------------------------------------------------------ poll

    def _poll_interval(self) -> float:
        if self._options.poll_interval is not None:
            return self._options.poll_interval
        if not self._outstanding:
            return MIN_POLL_INTERVAL_S
        now = self._clock.now()
        oldest_age = now - min(live.submitted_at for live in self._outstanding.values())
        by_age = POLL_AGE_FRACTION * oldest_age
        # Many jobs in flight finish often: poll about every JOBS_PER_POLL / outstanding of a
        # job's life, so a listing request pays for several finishes
        # while the next submission waits little.
        latency = self._mean_latency or oldest_age
        by_throughput = JOBS_PER_POLL * latency / len(self._outstanding)
        interval = min(by_age, max(by_throughput, MIN_POLL_INTERVAL_S))
        return min(MAX_POLL_INTERVAL_S, max(MIN_POLL_INTERVAL_S, interval))

    def _record_latency(self, live: _Live) -> None:
        latency = self._clock.now() - live.submitted_at
        self._finished_jobs += 1
        self._mean_latency += (latency - self._mean_latency) / self._finished_jobs

    async def _poll(self) -> None:
        self.report.polls += 1
        if len(self._outstanding) <= FEW_JOBS or not self._listing_usable:
            await self._get_each(list(self._outstanding))
            return
        complete = await self._sweep()
        now = self._clock.now()
        if complete:
            for live in self._outstanding.values():
                live.confirmed_at = now
        stragglers = [
            job_id
            for job_id, live in self._outstanding.items()
            if now - live.confirmed_at >= STRAGGLER_AFTER_S
        ]
        stragglers.sort(key=lambda job_id: self._outstanding[job_id].confirmed_at)
        if stragglers:
            await self._get_each(stragglers[:MAX_STRAGGLER_GETS])

    async def _get_each(self, job_ids: Iterable[str]) -> None:
        async def one(job_id: str) -> None:
            try:
                job = await self._client.get_job(job_id)
            except NotFoundError:
                self._job_vanished(job_id)
                return
            except (AuthenticationError, PermissionDeniedError) as exc:
                self._set_fatal(exc)
                return
            except APIError as exc:
                logger.info("polling job %s failed (%s); will try again", job_id, exc)
                return
            self._observe(job)
            live = self._outstanding.get(job_id)
            if live is not None:
                live.confirmed_at = self._clock.now()

        await asyncio.gather(*(one(job_id) for job_id in job_ids))

    async def _sweep(self) -> bool:
        """One pass over ``GET /jobs`` newest updates first; True if it saw every change.

        Pages go down only to the newest update the previous sweep saw (less a margin). A server
        that does not order by ``updated_at`` (or leaves it out) makes the listing useless for
        this: the run then polls job by job and says so once.
        """
        self.report.listing_sweeps += 1
        unseen = set(self._outstanding)
        newest: datetime | None = None
        per_page = min(MAX_PER_PAGE, max(50, len(self._outstanding)))
        complete = False
        consumed = 0
        for _ in range(MAX_SWEEP_PAGES):
            try:
                listing = await self._client.list_jobs_raw(
                    type="model_inference",
                    data_plane_id=self._options.data_plane_id,
                    order_by="updated_at_desc",
                    per_page=per_page,
                    offset=consumed,
                )
            except (AuthenticationError, PermissionDeniedError) as exc:
                self._set_fatal(exc)
                return False
            except APIError as exc:
                logger.info("job listing failed (%s); will try again", exc)
                return False
            records = listing["records"]
            consumed += len(records)
            self._largest_page = max(self._largest_page, len(records))
            previous: datetime | None = None
            for record in records:
                if not isinstance(record, Mapping):
                    continue
                # Only the jobs we wait for are validated: most of a page is other jobs.
                stamp = parse_timestamp(record.get("updated_at"))
                if stamp is None or (previous is not None and stamp > previous):
                    self._abandon_listing()
                    return False
                previous = stamp
                if newest is None or stamp > newest:
                    newest = stamp
                job_id = record.get("job_id")
                if job_id in self._outstanding:
                    unseen.discard(job_id)
                    try:
                        job = Job.model_validate(record)
                    except ValidationError:
                        logger.debug("skipping a job record of an unexpected shape")
                        continue
                    self._observe(job)
            last = _last_page(
                len(records), listing.get("total_records"), consumed, per_page, self._largest_page
            )
            if last or not unseen:
                complete = True
                break
            if (
                self._watermark is not None
                and previous is not None
                and (self._watermark - previous).total_seconds() > WATERMARK_MARGIN_S
            ):
                complete = True
                break
        if newest is not None and (self._watermark is None or newest > self._watermark):
            self._watermark = newest
        return complete

    def _abandon_listing(self) -> None:
        if self._listing_usable:
            logger.warning(
                "the job listing is not ordered by updated_at; polling job by job instead"
            )
        self._listing_usable = False

    def _observe(self, job: Job) -> None:
        live = self._outstanding.get(job.job_id)
        if live is None:
            return
        if job.is_terminal:
            del self._outstanding[job.job_id]
            if not live.resumed:
                self._record_latency(live)
            self._conclude(live, job)
            self._wake.set()
            return
        phase: Phase | None = {"pending": "pending", "running": "running"}.get(job.state)  # type: ignore[assignment]
        if phase is not None and phase != live.phase:
            self._tracker.transition(live.request.rows, live.phase, phase)
            live.phase = phase

    def _conclude(self, live: _Live, job: Job) -> None:
        request = live.request
        usage = job.result.usage if job.result is not None else None
        counts = TokenCounts.of(usage)
        self._budget.settle(request.key, usage)
        if usage is not None:
            self.report.prompt_tokens += usage.prompt_tokens
            self.report.completion_tokens += usage.completion_tokens
            self.report.total_tokens += usage.total_tokens
            self._tracker.add_tokens(usage.total_tokens)
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
            self._journal_done(request.key)
            return
        raw = job.result.structured_output if job.result is not None else None
        output, error = self._spec.validate(raw)
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
            self._journal_done(request.key)
            return
        self.report.completed += request.rows
        if self._cache is not None:
            from ._cache import CachedResult

            self._cache.put(
                CachedResult(
                    key=request.key,
                    output=output,
                    usage=usage,
                    job_id=job.job_id,
                    model=request.common.model,
                    created_at=time.time(),
                )
            )
            self._cache.journal_remove([request.key])
        self._finish(
            request,
            RowOutcome(output=output, job_id=job.job_id, usage=counts, status="completed"),
            old=live.phase,
            new="completed",
        )

    def _journal_done(self, key: str) -> None:
        if self._cache is not None:
            self._cache.journal_remove([key])

    def _job_vanished(self, job_id: str) -> None:
        """404 on a job we know: expired or never kept. Resubmit it (it was never finished)."""
        live = self._outstanding.pop(job_id, None)
        if live is None:
            return
        logger.info("job %s is no longer known to the service; resubmitting its request", job_id)
        self._budget.settle(live.request.key, None)
        self._release_soon(live.request.key)
        self._journal_done(live.request.key)
        self._tracker.transition(live.request.rows, live.phase, "queued")
        live.job_id = None
        live.phase = "queued"
        live.rounds += 1
        if live.rounds < MAX_SUBMIT_ROUNDS:
            self._queue.appendleft(live)
        else:
            self._finish(
                live.request,
                RowOutcome(error=f"job {job_id} disappeared from the service", status="failed"),
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
                    error=f"timed out after {timeout:g}s (job {job_id} was still {live.phase}; "
                    "it may still finish and be billed — it stays journaled, so a later run "
                    "collects it)",
                    job_id=job_id,
                    status="timeout",
                ),
                old=live.phase,
                new="failed",
            )

    # ------------------------------------------------------------------ finish

    async def _release(self, key: str) -> None:
        slots = self._options.slots
        if slots is not None and key in self._leases:
            self._leases.discard(key)
            await slots.release()

    def _release_soon(self, key: str) -> None:
        if self._options.slots is None or key not in self._leases:
            return
        task = asyncio.create_task(self._release(key))
        self._release_tasks.add(task)
        task.add_done_callback(self._release_tasks.discard)

    async def _lease_for_adopted(self, key: str) -> None:
        """A job resumed from the journal is unfinished too: it holds a slot like any other
        (its first attempt's lease may be gone with a lost worker)."""
        slots = self._options.slots
        assert slots is not None
        await slots.acquire()
        self._leases.add(key)
        if key in self.outcomes:  # it finished while we waited for the slot
            await self._release(key)

    def _finish(self, request: JobRequest, outcome: RowOutcome, *, old: Phase, new: Phase) -> None:
        self._release_soon(request.key)
        self.outcomes[request.key] = outcome
        self._tracker.transition(request.rows, old, new)
        if outcome.error and new in ("failed", "stopped"):
            self._tracker.error(outcome.error, rows=request.rows)

    async def _wind_down(self) -> None:
        """Stop: let POSTs on the wire finish (journaling their jobs), then settle every row."""
        if self._posting:
            _, still = await asyncio.wait(set(self._posting), timeout=self._options.submit_grace)
            for task in still:
                task.cancel()
            if still:
                logger.warning(
                    "%d submission(s) did not answer in time; their intent is journaled and the "
                    "next run reconciles them through the job listing",
                    len(still),
                )
        if self._fatal is None and self._outstanding:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._poll(), timeout=self._options.submit_grace)
        reason: Literal["cancelled", "interrupted"] = self._stop_reason or "cancelled"
        for job_id, live in list(self._outstanding.items()):
            self._finish(
                live.request,
                RowOutcome(
                    error=f"{reason}: job {job_id} was still {live.phase}; it stays journaled "
                    "and a later run collects it instead of resubmitting",
                    job_id=job_id,
                    status=reason,
                ),
                old=live.phase,
                new="stopped",
            )
        self._outstanding.clear()
        self._give_up_queue(reason)
        for request in self._requests:
            if request.key not in self.outcomes:  # a POST cancelled at the grace limit
                self._finish(
                    request,
                    RowOutcome(
                        error=f"{reason}: submission outcome unknown; journaled for reconciliation",
                        status=reason,
                    ),
                    old="queued",
                    new="stopped",
                )
        self.report.status = "error" if self._fatal is not None else reason
        await self._drain_releases()

    async def _drain_releases(self) -> None:
        for task in list(self._lease_tasks):  # leases still being taken are no longer needed
            task.cancel()
        if self._lease_tasks:
            await asyncio.gather(*self._lease_tasks, return_exceptions=True)
        for key in list(self._leases):
            await self._release(key)
        if self._release_tasks:
            await asyncio.gather(*self._release_tasks, return_exceptions=True)


def _last_page(count: int, total_records: Any, consumed: int, per_page: int, largest: int) -> bool:
    """True when a listing page was the last: by the totals when given, else by a short page.

    Without totals, a page is short only against the largest page this server has answered: a
    server that caps ``per_page`` below what was asked must not look like the end of the list.
    """
    if count == 0:
        return True
    if isinstance(total_records, int) and not isinstance(total_records, bool):
        return consumed >= total_records
    return count < min(per_page, largest)


def _content_key(request: Mapping[str, Any]) -> str:
    """Model and messages of a request or a recorded input, normalised, as one string."""
    messages = []
    for message in request.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        text = message.get("text")
        if text is None and isinstance(message.get("content"), list):
            text = "".join(
                block.get("text", "") for block in message["content"] if isinstance(block, Mapping)
            )
        messages.append((message.get("role"), text))
    return repr((request.get("model"), messages))


def _tags_of(job: Job) -> list[str]:
    """Tags recorded in a job's ``input`` (its shape is not documented: look where it may be)."""
    source: Any = job.input
    if isinstance(source, Mapping):
        tags = source.get("tags")
        if tags is None and isinstance(source.get("request"), Mapping):
            tags = source["request"].get("tags")
        if isinstance(tags, list):
            return [t for t in tags if isinstance(t, str)]
    extra = getattr(job, "tags", None)
    if isinstance(extra, list):
        return [t for t in extra if isinstance(t, str)]
    return []
