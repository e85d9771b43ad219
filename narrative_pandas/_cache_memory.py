"""The in-memory cache: process-local dictionaries behind the :class:`~._cache_base.Cache`
interface (``cache=True``, the default; one instance per process, see ``_cache.default_cache``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

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
from ._decision_log import JournalDecision, ordered

logger = logging.getLogger("narrative_pandas")


class MemoryCache(Cache):
    """A process-local cache: dictionaries behind a lock, gone when the process ends.

    Outputs, usage and run records are kept as JSON text, exactly as :class:`SQLiteCache` keeps
    them, so both behave alike and callers always get fresh objects they may modify.
    ``now`` (epoch seconds) is a seam for tests.
    """

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = threading.RLock()
        self._results: dict[str, ResultRow] = {}
        self._journal: dict[str, JournalRow] = {}
        self._runs: dict[str, tuple[str, float, float, str, int | None]] = {}
        self._blobs: dict[str, bytes] = {}
        self._run_blobs: dict[str, frozenset[str]] = {}
        self._decisions: list[Any] = []
        live_caches.add(self)

    def __repr__(self) -> str:
        return f"MemoryCache(results={len(self)})"

    @property
    def persistent(self) -> bool:
        return False

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResult]:
        wanted = unique_keys(keys)
        with self._lock:
            rows = [self._results[k] for k in wanted if k in self._results]
        return {row[0]: decode_result(row) for row in rows}

    def result_rows(self, keys: Sequence[str]) -> list[ResultRow]:
        with self._lock:
            found = self._results
            return [found[k] for k in keys if k in found]

    def put_many(self, results: Iterable[CachedResult]) -> None:
        now = self._now()
        rows = [encode_result(r, now) for r in results]
        with self._lock:
            for row in rows:
                self._results[row[0]] = row

    def delete(self, keys: Iterable[str]) -> None:
        wanted = unique_keys(keys)
        with self._lock:
            for key in wanted:
                self._results.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._results.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)

    def journal_intent(self, key: str, tag: str, run_id: str | None) -> None:
        now = self._now()
        with self._lock:
            self._journal[key] = journal_row(key, None, tag, run_id, now, "posting", None, now)

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
        now = self._now()
        with self._lock:
            if check_results and key in self._results:
                return Claim("cached", result=decode_result(self._results[key]))
            row = self._journal.get(key)
            found = None if row is None else decode_journal(row)
            outcome, new_row, previous = decide_claim(found, key, tag, owner, now, alive, max_age)
            if new_row is not None:
                self._journal[key] = new_row
        entry = claimed_entry(new_row, owner) if new_row is not None else found
        return Claim(outcome, entry, previous)

    def journal_mark_unknown(self, key: str, owner: ClaimOwner) -> None:
        with self._lock:
            row = self._journal.get(key)
            if row is not None and row[1] is None and decode_journal(row).owned_by(owner):
                self._journal[key] = (*row[:5], "unknown", *row[6:])

    def journal_release(self, key: str, owner: ClaimOwner) -> None:
        with self._lock:
            row = self._journal.get(key)
            if row is not None and row[1] is None and decode_journal(row).owned_by(owner):
                del self._journal[key]

    def journal_forget(self, key: str, job_id: str) -> None:
        with self._lock:
            row = self._journal.get(key)
            if row is not None and row[1] == job_id:
                del self._journal[key]

    def journal_heartbeat(self, owner: ClaimOwner, at: float | None = None) -> int:
        now = self._now() if at is None else at
        count = 0
        with self._lock:
            for key, row in list(self._journal.items()):
                if row[1] is None and decode_journal(row).owned_by(owner):
                    self._journal[key] = (*row[:9], now)
                    count += 1
        return count

    def journal_job(self, key: str, job_id: str, tag: str, run_id: str | None) -> None:
        now = self._now()
        with self._lock:
            old = self._journal.get(key)
            if old is not None and old[1] is None and old[2] == tag:
                self._journal[key] = (key, job_id, tag, run_id, old[4], "submitted", *old[6:9], now)
            else:
                self._journal[key] = journal_row(
                    key, job_id, tag, run_id, now, "submitted", None, now
                )

    def journal_get_many(
        self, keys: Iterable[str], max_age: float | None = None
    ) -> dict[str, JournalEntry]:
        wanted = unique_keys(keys)
        now = self._now()
        with self._lock:
            rows = [self._journal[k] for k in wanted if k in self._journal]
        entries = (decode_journal(row) for row in rows)
        return {e.key: e for e in entries if is_fresh(e, max_age, now)}

    def journal_remove(self, keys: Iterable[str]) -> None:
        wanted = unique_keys(keys)
        with self._lock:
            for key in wanted:
                self._journal.pop(key, None)

    def journal_entries(self, run_id: str | None = None) -> list[JournalEntry]:
        with self._lock:
            rows = list(self._journal.values())
        entries = [decode_journal(r) for r in rows if run_id is None or r[3] == run_id]
        return self._with_decisions(sorted(entries, key=lambda e: (e.submitted_at, e.key)))

    def _store_decisions(self, rows: list[Any]) -> None:
        with self._lock:
            self._decisions.extend(rows)

    def _load_decisions(self, keys: list[str] | None) -> list[JournalDecision]:
        wanted = None if keys is None else set(keys)
        with self._lock:
            rows = [r for r in self._decisions if wanted is None or r[0] in wanted]
        return ordered(rows)

    def save_run(
        self,
        run_id: str,
        record: dict[str, Any],
        *,
        blobs: Mapping[str, bytes | None] | None = None,
    ) -> None:
        text = encode_record(record)
        new_blobs = checked_blobs(blobs)
        now = self._now()
        created_at, status, rows = run_summary(record, now)
        with self._lock:
            old = self._runs.get(run_id)
            if old is not None and not isinstance(record.get("created_at"), (int, float)):
                created_at = old[1]
            self._runs[run_id] = (text, created_at, now, status, rows)
            for blob_id, data in new_blobs.items():
                self._blobs.setdefault(blob_id, data)
            self._run_blobs[run_id] = frozenset(blobs or ())

    def stored_blobs(self, ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {i for i in unique_keys(ids) if i in self._blobs}

    def load_blob(self, blob_id: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(blob_id)

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            stored = self._runs.get(run_id)
        if stored is None:
            return None
        record: dict[str, Any] = json.loads(stored[0])
        return record

    def update_run(self, run_id: str, **fields: Any) -> None:
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is None:
                raise KeyError(f"no run {run_id!r} in this cache")
            record = {**json.loads(stored[0]), **fields}
            text = encode_record(record)
            now = self._now()
            _, status, rows = run_summary(record, now)
            self._runs[run_id] = (text, stored[1], now, status, rows)

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            self._run_blobs.pop(run_id, None)
            used = set().union(*self._run_blobs.values())
            for blob_id in [b for b in self._blobs if b not in used]:
                del self._blobs[blob_id]

    def list_runs(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._runs.items())
        listing = [run_listing(rid, c, u, s, n) for rid, (_, c, u, s, n) in items]
        return sorted(listing, key=lambda r: (r["created_at"], r["id"]), reverse=True)

    def close(self) -> None:
        """Nothing to release; the entries stay (the default cache is shared by every run)."""
