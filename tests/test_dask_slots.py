"""The per-worker lease pool behind Dask's cluster-wide ``concurrency`` (no cluster needed).

A fake semaphore stands in for ``distributed.Semaphore`` and counts the scheduler round trips.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from narrative_pandas import _dask_slots
from narrative_pandas._dask_slots import LeasePool, _DemandBoard, fair_share, slots_per_lease


class _FakeSemaphore:
    """Leases of a semaphore with ``limit`` of them; counts acquire/release round trips."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.acquires = 0
        self.releases = 0

    async def acquire(self, timeout: float | None = None) -> bool:
        self.acquires += 1
        deadline = asyncio.get_running_loop().time() + (timeout or 0.0)
        while self.held >= self.limit:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        self.held += 1
        return True

    async def release(self) -> bool:
        self.releases += 1
        self.held -= 1
        return True


def _pool(semaphore: _FakeSemaphore, limit: int) -> LeasePool:
    return LeasePool(semaphore, asyncio.get_running_loop(), limit)


class TestFairShare:
    """The max-min fair share of the limit among the pools' demands."""

    def test_no_share_when_everything_fits(self) -> None:
        """Demands within the limit: no pool has to give anything back."""
        assert fair_share({"a": 10, "b": 20}, 64) is None

    def test_equal_and_unequal_demands(self) -> None:
        """Two hungry pools split evenly; a small demand is met and the rest is shared."""
        assert fair_share({"a": 128, "b": 128}, 128) == 64
        assert fair_share({"a": 10, "b": 200, "c": 200}, 100) == 45
        assert fair_share({"a": 3, "b": 3, "c": 3}, 2) == 1


class TestLeasePool:
    """Leases are reused across jobs and given back when idle or above the share."""

    async def test_jobs_reuse_leases_without_round_trips(self, monkeypatch: Any) -> None:
        """100 jobs through 4 slots cost 4 acquires and 4 releases, never more than 4 held."""
        monkeypatch.setattr(_dask_slots, "LEASE_LINGER_S", 0.05)
        semaphore = _FakeSemaphore(4)
        pool = _pool(semaphore, 4)
        peak = 0

        async def job() -> None:
            nonlocal peak
            await pool.acquire()
            peak = max(peak, semaphore.held)
            await asyncio.sleep(0.001)
            await pool.release()

        await asyncio.gather(*(job() for _ in range(100)))
        await asyncio.sleep(0.2)  # the linger passes: idle leases go back
        assert peak <= 4
        assert semaphore.acquires == 4 and semaphore.releases == 4
        assert pool.held == 0 and pool.free == 0 and semaphore.held == 0
        assert pool.stats.local_handoffs >= 96

    async def test_above_share_a_lease_goes_back_instead_of_to_the_next_job(self) -> None:
        """With a share of 1 and 2 held, a finished job returns its lease to the scheduler."""
        semaphore = _FakeSemaphore(4)
        pool = _pool(semaphore, 4)
        await pool.acquire()
        await pool.acquire()
        pool.target = 1
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.01)
        await pool.release()
        await asyncio.sleep(0.01)
        assert pool.stats.rebalance_returns == 1 and semaphore.releases == 1
        assert not waiter.done()  # at its share: the waiting job waits, the pool does not ask
        await pool.release()  # below its share again: it asks and the job gets a lease
        await asyncio.wait_for(waiter, 1.0)
        assert pool.held == 1

    async def test_a_cancelled_waiter_does_not_keep_a_lease(self, monkeypatch: Any) -> None:
        """A job cancelled while waiting gives up its place; the lease returns when idle."""
        monkeypatch.setattr(_dask_slots, "LEASE_LINGER_S", 0.05)
        semaphore = _FakeSemaphore(1)
        pool = _pool(semaphore, 1)
        await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.waiting == 0
        await pool.release()
        await asyncio.sleep(1.3)  # the cancelled ask times out; the linger returns the lease
        assert semaphore.held == 0 and pool.held == 0


class TestLeasesOfSeveralSlots:
    """One semaphore lease stands for several job slots: fewer scheduler round trips, same cap."""

    def test_slots_per_lease_divides_the_limit_and_leaves_enough_leases(self) -> None:
        """8 slots of 128; a divisor of odd limits; 1 where 16 leases would not remain."""
        assert slots_per_lease(128) == 8 and 128 // slots_per_lease(128) == 16
        assert slots_per_lease(100) == 5
        assert slots_per_lease(500) == 5
        assert slots_per_lease(64) == 4
        assert slots_per_lease(32) == 2
        assert [slots_per_lease(n) for n in (1, 2, 15, 16, 31, 97)] == [1] * 6

    def test_more_workers_make_smaller_leases(self) -> None:
        """At least 4 leases per worker: 8 workers share 128 as 32 leases of 4; 20, as 128."""
        assert slots_per_lease(128, workers=2) == 8
        assert slots_per_lease(128, workers=8) == 4
        assert slots_per_lease(128, workers=20) == 1

    async def test_never_more_jobs_than_leases_cover(self, monkeypatch: Any) -> None:
        """Leases of 4 slots, a semaphore of 2: at most 8 jobs at once, 2 acquires for 60 jobs."""
        monkeypatch.setattr(_dask_slots, "LEASE_LINGER_S", 0.05)
        semaphore = _FakeSemaphore(2)
        pool = LeasePool(semaphore, asyncio.get_running_loop(), 2, per_lease=4)
        running = peak = 0

        async def job() -> None:
            nonlocal running, peak
            await pool.acquire()
            running += 1
            peak = max(peak, running)
            assert running <= pool.held * pool.per_lease
            await asyncio.sleep(0.002)
            running -= 1
            await pool.release()

        await asyncio.gather(*(job() for _ in range(60)))
        assert peak == 8
        await asyncio.sleep(0.2)  # the linger passes: both leases go back whole
        assert semaphore.acquires == 2 and semaphore.releases == 2
        assert pool.held == 0 and pool.free == 0 and semaphore.held == 0

    async def test_one_job_takes_one_lease_and_the_rest_of_it_waits_free(self) -> None:
        """A lease granted for one waiting job leaves its other slots free for the next jobs."""
        semaphore = _FakeSemaphore(4)
        pool = LeasePool(semaphore, asyncio.get_running_loop(), 4, per_lease=4)
        await pool.acquire()
        assert pool.held == 1 and pool.free == 3
        await asyncio.gather(pool.acquire(), pool.acquire(), pool.acquire())
        assert semaphore.acquires == 1 and pool.free == 0

    async def test_above_share_a_whole_lease_goes_back_once_its_slots_are_free(self) -> None:
        """Share 1 of 2 leases held: ending jobs' slots stay free (the waiting job waits) until
        they make a whole lease, which goes back; at its share, the next end serves the job."""
        semaphore = _FakeSemaphore(4)
        pool = LeasePool(semaphore, asyncio.get_running_loop(), 4, per_lease=2)
        for _ in range(4):
            await pool.acquire()
        assert pool.held == 2 and pool.free == 0
        pool.target = 1
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.01)
        await pool.release()
        assert not waiter.done() and pool.free == 1 and semaphore.releases == 0
        await pool.release()  # two free slots make a lease: it goes back
        await asyncio.sleep(0.01)
        assert semaphore.releases == 1 and pool.held == 1 and pool.free == 0
        assert pool.stats.rebalance_returns == 1 and not waiter.done()
        await pool.release()  # at its share: the slot goes to the waiting job
        await asyncio.wait_for(waiter, 1.0)
        assert semaphore.acquires == 2 and pool.held == 1 and pool.free == 0

    async def test_waiting_jobs_get_the_free_slots_once_the_share_grows(
        self, monkeypatch: Any
    ) -> None:
        """Above its share, a pool keeps slots of a partly used lease free while a job waits;
        when the board says the other pool is done, that job takes one at once."""
        monkeypatch.setattr(_dask_slots, "BOARD_INTERVAL_S", 0.01)
        board = _ContendedBoard()
        pool = LeasePool(
            _FakeSemaphore(2), asyncio.get_running_loop(), 2, board=cast(Any, board), per_lease=4
        )
        board.other = 0
        for _ in range(8):
            await pool.acquire()
        board.other = 2  # another pool wants the whole limit too: each has a share of 1
        await asyncio.sleep(0.03)
        assert pool.target == 1 and pool.held == 2
        waiter = asyncio.ensure_future(pool.acquire())
        for _ in range(3):
            await pool.release()
        await asyncio.sleep(0.005)
        assert pool.free == 3 and not waiter.done()  # 3 of 4: not a whole lease to return
        board.other = 0  # the other pool has finished
        await asyncio.wait_for(waiter, 1.0)
        assert pool.target is None and pool.free == 2 and pool.held == 2
        assert pool._board_task is not None
        pool._board_task.cancel()


class _ContendedBoard:
    """A board where another pool wants ``other`` leases."""

    def __init__(self) -> None:
        self.other = 2

    async def exchange(self, pool_id: str, demand: int) -> dict[str, int]:
        return {pool_id: demand, "other": self.other}


class _MetadataClient:
    """The scheduler's metadata store as a worker's client sees it; counts the writes."""

    def __init__(self) -> None:
        self.store: dict[str, Any] = {}
        self.writes = 0
        self.reads = 0

    async def set_metadata(self, key: list[str], value: Any) -> None:
        self.writes += 1
        node = self.store
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value

    async def get_metadata(self, key: list[str], default: Any = None) -> Any:
        self.reads += 1
        node: Any = self.store
        for part in key:
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


class TestDemandBoard:
    """The board reads the others' demands each time, and writes this pool's when it changed."""

    async def test_an_unchanged_demand_is_written_only_to_refresh_it(
        self, monkeypatch: Any
    ) -> None:
        """Five exchanges of the same demand write once; a new demand or an old entry, again."""
        monkeypatch.setattr(_dask_slots, "BOARD_REFRESH_S", 0.05)
        client = _MetadataClient()
        loop = asyncio.get_running_loop()
        board = _DemandBoard(client, "tok", loop)
        for _ in range(5):
            assert await board.exchange("a", 16) == {"a": 16}
        assert client.writes == 1 and client.reads == 5
        await board.exchange("a", 9)
        assert client.writes == 2
        await asyncio.sleep(0.06)
        await board.exchange("a", 9)
        assert client.writes == 3

    async def test_other_pools_demands_are_read_every_time(self) -> None:
        """Another pool's new demand shows in the next exchange, though ours did not change."""
        client = _MetadataClient()
        loop = asyncio.get_running_loop()
        ours, theirs = _DemandBoard(client, "tok", loop), _DemandBoard(client, "tok", loop)
        await ours.exchange("a", 16)
        await theirs.exchange("b", 4)
        assert await ours.exchange("a", 16) == {"a": 16, "b": 4}
        await theirs.exchange("b", 16)
        assert await ours.exchange("a", 16) == {"a": 16, "b": 16}

    async def test_a_backlog_larger_than_the_limit_is_published_as_the_limit(
        self, monkeypatch: Any
    ) -> None:
        """A partition's shrinking backlog of thousands is one unchanged demand: the limit."""
        monkeypatch.setattr(_dask_slots, "BOARD_INTERVAL_S", 0.01)
        board = _Board()
        pool = LeasePool(
            _FakeSemaphore(4), asyncio.get_running_loop(), 4, board=cast(Any, board), per_lease=2
        )
        jobs = [asyncio.ensure_future(pool.acquire()) for _ in range(50)]
        await asyncio.sleep(0.05)
        assert board.published and set(board.published[1:]) == {4}
        for job in jobs:
            job.cancel()
        assert pool._board_task is not None
        pool._board_task.cancel()


class _Upcoming:
    """Stands in for the worker's task states: whether another partition is under way."""

    def __init__(self, coming: bool) -> None:
        self.coming = coming
        self.asked: list[int] = []

    async def __call__(self, users: int) -> bool:
        self.asked.append(users)
        return self.coming


class _Board:
    """A demand board of one pool: records every demand published."""

    def __init__(self) -> None:
        self.published: list[int] = []

    async def exchange(self, pool_id: str, demand: int) -> dict[str, int]:
        self.published.append(demand)
        return {pool_id: demand}


class TestLeasesKeptForTheNextPartition:
    """Idle leases wait for a partition still to start on the worker instead of going back."""

    async def test_idle_leases_are_kept_while_a_partition_is_coming(self, monkeypatch: Any) -> None:
        """Past the linger, no lease goes back while one is coming; all go once none is."""
        monkeypatch.setattr(_dask_slots, "LEASE_LINGER_S", 0.02)
        semaphore = _FakeSemaphore(4)
        upcoming = _Upcoming(coming=True)
        pool = LeasePool(semaphore, asyncio.get_running_loop(), 4, upcoming=upcoming)
        await asyncio.gather(pool.acquire(), pool.acquire())
        await pool.release()
        await pool.release()
        await asyncio.sleep(0.15)  # several lingers
        assert semaphore.releases == 0 and pool.held == 2 and pool.free == 2
        assert pool.kept_for_next and len(upcoming.asked) >= 2
        upcoming.coming = False
        await asyncio.sleep(0.1)
        assert semaphore.releases == 2 and pool.held == 0 and semaphore.held == 0

    async def test_the_next_partition_takes_kept_leases_without_round_trips(
        self, monkeypatch: Any
    ) -> None:
        """The leases kept across the gap serve the next partition's jobs: no new acquire."""
        monkeypatch.setattr(_dask_slots, "LEASE_LINGER_S", 0.02)
        semaphore = _FakeSemaphore(4)
        pool = LeasePool(semaphore, asyncio.get_running_loop(), 4, upcoming=_Upcoming(True))
        await asyncio.gather(*(pool.acquire() for _ in range(4)))
        for _ in range(4):
            await pool.release()
        await asyncio.sleep(0.1)  # the gap between two partitions, longer than the linger
        await asyncio.gather(*(pool.acquire() for _ in range(4)))
        assert semaphore.acquires == 4 and semaphore.releases == 0

    async def test_kept_leases_count_in_the_published_demand(self, monkeypatch: Any) -> None:
        """While kept, the pool's demand is the leases it holds, so other pools do not ask."""
        monkeypatch.setattr(_dask_slots, "BOARD_INTERVAL_S", 0.01)
        monkeypatch.setattr(_dask_slots, "LEASE_LINGER_S", 5.0)
        board = _Board()
        pool = LeasePool(
            _FakeSemaphore(4),
            asyncio.get_running_loop(),
            4,
            board=cast(Any, board),
            upcoming=_Upcoming(True),
        )
        await asyncio.gather(*(pool.acquire() for _ in range(3)))
        for _ in range(3):
            await pool.release()
        board.published.clear()
        await asyncio.sleep(0.05)
        assert board.published and set(board.published) == {3}
        cast(_Upcoming, pool.upcoming).coming = False
        await asyncio.sleep(0.05)
        assert board.published[-1] == 0  # nothing in use, nothing waiting, nothing coming
        assert pool._board_task is not None
        pool._board_task.cancel()
