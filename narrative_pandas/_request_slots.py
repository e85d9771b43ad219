"""The client's connection slots, with reads served before writes.

A run that frees many slots at once (a wave of jobs ending together) queues hundreds of POSTs
for the client's ``max_connections`` slots. With one first-come queue the next listing read
waited behind all of them, so the completions it would have found (and the POSTs those free)
waited too: the poll that should come every 50 ms came every 0.5-1 s at C=500, and each read a
deeper page. Here a waiting read (a listing page or a job) takes the next free slot before any
waiting write; writes keep their order among themselves, and nothing is ever refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType

__all__ = ["RequestSlots"]


class RequestSlots:
    """At most ``size`` requests at once; a waiting read goes before every waiting write."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size = size
        self._free = size
        self._reads: deque[asyncio.Future[None]] = deque()
        self._writes: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        return self.size - self._free

    @property
    def waiting(self) -> tuple[int, int]:
        """``(reads, writes)`` waiting for a slot."""
        return len(self._reads), len(self._writes)

    def hold(self, *, read: bool) -> _Held:
        """Hold one slot for the body of the ``async with``."""
        return _Held(self, read)

    async def _acquire(self, read: bool) -> None:
        queue = self._reads if read else self._writes
        if self._free > 0 and not self._reads and (read or not self._writes):
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled
                self._release()
            else:
                with contextlib.suppress(ValueError):  # already skipped by a release
                    queue.remove(waiter)
            raise

    def _release(self) -> None:
        """Hand the slot to the first waiting read, else the first waiting write."""
        for queue in (self._reads, self._writes):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1


class _Held:
    """``async with slots.hold(read=...)``: a plain class, not an async generator, since
    every request enters one."""

    __slots__ = ("_read", "_slots")

    def __init__(self, slots: RequestSlots, read: bool) -> None:
        self._slots = slots
        self._read = read

    async def __aenter__(self) -> None:
        await self._slots._acquire(self._read)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._slots._release()
