"""The cache in one SQLite file, safe for threads and processes at once: :class:`SQLiteCache`,
the file (``_sqlite_store``) with the journal (``_cache_sqlite_journal``) and the run records
(``_cache_sqlite_runs``) mixed in, and the results table here.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ._cache_base import CachedResult, ResultRow, decode_result, encode_result, unique_keys
from ._cache_sqlite_journal import SQLiteJournal
from ._cache_sqlite_runs import SQLiteRuns
from ._sqlite_store import select_keys

logger = logging.getLogger("narrative_pandas")

_SCAN_RATIO = 4
"""Read every result in one scan rather than look keys up when the table holds at most this many
rows per key wanted: a sequential scan costs ~2 µs a row, a lookup by key ~10 µs."""

_PUT = (
    "INSERT OR REPLACE INTO results (key, output, usage, job_id, model, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_RESULTS = frozenset({"results"})


class SQLiteCache(SQLiteJournal, SQLiteRuns):
    """A cache in one SQLite file, shared safely by threads and processes.

    The file (and its parent folders) is created on first use, with owner-only permissions where
    the OS allows; while it is open SQLite also keeps ``<path>-wal`` and ``<path>-shm`` beside it.
    Its tables hold exactly the fields listed in the :mod:`._cache` docstring, as JSON text or
    plain column bytes (never pickles). Outputs and run records (the input frame, the prompts)
    are stored in clear text: protect the file like the data it came from. The API key is never
    stored.

    Concurrency: WAL journal, ``busy_timeout`` of ``timeout`` seconds, ``synchronous=NORMAL``,
    every write a short ``BEGIN IMMEDIATE`` transaction, retried a few times if SQLite still
    reports "database is locked". One connection per process, guarded by a lock so any thread
    (the main one, an event-loop thread) may call; it is opened lazily, reopened in a forked
    child, and the cache pickles as its path (for spawned processes).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        if self._pid == os.getpid() and self._writer.pending:
            self._writer.flush()  # the process that unpickles it reads what this one wrote
        return (_reopen_sqlite, (str(self.path), self.timeout))

    # ------------------------------------------------------------------ results

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResult]:
        wanted = unique_keys(keys)

        def read(conn: sqlite3.Connection) -> list[Any]:
            select = "SELECT key, output, usage, job_id, model, created_at FROM results"
            return select_keys(conn, select, wanted)

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
            return select_keys(conn, select, keys)

        rows: list[ResultRow] = self._read(read)
        return rows

    def put_many(self, results: Iterable[CachedResult]) -> None:
        now = self._now()
        rows = [encode_result(r, now) for r in results]
        if rows:  # sooner than writes queued ahead of it is harmless: ``early``
            self._execute_soon(_PUT, rows, _RESULTS, "result", early=True)

    def delete(self, keys: Iterable[str]) -> None:
        self._delete_keys("results", keys)

    def clear(self) -> None:
        self._write(lambda conn: conn.execute("DELETE FROM results"), ("results",))

    def __len__(self) -> int:
        count: int = self._read(lambda c: c.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        return count


def _reopen_sqlite(path: str, timeout: float) -> SQLiteCache:
    return SQLiteCache(path, timeout=timeout)
