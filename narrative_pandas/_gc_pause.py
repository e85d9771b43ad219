"""The cyclic garbage collector kept off the library's hot paths, safely for the user's process.

Building 100,000 rows, or running 20,000 requests, allocates millions of container objects that
are not garbage; each allocation threshold crossed makes the collector walk them, and the full
collections walk everything alive in the process (the user's frames included): 16-18% of a
run's CPU and a third of ``preview``'s time at that size. So while the library builds rows or
drives a run, automatic collection is paused:

- reference counting frees objects as usual; only the *cyclic* collector waits;
- during a run, a young collection still happens whenever many new containers have piled up
  (:data:`YOUNG_LIMIT`), checked every :data:`YOUNG_CHECK_S` on the run's loop, so reference
  cycles made while it runs (exceptions with tracebacks, futures) are still freed;
- when the last section ends, what was built while paused is moved to the old generation
  without a walk (``gc.freeze()`` immediately followed by ``gc.unfreeze()``: two list splices;
  skipped if the process froze objects itself), instead of the first allocation after the
  resume walking all of it: about 7% of ``preview``'s CPU at 100,000 rows. Those objects are
  examined at the next full collection, like any long-lived object; nothing stays frozen;
- the collector is re-enabled when the last paused section ends (sections nest and may overlap
  across threads: a counter, not a flag), and only if it was enabled when the first began, so a
  process that turned it off keeps it off. Nothing is frozen (``gc.freeze()`` would exempt
  everything alive from collection for good).

Process-wide effect, documented in ``docs/DESIGN.md``: while a run is going (including a
``wait=False`` run in the background), automatic collection is paused for the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncIterator, Iterator

__all__ = ["YOUNG_CHECK_S", "YOUNG_LIMIT", "no_cyclic_gc", "run_without_cyclic_gc"]

#: While paused, a young collection (generations 0 and 1) runs once this many new containers
#: are alive; it costs a few milliseconds and never walks the old generation.
YOUNG_LIMIT = 50_000
#: How often a paused run checks that count (on its event loop).
YOUNG_CHECK_S = 0.5

#: On resume, promote the objects built while paused to the old generation without a walk.
PROMOTE_ON_RESUME = True

_lock = threading.Lock()
_depth = 0
_paused_by_us = False


def _enter() -> None:
    global _depth, _paused_by_us
    with _lock:
        if _depth == 0:
            _paused_by_us = gc.isenabled()
            if _paused_by_us:
                gc.disable()
        _depth += 1


def _leave() -> None:
    global _depth, _paused_by_us
    with _lock:
        _depth -= 1
        if _depth == 0 and _paused_by_us:
            _paused_by_us = False
            if PROMOTE_ON_RESUME and gc.get_freeze_count() == 0:
                # Move what was built into the old generation without walking it (two list
                # splices); otherwise the first allocation after enable() walks every object
                # built while paused. Skipped when the process froze objects itself: unfreeze()
                # would thaw those too.
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def paused() -> bool:
    """True while some section of the library holds the collector paused."""
    with _lock:
        return _depth > 0 and _paused_by_us


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause automatic cyclic collection while a batch of row-sized objects is built."""
    _enter()
    try:
        yield
    finally:
        _leave()


def collect_young_if_due() -> bool:
    """Run a young collection when the pause has let :data:`YOUNG_LIMIT` containers pile up."""
    if gc.isenabled() or gc.get_count()[0] < YOUNG_LIMIT:
        return False
    gc.collect(1)
    return True


@contextlib.asynccontextmanager
async def run_without_cyclic_gc() -> AsyncIterator[None]:
    """Pause automatic collection for a run on this loop, with young collections when due."""
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle
        collect_young_if_due()
        handle = loop.call_later(YOUNG_CHECK_S, check)

    _enter()
    try:
        handle = loop.call_later(YOUNG_CHECK_S, check)
        yield
    finally:
        if handle is not None:
            handle.cancel()
        _leave()
