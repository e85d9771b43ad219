"""One background thread makes every write of a SQLite cache file, in order, in few transactions.

Why: a run writes for every row (the journal, the result). Made on the event loop, each write is a
transaction of its own, and while another process holds the file's lock the loop - and every run
in the process - freezes. Here every write is queued and made by one thread:

* **in order**: writes are applied in the order they were queued, so a result always reaches
  the file before the journal entry it replaces is removed (a kill can lose the tail of the queue,
  never a middle part). The one exception is harmless by design: a result may join a queued run
  of results a few items back (``execute_soon(early=True)``), i.e. reach the file sooner;
* **batched**: whatever is queued when a transaction starts goes into it (group commit); rows
  queued with the same SQL as the last queued item join it, so a wave's job ids or a sweep's
  results and removals are one ``executemany`` each, not one item per row; a write that nobody
  waits for lingers up to :data:`LINGER_S` so that more join it (a kill in that window loses no
  money: the claim written before the POST is durable, and the next run reconciles it);
* **durable when asked**: :meth:`SQLiteWriter.write` returns once its transaction is committed
  (the intent written before a POST); the calling thread commits the queue itself when no one
  else is, so a durable write costs no hand-over to the writer thread.
  :meth:`SQLiteWriter.write_soon` / :meth:`SQLiteWriter.execute_soon` return at once;
* **patient with a lock**: while another process holds the lock, the thread keeps retrying and
  logs once which file is locked; a caller that waits gives up after the cache's ``timeout`` with
  :class:`~narrative_pandas.CacheLockedError`, naming the file. A write that fails for another
  reason is logged (``write_soon``) or raised to its caller (``write``), and never stops the ones
  after it.

Readers call :meth:`SQLiteWriter.settle` first, for the tables they read, so a process always
reads its own writes.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import CacheLockedError

__all__ = ["SQLiteWriter", "is_lock_error", "locked_message"]

logger = logging.getLogger("narrative_pandas")

BATCH_MAX = 5_000
"""Most queued writes committed in one transaction (bounds the time the file's lock is held)."""

LINGER_S = 0.1
"""How long the thread lets writes nobody waits for pile up before it commits them (each commit
rewrites the journal's pages and wakes two threads: at 20 ms a run of 20,000 rows made ~2,700
transactions, at 100 ms ~1,000, with a third less CPU in the writer)."""

LOCK_NOTICE_S = 1.0
"""After waiting this long for another process's lock, say so once (a warning naming the file)."""

_RETRY_MAX_S = 0.25
"""Longest pause between two attempts on a locked file."""

Action = Callable[[sqlite3.Connection], Any]

Statement = str | Callable[[sqlite3.Connection, list[Any]], object]
"""What :meth:`SQLiteWriter.execute_soon` runs for its rows: SQL for ``executemany``, or a
function given the connection and every row of a run of it (a statement with a fallback)."""

MERGE_LOOKBACK = 16
"""How far back in the queue a write that may go earlier looks for a queued run of its SQL."""


def is_lock_error(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" / "busy" errors (another connection has the lock)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def locked_message(path: str, waited: float, *, final: bool = True) -> str:
    """What to tell a user whose cache file another process keeps locked (``final``: we gave
    up; else: we are still waiting)."""
    what = (
        f"the cache file {path!r} is locked by another process (waited {waited:.0f}s): another "
        "notebook, script or SQLite tool has it open in a write transaction."
    )
    if final:
        return (
            f"{what} Finish or close that, or use another cache path; nothing was sent for the "
            "rows still waiting."
        )
    return f"{what} Rows wait for it before being sent; results wait in memory."


@dataclass(slots=True)
class _Item:
    action: Action | None
    sql: Statement | None
    params: Any
    tables: frozenset[str]
    seq: int
    future: concurrent.futures.Future[Any] | None = None
    label: str = "write"


@dataclass
class _State:
    queue: deque[_Item] = field(default_factory=deque)
    next_seq: int = 1
    done_seq: int = 0
    urgent: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)
    blocked_since: float | None = None
    stopping: bool = False


class SQLiteWriter:
    """The writer of one cache file in one process (see the module docstring).

    ``connect`` opens the writing connection; ``timeout`` bounds how long a caller waits. The
    thread starts on the first write and ends on :meth:`close` (after the queue is empty).
    """

    def __init__(self, path: str, connect: Callable[[], sqlite3.Connection], timeout: float):
        self.path = path
        self.timeout = timeout
        self._connect = connect
        self._cond = threading.Condition(threading.Lock())
        self._commit = threading.Lock()  # held by whoever applies the queue (one at a time)
        self._state = _State()
        self._thread: threading.Thread | None = None
        self._running = False  # the thread is in _work (cheaper to read than is_alive())
        self._conn: sqlite3.Connection | None = None
        self._noticed = False
        self.transactions = 0
        """Write transactions committed so far (for tests and benchmarks)."""

    # ------------------------------------------------------------------ callers

    def write_soon(self, action: Action, tables: Iterable[str], label: str = "write") -> None:
        """Queue ``action`` (run inside a write transaction) and return at once."""
        self._enqueue(action, None, None, tables, None, label)

    def execute_soon(
        self,
        sql: Statement,
        rows: Sequence[Any],
        tables: frozenset[str],
        label: str,
        *,
        early: bool = False,
    ) -> None:
        """Queue ``sql`` for each parameter row and return at once.

        The rows join the last queued item when it is the same ``sql`` (one ``executemany``
        later, no new item). ``early``: these rows may be written before writes queued ahead of
        them that touch none of ``tables`` (a result reaching the file sooner harms nothing), so
        they join a run of the same ``sql`` up to :data:`MERGE_LOOKBACK` items back: a sweep's
        results and journal removals, queued in turn, become two runs instead of one per row.
        """
        with self._cond:
            state = self._state
            queue = state.queue
            for back in range(1, min(len(queue), MERGE_LOOKBACK if early else 1) + 1):
                item = queue[-back]
                if item.sql == sql and item.future is None:
                    item.params.extend(rows)
                    for name in tables:
                        state.last_seq[name] = max(state.last_seq.get(name, 0), item.seq)
                    return
                if not early or item.tables & tables:
                    break
        self._enqueue(None, sql, list(rows), tables, None, label)

    def write(self, action: Action, tables: Iterable[str], label: str = "write") -> Any:
        """Queue ``action`` and return its value once committed (or raise its error)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._enqueue(action, None, None, tables, future, label)
        if self._commit.acquire(blocking=False):  # nobody is committing: do it on this thread
            try:
                self._drain(patient=False)
            finally:
                self._commit.release()
        if future.done():
            return future.result()
        state = self._state
        with self._cond:  # someone else commits it, or the file is locked: the thread takes over
            state.urgent += 1
            self._cond.notify_all()
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # not applied if no one has reached it yet
            raise self._timeout_error() from None
        finally:
            with self._cond:
                state.urgent -= 1

    def settle(self, tables: Iterable[str], timeout: float | None = None) -> None:
        """Wait until every write queued so far on ``tables`` is applied (read your own writes)."""
        with self._cond:
            state = self._state
            target = max((state.last_seq.get(t, 0) for t in tables), default=0)
        self._wait_done(target, timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is applied."""
        with self._cond:
            target = self._state.next_seq - 1
        self._wait_done(target, timeout)

    def _wait_done(self, target: int, timeout: float | None) -> None:
        limit = self.timeout if timeout is None else timeout
        with self._cond:
            state = self._state
            if state.done_seq >= target:
                return
            state.urgent += 1  # someone waits: no lingering
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(lambda: state.done_seq >= target, timeout=limit)
            finally:
                state.urgent -= 1
        if not done:
            raise self._timeout_error()

    @property
    def pending(self) -> int:
        """Writes queued and not yet applied."""
        with self._cond:
            return self._state.next_seq - 1 - self._state.done_seq

    def close(self, timeout: float | None = None) -> None:
        """Apply what is queued, stop the thread and close its connection."""
        with self._cond:
            thread = self._thread
            self._state.stopping = True
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout if timeout is None else timeout)
            if thread.is_alive():
                logger.warning(
                    "cache %s: %d write(s) still waiting for the file's lock at close",
                    self.path,
                    self.pending,
                )
                return
        with self._cond:
            self._thread = None
            self._state.stopping = False

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's thread and queue do not exist here; start afresh."""
        self._cond = threading.Condition(threading.Lock())
        self._commit = threading.Lock()
        self._state = _State()
        self._thread = None
        self._running = False
        self._noticed = False
        self._conn = None  # the parent's connection is never used (nor closed) in the child

    def _enqueue(
        self,
        action: Action | None,
        sql: Statement | None,
        params: Any,
        tables: Iterable[str],
        future: concurrent.futures.Future[Any] | None,
        label: str,
    ) -> None:
        names = tables if isinstance(tables, frozenset) else frozenset(tables)
        with self._cond:
            state = self._state
            item = _Item(action, sql, params, names, state.next_seq, future, label)
            state.next_seq += 1
            for name in names:
                state.last_seq[name] = item.seq
            state.queue.append(item)
            if self._thread is None or not self._running:
                state.stopping = False
                self._running = True
                self._thread = threading.Thread(
                    target=self._work, name=f"narrative-cache-writer:{self.path}", daemon=True
                )
                self._thread.start()
            if len(state.queue) == 1:  # wake the thread (it then lingers for more)
                self._cond.notify_all()

    def _timeout_error(self) -> Exception:
        with self._cond:
            since = self._state.blocked_since
        if since is not None:
            waited = time.monotonic() - since
            return CacheLockedError(locked_message(self.path, waited), path=self.path)
        return CacheLockedError(
            f"the cache file {self.path!r} did not take a write within {self.timeout:.0f}s "
            "(the disk may be very slow or full); nothing was sent for the rows still waiting.",
            path=self.path,
        )

    # ------------------------------------------------------------------ applying the queue

    def _work(self) -> None:
        try:
            self._work_until_stopped()
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._running = False

    def _work_until_stopped(self) -> None:
        state = self._state
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(state.queue) or state.stopping)
                if not state.queue:
                    with self._commit:
                        self._close_connection()
                    self._running = False  # under the lock: a write queued now starts a thread
                    return
                if not state.stopping and not state.urgent:  # let more writes join this one
                    self._cond.wait_for(lambda: state.urgent > 0 or state.stopping, LINGER_S)
            with self._commit:
                self._drain(patient=True)

    def _drain(self, *, patient: bool) -> None:
        """Apply the queue, batch by batch (caller holds ``self._commit``).

        Not ``patient`` (a caller's thread): on a locked file, put the batch back and return.
        """
        state = self._state
        while True:
            with self._cond:
                if not state.queue:
                    return
                batch = [state.queue.popleft() for _ in range(min(BATCH_MAX, len(state.queue)))]
            settled = self._apply(batch, patient=patient)
            with self._cond:
                if settled:
                    state.done_seq = max(state.done_seq, batch[settled - 1].seq)
                if settled < len(batch):
                    state.queue.extendleft(reversed(batch[settled:]))
                self._cond.notify_all()
            if settled < len(batch):
                return

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _apply(self, batch: list[_Item], *, patient: bool) -> int:
        """Commit ``batch`` in one transaction; return how many items (from the front) are
        settled. On an error other than a lock, item by item, so one bad write spoils no other."""
        attempt = 0
        while True:
            items = [i for i in batch if i.future is None or not i.future.cancelled()]
            if not items:
                return len(batch)
            try:
                values = self._transaction(items)
            except Exception as exc:
                if is_lock_error(exc):
                    if not patient:
                        return 0
                    attempt += 1
                    self._wait_for_lock(attempt, len(items))
                    continue
                if len(items) == 1:
                    if not self._apply_rows_apart(items[0], exc, patient=patient):
                        return 0
                    self._unblocked()
                    return len(batch)
                for position, item in enumerate(batch):  # find the culprit
                    if self._apply([item], patient=patient) == 0:
                        return position
                return len(batch)
            self._unblocked()
            for item, value in zip(items, values, strict=True):
                if item.future is not None and not item.future.cancelled():
                    item.future.set_result(value)
            return len(batch)

    def _apply_rows_apart(self, item: _Item, exc: Exception, *, patient: bool) -> bool:
        """A write failed alone: a run of rows is tried row by row, so one bad row spoils no
        other. False when a locked file stopped it (the rows not yet written stay in ``item``)."""
        if item.sql is None or len(item.params) < 2:
            self._fail(item, exc)
            return True
        rows: list[Any] = item.params
        done = 0
        try:
            for row in rows:
                single = _Item(None, item.sql, [row], item.tables, item.seq, None, item.label)
                if self._apply([single], patient=patient) == 0:
                    return False
                done += 1
        finally:
            del rows[:done]
        return True

    def _transaction(self, items: list[_Item]) -> list[Any]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            values: list[Any] = []
            position = 0
            while position < len(items):
                item = items[position]
                if item.sql is None:
                    assert item.action is not None
                    values.append(item.action(conn))
                    position += 1
                    continue
                end = position + 1  # a run of the same statement: one executemany
                while end < len(items) and items[end].sql == item.sql:
                    end += 1
                rows = [row for i in items[position:end] for row in i.params]
                if isinstance(item.sql, str):
                    conn.executemany(item.sql, rows)
                else:
                    item.sql(conn, rows)
                values.extend([None] * (end - position))
                position = end
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1
        return values

    def _wait_for_lock(self, attempt: int, waiting: int) -> None:
        now = time.monotonic()
        with self._cond:
            since = self._state.blocked_since
            if since is None:
                since = self._state.blocked_since = now
        if now - since >= LOCK_NOTICE_S and not self._noticed:
            self._noticed = True
            logger.warning(
                "%s (%d write(s) queued)",
                locked_message(self.path, now - since, final=False),
                waiting,
            )
        time.sleep(min(_RETRY_MAX_S, 0.01 * 2**attempt) * (1 + random.random() / 2))

    def _unblocked(self) -> None:
        with self._cond:
            since, self._state.blocked_since = self._state.blocked_since, None
        if since is not None and self._noticed:
            logger.warning(
                "the cache file %r is free again after %.0fs", self.path, time.monotonic() - since
            )
            self._noticed = False

    def _fail(self, item: _Item, exc: Exception) -> None:
        if item.future is not None:
            if not item.future.cancelled():
                item.future.set_exception(exc)
            return
        logger.warning("cache %s: a %s could not be stored: %s", self.path, item.label, exc)
