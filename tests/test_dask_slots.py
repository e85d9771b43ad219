"""The per-worker lease pool behind Dask's cluster-wide ``concurrency`` (no cluster needed).

A fake semaphore stands in for ``distributed.Semaphore`` and counts the scheduler round trips.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from narrative_pandas import _dask_slots
from narrative_pandas._dask_slots import LeasePool, fair_share


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
