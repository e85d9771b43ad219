"""The engine's state and the steps every part of it takes: end a row, adopt a job, give back
its slot, stop.

The engine (``_engine.Engine``) is this state with its parts mixed in, each a module of its own:
the submit side (``_engine_submit``), jobs picked up from the journal and other runs' claims
(``_engine_resume``), and what a poll's news does to a job (``_engine_ends``). They share one
state because each of their steps moves a row between the same few collections: the queue,
the POSTs under way, the outstanding jobs, the rows waiting on another run.
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
from ._cadence import PollCadence
from ._claims import ClaimBook
from ._clock import Clock, system_clock
from ._decision_log import DecisionRecorder
from ._finished import FinishedWrites
from ._frame import RowOutcome
from ._job_request import JobRequest
from ._models import TokenCounts
from ._poller import Poller
from ._reconcile import Reconciler
from ._submitter import Submitter

if TYPE_CHECKING:
    from ._cache import Cache, CachedResult, Claim
    from ._client import Client
    from ._decision_log import Verdict
    from ._models import JobRecord
    from ._progress import Phase, ProgressTracker
    from ._schema import OutputSpec

logger = logging.getLogger("narrative_pandas")

__all__ = [
    "MAX_SUBMIT_ROUNDS",
    "SUBMIT_GRACE_S",
    "EngineBase",
    "EngineOptions",
    "EngineReport",
    "LiveRequest",
    "SlotLimiter",
    "StopReason",
]

StopReason = Literal["cancelled", "interrupted"]

#: Rounds of resubmission after the client's own retries gave up (429/502/503/connection).
MAX_SUBMIT_ROUNDS = 5
#: How long a stopping run waits for POSTs already on the wire, so their job ids are journaled
#: (a POST still unanswered then is cancelled: its claim stays, and the next run reconciles it
#: through the listing before any POST, so a stop returns within about a second).
SUBMIT_GRACE_S = 0.5


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
class LiveRequest:
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


class EngineBase:
    """The state of one run's engine and the steps its parts share (see the module's doc)."""

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
        self._queue: deque[LiveRequest] = deque()
        self._outstanding: dict[str, LiveRequest] = {}
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
        self._waiting: dict[str, LiveRequest] = {}
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

    def _set_fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._stopped.set()
        self._wake.set()

    def _spawn(self, work: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
        """Run ``work`` as a task of this run's loop, kept in ``tasks`` until it ends (the
        loop's own ``create_task``: ``asyncio.create_task`` makes a getpid() call on 3.11)."""
        loop = self._loop
        assert loop is not None, "a task outside run()"
        task = loop.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if TYPE_CHECKING:  # steps the parts provide each other (the engine mixes them in)

        def _fill(self) -> None:
            """Submit while slots are free: ``_engine.Engine``."""

        def _start_submit(self, live: LiveRequest, claim: Claim | None = None) -> None:
            """Send a request: ``_engine_submit.SubmitSide``."""

        def _observe(self, job: JobRecord) -> None:
            """A poll's news of a job: ``_engine_ends.JobEnds`` (so are the two below)."""

        def _job_vanished(self, job_id: str) -> None: ...

        def _decided(self, job_id: str, verdict: Verdict, detail: str) -> None: ...

    # ------------------------------------------------------------------ rows and slots

    def _wait_on_claim(self, live: LiveRequest) -> None:
        if not live.submitted_at:  # the run's timeout counts from the first wait
            live.submitted_at = self._clock.now()
        self._waiting[live.request.key] = live

    def _finish(self, request: JobRequest, outcome: RowOutcome, *, old: Phase, new: Phase) -> None:
        self._release_soon(request.key)
        self.outcomes[request.key] = outcome
        self._tracker.transition(request.rows, old, new, key=request.key)
        if outcome.error and new in ("failed", "stopped"):
            self._tracker.error(outcome.error, rows=request.rows)

    def _finish_cached(self, live: LiveRequest, hit: CachedResult, *, old: Phase) -> None:
        request = live.request
        outcome = RowOutcome(
            output=hit.output, job_id=hit.job_id, usage=TokenCounts.of(hit.usage), status="cached"
        )
        self._finish(request, outcome, old=old, new="cached")
        self.report.cached += request.rows

    def _fail(self, live: LiveRequest, error: str) -> None:
        self.report.failed += live.request.rows
        self._finish(
            live.request, RowOutcome(error=error, status="failed"), old=live.phase, new="failed"
        )

    def _adopt(
        self, live: LiveRequest, job_id: str, now: float, *, resumed: bool, reserved: bool = False
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

    async def _drain_releases(self) -> None:
        for task in list(self._lease_tasks):  # leases still being taken are no longer needed
            task.cancel()
        if self._lease_tasks:
            await asyncio.gather(*self._lease_tasks, return_exceptions=True)
        for key in list(self._leases):
            await self._release(key)
        if self._release_tasks:
            await asyncio.gather(*self._release_tasks, return_exceptions=True)
