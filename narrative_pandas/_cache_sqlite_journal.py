"""The journal of a SQLite cache: claims taken in one transaction per batch, job ids and
removals as SQL text the writer thread batches, and the 404 decisions kept beside them."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._cache_base import (
    Claim,
    ClaimOwner,
    JournalEntry,
    JournalRow,
    claimed_entry,
    decide_claim,
    decode_journal,
    decode_result,
    is_fresh,
    journal_row,
    unique_keys,
)
from ._decision_log import INSERT_DECISION, JournalDecision, ensure_table, read_decisions
from ._sqlite_store import SQLiteStore, select_keys

logger = logging.getLogger("narrative_pandas")

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


class SQLiteJournal(SQLiteStore):
    """The journal part of :class:`~._cache_sqlite.SQLiteCache`."""

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
        if type(self).journal_claim is not SQLiteJournal.journal_claim:  # a subclass hooks it
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
                hits = {row[0]: row for row in select_keys(conn, select, keys)}
            select = f"SELECT {_JOURNAL_COLUMNS} FROM journal"
            current: dict[str, JournalEntry | None] = {
                row[0]: decode_journal(row) for row in select_keys(conn, select, keys)
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
        if type(self).journal_forget is not SQLiteJournal.journal_forget:  # a subclass hooks it
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
        if type(self).journal_job is not SQLiteJournal.journal_job:  # a subclass hooks it
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
            return select_keys(conn, f"SELECT {_JOURNAL_COLUMNS} FROM journal", wanted)

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
