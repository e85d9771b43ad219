"""What a run writes to its cache as jobs end, gathered per poll and written in one go.

A sweep ends many jobs at once (a hundred per page at high concurrency); writing each result and
dropping each journal entry as its own call costs a lock (memory) or a queued SQL statement
(file) per row. So the engine hands them here as it concludes rows, and the poll that read them
writes them together when it ends: the results first (one ``put_many``), then the journal
entries they settle. Until then a journal entry still names the finished job, so nothing is
lost if the process dies in between: the next run collects the job again, without paying twice.

A file's writes wait longer, across polls, up to :data:`FILE_BATCH_S` (then the next poll or
a timer writes them): results land on random pages of the results table's key index (a key is
a hash), and each commit rewrites every page it touched. Written per poll (~90 results a
transaction at zero latency) a result cost ~10 µs of commit on a 50,000-row file; gathered for
a second (~1,700), ~4 µs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._cache import Cache, CachedResult
    from ._models import InferenceUsage

__all__ = ["FILE_BATCH_S", "FinishedWrites"]

logger = logging.getLogger("narrative_pandas")

FILE_BATCH_S = 1.0
"""Longest a finished row's writes wait for more to join them, with a cache file."""


class FinishedWrites:
    """Results and settled journal entries of one run, waiting for the end of the poll (with a
    cache file, for up to :data:`FILE_BATCH_S`)."""

    def __init__(
        self,
        cache: Cache | None,
        *,
        first: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self._cache = cache
        self._first = first  # writes that must reach the file before these (the job ids)
        self._clock = clock
        # Writes left waiting get a timer, so they never wait for a poll long after their second
        # (polls of long jobs are many seconds apart); without one, the next poll writes them.
        self._call_later = call_later
        self._timer_set = False
        self._batch_s = FILE_BATCH_S if cache is not None and cache.persistent else 0.0
        self._since: float | None = None  # when the oldest waiting write was handed in
        self._results: list[CachedResult] = []
        self._settled: list[tuple[str, str]] = []
        self._result_type: Any = None
        if cache is not None:
            from ._cache import CachedResult

            self._result_type = CachedResult

    def result(
        self,
        key: str,
        output: dict[str, Any],
        usage: InferenceUsage | None,
        job_id: str,
        model: str,
    ) -> None:
        """A completed, valid answer: cache it, then drop the job's journal entry. Its time is
        the write's (``created_at`` 0: one stamp per poll, not a float per row)."""
        if self._cache is None:
            return
        if self._since is None:
            self._since = self._clock()
        self._results.append(self._result_type(key, output, usage, job_id, model))
        self._settled.append((key, job_id))

    def settled(self, key: str, job_id: str) -> None:
        """The job ended without an answer to keep, or is gone: drop its journal entry (a newer
        claim of the same key stays)."""
        if self._cache is not None:
            if self._since is None:
                self._since = self._clock()
            self._settled.append((key, job_id))

    def settled_now(self, key: str, job_id: str) -> None:
        """:meth:`settled`, written at once: the request is about to be claimed again (its job
        is gone), and a claim must not find the old job still journaled and poll it again."""
        if self._cache is not None:
            if self._first is not None:
                self._first()
            self._cache.journal_forget(key, job_id)

    def flush(self, *, wait: bool = False) -> None:
        """Write what is waiting: the results in one call, then the journal entries. ``wait``
        (a poll's end): leave a file's writes waiting while the oldest is younger than
        :data:`FILE_BATCH_S`."""
        cache, since = self._cache, self._since
        if cache is None or since is None:
            return
        age = self._clock() - since
        if wait and age < self._batch_s:
            if self._call_later is not None and not self._timer_set:
                self._timer_set = True
                self._call_later(self._batch_s - age, self._due)
            return
        self._since = None
        if self._first is not None:
            self._first()
        results, self._results = self._results, []
        settled, self._settled = self._settled, []
        if results:
            cache.put_many(results)
        if settled:
            cache.journal_forget_many(settled)

    def _due(self) -> None:
        self._timer_set = False
        try:
            self.flush()
        except Exception:  # a loop callback: say so; the journal still names every job
            logger.warning("could not write finished rows to the cache", exc_info=True)
