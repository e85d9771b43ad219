"""Claims: one POST per request across runs, threads and processes sharing a cache.

Before a run POSTs a request it claims the request in the journal (``Cache.journal_claim_many``:
one transaction for a whole wave of requests, that inserts only where nothing live is there). A
second run that meets a live claim does not submit: it waits until the claim names a job (then
polls that job like its own) or the result is cached. A claim names its owner (host, pid, a
nonce drawn once per process, run id) and carries a heartbeat, and is taken over only when the
owner is gone:

- an owner in this process is alive while its run is registered here (:func:`live_run`);
- an owner on this host is gone as soon as its pid is dead (a zombie counts as dead), and
  otherwise when its heartbeat is older than :data:`CLAIM_STALE_S` (the pid was reused);
- an owner on another host is gone when its heartbeat is older than :data:`CLAIM_STALE_S`.

A live run stamps its job-less claims every :data:`CLAIM_HEARTBEAT_S`, so the stale bound is
six missed beats. Whoever takes a claim over reconciles it through the job listing before any
POST (``_reconcile``): the dead owner may have sent its POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from ._cache import Claim, ClaimOwner, JournalEntry

if TYPE_CHECKING:
    from ._cache import Cache, CachedResult

__all__ = [
    "CLAIM_HEARTBEAT_S",
    "CLAIM_STALE_S",
    "ClaimBook",
    "live_run",
    "owner_alive",
    "process_owner",
]

logger = logging.getLogger("narrative_pandas")

#: A live run stamps its job-less claims this often.
CLAIM_HEARTBEAT_S = 5.0
#: A claim whose heartbeat is older than this is taken over (unless its owner is known alive
#: in this process): six missed beats, far beyond a GC pause or a busy loop.
CLAIM_STALE_S = 30.0

_T = TypeVar("_T")

_HOST = socket.gethostname()
_nonce = uuid.uuid4().hex
_live_runs: set[str] = set()
_registry_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child is another process: a nonce of its own, and none of the parent's runs."""
    global _nonce, _registry_lock
    _nonce = uuid.uuid4().hex
    _registry_lock = threading.Lock()
    _live_runs.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def process_owner(run_id: str) -> ClaimOwner:
    """A fresh owner for one engine of this process: ``nonce`` is the process's nonce and a
    token of its own (two engines of one run id, e.g. ``attach`` beside the original, differ)."""
    return ClaimOwner(_HOST, os.getpid(), f"{_nonce}:{uuid.uuid4().hex[:12]}", run_id)


@contextlib.contextmanager
def live_run(owner: ClaimOwner) -> Iterator[None]:
    """Mark ``owner`` alive in this process for as long as the block runs."""
    with _registry_lock:
        _live_runs.add(owner.nonce)
    try:
        yield
    finally:
        with _registry_lock:
            _live_runs.discard(owner.nonce)


def _pid_alive(pid: int) -> bool | None:
    """True/False when this host can tell whether ``pid`` runs; None when it cannot."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    try:  # Linux: a killed child not yet reaped by its parent is a zombie, i.e. gone
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def owner_alive(entry: JournalEntry, now: float | None = None) -> bool:
    """Whether the owner of a job-less journal entry may still send or reconcile its POST."""
    owner = entry.owner
    if owner is None:  # an intent written without a claim (older files, journal_intent)
        return False
    if owner.nonce.partition(":")[0] == _nonce:
        with _registry_lock:
            return owner.nonce in _live_runs
    now = time.time() if now is None else now
    fresh = now - entry.heartbeat_at < CLAIM_STALE_S
    if owner.host == _HOST:
        running = _pid_alive(owner.pid)
        if running is False:
            return False
    return fresh


class ClaimBook:
    """One run's side of the journal: claims, job ids, releases and the heartbeat.

    A file's claims are gathered: the claims asked for while one batch is being written go in
    the next, as one transaction in a worker thread (``asyncio.to_thread``), so a wave of POSTs
    costs one commit and one thread hop, and SQLite never blocks the event loop. Each claim is
    still committed before its caller gets it back (and so before its POST). The writes that
    nobody waits for (job ids, releases) are queued for the file's writer thread directly. The
    in-memory cache is called directly (it never waits).
    """

    def __init__(self, cache: Cache, run_id: str, *, max_age: float | None) -> None:
        self.cache = cache
        self.owner = process_owner(run_id)
        self.max_age = max_age
        self._heartbeat: asyncio.Task[None] | None = None
        #: Claims waiting for the next batch, by ``check_results``: (key, tag, answer).
        self._pending: dict[bool, list[tuple[str, str, asyncio.Future[Claim]]]] = {}
        self._batcher: asyncio.Task[None] | None = None
        #: Job ids answered since the loop last turned: (key, job_id, tag), one write for all.
        self._jobs: list[tuple[str, str, str]] = []
        # Whose queued writes never block: SQLiteCache's (its writer thread makes them).
        from ._cache import SQLiteCache

        self._queues_writes = isinstance(cache, SQLiteCache)

    async def _call(self, action: Callable[[], _T]) -> _T:
        if self.cache.persistent:
            return await asyncio.to_thread(action)
        return action()

    async def _queue(self, action: Callable[[], None]) -> None:
        """A write nobody waits for: queued right here when that cannot block."""
        if self._queues_writes:
            action()
        else:
            await self._call(action)

    def _claim_now(self, wanted: list[tuple[str, str]], check_results: bool) -> list[Claim]:
        return self.cache.journal_claim_many(
            wanted,
            self.owner,
            alive=owner_alive,
            max_age=self.max_age,
            check_results=check_results,
        )

    async def claim(self, key: str, tag: str, *, check_results: bool = True) -> Claim:
        """Claim ``key`` before its POST (see :class:`~narrative_pandas._cache.Claim`)."""
        if not self.cache.persistent:
            return self._claim_now([(key, tag)], check_results)[0]
        answer: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(check_results, []).append((key, tag, answer))
        if self._batcher is None:
            self._batcher = asyncio.create_task(self._write_claims())
        return await answer

    async def _write_claims(self) -> None:
        """Write the gathered claims, batch after batch, until none is waiting."""
        try:
            while self._pending:
                check_results, batch = self._pending.popitem()
                wanted = [(key, tag) for key, tag, _ in batch]
                try:
                    claims = await asyncio.to_thread(self._claim_now, wanted, check_results)
                except Exception as exc:  # every claim of the batch failed: each caller hears
                    for _, _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                except BaseException:  # this task was cancelled: so is every claim waiting on it
                    waiting = batch + [w for ws in self._pending.values() for w in ws]
                    self._pending.clear()
                    for _, _, answer in waiting:
                        answer.cancel()
                    raise
                for (_, _, answer), claim in zip(batch, claims, strict=True):
                    if not answer.done():  # a caller cancelled: its claim stays, reconciled later
                        answer.set_result(claim)
        finally:
            self._batcher = None

    async def claim_many(
        self, wanted: Iterable[tuple[str, str]], *, check_results: bool = True
    ) -> dict[str, Claim]:
        """:meth:`claim` for many ``(key, tag)`` pairs in one transaction."""
        pairs = list(wanted)
        if not pairs:
            return {}
        claims = await self._call(lambda: self._claim_now(pairs, check_results))
        return {key: claim for (key, _), claim in zip(pairs, claims, strict=True)}

    async def job(self, key: str, job_id: str, tag: str) -> None:
        """Record the job id of our claim (queued: a kill before it is written leaves the
        claim, which the next run reconciles through the listing). For a file, the job ids
        answered in one turn of the loop (a wave's POSTs) are queued as one write when it ends
        (:meth:`write_jobs`)."""
        if not self._queues_writes:
            await self._call(lambda: self.cache.journal_job(key, job_id, tag, self.owner.run_id))
            return
        self._jobs.append((key, job_id, tag))
        if len(self._jobs) == 1:
            asyncio.get_running_loop().call_soon(self.write_jobs)

    def write_jobs(self) -> None:
        """Queue the gathered job ids now. Called when the loop turns, and before anything that
        must follow them in the file (dropping a finished job's entry, the run's end)."""
        jobs, self._jobs = self._jobs, []
        if not jobs:
            return
        try:
            self.cache.journal_jobs(jobs, self.owner.run_id)
        except Exception:  # the jobs exist and are polled; their claims still mark them unsettled
            logger.warning("could not journal %d job id(s)", len(jobs), exc_info=True)

    async def unknown(self, key: str) -> None:
        """Our POST's outcome is unknown: the claim stays until the listing settles it."""
        await self._queue(lambda: self.cache.journal_mark_unknown(key, self.owner))

    async def release(self, key: str) -> None:
        """Our POST surely created nothing: free the claim for whoever wants it."""
        await self._queue(lambda: self.cache.journal_release(key, self.owner))

    def look(
        self, keys: list[str]
    ) -> Callable[[], tuple[dict[str, CachedResult], dict[str, JournalEntry]]]:
        """A read of results and journal entries of ``keys`` (for rows waiting on a claim)."""

        def read() -> tuple[dict[str, CachedResult], dict[str, JournalEntry]]:
            return self.cache.get_many(keys), self.cache.journal_get_many(keys)

        return read

    async def read(
        self, keys: list[str]
    ) -> tuple[dict[str, CachedResult], dict[str, JournalEntry]]:
        """Results and journal entries of ``keys``, read off the loop for a file."""
        return await self._call(self.look(keys))

    # ------------------------------------------------------------------ heartbeat

    def start_heartbeat(self) -> None:
        """Stamp our job-less claims every :data:`CLAIM_HEARTBEAT_S` (files only: other
        processes judge our claims by it)."""
        if self.cache.persistent and self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(CLAIM_HEARTBEAT_S)
            try:
                await asyncio.to_thread(self.cache.journal_heartbeat, self.owner)
            except Exception:  # a locked file now and then: the next beat tries again
                logger.debug("could not stamp the claims' heartbeat", exc_info=True)

    async def stop_heartbeat(self) -> None:
        """Stop stamping; claims still unsettled (unknown outcomes) get heartbeat 0, so other
        processes take them over at once instead of after :data:`CLAIM_STALE_S`."""
        task, self._heartbeat = self._heartbeat, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await asyncio.to_thread(self.cache.journal_heartbeat, self.owner, 0.0)
        except Exception:
            logger.debug("could not hand over this run's claims", exc_info=True)
