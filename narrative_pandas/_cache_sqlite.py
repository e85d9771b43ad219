"""The cache in one SQLite file, safe for threads and processes at once: its tables, its
statements (SQL text, so the writer thread batches runs of the same one), and
:class:`SQLiteCache` (reads on the caller's connection, writes through ``_sqlite_writer``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._cache_base import (
    Cache,
    CachedResult,
    Claim,
    ClaimOwner,
    JournalEntry,
    JournalRow,
    ResultRow,
    checked_blobs,
    claimed_entry,
    decide_claim,
    decode_journal,
    decode_result,
    encode_record,
    encode_result,
    is_fresh,
    journal_row,
    live_caches,
    run_listing,
    run_summary,
    unique_keys,
)
from ._decision_log import (
    INSERT_DECISION,
    JournalDecision,
    ensure_table,
    read_decisions,
)
from ._exceptions import CacheLockedError, ConfigurationError
from ._sqlite_writer import (
    SQLiteWriter,
    Statement,
    is_lock_error,
    locked_message,
)

logger = logging.getLogger("narrative_pandas")

_T = TypeVar("_T")

SCHEMA_VERSION = 2
"""Version of the SQLite layout; a file written by a newer version is refused, not damaged.
2 added ``blobs`` and ``run_blobs`` (a file of version 1 is upgraded in place when opened)."""

_CHUNK = 500
"""Keys per ``IN (...)`` query: well under SQLite's variable limit on every version."""

_SCAN_RATIO = 4
"""Read every result in one scan rather than look keys up when the table holds at most this many
rows per key wanted: a sequential scan costs ~2 µs a row, a lookup by key ~10 µs."""

_LOCK_RETRIES = 3
"""Least attempts of one read when SQLite still says "database is locked" after its timeout."""

_WRITER_BUSY_S = 0.0
"""SQLite's own wait on a lock for the writing connection: none; the writer thread retries (and
says so) itself."""

_TABLES = ("results", "journal", "runs", "blobs")
_JOURNAL_COLUMNS = (
    "key, job_id, tag, run_id, submitted_at, state, owner_host, owner_pid, owner_nonce, "
    "heartbeat_at"
)
_INSERT_JOURNAL = (
    f"INSERT OR REPLACE INTO journal ({_JOURNAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The journal's writes by key: SQL text, not closures, so the writer thread makes a run of the
# same one (a wave's job ids, a sweep's completions) one ``executemany``.
_JOURNAL_JOB = (
    f"INSERT INTO journal ({_JOURNAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET "
    "job_id = excluded.job_id, tag = excluded.tag, run_id = excluded.run_id, "
    "state = 'submitted', heartbeat_at = excluded.heartbeat_at, "
    "submitted_at = CASE WHEN journal.job_id IS NULL AND journal.tag = excluded.tag "
    "THEN journal.submitted_at ELSE excluded.submitted_at END"
)
_JOB_OF_CLAIM = (
    "UPDATE journal SET job_id = ?, run_id = ?, state = 'submitted', heartbeat_at = ? "
    "WHERE key = ? AND job_id IS NULL AND tag = ?"
)
_FORGET = "DELETE FROM journal WHERE key = ? AND job_id = ?"
_MARK_UNKNOWN = (
    "UPDATE journal SET state = 'unknown' WHERE key = ? AND job_id IS NULL "
    "AND owner_nonce = ? AND run_id = ?"
)
_RELEASE = "DELETE FROM journal WHERE key = ? AND job_id IS NULL AND owner_nonce = ? AND run_id = ?"
_PUT = (
    "INSERT OR REPLACE INTO results (key, output, usage, job_id, model, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_RESULTS = frozenset({"results"})
_JOURNAL = frozenset({"journal"})


def _record_jobs(conn: sqlite3.Connection, rows: list[JournalRow]) -> None:
    """Job ids, as ``_JOURNAL_JOB`` stores them. The usual entry is our claim with the same tag:
    a plain UPDATE (a third of the upsert's cost); when any row is not such a claim, the batch
    is undone and made with the upsert instead (inside the same transaction)."""
    conn.execute("SAVEPOINT jobs")
    try:
        cursor = conn.executemany(_JOB_OF_CLAIM, [(r[1], r[3], r[9], r[0], r[2]) for r in rows])
        if cursor.rowcount != len(rows):
            conn.execute("ROLLBACK TO jobs")
            conn.executemany(_JOURNAL_JOB, rows)
    finally:
        conn.execute("RELEASE jobs")


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _select_keys(conn: sqlite3.Connection, select: str, keys: Sequence[str]) -> list[Any]:
    """``select ... WHERE key IN (...)`` over ``keys``, in chunks SQLite accepts."""
    rows: list[Any] = []
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(f"{select} WHERE key IN ({marks})", chunk).fetchall()
    return rows


def _write_queued_before_fork() -> None:
    """A forked child starts with an empty queue: what the parent queued goes in first."""
    for cache in list(live_caches):
        if isinstance(cache, SQLiteCache) and cache._pid == os.getpid():
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
        if isinstance(cache, SQLiteCache):
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


class SQLiteCache(Cache):
    """A cache in one SQLite file, shared safely by threads and processes.

    The file (and its parent folders) is created on first use, with owner-only permissions where
    the OS allows; while it is open SQLite also keeps ``<path>-wal`` and ``<path>-shm`` beside it.
    Tables ``results``, ``journal``, ``runs`` and ``meta`` hold exactly the fields listed in the
    module docstring, as JSON text (never pickles). Outputs and run records (input rows) are
    stored in clear text: protect the file like the data it came from. The API key is never
    stored.

    Concurrency: WAL journal, ``busy_timeout`` of ``timeout`` seconds, ``synchronous=NORMAL``,
    every write a short ``BEGIN IMMEDIATE`` transaction, retried a few times if SQLite still
    reports "database is locked". One connection per process, guarded by a lock so any thread
    (the main one, an event-loop thread) may call; it is opened lazily, reopened in a forked
    child, and the cache pickles as its path (for spawned processes).
    """

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

    def __reduce__(self) -> tuple[Any, ...]:
        if self._pid == os.getpid() and self._writer.pending:
            self._writer.flush()  # the process that unpickles it reads what this one wrote
        return (_reopen_sqlite, (str(self.path), self.timeout))

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
        if self._conn is None or self._pid != os.getpid():
            with self._lock:
                self._connection()  # the file exists with its tables before the writer opens it
        value: _T = self._writer.write(action, tables)
        return value

    def _write_soon(
        self,
        action: Callable[[sqlite3.Connection], object],
        tables: Iterable[str] = _TABLES,
        label: str = "write",
    ) -> None:
        """Queue ``action`` for the writer thread and return at once (see ``_sqlite_writer``)."""
        if self._conn is None or self._pid != os.getpid():
            with self._lock:
                self._connection()
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
        if self._conn is None or self._pid != os.getpid():
            with self._lock:
                self._connection()
        self._writer.execute_soon(sql, rows, tables, label, early=early)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every write this process queued is in the file."""
        self._writer.flush(timeout)

    # results ---------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResult]:
        wanted = unique_keys(keys)

        def read(conn: sqlite3.Connection) -> list[Any]:
            select = "SELECT key, output, usage, job_id, model, created_at FROM results"
            return _select_keys(conn, select, wanted)

        rows = self._read(read) if wanted else []
        return {row[0]: decode_result(row) for row in rows}

    def result_rows(self, keys: Sequence[str]) -> list[ResultRow]:
        if not keys:
            return []

        def read(conn: sqlite3.Connection) -> list[Any]:
            select = "SELECT key, output, usage, job_id, model, created_at FROM results"
            # rowids only grow, so the largest is a cheap upper bound of the table's size
            (largest,) = conn.execute("SELECT max(rowid) FROM results").fetchone()
            if (largest or 0) <= _SCAN_RATIO * len(keys):
                wanted = set(keys)
                return [row for row in conn.execute(select) if row[0] in wanted]
            return _select_keys(conn, select, keys)

        rows: list[ResultRow] = self._read(read)
        return rows

    def put_many(self, results: Iterable[CachedResult]) -> None:
        now = self._now()
        rows = [encode_result(r, now) for r in results]
        if rows:  # sooner than writes queued ahead of it is harmless: ``early``
            self._execute_soon(_PUT, rows, _RESULTS, "result", early=True)

    def _delete_keys(self, table: str, keys: Iterable[str]) -> None:
        wanted = unique_keys(keys)

        if wanted:
            self._execute_soon(
                f"DELETE FROM {table} WHERE key = ?",
                [(key,) for key in wanted],
                frozenset({table}),
                f"removal from {table}",
            )

    def delete(self, keys: Iterable[str]) -> None:
        self._delete_keys("results", keys)

    def clear(self) -> None:
        self._write(lambda conn: conn.execute("DELETE FROM results"), ("results",))

    def __len__(self) -> int:
        count: int = self._read(lambda c: c.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        return count

    # journal ---------------------------------------------------------------------------------
    def journal_intent(self, key: str, tag: str, run_id: str | None) -> None:
        now = self._now()
        row = journal_row(key, None, tag, run_id, now, "posting", None, now)
        self._write(lambda conn: conn.execute(_INSERT_JOURNAL, row), ("journal",))

    def journal_claim(
        self,
        key: str,
        tag: str,
        owner: ClaimOwner,
        *,
        alive: Callable[[JournalEntry], bool],
        max_age: float | None = None,
        check_results: bool = True,
    ) -> Claim:
        return self._claim_batch([(key, tag)], owner, alive, max_age, check_results)[0]

    def journal_claim_many(
        self,
        wanted: Sequence[tuple[str, str]],
        owner: ClaimOwner,
        *,
        alive: Callable[[JournalEntry], bool],
        max_age: float | None = None,
        check_results: bool = True,
    ) -> list[Claim]:
        if type(self).journal_claim is not SQLiteCache.journal_claim:  # a subclass hooks it
            return super().journal_claim_many(
                wanted, owner, alive=alive, max_age=max_age, check_results=check_results
            )
        return self._claim_batch(wanted, owner, alive, max_age, check_results) if wanted else []

    def _claim_batch(
        self,
        wanted: Sequence[tuple[str, str]],
        owner: ClaimOwner,
        alive: Callable[[JournalEntry], bool],
        max_age: float | None,
        check_results: bool,
    ) -> list[Claim]:
        """Every claim of ``wanted`` in one ``BEGIN IMMEDIATE`` transaction: the reads and the
        inserts see no other writer between (two reads by key list, one ``executemany``)."""
        now = self._now()
        keys = unique_keys(key for key, _ in wanted)

        def claim(conn: sqlite3.Connection) -> list[Claim]:
            hits: dict[str, Any] = {}
            if check_results:
                select = "SELECT key, output, usage, job_id, model, created_at FROM results"
                hits = {row[0]: row for row in _select_keys(conn, select, keys)}
            select = f"SELECT {_JOURNAL_COLUMNS} FROM journal"
            current: dict[str, JournalEntry | None] = {
                row[0]: decode_journal(row) for row in _select_keys(conn, select, keys)
            }
            claims: list[Claim] = []
            inserts: list[JournalRow] = []
            for key, tag in wanted:
                if key in hits:
                    claims.append(Claim("cached", result=decode_result(hits[key])))
                    continue
                found = current.get(key)
                outcome, row, previous = decide_claim(found, key, tag, owner, now, alive, max_age)
                if row is None:
                    claims.append(Claim(outcome, found, previous))
                    continue
                entry = current[key] = claimed_entry(row, owner)
                inserts.append(row)
                claims.append(Claim(outcome, entry, previous))
            if inserts:
                conn.executemany(_INSERT_JOURNAL, inserts)
            return claims

        # Declared as a write of the journal only: it merely reads results (so a result queued
        # after it may still be written before it; see SQLiteWriter.execute_soon's ``early``).
        claimed: list[Claim] = self._write(claim, _JOURNAL)
        return claimed

    def journal_mark_unknown(self, key: str, owner: ClaimOwner) -> None:
        self._execute_soon(
            _MARK_UNKNOWN, [(key, owner.nonce, owner.run_id)], _JOURNAL, "journal mark unknown"
        )

    def journal_release(self, key: str, owner: ClaimOwner) -> None:
        self._execute_soon(
            _RELEASE, [(key, owner.nonce, owner.run_id)], _JOURNAL, "journal release"
        )

    def journal_forget(self, key: str, job_id: str) -> None:
        self._execute_soon(_FORGET, [(key, job_id)], _JOURNAL, "journal forget")

    def journal_forget_many(self, settled: Iterable[tuple[str, str]]) -> None:
        if type(self).journal_forget is not SQLiteCache.journal_forget:  # a subclass hooks it
            super().journal_forget_many(settled)
            return
        rows = list(settled)
        if rows:
            self._execute_soon(_FORGET, rows, _JOURNAL, "journal forget")

    def journal_heartbeat(self, owner: ClaimOwner, at: float | None = None) -> int:
        now = self._now() if at is None else at
        cursor = self._write(
            lambda conn: conn.execute(
                "UPDATE journal SET heartbeat_at = ? WHERE job_id IS NULL "
                "AND owner_nonce = ? AND run_id = ?",
                (now, owner.nonce, owner.run_id),
            ),
            ("journal",),
        )
        return int(cursor.rowcount)

    def journal_job(self, key: str, job_id: str, tag: str, run_id: str | None) -> None:
        now = self._now()
        row = journal_row(key, job_id, tag, run_id, now, "submitted", None, now)
        # lost in a kill, the claim stays: taken over and reconciled by its tag
        self._execute_soon(_record_jobs, [row], _JOURNAL, "journal entry")

    def journal_jobs(self, jobs: Sequence[tuple[str, str, str]], run_id: str | None) -> None:
        if type(self).journal_job is not SQLiteCache.journal_job:  # a subclass hooks it
            super().journal_jobs(jobs, run_id)
            return
        now = self._now()
        rows = [journal_row(k, j, t, run_id, now, "submitted", None, now) for k, j, t in jobs]
        if rows:
            self._execute_soon(_record_jobs, rows, _JOURNAL, "journal entry")

    def journal_get_many(
        self, keys: Iterable[str], max_age: float | None = None
    ) -> dict[str, JournalEntry]:
        wanted = unique_keys(keys)
        now = self._now()

        def read(conn: sqlite3.Connection) -> list[Any]:
            return _select_keys(conn, f"SELECT {_JOURNAL_COLUMNS} FROM journal", wanted)

        entries = (decode_journal(row) for row in (self._read(read) if wanted else []))
        return {e.key: e for e in entries if is_fresh(e, max_age, now)}

    def journal_remove(self, keys: Iterable[str]) -> None:
        self._delete_keys("journal", keys)

    def journal_entries(self, run_id: str | None = None) -> list[JournalEntry]:
        sql = f"SELECT {_JOURNAL_COLUMNS} FROM journal"
        params: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params = (run_id,)
        sql += " ORDER BY submitted_at, key"
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return self._with_decisions([decode_journal(row) for row in rows])

    def _store_decisions(self, rows: list[Any]) -> None:
        def store(conn: sqlite3.Connection) -> None:
            ensure_table(conn)  # created on the first decision: older files stay as they were
            conn.executemany(INSERT_DECISION, rows)

        self._write_soon(store, ("decisions",), "journal decision")

    def _load_decisions(self, keys: list[str] | None) -> list[JournalDecision]:
        return self._read(lambda conn: read_decisions(conn, keys), ("decisions",))

    # runs ------------------------------------------------------------------------------------
    def save_run(
        self,
        run_id: str,
        record: dict[str, Any],
        *,
        blobs: Mapping[str, bytes | None] | None = None,
    ) -> None:
        text = encode_record(record)
        new_blobs = checked_blobs(blobs)
        refs = [(run_id, blob_id) for blob_id in dict.fromkeys(blobs or ())]
        now = self._now()
        created_at, status, rows = run_summary(record, now)
        explicit_created = isinstance(record.get("created_at"), (int, float))

        def save(conn: sqlite3.Connection) -> None:
            for blob_id, data in new_blobs.items():  # compressed here, off the caller's thread
                conn.execute(
                    "INSERT OR IGNORE INTO blobs (id, data, size, created_at) VALUES (?, ?, ?, ?)",
                    (blob_id, zlib.compress(data, 1), len(data), now),
                )
            conn.execute(
                "INSERT INTO runs (run_id, record, status, rows, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "record = excluded.record, status = excluded.status, rows = excluded.rows, "
                "updated_at = excluded.updated_at, created_at = CASE WHEN ? THEN "
                "excluded.created_at ELSE runs.created_at END",
                (run_id, text, status, rows, created_at, now, int(explicit_created)),
            )
            conn.execute("DELETE FROM run_blobs WHERE run_id = ?", (run_id,))
            conn.executemany("INSERT INTO run_blobs (run_id, blob_id) VALUES (?, ?)", refs)

        self._write_soon(save, ("runs", "blobs"), "run record")

    def stored_blobs(self, ids: Iterable[str]) -> set[str]:
        wanted = unique_keys(ids)
        if not wanted:
            return set()
        marks = ",".join("?" * len(wanted))
        rows = self._read(  # no wait for queued writes: a blob missed here is merely sent again
            lambda conn: conn.execute(
                f"SELECT id FROM blobs WHERE id IN ({marks})", wanted
            ).fetchall(),
            (),
        )
        return {row[0] for row in rows}

    def load_blob(self, blob_id: str) -> bytes | None:
        row = self._read(
            lambda conn: conn.execute("SELECT data FROM blobs WHERE id = ?", (blob_id,)).fetchone(),
            ("blobs",),
        )
        return None if row is None else zlib.decompress(row[0])

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        row = self._read(
            lambda conn: conn.execute(
                "SELECT record FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone(),
            ("runs",),
        )
        if row is None:
            return None
        record: dict[str, Any] = json.loads(row[0])
        return record

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Merge ``fields`` in place (SQLite's ``json_patch``): the record is never read back."""
        patch = encode_record(fields)
        now = self._now()
        status = fields.get("status")
        rows = run_summary(fields, now)[2] if "rows" in fields else None

        def update(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE runs SET record = json_patch(record, ?), updated_at = ?, "
                "status = coalesce(?, status), rows = CASE WHEN ? THEN ? ELSE rows END "
                "WHERE run_id = ?",
                (
                    patch,
                    now,
                    status if isinstance(status, str) else None,
                    int("rows" in fields),
                    rows,
                    run_id,
                ),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no run {run_id!r} in this cache")

        self._write(update, ("runs",))

    def delete_run(self, run_id: str) -> None:
        self._delete_runs([run_id])

    def _delete_runs(self, run_ids: list[str]) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(run_ids):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM runs WHERE run_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM run_blobs WHERE run_id IN ({marks})", chunk)
            conn.execute("DELETE FROM blobs WHERE id NOT IN (SELECT blob_id FROM run_blobs)")

        if run_ids:
            self._write(delete, ("runs", "blobs"))

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

    def list_runs(self) -> list[dict[str, Any]]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT run_id, created_at, updated_at, status, rows FROM runs "
                "ORDER BY created_at DESC, run_id DESC"
            ).fetchall(),
            ("runs",),
        )
        return [run_listing(*row) for row in rows]

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


def _reopen_sqlite(path: str, timeout: float) -> SQLiteCache:
    return SQLiteCache(path, timeout=timeout)
