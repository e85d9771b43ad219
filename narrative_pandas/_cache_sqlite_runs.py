"""The run records of a SQLite cache (``attach``): small records, and the blobs they refer to
stored once by content and pruned with their last run."""

from __future__ import annotations

import json
import logging
import sqlite3
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from ._cache_base import checked_blobs, encode_record, run_listing, run_summary, unique_keys
from ._sqlite_store import SQLiteStore, chunks

logger = logging.getLogger("narrative_pandas")


class SQLiteRuns(SQLiteStore):
    """The run-record part of :class:`~._cache_sqlite.SQLiteCache`."""

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
            for chunk in chunks(run_ids):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM runs WHERE run_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM run_blobs WHERE run_id IN ({marks})", chunk)
            conn.execute("DELETE FROM blobs WHERE id NOT IN (SELECT blob_id FROM run_blobs)")

        if run_ids:
            self._write(delete, ("runs", "blobs"))

    def list_runs(self) -> list[dict[str, Any]]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT run_id, created_at, updated_at, status, rows FROM runs "
                "ORDER BY created_at DESC, run_id DESC"
            ).fetchall(),
            ("runs",),
        )
        return [run_listing(*row) for row in rows]
