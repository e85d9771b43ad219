"""Cluster-wide ``concurrency`` for Dask runs, without a scheduler round trip per job.

The limit is a run-specific :class:`distributed.Semaphore` of leases covering ``concurrency``
job slots. Taking
and returning one lease per job cost two scheduler round trips per row, and the scheduler wakes
every waiting request on each release: at 0.2 s jobs that was most of the client's CPU. Instead,
each worker process keeps a :class:`LeasePool`:

- leases are *held* by the pool and handed from a finished job to the next one locally;
- one lease stands for several job slots (:func:`slots_per_lease`: 8 of a limit of 128 on 2
  workers, so the semaphore has 16 leases; smaller leases on more workers): every scheduler
  round trip costs the worker about half a millisecond of CPU, and a pool's start,
  rebalancing and return take 8 times fewer;
- the pool asks the scheduler for more only while its jobs wait (at most
  ``LEASE_REQUESTS_PER_PROCESS`` requests at once), and returns leases it has not used for
  ``LEASE_LINGER_S`` (so a partition that ends gives them back, and the next partition on the
  same worker finds them);
- the pools rebalance through the scheduler's metadata store: every ``BOARD_INTERVAL_S`` each
  pool reads the others' demands (leases in use + leases its waiting jobs need, capped at the
  limit) and publishes its own when it changed (or is ``BOARD_REFRESH_S`` old); when the
  cluster wants more than ``concurrency``, each pool's share is the max-min fair share, and a
  pool above its share returns leases as its jobs end instead of reusing them;
- while the worker has another partition of the run to start (``upcoming``), its idle leases
  are kept for it (and count in its demand) instead of going back after the linger: a loaded
  worker can take longer than ``LEASE_LINGER_S`` between two partitions, and every lease it
  gave back then was a release, an acquire by another worker, and the same two again when the
  next partition took its share back (0.19 lease round trips per row at load 7, 4,000 rows).

Held leases stay leases of the semaphore: the worker's event loop refreshes them, and a lost
worker's leases come back after ``lease-timeout``, as before. Without ``distributed`` (threads or
sync scheduler) all partitions share one process and :class:`ProcessSlots`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _sync

__all__ = [
    "BOARD_INTERVAL_S",
    "LEASE_LINGER_S",
    "LEASE_REQUESTS_PER_PROCESS",
    "MAX_SLOTS_PER_LEASE",
    "LeasePool",
    "ProcessSlots",
    "fair_share",
    "on_loop",
    "pool_for",
    "process_slots_for",
    "slots_per_lease",
]

logger = logging.getLogger("narrative_pandas")

#: Lease requests one worker process keeps waiting at the scheduler at once (the scheduler wakes
#: every waiting request on each release, so hundreds would cost it hundreds of wake-ups each).
LEASE_REQUESTS_PER_PROCESS = 32
#: Seconds one lease request waits at the scheduler before it is renewed (or dropped).
ASK_TIMEOUT_S = 1.0
#: Seconds a lease no job uses stays in the pool before it goes back to the scheduler: long
#: enough to carry a worker's leases from one partition to the next (a partition's last jobs
#: free their leases while it waits for its slowest one). Under contention the demand board
#: takes leases back sooner.
LEASE_LINGER_S = 1.0
#: Seconds between two publications of a pool's demand (and reads of the others').
BOARD_INTERVAL_S = 0.5
#: A demand not refreshed for this long is a gone worker's: ignored.
BOARD_STALE_S = 5 * BOARD_INTERVAL_S
#: An unchanged demand is published again after this long (a changed one at once), so the
#: others see it fresh without a write to the scheduler every ``BOARD_INTERVAL_S``.
BOARD_REFRESH_S = 2 * BOARD_INTERVAL_S
#: Most job slots one semaphore lease stands for ...
MAX_SLOTS_PER_LEASE = 8
#: ... while the semaphore keeps at least this many leases to share among the pools ...
MIN_LEASES = 16
#: ... and at least this many per worker process of the cluster (so that each gets a fine share).
MIN_LEASES_PER_WORKER = 4


def slots_per_lease(limit: int, workers: int = 0) -> int:
    """Job slots per semaphore lease for a cluster-wide ``limit`` on ``workers`` processes: the
    largest divisor of it up to :data:`MAX_SLOTS_PER_LEASE` that leaves :data:`MIN_LEASES`
    leases, and :data:`MIN_LEASES_PER_WORKER` per worker (1 for small limits or many workers).

    Every scheduler round trip costs a worker about half a millisecond of CPU (its comm layer
    and two event loops); a lease of 8 slots makes a pool's start, its rebalancing and its
    return 8 times fewer of them. A divisor, so that the leases cover exactly ``limit`` slots.
    Every worker must use the same size: it is chosen once, on the client, and travels with
    the run's tasks.
    """
    least = max(MIN_LEASES, MIN_LEASES_PER_WORKER * workers)
    best = 1
    for size in range(2, MAX_SLOTS_PER_LEASE + 1):
        if limit % size == 0 and limit // size >= least:
            best = size
    return best


async def on_loop(loop: asyncio.AbstractEventLoop, method: Callable[[], Any]) -> Any:
    """Await ``method()`` on ``loop`` (where distributed's objects answer with coroutines)."""

    async def call() -> Any:
        return await method()

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))


def fair_share(demands: Mapping[str, int], limit: int) -> int | None:
    """The max-min fair share of ``limit`` among ``demands``; None when all fit at once."""
    wanted = sorted(d for d in demands.values() if d > 0)
    if sum(wanted) <= limit:
        return None
    remaining = float(limit)
    for i, demand in enumerate(wanted):
        level = remaining / (len(wanted) - i)
        if demand > level:
            return max(1, math.ceil(level))
        remaining -= demand
    return max(1, math.ceil(remaining))  # pragma: no cover  (the sum exceeds the limit)


@dataclass
class PoolStats:
    """What a pool did, for reports and benchmarks."""

    scheduler_acquires: int = 0
    scheduler_releases: int = 0
    local_handoffs: int = 0
    rebalance_returns: int = 0


class _DemandBoard:
    """Each pool's demand, kept in the scheduler's metadata store under the run's token.

    Each exchange reads the run's whole entry (``["narrative-pandas", token]``), so what else
    the run keeps there (the shared 429 gate, ``dask._SharedGate``) comes with it: the
    ``listeners`` are called after each read with that entry, instead of reading it themselves.
    """

    def __init__(self, client: Any, token: str, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._run_key = ["narrative-pandas", token]
        self._loop = loop
        self._published: tuple[int, float] | None = None  # demand, monotonic time
        self.listeners: set[Callable[[Mapping[str, Any]], None]] = set()

    async def exchange(self, pool_id: str, demand: int) -> dict[str, int]:
        """Publish this pool's demand (if it changed, or to refresh it); every fresh demand on
        the board (this one included)."""
        last = self._published
        publish = last is None or last[0] != demand or time.monotonic() - last[1] >= BOARD_REFRESH_S

        async def call() -> Any:
            if publish:
                entry = [*self._run_key, "demand", pool_id]
                await self._client.set_metadata(entry, [demand, time.time()])
            return await self._client.get_metadata(self._run_key, default={})

        run_entry = await on_loop(self._loop, call)
        if publish:
            self._published = (demand, time.monotonic())
        run_entry = run_entry if isinstance(run_entry, Mapping) else {}
        for listener in list(self.listeners):
            listener(run_entry)
        board = run_entry.get("demand")
        now = time.time()
        fresh = {
            str(name): int(entry[0])
            for name, entry in dict(board if isinstance(board, Mapping) else {}).items()
            if isinstance(entry, (list, tuple)) and now - float(entry[1]) < BOARD_STALE_S
        }
        fresh[pool_id] = demand
        return fresh


@dataclass(eq=False)
class LeasePool:
    """This process's leases of one run's semaphore (use on the narrative runner loop).

    Implements the engine's slot protocol (``acquire``/``release``). ``held`` leases are held
    at the scheduler, each standing for ``per_lease`` job slots; ``free`` slots wait for a job
    here. The pool never gives out more than ``held * per_lease`` slots, so the cluster never
    runs more than the semaphore's ``limit * per_lease`` jobs.
    """

    semaphore: Any
    worker_loop: asyncio.AbstractEventLoop
    limit: int  # leases in the semaphore
    board: _DemandBoard | None = None
    #: Answers (on the runner loop) whether this process has more of the run's partitions under
    #: way than the given number using the pool now; None: never keep idle leases for later.
    upcoming: Callable[[int], Awaitable[bool]] | None = None
    held: int = 0
    free: int = 0
    users: int = 0
    waiting: int = 0  # jobs waiting here for a lease
    target: int | None = None  # the fair share while the cluster wants more than the limit
    kept_for_next: bool = False  # idle leases are kept for a partition still to start here
    stats: PoolStats = field(default_factory=PoolStats)
    pool_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    per_lease: int = 1
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    _asking: int = 0
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _trim: asyncio.TimerHandle | None = None
    _board_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the slot protocol

    async def acquire(self) -> None:
        """A slot for one job: a free one at once, else the next one handed back or granted."""
        self._start_board()
        self._shed_above_share()
        # Above the share, the slots left of a partly free lease stay free: taking them would
        # keep the pool from ever freeing a whole lease for the pools below their share.
        if self.free and not self._above_share():
            self.free -= 1
            self.stats.local_handoffs += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.waiting += 1
        self._ask_more()
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():
                self.waiting -= 1  # never served: it no longer waits
            elif waiter.exception() is None:
                self.release_now()  # handed over just as the job was cancelled: pass it on
            raise

    async def release(self) -> None:
        """A job ended: its lease goes to a waiting job, back to the scheduler, or lingers."""
        self.release_now()

    def release_now(self) -> None:
        if self._above_share():
            self.free += 1  # a whole lease goes back once its slots are all free
            if self._shed_above_share():
                self._serve_waiters()
            else:
                self._schedule_trim()
        elif self._hand_to_waiter():
            self.stats.local_handoffs += 1
        else:
            self.free += 1
            self._schedule_trim()

    # ------------------------------------------------------------------ lifetime

    def close_when_idle(self, forget: Callable[[], bool]) -> None:
        """No partition uses the pool: after the linger, return every lease and ``forget``."""

        async def retire() -> None:
            if self.users:
                return
            if await self._next_partition_coming():
                self.close_when_idle(forget)  # look again after another linger
                return
            if self.users or not forget():
                return
            self._return_free()
            if self._board_task is not None:
                self._board_task.cancel()

        asyncio.get_running_loop().call_later(LEASE_LINGER_S, lambda: self._spawn(retire()))

    def joined(self) -> None:
        """A partition started using the pool: idle leases get a full linger again, for it."""
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
            self._schedule_trim()

    # ------------------------------------------------------------------ internals

    def _above_share(self) -> bool:
        return self.target is not None and self.held > self.target

    def _shed_above_share(self) -> bool:
        """Above the fair share, return the whole leases that free slots make up; any?"""
        if not self._above_share() or self.free < self.per_lease:
            return False
        assert self.target is not None
        extra = min(self.free // self.per_lease, self.held - self.target)
        self.free -= extra * self.per_lease
        self.stats.rebalance_returns += extra
        self._return(extra)
        return True

    def _serve_waiters(self) -> None:
        """Free slots go to waiting jobs (they may be left waiting while above the share)."""
        while self.free and not self._above_share() and self._hand_to_waiter():
            self.free -= 1
            self.stats.local_handoffs += 1

    def _return_free(self) -> None:
        """Return the whole leases the free slots make up."""
        count = self.free // self.per_lease
        self.free -= count * self.per_lease
        self._return(count)

    def _hand_to_waiter(self) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.waiting -= 1
                return True
        return False

    def _ask_more(self) -> None:
        """Keep asking the scheduler for the leases our waiting jobs need, up to our share.

        At or above its fair share a pool does not ask: a lease another pool returns then goes
        to a pool below its share, instead of bouncing between pools at every job's end.
        """
        leases_for_waiting = -(-self.waiting // self.per_lease)
        wanted = min(leases_for_waiting, LEASE_REQUESTS_PER_PROCESS, self.limit - self.held)
        if self.target is not None:
            wanted = min(wanted, self.target - self.held)
        while self._asking < wanted:
            self._asking += 1
            self._spawn(self._ask())

    async def _ask(self) -> None:
        try:
            granted = await on_loop(self.worker_loop, self._acquire_one)
        except BaseException as exc:
            self._asking -= 1
            while self._waiters:  # the engine sees the failure, as with a direct acquire
                waiter = self._waiters.popleft()
                if not waiter.done():
                    self.waiting -= 1
                    waiter.set_exception(
                        exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
                    )
                    break
            if not isinstance(exc, Exception):
                raise
            return
        self._asking -= 1
        if not granted:  # timed out: ask again only if our jobs still wait and we are below share
            self._ask_more()
            return
        self.held += 1
        self.stats.scheduler_acquires += 1
        slots = self.per_lease
        while slots and self._hand_to_waiter():
            slots -= 1
        if slots:
            self.free += slots
            self._schedule_trim()
        self._ask_more()

    def _acquire_one(self) -> Any:
        """One lease request; it expires so that a request made before a rebalance does not
        take a lease this pool no longer has a share for (requests cannot be withdrawn)."""
        return self.semaphore.acquire(timeout=ASK_TIMEOUT_S)

    def _return(self, count: int) -> None:
        for _ in range(count):
            self.held -= 1
            self.stats.scheduler_releases += 1
            self._spawn(self._release_one())

    async def _release_one(self) -> None:
        try:
            await on_loop(self.worker_loop, self.semaphore.release)
        except Exception:  # the lease times out at the scheduler instead
            logger.warning("could not return a semaphore lease", exc_info=True)

    def _schedule_trim(self) -> None:
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(LEASE_LINGER_S, self._trim_free)

    def _trim_free(self) -> None:
        """Return the leases no job took during the linger, unless a partition is coming."""
        self._trim = None
        if self.free < self.per_lease or self.waiting:
            return
        if self.upcoming is None:  # nothing to keep them for
            self._return_free()
        else:
            self._spawn(self._trim_unless_kept())

    async def _trim_unless_kept(self) -> None:
        if await self._next_partition_coming():
            self._schedule_trim()  # look again after another linger
        elif self.free >= self.per_lease and not self.waiting:
            self._return_free()

    async def _next_partition_coming(self) -> bool:
        """Ask ``upcoming`` (False without it, or when it fails) and remember the answer."""
        coming = False
        if self.upcoming is not None:
            try:
                coming = bool(await self.upcoming(self.users))
            except Exception:  # keeping leases is an optimisation: when unsure, give them back
                logger.debug("could not tell whether a partition is coming", exc_info=True)
        self.kept_for_next = coming
        return coming

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_board(self) -> None:
        if self.board is not None and self._board_task is None:
            self._board_task = asyncio.get_running_loop().create_task(self._watch_board())

    async def _watch_board(self) -> None:
        board = self.board
        assert board is not None
        while True:
            in_use = self.held * self.per_lease - self.free
            demand = -(-(in_use + self.waiting) // self.per_lease)  # in leases
            if self.free and not self.waiting and await self._next_partition_coming():
                demand = self.held  # kept for the next partition: others must not count on them
            # No pool can use more than the whole limit: a capped demand changes no share, and
            # stays the same while a partition's backlog shrinks (so it is not published again).
            demand = min(demand, self.limit)
            try:
                demands = await board.exchange(self.pool_id, demand)
            except Exception:  # sharing is best effort; the semaphore still caps the cluster
                logger.debug("could not exchange lease demand", exc_info=True)
            else:
                self.target = fair_share(demands, self.limit)
                self._shed_above_share()
                self._serve_waiters()
                self._ask_more()
            await asyncio.sleep(BOARD_INTERVAL_S)


class ProcessSlots:
    """The cluster-wide limit when every partition runs in this process (threads scheduler)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._semaphore: asyncio.Semaphore | None = None

    async def acquire(self) -> None:
        if self._semaphore is None:  # created on the runner loop, where every engine runs
            self._semaphore = asyncio.Semaphore(self._limit)
        await self._semaphore.acquire()

    async def release(self) -> None:
        self.release_now()

    def release_now(self) -> None:
        assert self._semaphore is not None
        self._semaphore.release()


_PROCESS_ID = uuid.uuid4().hex[:8]
_registry_lock = threading.Lock()
_pools: dict[str, LeasePool] = {}
_process_slots: dict[str, tuple[ProcessSlots, int]] = {}


@contextlib.contextmanager
def process_slots_for(token: str, limit: int) -> Iterator[ProcessSlots]:
    """The run's in-process limit, shared by its partitions running in this process."""
    with _registry_lock:
        slots, users = _process_slots.get(token, (ProcessSlots(limit), 0))
        _process_slots[token] = (slots, users + 1)
    try:
        yield slots
    finally:
        with _registry_lock:
            slots, users = _process_slots[token]
            if users <= 1:
                del _process_slots[token]
            else:
                _process_slots[token] = (slots, users - 1)


@contextlib.contextmanager
def pool_for(
    token: str,
    limit: int,
    client: Any,
    upcoming: Callable[[int], Awaitable[bool]] | None = None,
    per_lease: int = 1,
) -> Iterator[LeasePool]:
    """This worker process's lease pool for the run ``token`` (call on the task's thread).

    ``client`` is the worker's distributed client (for the demand board), or None to use the
    semaphore alone. ``per_lease``: job slots per lease (:func:`slots_per_lease`, the same on
    every worker of the run). The pool outlives a partition by ``LEASE_LINGER_S`` (longer while
    ``upcoming`` says another partition of the run is under way here) so that the next
    partition of the run on this worker takes over its leases.
    """
    import distributed

    cluster: Any = distributed
    with _registry_lock:
        pool = _pools.get(token)
        if pool is None:
            if per_lease < 1 or limit % per_lease:
                per_lease = 1  # never a lease that would cover more or fewer slots than the limit
            leases = limit // per_lease
            semaphore = cluster.Semaphore(max_leases=leases, name=f"narrative-slots-{token}")
            loop = semaphore.loop.asyncio_loop
            board = _DemandBoard(client, token, loop) if client is not None else None
            # One board entry per process: a pool that follows a retired one takes over its
            # entry, instead of sharing the limit with its stale demand for BOARD_STALE_S.
            pool = LeasePool(
                semaphore, loop, leases, board, upcoming, pool_id=_PROCESS_ID, per_lease=per_lease
            )
            _pools[token] = pool
        pool.users += 1
    _sync.runner_loop().call_soon_threadsafe(pool.joined)
    try:
        yield pool
    finally:
        with _registry_lock:
            pool.users -= 1
            idle = pool.users == 0

        def forget() -> bool:
            with _registry_lock:
                if pool.users:
                    return False
                if _pools.get(token) is pool:
                    del _pools[token]
                return True

        if idle:
            _sync.runner_loop().call_soon_threadsafe(pool.close_when_idle, forget)
