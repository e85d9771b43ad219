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
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._budget import TokenBudget
from ._cadence import MAX_POLL_INTERVAL_S, RAMP_HOLD_MAX_S, PollCadence
from ._claims import ClaimBook, live_run, owner_alive
from ._clock import Clock, system_clock
from ._decision_log import DecisionRecorder
from ._finished import FinishedWrites
from ._frame import RowOutcome
from ._models import JobRecord, TokenCounts, shared
from ._poller import Poller
from ._reconcile import Reconciler
from ._render import pair_turns
from ._submitter import SubmitResult, Submitter

if TYPE_CHECKING:
    from ._cache import Cache, CachedResult, Claim, JournalEntry
    from ._client import Client
    from ._decision_log import Verdict
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

#: Largest page the service serves.
MAX_PER_PAGE = 500
#: Rows waiting on another run's claim re-read the journal and the cache this often.
CLAIM_WAIT_POLL_S = 0.2
#: Rounds of resubmission after the client's own retries gave up (429/502/503/connection).
MAX_SUBMIT_ROUNDS = 5
#: Wait before such a round: doubling from the first (an outage outlasts the client's retries).
RETRY_ROUND_FIRST_WAIT_S = 2.0
RETRY_ROUND_MAX_WAIT_S = 30.0
#: How long a stopping run waits for POSTs already on the wire, so their job ids are journaled
#: (a POST still unanswered then is cancelled: its claim stays, and the next run reconciles it
#: through the listing before any POST, so a stop returns within about a second).
SUBMIT_GRACE_S = 0.5
#: After a stop, how long the last look at outstanding jobs may take before the run returns.
WIND_DOWN_POLL_S = 0.3


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

    The JSON body is built when it is sent (``body``), so a run holds each row's text once. The
    messages are kept as the run's ``roles`` (one tuple, shared by every request) and this
    request's ``texts`` (a bare string for a single turn): a tuple of ``(role, text)`` pairs
    per row cost 104 bytes a row at 100,000 rows, a tenth of a run's memory.
    """

    key: str
    roles: tuple[str, ...]
    texts: str | tuple[str, ...]
    common: RequestCommon
    rows: int
    prompt_tokens_estimate: int

    @classmethod
    def from_messages(
        cls,
        key: str,
        messages: Sequence[tuple[str, str]],
        common: RequestCommon,
        rows: int,
        prompt_tokens_estimate: int,
    ) -> JobRequest:
        """A request from its ``(role, text)`` pairs."""
        roles = tuple(role for role, _ in messages)
        texts = tuple(text for _, text in messages)
        return cls(
            key, roles, texts[0] if len(texts) == 1 else texts, common, rows, prompt_tokens_estimate
        )

    @property
    def messages(self) -> tuple[tuple[str, str], ...]:
        """The ``(role, text)`` pair of each turn."""
        return pair_turns(self.roles, self.texts)

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
        return cls.from_messages(key, messages, common, rows, prompt_tokens_estimate)


class SlotLimiter(Protocol):
    """A limit on unfinished jobs shared beyond this engine (e.g. across Dask workers).

    ``acquire`` waits for a free slot; ``release`` gives one back. The engine takes one slot per
    job before its POST and gives it back when the job ends or the run stops waiting for it.
    A limiter whose release never waits may also offer a synchronous ``release_now()``: the
    engine then calls it at a job's end instead of scheduling a task for ``release``.
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
    shared: int = 0
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
    direct_gets: int = 0
    listing_mode: str = "updated"
    tokens_estimated: bool = False
    status: str = "running"
    #: Verdicts about jobs that answered 404 (``_decision_log``), by kind.
    not_found_decisions: dict[str, int] = field(default_factory=dict)


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
    ever_seen: bool = False
    state: str = "pending"
    created_at: datetime | None = None
    not_found_since: float | None = None
    not_found_count: int = 0
    retry_get_at: float = 0.0
    fetched_at: float = 0.0
    replaces: str | None = None


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
        cached: Mapping[str, CachedResult] | None = None,
    ) -> None:
        self._client = client
        self._cached = cached  # hits the caller already read (None: look them up here)
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
        max_tokens = None
        if self._requests:
            max_tokens = self._requests[0].common.inference_config.get("max_tokens")
        self._budget = TokenBudget(options.max_total_tokens, max_tokens, spec.schema)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leases: set[str] = set()
        self._stopped = asyncio.Event()
        self._decisions = DecisionRecorder(cache, run_id)
        self.report.not_found_decisions = self._decisions.counts
        self._poller = Poller(
            client,
            self._clock,
            data_plane_id=options.data_plane_id,
            observe=self._observe,
            vanished=self._job_vanished,
            fatal=self._set_fatal,
            decided=self._decided,
        )
        self._cadence = PollCadence(options.poll_interval)
        self._counts: dict[TokenCounts, TokenCounts] = {}
        self._largest_page = 0
        self._release_tasks: set[asyncio.Task[None]] = set()
        self._lease_tasks: set[asyncio.Task[None]] = set()
        # The submit side: claims in the journal, POSTs, unknown outcomes (see _submitter).
        self._claims = (
            ClaimBook(cache, run_id, max_age=options.journal_max_age) if cache is not None else None
        )
        # What polls ended, written in batches; the job ids gathered before go first.
        self._writes = FinishedWrites(
            cache,
            first=self._claims.write_jobs if self._claims is not None else None,
            call_later=lambda delay, write: asyncio.get_running_loop().call_later(delay, write),
        )
        self._reconciler = Reconciler(client, data_plane_id=options.data_plane_id)
        self._submitter = Submitter(
            client,
            self._claims,
            self._reconciler,
            self._clock,
            timeout=options.timeout,
            refresh=options.refresh,
            stopping=lambda: self.stopping,
            trusted=lambda: self._any_post_succeeded,
        )
        #: Requests another live run has claimed: we wait for its job instead of submitting.
        self._waiting: dict[str, _Live] = {}
        self._next_claim_check = 0.0

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
        self._stopped.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None or self._fatal is not None

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
                    self._finish_cached(_Live(request), hit, old="queued")
        for request in pending:
            if request.key not in self.outcomes:
                self._queue.append(_Live(request))

    def _finish_cached(self, live: _Live, hit: CachedResult, *, old: Phase) -> None:
        request = live.request
        outcome = RowOutcome(
            output=hit.output, job_id=hit.job_id, usage=TokenCounts.of(hit.usage), status="cached"
        )
        self._finish(request, outcome, old=old, new="cached")
        self.report.cached += request.rows

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
        remaining: deque[_Live] = deque()
        claimless: list[_Live] = []
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

    def _apply_claim_now(self, live: _Live, claim: Claim) -> None:
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

    def _adopt(
        self, live: _Live, job_id: str, now: float, *, resumed: bool, reserved: bool = False
    ) -> None:
        """Wait for ``job_id`` as the request's job (``reserved``: budget and slot are held)."""
        live.job_id = job_id
        live.phase = "pending"
        live.submitted_at = now
        live.confirmed_at = now
        live.resumed = resumed
        self._outstanding[job_id] = live
        self._poller.track(job_id)
        if reserved:
            self._tracker.transition(live.request.rows, "queued", "pending", key=live.request.key)
            return
        self._budget.reserve(live.request)
        if self._options.slots is not None:
            self._spawn(self._lease_for_adopted(live.request.key), self._lease_tasks)
        if resumed:
            self.report.resumed += live.request.rows
        self._tracker.transition(live.request.rows, "queued", "pending", key=live.request.key)

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

    # ------------------------------------------------------------------ submit

    def _start_submit(self, live: _Live, claim: Claim | None = None) -> None:
        self._spawn(self._submit(live, claim), self._posting)

    def _spawn(self, work: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
        """Run ``work`` as a task of this run's loop, kept in ``tasks`` until it ends (the
        loop's own ``create_task``: ``asyncio.create_task`` makes a getpid() call on 3.11)."""
        loop = self._loop
        assert loop is not None, "a task outside run()"
        task = loop.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _submit(self, live: _Live, claim: Claim | None = None) -> None:
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

    async def _apply(self, live: _Live, result: SubmitResult) -> None:
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

    def _wait_on_claim(self, live: _Live) -> None:
        if not live.submitted_at:  # the run's timeout counts from the first wait
            live.submitted_at = self._clock.now()
        self._waiting[live.request.key] = live

    def _fail(self, live: _Live, error: str) -> None:
        self.report.failed += live.request.rows
        self._finish(
            live.request, RowOutcome(error=error, status="failed"), old=live.phase, new="failed"
        )

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

    def _set_fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._stopped.set()
        self._wake.set()

    # ------------------------------------------------------------------ poll

    def _poll_interval(self) -> float:
        now = self._clock.now()
        submitted = [live.submitted_at for live in self._outstanding.values()]
        return self._cadence.interval(now, submitted, len(submitted))

    def _record_latency(self, live: _Live, job: JobRecord) -> None:
        created, ended = job.created_at, job.updated_at
        service = None if created is None or ended is None else (ended - created).total_seconds()
        self._cadence.record(self._clock.now() - live.submitted_at, service)

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

    def _conclude(self, live: _Live, job: JobRecord) -> None:
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

    # ------------------------------------------------------------------ finish

    async def _release(self, key: str) -> None:
        slots = self._options.slots
        if slots is not None and key in self._leases:
            self._leases.discard(key)
            await slots.release()

    def _release_soon(self, key: str) -> None:
        slots = self._options.slots
        if slots is None or key not in self._leases:
            return
        release_now = getattr(slots, "release_now", None)
        if release_now is not None:  # a task per job end costs more than the release itself
            self._leases.discard(key)
            release_now()
            return
        self._spawn(self._release(key), self._release_tasks)

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
        self._tracker.transition(request.rows, old, new, key=request.key)
        if outcome.error and new in ("failed", "stopped"):
            self._tracker.error(outcome.error, rows=request.rows)

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
