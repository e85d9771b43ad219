"""The ``narrative`` accessor on Dask DataFrames: the same call, scaled out to a cluster.

When a labelling job outgrows one process (millions of rows, data that does not fit in memory, a
cluster already in use), ``ddf.narrative.infer(...)`` takes the same arguments as the pandas
accessor and returns a *lazy* Dask DataFrame built with ``map_partitions``. Each partition runs
the same async engine as the pandas path; what must hold for the whole run is coordinated
through the cluster:

- ``concurrency`` is cluster-wide: a run-specific :class:`distributed.Semaphore` caps the
  unfinished jobs of all workers together; each worker process keeps its leases in a pool that
  hands them from job to job and rebalances with the other workers' pools (``_dask_slots``), so
  the scheduler is not asked once per job. Without ``distributed`` (the threaded or synchronous
  scheduler) all partitions share one process and one in-process limit; with the multiprocessing
  scheduler the limit is per process.
- progress: each partition publishes its counts as Dask events on the run's topic (or hands
  them over in-process with the threads scheduler); the run's monitor on the client, made by
  :func:`infer`, shows them summed over the cluster whichever call computes the frame
  (``dask.compute(out)``, ``out.compute()``, ``out.persist()``, :func:`compute`), and
  :func:`progress` follows a persisted frame to its end (``_dask_progress``).
- a 429 seen by one worker holds the others: the "rate limited until" wall time is shared
  through the scheduler's metadata store (``Client.set_metadata``), which every running
  partition reads and raises every ``RATE_SHARE_INTERVAL_S``.
- the cache: by default each worker process keeps its own in-memory cache. Give ``cache=`` a
  SQLite path that every worker can reach (shared storage) and completed rows are shared, and a
  retried task (a lost worker) resumes the jobs its first attempt submitted instead of paying
  for them again (the engine's journal).
- the run report: every partition's report travels in its frame's ``attrs``; use
  :func:`compute` (or ``out.narrative.compute()``) to get the pandas frame with one merged
  report in ``attrs["narrative"]`` (a plain ``.compute()`` concatenates and drops the attrs).
- the API key: a key the client can resolve (argument, ``use_sandbox()``, environment or
  ``configure``) travels inside the task as :class:`~narrative_pandas._config.ApiKey`, whose repr
  is masked in graph reprs, the dashboard and logs (it is pickled in clear over Dask's comms:
  use TLS between machines). When the client has no key, workers read ``NARRATIVE_API_KEY``
  (and the other settings) from their own environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import re
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import dask
import dask.dataframe as dd
import dask.dataframe.extensions
import pandas as pd

from . import _api, _sync
from ._cache import Cache, SQLiteCache, resolve_cache
from ._client import MAX_RETRY_AFTER
from ._client import Client as _HTTPClient
from ._config import Settings, resolve_settings
from ._dask_progress import PartitionRelay, RunMonitor, check_destination
from ._dask_slots import (
    LeasePool,
    ProcessSlots,
    on_loop,
    pool_for,
    process_slots_for,
    slots_per_lease,
)
from ._exceptions import ConfigurationError, RowsFailedError, RowsFailedWarning
from ._frame import build_frame
from ._options import check_options
from ._plan import DEFAULT_CONCURRENCY, RunPlan, build_plan
from ._run import Run

__all__ = [
    "DaskFrameNarrativeAccessor",
    "DaskSeriesNarrativeAccessor",
    "PartitionRowsFailedError",
    "compute",
    "infer",
    "merge_reports",
    "persist",
    "preview",
    "progress",
]

logger = logging.getLogger("narrative_pandas")

# Dask's own annotations are partial; these names are used untyped on purpose.
_dask: Any = dask
_extensions: Any = dask.dataframe.extensions

#: Seconds between two looks at the cluster-wide 429 gate while a partition runs.
RATE_SHARE_INTERVAL_S = 0.5
#: Options of ``start`` that cannot travel to workers, with what to do instead.
_UNSUPPORTED = {
    "client": "a Client is bound to one process; pass api_key=/base_url=/data_plane_id= instead",
    "only_failed": "filter the failed rows (out[out.narrative_error.notna()]) and infer those",
}
#: Report fields summed over partitions.
_SUMMED = (
    "rows",
    "unique_requests",
    "deduplicated_rows",
    "skipped_rows",
    "cached_rows",
    "resumed_rows",
    "shared_rows",
    "reconciled_jobs",
    "jobs_submitted",
    "not_submitted_rows",
    "completed_rows",
    "failed_rows",
    "stopped_rows",
    "invalid_rows",
    "timed_out_rows",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "http_429",
    "rate_limit_holds",
)


# ---------------------------------------------------------------------------------- the task


@dataclass(frozen=True, repr=False)
class _PartitionTask:
    """Everything a partition needs, picklable; its repr never shows settings or prompts."""

    token: str
    prompt: str | None
    plan_options: Mapping[str, Any]
    settings: Settings | None
    worker_settings: tuple[str | None, str | None]
    cache: bool | str
    concurrency: int
    share_rate_limits: bool = True
    #: Job slots per semaphore lease, chosen on the client for the cluster it sees.
    slots_per_lease: int = 1

    def __repr__(self) -> str:
        return f"<narrative run {self.token}>"

    def resolve_settings(self) -> Settings:
        """The client's settings, or the worker's own environment when the client had no key."""
        settings = self.settings
        if settings is None:
            base_url, data_plane_id = self.worker_settings
            settings = resolve_settings(None, base_url, data_plane_id)
            if settings.api_key is None:
                raise ConfigurationError(
                    "No Narrative API key on this Dask worker: set NARRATIVE_API_KEY in the "
                    "workers' environment, or pass api_key=... (it travels masked)."
                )
        settings.require_data_plane()
        return settings


class PartitionRowsFailedError(RowsFailedError):
    """``errors="raise"`` on a Dask partition: ``result`` is that partition's frame.

    Raised by ``compute()`` for the first partition with failed rows (the others' results are
    in the cache when one is shared). It pickles, so it crosses process boundaries intact.
    """

    def __init__(
        self, message: str, *, result: pd.DataFrame, failed: int, partition: int | None
    ) -> None:
        super().__init__(message, result=result, failed=failed)
        self.partition = partition

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_rows_failed, (str(self), self.result, self.failed, self.partition))


def _rebuild_rows_failed(
    message: str, result: pd.DataFrame, failed: int, partition: int | None
) -> PartitionRowsFailedError:
    return PartitionRowsFailedError(message, result=result, failed=failed, partition=partition)


def _infer_partition(
    part: pd.DataFrame, task: _PartitionTask, partition_info: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Run one partition through the engine; the frame's attrs carry its run report."""
    number = int(partition_info["number"]) if partition_info else None
    relay = PartitionRelay(task.token, number)  # the client sums every partition's counts
    try:
        return _run_partition(part, task, number, relay)
    except BaseException:
        relay.failed(len(part))
        raise


def _run_partition(
    part: pd.DataFrame, task: _PartitionTask, number: int | None, relay: PartitionRelay
) -> pd.DataFrame:
    settings = task.resolve_settings()
    cache = resolve_cache(task.cache)
    plan = build_plan(part, task.prompt, settings=settings, **task.plan_options)
    with _slots_for(task) as (slots, gate, kind):
        plan = dataclasses.replace(plan, options=dataclasses.replace(plan.options, slots=slots))
        run_id = f"{task.token}-p{number if number is not None else uuid.uuid4().hex[:6]}"
        run = Run(plan, settings=settings, cache=cache, client=None, progress=relay, run_id=run_id)
        with _rate_share(settings, gate) as share:
            run._launch()
            frame = _wait(run, raise_failed=plan.errors == "raise", partition=number)
    report = dict(frame.attrs.get("narrative") or run.report)
    report.update(
        partition=number,
        worker=_worker_address(),
        slots=kind,
        http_429=share.rate_limited,
        rate_limit_holds=share.holds,
    )
    frame.attrs["narrative"] = report
    return frame


def _wait(run: Run, *, raise_failed: bool, partition: int | None) -> pd.DataFrame:
    """Block until ``run`` ends; its frame, without the per-partition failure warning."""
    future = run._future
    assert future is not None, "the run was never launched"
    if not isinstance(future, asyncio.Future):
        with _unsampled(), contextlib.suppress(Exception):  # the run's error is raised below
            future.result()
    try:
        return run._final_frame(warn=raise_failed)
    except RowsFailedError as exc:
        raise PartitionRowsFailedError(
            f"partition {partition}: {exc}",
            result=exc.result,
            failed=exc.failed,
            partition=partition,
        ) from None


@contextlib.contextmanager
def _unsampled() -> Iterator[None]:
    """Keep this task's thread out of Dask's profiler while it only waits for its run.

    A worker samples the stack of every executing task's thread on its event loop every
    ``distributed.worker.profile.interval`` (10 ms): 0.2-0.3 s of the worker's CPU per
    10,000-row run (its ``profile-duration``) for a thread that does nothing but wait, since the
    run's work is on the library's loop thread, which Dask never samples. The thread is back in
    the worker's ``active_threads`` before the task returns or raises. Meanwhile
    ``Client.call_stack()`` does not list the waiting partition.
    """
    worker: Any = None
    with contextlib.suppress(ImportError, ValueError):  # no distributed, or not on a worker
        from distributed import get_worker

        worker = get_worker()
    threads: dict[int, Any] | None = getattr(worker, "active_threads", None)
    lock: Any = getattr(worker, "active_threads_lock", None)
    if threads is None or lock is None:
        yield
        return
    ident = threading.get_ident()
    with lock:
        key = threads.pop(ident, _NOT_ACTIVE)
    try:
        yield
    finally:
        if key is not _NOT_ACTIVE:
            with lock:
                threads[ident] = key


#: Marks a thread that was not in the worker's ``active_threads``.
_NOT_ACTIVE = object()


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


# ---------------------------------------------------------------------------------- slots


@contextlib.contextmanager
def _slots_for(
    task: _PartitionTask,
) -> Iterator[tuple[LeasePool | ProcessSlots, _SharedGate | None, str]]:
    """The run's slot limiter for this partition (and the shared 429 gate on a cluster)."""
    try:
        from distributed import get_client, get_worker

        get_worker()
    except (ImportError, ValueError):
        with process_slots_for(task.token, task.concurrency) as slots:
            yield slots, None, "process"
        return
    client = get_client()  # the worker's client, bound here on the task thread
    upcoming = _partitions_under_way(get_worker(), task.token)
    with pool_for(task.token, task.concurrency, client, upcoming, task.slots_per_lease) as pool:
        gate = None
        if task.share_rate_limits:
            key = ["narrative-pandas", task.token, "429"]
            gate = _SharedGate(_MetadataStore(client, key, pool.worker_loop, board=pool.board))
        yield pool, gate, "distributed.Semaphore"


#: Worker task states of a partition that has not ended yet.
_UNDER_WAY = frozenset({"waiting", "ready", "constrained", "executing"})


def _partitions_under_way(worker: Any, token: str) -> Callable[[int], Awaitable[bool]]:
    """Whether ``worker`` has more partitions of run ``token`` under way than ``users``.

    The lease pool keeps its idle leases for such a partition (see ``_dask_slots``). The
    worker's task states are read on its own event loop, where they change.
    """
    marker = f"{_LAYER_PREFIX}{token}"

    async def count() -> int:
        return sum(
            1
            for state in list(worker.state.tasks.values())
            if state.state in _UNDER_WAY and marker in str(_key_name(state.key))
        )

    async def more_than(users: int) -> bool:
        return int(await on_loop(worker.loop.asyncio_loop, count)) > users

    return more_than


def _key_name(key: Any) -> Any:
    return key[0] if isinstance(key, tuple) and key else key


# ---------------------------------------------------------------------------------- 429 gate


class _MetadataStore:
    """A wall-clock time kept in the scheduler's metadata store (0 while unset).

    With a lease pool's demand ``board``, which reads the run's whole entry every
    ``BOARD_INTERVAL_S`` anyway, :meth:`read` answers from that read (:meth:`feed`) instead of
    a scheduler round trip of its own (about half a millisecond of the worker's CPU each).
    """

    def __init__(
        self,
        client: Any,
        key: list[str],
        worker_loop: asyncio.AbstractEventLoop,
        board: Any = None,
    ) -> None:
        self._client = client
        self._key = key
        self._loop = worker_loop
        self.board = board
        self._fed: tuple[float, float] | None = None  # monotonic time, value

    def feed(self, run_entry: Mapping[str, Any]) -> None:
        """The board read the run's entry (``key`` less its last part): keep our value."""
        try:
            value = float(run_entry.get(self._key[-1], 0.0) or 0.0)
        except (TypeError, ValueError):
            value = 0.0
        self._fed = (time.monotonic(), value)

    async def read(self) -> float:
        fed = self._fed
        if fed is not None and time.monotonic() - fed[0] < RATE_SHARE_INTERVAL_S:
            return fed[1]

        async def get() -> float:
            return float(await self._client.get_metadata(self._key, default=0.0))

        return float(await on_loop(self._loop, get))

    async def raise_to(self, wall: float) -> None:
        async def update() -> None:
            # Read-then-write: two workers racing may keep the earlier of two near times.
            current = float(await self._client.get_metadata(self._key, default=0.0))
            if wall > current:
                await self._client.set_metadata(self._key, wall)

        await on_loop(self._loop, update)


class _SharedGate:
    """The cluster's "rate limited until" wall time, as this partition last saw it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.until = 0.0

    async def wait_open(self) -> None:
        """Wait while another worker's 429 holds the cluster (POSTs wait here)."""
        while True:
            remaining = min(self.until - time.time(), MAX_RETRY_AFTER)
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)


@dataclass
class _RateShare:
    """What sharing 429s did for one partition."""

    rate_limited: int = 0
    holds: int = 0
    published: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    #: Set on the runner loop when ``stop`` is: ends the wait between two looks at once, so a
    #: partition does not wait up to ``RATE_SHARE_INTERVAL_S`` at its end (with its leases idle).
    wake: asyncio.Event | None = None

    def poke(self) -> None:
        if self.wake is not None:
            self.wake.set()


async def _share_once(client: _HTTPClient, gate: _SharedGate, share: _RateShare) -> None:
    """Publish this process's 429 gate if it is newer; adopt the cluster's if it is later."""
    now_m, now_w = time.monotonic(), time.time()
    local = client.rate_limited_until
    if local > now_m:
        wall = now_w + (local - now_m)
        if wall > max(share.published, gate.until) + 0.05:
            await gate.store.raise_to(wall)
            share.published = wall
    shared = await gate.store.read()
    gate.until = max(gate.until, shared)
    if shared > now_w:
        hold = now_m + min(shared - now_w, MAX_RETRY_AFTER)
        if hold > client.rate_limited_until + 0.05:
            client.hold_until(hold)  # the client's own gate holds every request, GETs too
            share.holds += 1


async def _share_loop(settings: Settings, gate: _SharedGate, share: _RateShare) -> None:
    """Every ``RATE_SHARE_INTERVAL_S``, or right after the lease pool's board read the run's
    metadata (which then carries the gate: no read of its own), share the 429 gate."""
    client = _sync.shared_client(settings)
    before = client.stats.rate_limited
    share.wake = wake = asyncio.Event()
    store = gate.store
    board = getattr(store, "board", None)

    def fed(run_entry: Mapping[str, Any]) -> None:
        store.feed(run_entry)
        share.poke()

    if board is not None:
        board.listeners.add(fed)
    # Fed by the board, the loop waits for its reads (a timeout only if they stop coming).
    interval = RATE_SHARE_INTERVAL_S * (2 if board is not None else 1)
    try:
        while not share.stop.is_set():
            try:
                await _share_once(client, gate, share)
            except Exception:  # sharing is best effort; the local gate still works
                logger.debug("could not share the 429 gate", exc_info=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
    finally:
        if board is not None:
            board.listeners.discard(fed)
        share.rate_limited = client.stats.rate_limited - before


@contextlib.contextmanager
def _rate_share(settings: Settings, gate: _SharedGate | None) -> Iterator[_RateShare]:
    share = _RateShare()
    if gate is None:
        yield share
        return
    future = _sync.submit(_share_loop(settings, gate, share))
    try:
        yield share
    finally:
        share.stop.set()
        _sync.runner_loop().call_soon_threadsafe(share.poke)
        with contextlib.suppress(Exception):
            future.result(timeout=RATE_SHARE_INTERVAL_S + 5)


# ---------------------------------------------------------------------------------- public


def _resolve_cache_spec(cache: Any) -> bool | str:
    """What travels to workers: True/False, or an absolute SQLite path."""
    if cache is None or cache is True:
        return True
    if cache is False:
        return False
    if isinstance(cache, SQLiteCache):
        return str(cache.path)
    if isinstance(cache, Cache):
        raise ConfigurationError(
            f"cache={cache!r} lives in this process and cannot be shared with Dask workers. "
            "Use cache=True (each worker's own in-memory cache) or a SQLite path that every "
            "worker can reach, e.g. cache='/shared/narrative-cache.sqlite'."
        )
    if isinstance(cache, (str, os.PathLike)):
        resolved = resolve_cache(cache)  # checks the value; the file opens lazily
        assert isinstance(resolved, SQLiteCache)
        return str(resolved.path)
    resolve_cache(cache)  # raises the usual ConfigurationError
    raise AssertionError("unreachable")  # pragma: no cover


def _check_progress(progress: Any) -> None:
    """A ``progress=`` value the client can show the cluster's rows to, before anything runs."""
    try:
        check_destination(progress)
    except TypeError as exc:
        raise ConfigurationError(
            f"{exc}. On a Dask DataFrame it is where the cluster's progress shows on this client "
            "whenever the result is computed (a callable runs here, not on the workers)."
        ) from None


def _task(
    ddf: dd.DataFrame, prompt: str | None, options: dict[str, Any]
) -> tuple[_PartitionTask, RunPlan, Any]:
    """Check every option on the client (nothing computed) and pack what workers need."""
    check_options("infer", options)  # names and types, with the closest valid name
    for name, instead in _UNSUPPORTED.items():
        if options.get(name) is not None:
            raise ConfigurationError(f"{name}= is not supported on Dask DataFrames: {instead}.")
    api_key = options.pop("api_key", None)
    base_url = options.pop("base_url", None)
    data_plane_id = options.pop("data_plane_id", None)
    cache = _resolve_cache_spec(options.pop("cache", True))
    progress = options.pop("progress", None)
    options.pop("client", None)
    options.pop("only_failed", None)
    _check_progress(progress)
    settings: Settings | None = resolve_settings(api_key, base_url, data_plane_id)
    assert settings is not None
    if settings.api_key is None:
        settings = None  # the workers resolve everything from their own environment
    else:
        settings.require_data_plane()
    plan_options = {
        k: v
        for k, v in options.items()
        if k in inspect.signature(build_plan).parameters and k not in ("df", "prompt", "settings")
    }
    # Every check of the pandas path, on the empty meta frame: nothing is computed or sent.
    probe = build_plan(
        ddf._meta,
        prompt,
        settings=settings or resolve_settings(None, base_url, data_plane_id),
        data_plane_placeholder="<data_plane_id>",
        **plan_options,
    )
    concurrency = int(plan_options.get("concurrency", DEFAULT_CONCURRENCY))
    task = _PartitionTask(
        token=uuid.uuid4().hex[:16],
        prompt=prompt,
        plan_options=plan_options,
        settings=settings,
        worker_settings=(base_url, data_plane_id),
        cache=cache,
        concurrency=concurrency,
        slots_per_lease=slots_per_lease(concurrency, _cluster_workers()),
    )
    return task, probe, progress


def _cluster_workers() -> int:
    """Worker processes of the client's current cluster (0 without one: the default share)."""
    try:
        import distributed

        cluster: Any = distributed
        return len(cluster.default_client().scheduler_info().get("workers", {}))
    except Exception:  # no distributed, no client, or a scheduler that does not answer
        return 0


def infer(ddf: dd.DataFrame, prompt: str | None = None, **options: Any) -> dd.DataFrame:
    """Lazily run every row through the model: a Dask DataFrame with the typed output columns.

    The same arguments as :func:`narrative_pandas.infer` (``client=`` and ``only_failed=``
    excepted); nothing is computed or sent until the result is computed. ``concurrency`` holds
    for the whole cluster. ``cache=`` is True (each worker's own memory), False, or a SQLite path
    every worker can reach (shared results; a retried task resumes instead of resubmitting).

    Returns
    -------
    dask.dataframe.DataFrame
        Lazy; its columns and dtypes come from the output schema. Use :func:`compute` (or
        ``out.narrative.compute()``) to get the pandas frame with the merged run report in
        ``attrs["narrative"]``.

    Examples
    --------
    >>> import narrative_pandas.dask                                    # doctest: +SKIP
    >>> out = ddf.narrative.infer("Review: {review}", output=Sentiment)  # doctest: +SKIP
    >>> df = out.narrative.compute()                                     # doctest: +SKIP
    >>> df.attrs["narrative"]["jobs_submitted"]                          # doctest: +SKIP
    """
    if not isinstance(ddf, dd.DataFrame):
        raise ConfigurationError(f"expected a Dask DataFrame, got {type(ddf).__name__}.")
    task, probe, progress = _task(ddf, prompt, dict(options))
    meta = build_frame(ddf._meta, [], probe.spec, prefix=probe.prefix, flatten=probe.flatten)
    frame: Any = ddf
    out = frame.map_partitions(
        _infer_partition,
        task,
        meta=meta,
        transform_divisions=False,
        align_dataframes=False,
        token=f"{_LAYER_PREFIX}{task.token}",  # the run's token in every key: survives persist
    )
    monitor = RunMonitor(task.token, int(out.npartitions), _row_counter(ddf), progress)
    monitor.register()
    client = _distributed_client()
    if client is not None:
        monitor.subscribe(client)
    _remember_run(task.token, ddf, monitor)
    return cast(dd.DataFrame, out)


def preview(ddf: dd.DataFrame, prompt: str | None = None, **options: Any) -> dd.DataFrame:
    """Lazily show the requests :func:`infer` would send (see :func:`narrative_pandas.preview`).

    No key is needed or sent; ``api_key``/``client`` are dropped so they never enter the graph.
    """
    options = {k: v for k, v in options.items() if k not in ("api_key", "client")}
    meta = _api.preview(ddf._meta, prompt, **options)
    frame: Any = ddf
    return cast(
        dd.DataFrame,
        frame.map_partitions(
            _api.preview,
            prompt,
            meta=meta,
            transform_divisions=False,
            align_dataframes=False,
            **options,
        ),
    )


def merge_reports(
    reports: Sequence[Mapping[str, Any]], *, elapsed: float | None = None
) -> dict[str, Any]:
    """One run report from the partitions' reports: counts summed, ``partitions`` listed."""
    merged: dict[str, Any] = {name: 0 for name in _SUMMED}
    http: Counter[str] = Counter()
    statuses: list[str] = []
    for report in reports:
        for name in _SUMMED:
            merged[name] += int(report.get(name) or 0)
        http.update({k: int(v) for k, v in (report.get("http_requests") or {}).items()})
        statuses.append(str(report.get("status", "done")))
    run_ids = {str(r.get("run_id", "")).rsplit("-p", 1)[0] for r in reports}
    merged.update(
        run_id=run_ids.pop() if len(run_ids) == 1 else None,
        status=next((s for s in statuses if s != "done"), "done"),
        http_requests={k: http.get(k, 0) for k in ("total", "post", "get_job", "list_jobs")},
        partitions=len(reports),
        workers=len({r.get("worker") for r in reports if r.get("worker")}),
        partition_elapsed_s=round(sum(float(r.get("elapsed_s") or 0.0) for r in reports), 3),
        elapsed_s=round(elapsed, 3) if elapsed is not None else None,
        model=next((r.get("model") for r in reports if r.get("model")), None),
        partition_reports=[dict(r) for r in reports],
    )
    return merged


#: The name of the layer :func:`infer` adds starts with this and the run's token.
_LAYER_PREFIX = "narrative-infer-"
_TOKEN_IN_NAME = re.compile(re.escape(_LAYER_PREFIX) + r"([0-9a-f]{16})")


@dataclass(frozen=True)
class _RunEntry:
    """What the client keeps of one run made by :func:`infer`."""

    token: str
    source: Any  # the input Dask frame (its row count is the bar's total)
    monitor: RunMonitor


#: Runs made by :func:`infer`, by token (the newest ``_RUNS_KEPT``).
_runs: dict[str, _RunEntry] = {}
_RUNS_KEPT = 64


def _remember_run(token: str, source: Any, monitor: RunMonitor) -> None:
    _runs[token] = _RunEntry(token, source, monitor)
    while len(_runs) > _RUNS_KEPT:
        _runs.pop(next(iter(_runs))).monitor.close()


def _names_of(frame: Any) -> Iterator[str]:
    """Names in ``frame``'s graph: its own, its futures' keys (persisted), its expressions'."""
    yield str(getattr(frame, "_name", ""))
    with contextlib.suppress(ImportError):
        import distributed

        for future in cast(Any, distributed).futures_of(frame):
            key = future.key
            yield str(key[0] if isinstance(key, tuple) else key)
    expr = getattr(frame, "expr", None)
    if expr is not None:
        for node in expr.walk():
            yield str(node._name)


def _run_of(frame: Any) -> _RunEntry | None:
    """The run behind ``frame``: returned by :func:`infer`, persisted, or derived from one."""
    for name in _names_of(frame):
        found = _TOKEN_IN_NAME.search(name)
        if found and found.group(1) in _runs:
            return _runs[found.group(1)]
    return None


def _row_counter(source: Any) -> Callable[[], int]:
    """Count ``source``'s rows here (its partitions' lengths; the workers may all be busy)."""

    def count() -> int:
        lengths = [_dask.delayed(len)(d) for d in source.to_delayed()]
        try:
            return int(sum(_dask.compute(*lengths, scheduler="sync")))
        except Exception:  # the input is not readable here (files only workers see)
            client = _distributed_client()
            if client is None:
                raise
            return int(sum(client.gather(client.compute(lengths, priority=100))))

    return count


def persist(frame: dd.DataFrame, **persist_kwargs: Any) -> dd.DataFrame:
    """``frame.persist()`` (kept for older code: a plain ``.persist()`` is followed as well)."""
    return cast(dd.DataFrame, cast(Any, frame).persist(**persist_kwargs))


def _distributed_client() -> Any:
    try:
        import distributed
    except ImportError:
        return None
    cluster: Any = distributed
    try:
        return cluster.default_client()
    except ValueError:
        return None


def progress(frame: dd.DataFrame, progress: Any = True) -> None:
    """Show the live progress over all rows of a running :func:`infer` result, until it ends.

    ``running = out.persist()`` (or ``dask.persist(out)``) returns at once while the cluster
    works, and the run's display appears as soon as the cluster starts its first partition
    (in the cell running then). ``narrative_pandas.dask.progress(running)`` (or
    ``running.narrative.progress()``) waits until every partition has ended, showing the same
    widget (or text line) as the pandas path for the whole cluster's rows if none shows yet, and
    the final summary. Called after the run ended, it shows the final counts. ``progress=``
    takes the values of ``infer``'s (``True``, a callable, a sink); a callable runs here, on the
    client, and always receives the events.
    """
    found = _run_of(frame)
    if found is None:
        raise ConfigurationError(
            "progress() follows a frame returned by ddf.narrative.infer(...) (or persisted from "
            "one); this frame has no narrative run in its graph."
        )
    _check_progress(progress)
    client = _distributed_client()
    futures: list[Any] = []
    if client is not None:
        import distributed

        found.monitor.subscribe(client)
        futures = list(cast(Any, distributed).futures_of(frame))
    found.monitor.follow(progress, futures)


_progress_of = progress  # for the accessor's method of the same name


def compute(ddf: dd.DataFrame, progress: Any = None, **compute_kwargs: Any) -> pd.DataFrame:
    """Compute a frame returned by :func:`infer` and merge its partitions' run reports.

    The partitions are computed once, concatenated in order like ``frame.compute()``, and
    ``attrs["narrative"]`` holds the merged report (counts summed over partitions, ``elapsed_s``
    the wall time of this call, ``partition_reports`` each one). Like the pandas path, a warning
    summarises failed rows.

    Progress over every partition's rows is shown while it runs (on a ``distributed`` cluster,
    or with the threads or synchronous scheduler), and its final state is drawn before this
    returns: ``progress=None`` goes where ``infer``'s ``progress=`` said (by default the widget
    in a notebook, a text line in a terminal); ``True``/``False``/a callable/a sink override it
    for this call (a callable runs on the client, with the cluster's counts).
    """
    frame: Any = ddf
    started = time.monotonic()
    client = _distributed_client()
    found = _run_of(frame)
    if progress is not None:
        _check_progress(progress)
    if client is not None and found is not None and not compute_kwargs:
        monitor = found.monitor
        monitor.subscribe(client)
        total = None
        if progress is not False and (progress is not None or monitor.progress is not False):
            # The bar's total, counted first on the cluster (workers can read the input).
            lengths = client.compute([_dask.delayed(len)(d) for d in found.source.to_delayed()])
            total = sum(int(n) for n in client.gather(lengths))
        generation = monitor.expect(progress, total)
        futures = client.compute(list(frame.to_delayed()))
        parts: list[pd.DataFrame] = list(client.gather(futures))
        monitor.wait_end(generation)  # the final counts drawn before the frame comes back
    else:
        generation = found.monitor.expect(progress, None) if found is not None else 0
        parts = list(_dask.compute(*frame.to_delayed(), **compute_kwargs))
        if found is not None and found.monitor.started_since(generation):
            found.monitor.wait_end(generation)
    elapsed = time.monotonic() - started
    reports = [p.attrs["narrative"] for p in parts if isinstance(p.attrs.get("narrative"), dict)]
    filled = [p for p in parts if len(p)]
    out: pd.DataFrame
    if not filled:
        out = parts[0].copy() if parts else cast(pd.DataFrame, frame._meta).copy()
    elif len(filled) == 1:
        out = filled[0].copy()
    else:
        out = pd.concat(filled)
    out.attrs = {"narrative": merge_reports(reports, elapsed=elapsed)}
    error_columns = [c for c in out.columns if isinstance(c, str) and c.endswith("narrative_error")]
    if error_columns:
        failed = int(out[error_columns[-1]].notna().sum())
        if failed:
            top = Counter(str(e) for e in out[error_columns[-1]].dropna()).most_common(3)
            reasons = "; ".join(f"{n} x {reason}" for reason, n in top)
            warnings.warn(
                f"{failed} of {len(out)} rows have no output ({reasons}). See the "
                f"'{error_columns[-1]}' column.",
                RowsFailedWarning,
                stacklevel=2,
            )
    return out


# ---------------------------------------------------------------------------------- accessors


@_extensions.register_dataframe_accessor("narrative")
class DaskFrameNarrativeAccessor:
    """Narrative model inference on the rows of a Dask DataFrame (lazy).

    Examples
    --------
    >>> out = ddf.narrative.infer("Review: {review}", output=Sentiment)  # doctest: +SKIP
    >>> df = out.narrative.compute()                                     # doctest: +SKIP
    """

    def __init__(self, dask_obj: dd.DataFrame) -> None:
        self._obj = dask_obj

    def infer(self, prompt: str | None = None, **options: Any) -> dd.DataFrame:
        return infer(self._obj, prompt, **options)

    def preview(self, prompt: str | None = None, **options: Any) -> dd.DataFrame:
        return preview(self._obj, prompt, **options)

    def compute(self, progress: Any = None, **compute_kwargs: Any) -> pd.DataFrame:
        """Compute this frame with the merged run report in ``attrs["narrative"]`` (and live
        progress over the cluster's rows, see :func:`narrative_pandas.dask.compute`)."""
        return compute(self._obj, progress, **compute_kwargs)

    def persist(self, **persist_kwargs: Any) -> dd.DataFrame:
        """``frame.persist()`` (a plain ``.persist()`` is followed by :func:`progress` too)."""
        return persist(self._obj, **persist_kwargs)

    def progress(self, progress: Any = True) -> None:
        """Wait for this (persisted) frame's rows, showing their progress (see :func:`progress`)."""
        _progress_of(self._obj, progress)


@_extensions.register_series_accessor("narrative")
class DaskSeriesNarrativeAccessor:
    """Narrative inference on the values of a Dask Series (``{}`` or ``{value}`` is the value)."""

    def __init__(self, dask_obj: dd.Series) -> None:
        self._obj = dask_obj

    def _frame(self) -> dd.DataFrame:
        series: Any = self._obj
        return cast(dd.DataFrame, series.to_frame(name="value"))

    def infer(self, prompt: str | None = None, **options: Any) -> dd.DataFrame:
        return infer(self._frame(), prompt, **options)

    def preview(self, prompt: str | None = None, **options: Any) -> dd.DataFrame:
        return preview(self._frame(), prompt, **options)


def _with_start_signature(func: Callable[..., Any], *, method: bool) -> None:
    params = list(inspect.signature(_api.start).parameters.values())[1:]
    own = inspect.signature(func)
    first = (
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        if method
        else inspect.Parameter("ddf", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    func.__signature__ = own.replace(  # type: ignore[attr-defined]
        parameters=[first, *params], return_annotation=own.return_annotation
    )


for _func in (infer, preview):
    _with_start_signature(_func, method=False)
for _cls in (DaskFrameNarrativeAccessor, DaskSeriesNarrativeAccessor):
    for _name in ("infer", "preview"):
        _method = getattr(_cls, _name)
        _method.__doc__ = globals()[_name].__doc__
        _with_start_signature(_method, method=True)
