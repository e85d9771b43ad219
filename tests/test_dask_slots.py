"""The per-worker lease pool behind Dask's cluster-wide ``concurrency`` (no cluster needed).

A fake semaphore stands in for ``distributed.Semaphore`` and counts the scheduler round trips.
"""

from __future__ import annotations

import asyncio
from typing import Any

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
