"""The file under a SQLite cache: one connection per process (reopened after a fork), the tables
and their upgrade, retries while another process holds the lock, reads that wait for this
process's queued writes, and writes through the file's writer thread (``_sqlite_writer``).

:class:`SQLiteStore` is what the parts of :class:`~._cache_sqlite.SQLiteCache` build on: the
journal (``_cache_sqlite_journal``), the run records (``_cache_sqlite_runs``) and the results.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._cache_base import Cache, live_caches, unique_keys
from ._exceptions import CacheLockedError, ConfigurationError
from ._sqlite_writer import SQLiteWriter, Statement, is_lock_error, locked_message

logger = logging.getLogger("narrative_pandas")

_T = TypeVar("_T")

SCHEMA_VERSION = 2
"""Version of the SQLite layout; a file written by a newer version is refused, not damaged.
2 added ``blobs`` and ``run_blobs`` (a file of version 1 is upgraded in place when opened)."""

_CHUNK = 500
"""Keys per ``IN (...)`` query: well under SQLite's variable limit on every version."""

_LOCK_RETRIES = 3
"""Least attempts of one read when SQLite still says "database is locked" after its timeout."""

_WRITER_BUSY_S = 0.0
"""SQLite's own wait on a lock for the writing connection: none; the writer thread retries (and
says so) itself."""

_TABLES = ("results", "journal", "runs", "blobs")


def chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def select_keys(conn: sqlite3.Connection, select: str, keys: Sequence[str]) -> list[Any]:
    """``select ... WHERE key IN (...)`` over ``keys``, in chunks SQLite accepts."""
    rows: list[Any] = []
    for chunk in chunks(keys):
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(f"{select} WHERE key IN ({marks})", chunk).fetchall()
    return rows


def _write_queued_before_fork() -> None:
    """A forked child starts with an empty queue: what the parent queued goes in first."""
    for cache in list(live_caches):
        if isinstance(cache, SQLiteStore) and cache._pid == os.getpid():
            try:
                cache._writer.flush()
            except CacheLockedError:
                logger.warning(
                    "forking while %s is locked: queued writes stay with the parent", cache
                )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_write_queued_before_fork)


@atexit.register
def _write_queued_at_exit() -> None:
    """What a file cache still holds in its queue goes in before the interpreter ends."""
    for cache in list(live_caches):
        if isinstance(cache, SQLiteStore):
            try:
                cache.close()
            except Exception:  # best effort at exit; the journal covers the rest
                logger.debug("could not close cache %s at exit", cache, exc_info=True)


# --------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    output TEXT NOT NULL,
    usage TEXT,
    job_id TEXT,
    model TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    key TEXT PRIMARY KEY,
    job_id TEXT,
    tag TEXT NOT NULL,
    run_id TEXT,
    submitted_at REAL NOT NULL,
    state TEXT,
    owner_host TEXT,
    owner_pid INTEGER,
    owner_nonce TEXT,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS journal_run_id ON journal (run_id);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    status TEXT NOT NULL,
    rows INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    id TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS run_blobs (
    run_id TEXT NOT NULL,
    blob_id TEXT NOT NULL,
    PRIMARY KEY (run_id, blob_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS run_blobs_blob_id ON run_blobs (blob_id);
"""

#: Claim columns added to the journal of files written before claims existed.
_CLAIM_COLUMNS = {
    "state": "TEXT",
    "owner_host": "TEXT",
    "owner_pid": "INTEGER",
    "owner_nonce": "TEXT",
    "heartbeat_at": "REAL",
}


def _add_claim_columns(conn: sqlite3.Connection) -> None:
    """Give an older file's journal the claim columns (additive: older readers still work)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(journal)")}
    for name, kind in _CLAIM_COLUMNS.items():
        if name not in present:
            conn.execute(f"ALTER TABLE journal ADD COLUMN {name} {kind}")


# Connections inherited through fork() are never used or closed in the child (closing could
# disturb the parent's WAL); they are parked here for the life of the child.
_inherited_connections: list[sqlite3.Connection] = []


class SQLiteStore(Cache):
    """A SQLite file and its connections: the ground the cache's parts stand on."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        raw = os.fspath(path)
        if not isinstance(raw, str) or not raw or raw == ":memory:":
            raise ConfigurationError(
                f"SQLiteCache needs a file path, got {path!r}; "
                "use cache=True for the in-memory cache."
            )
        self.path = Path(raw).expanduser().absolute()  # fixed now: it opens lazily
        if self.path.is_dir():
            raise ConfigurationError(
                f"cache path {str(self.path)!r} is a folder; give a file path such as "
                f"{str(self.path / 'narrative-cache.sqlite')!r}."
            )
        self.timeout = float(timeout)
        self._now = now
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._writer = SQLiteWriter(
            str(self.path), lambda: self._open(_WRITER_BUSY_S), self.timeout
        )
        live_caches.add(self)

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r})"

    @property
    def persistent(self) -> bool:
        return True

    # connection ------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """The reading connection of this process (caller holds ``self._lock``)."""
        pid = os.getpid()
        if self._pid != pid:  # a forked child: the parent's connection and writer stay unused
            if self._conn is not None:
                _inherited_connections.append(self._conn)
            self._conn = None
            self._writer.forget_after_fork()
            self._pid = pid
        if self._conn is None:
            self._conn = self._retry(lambda: self._open(self.timeout))
        return self._conn

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Owner-only from the start; SQLite gives -wal/-shm the same mode. If this fails
            # (read-only media...), SQLite reports the problem itself just below.
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if self._stored_version(conn) != SCHEMA_VERSION:  # only then is a write needed
                self._create_schema(conn)
        except BaseException:
            conn.close()
            raise
        logger.debug("opened cache %s", self.path)
        return conn

    def _stored_version(self, conn: sqlite3.Connection) -> int | None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        version = None if row is None else int(row[0])
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the cache file {str(self.path)!r} was written by a newer "
                f"narrative_pandas (schema {version}, this one reads {SCHEMA_VERSION}); "
                "upgrade narrative_pandas or use another cache path."
            )
        return version

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables (or add the new ones to a file of schema 1) in one transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._stored_version(conn)  # another process may have upgraded it meanwhile
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            _add_claim_columns(conn)
            conn.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _retry(self, action: Callable[[], _T]) -> _T:
        """``action``, tried again while the file is locked, for up to ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if not is_lock_error(exc):
                    raise
                attempt += 1
                if attempt >= _LOCK_RETRIES and time.monotonic() >= deadline:
                    raise CacheLockedError(
                        locked_message(str(self.path), self.timeout), path=str(self.path)
                    ) from None
                delay = 0.05 * 2 ** min(attempt, 4) * (1 + random.random())
                logger.debug("cache %s is locked; retrying in %.2fs", self.path, delay)
                time.sleep(delay)

    def _open_here(self) -> None:
        """Open this process's connection if it is not yet open, so the file exists with its
        tables before the writer thread opens it (and a forked child gets its own)."""
        if self._conn is None or self._pid != os.getpid():
            with self._lock:
                self._connection()

    def _read(
        self,
        action: Callable[[sqlite3.Connection], _T],
        tables: Iterable[str] = ("results", "journal"),
    ) -> _T:
        """``action`` on the reading connection, once this process's writes to ``tables`` are in."""
        self._writer.settle(tables)
        with self._lock:
            conn = self._connection()
            return self._retry(lambda: action(conn))

    def _write(
        self,
        action: Callable[[sqlite3.Connection], _T],
        tables: Iterable[str] = _TABLES,
    ) -> _T:
        """Run ``action`` in a write transaction of the writer thread and wait until committed.

        Waits while another process holds the lock, up to ``timeout`` seconds, then raises
        :class:`~narrative_pandas.CacheLockedError` (nothing is written then).
        """
        self._open_here()
        value: _T = self._writer.write(action, tables)
        return value

    def _write_soon(
        self,
        action: Callable[[sqlite3.Connection], object],
        tables: Iterable[str] = _TABLES,
        label: str = "write",
    ) -> None:
        """Queue ``action`` for the writer thread and return at once (see ``_sqlite_writer``)."""
        self._open_here()
        self._writer.write_soon(action, tables, label)

    def _execute_soon(
        self,
        sql: Statement,
        rows: Sequence[Any],
        tables: frozenset[str],
        label: str,
        *,
        early: bool = False,
    ) -> None:
        """Queue ``sql`` for each row of parameters (the writer batches runs of the same sql;
        ``early``: see :meth:`SQLiteWriter.execute_soon`)."""
        self._open_here()
        self._writer.execute_soon(sql, rows, tables, label, early=early)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every write this process queued is in the file."""
        self._writer.flush(timeout)

    def _delete_keys(self, table: str, keys: Iterable[str]) -> None:
        wanted = unique_keys(keys)

        if wanted:
            self._execute_soon(
                f"DELETE FROM {table} WHERE key = ?",
                [(key,) for key in wanted],
                frozenset({table}),
                f"removal from {table}",
            )

    def checkpoint(self) -> bool:
        with self._lock:
            conn = self._connection()
            conn.execute("PRAGMA busy_timeout = 0")  # another process busy: leave it for later
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not is_lock_error(exc):
                    raise
                busy = 1
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        return not busy

    # lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Write what is queued, then close this process's connections; the next call reopens."""
        if self._pid == os.getpid():
            self._writer.close()
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                if self._pid == os.getpid():
                    conn.close()
                else:
                    _inherited_connections.append(conn)
