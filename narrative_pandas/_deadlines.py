"""Request deadlines on one timer per event loop, not one timer (or task) per request.

``asyncio.wait_for`` runs each request in a task of its own, and ``asyncio.timeout`` schedules
and cancels a timer through a Python-level context manager: 6-12 µs a request on a 2-core
machine, for a deadline that almost never fires. A client's requests all get the same deadline,
so they share one mechanism: each request notes its task and due time in an insertion-ordered
dict (same duration for all, so the first entry is always the earliest), and a single timer,
set for the earliest entry, cancels the tasks whose time has passed. A request cancelled that
way raises :class:`TimeoutError` (``asyncio.TimeoutError``), as with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["DeadlineExpired", "Deadlines"]


class DeadlineExpired(asyncio.TimeoutError):
    """A request outlived its deadline (an ``asyncio.TimeoutError``, with no message)."""


class Deadlines:
    """The deadline of every request of one client: ``with deadlines.bound(): await ...``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loops: dict[asyncio.AbstractEventLoop, _LoopDeadlines] = {}
        #: Timers scheduled so far, over all loops (for tests: one per deadline, not per request).
        self.timers = 0

    def bound(self) -> _Bound:
        """A context manager bounding the current task's work by :attr:`seconds`."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            for old in [old for old in self._loops if old.is_closed()]:
                del self._loops[old]
            state = self._loops[loop] = _LoopDeadlines(self, loop)
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - always awaited from a task
            raise RuntimeError("a deadline needs a running task")
        return _Bound(state, task, loop.time() + self.seconds)


class _LoopDeadlines:
    """The live deadlines of one event loop and the one timer that watches them."""

    __slots__ = ("_loop", "_owner", "_timer", "live")

    def __init__(self, owner: Deadlines, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self.live: dict[_Bound, None] = {}

    def add(self, bound: _Bound) -> None:
        self.live[bound] = None
        if self._timer is None:
            self._arm(bound.due)

    def _arm(self, when: float) -> None:
        self._owner.timers += 1
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Cancel every request past its due time; set the timer for the next one, if any."""
        self._timer = None
        now = self._loop.time()
        live = self.live
        while live:
            bound = next(iter(live))
            if bound.due > now:
                self._arm(bound.due)
                return
            del live[bound]
            bound.expired = True
            bound.task.cancel()


class _Bound:
    """One request's deadline (a synchronous context manager: nothing to await)."""

    __slots__ = ("_cancelling", "_state", "due", "expired", "task")

    def __init__(self, state: _LoopDeadlines, task: asyncio.Task[object], due: float) -> None:
        self._state = state
        self.task = task
        self.due = due
        self.expired = False
        self._cancelling = 0

    def __enter__(self) -> None:
        cancelling = getattr(self.task, "cancelling", None)  # Python 3.11+
        if cancelling is not None:
            self._cancelling = cancelling()
        self._state.add(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state.live.pop(self, None)
        if not self.expired:
            return
        # Ours alone: a cancellation from elsewhere (the run stopping) stays a cancellation.
        uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
        only_ours = uncancel is None or uncancel() <= self._cancelling
        if exc_type is asyncio.CancelledError and only_ours:
            raise DeadlineExpired() from exc
