"""The journal's record of what the engine decided about jobs that answered 404.

A 404 for one of our jobs is judged by ``_observation.not_found_verdict`` (replica lag, or gone
after retention); resubmitting pays again, so each such decision is kept beside the journal,
keyed by the request's key, where a user can read it later (``cache.journal_decisions()``,
``JournalEntry.decisions``) and where it survives a restart in a cache file.

Cheap at scale: a 404 streak writes at most two rows, its first verdict ("treated as replica
lag", "confirming retention") and its final one ("found", "gone: resubmitted"), never one per
retry; a resubmission adds one row naming the new job. Rows stay after the journal entry is
removed (the row's result is cached), since that is when a user asks "why two jobs?".

Stored in the SQLite table ``decisions`` (``key``, ``at`` epoch seconds, ``verdict``,
``job_id``, ``detail``, ``run_id``), created on the first decision, so files written before it
existed stay readable by older versions.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._cache import Cache

logger = logging.getLogger("narrative_pandas")

__all__ = [
    "CREATE_DECISIONS",
    "INSERT_DECISION",
    "DecisionRecorder",
    "JournalDecision",
    "Verdict",
    "decision_row",
    "read_decisions",
]

Verdict = Literal[
    "replica_lag",
    "retention_check",
    "found_after_404",
    "gone_after_retention",
    "lag_bound_exceeded",
    "resubmitted",
    "given_up",
]

#: key, at, verdict, job_id, detail, run_id
DecisionRow = tuple[str, float, str, "str | None", str, "str | None"]

CREATE_DECISIONS = (
    "CREATE TABLE IF NOT EXISTS decisions ("
    "key TEXT NOT NULL, at REAL NOT NULL, verdict TEXT NOT NULL, job_id TEXT, "
    "detail TEXT NOT NULL, run_id TEXT); "
    "CREATE INDEX IF NOT EXISTS decisions_key ON decisions (key, at)"
)
INSERT_DECISION = (
    "INSERT INTO decisions (key, at, verdict, job_id, detail, run_id) VALUES (?, ?, ?, ?, ?, ?)"
)
_COLUMNS = "key, at, verdict, job_id, detail, run_id"


@dataclass(frozen=True)
class JournalDecision:
    """One decision about a request's job: what was seen, what was done, and when.

    ``verdict`` is one of ``replica_lag`` (a job never seen answered 404: asked again, not
    resubmitted), ``retention_check`` (a job seen before answered 404: confirming before it
    counts as gone), ``found_after_404`` (the job was read again: nothing resubmitted),
    ``gone_after_retention`` / ``lag_bound_exceeded`` (it counts as gone: its request is
    resubmitted), ``resubmitted`` (the new job's id is ``job_id``) and ``given_up`` (gone too
    many times: the row fails). ``detail`` says it in words.
    """

    key: str
    at: float
    verdict: str
    job_id: str | None
    detail: str
    run_id: str | None = None

    def __str__(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.at))
        return f"{stamp} UTC  {self.detail}"


def decision_row(
    key: str, at: float, verdict: Verdict, job_id: str | None, detail: str, run_id: str | None
) -> DecisionRow:
    return (key, float(at), verdict, job_id, detail, run_id)


def decode(row: Sequence[Any]) -> JournalDecision:
    key, at, verdict, job_id, detail, run_id = row
    return JournalDecision(key, float(at), verdict, job_id, detail, run_id)


def ordered(rows: Iterable[DecisionRow]) -> list[JournalDecision]:
    """Decisions oldest first (ties: in the order they were made)."""
    return sorted((decode(r) for r in rows), key=lambda d: d.at)


def ensure_table(conn: sqlite3.Connection) -> None:
    for statement in CREATE_DECISIONS.split(";"):
        conn.execute(statement)


def read_decisions(
    conn: sqlite3.Connection, keys: Sequence[str] | None, chunk: int = 500
) -> list[JournalDecision]:
    """The decisions of ``keys`` (all when None), oldest first; none in a file without them."""
    select = f"SELECT {_COLUMNS} FROM decisions"
    try:
        if keys is None:
            rows = conn.execute(select + " ORDER BY at, rowid").fetchall()
        else:
            rows = []
            for start in range(0, len(keys), chunk):
                part = keys[start : start + chunk]
                marks = ",".join("?" * len(part))
                rows += conn.execute(
                    f"{select} WHERE key IN ({marks}) ORDER BY at, rowid", part
                ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    return ordered(rows)


class DecisionRecorder:
    """A run's side of the record: counts each verdict for the report and writes it to the
    journal of the run's cache (none with ``cache=False``: then the log and counts only)."""

    def __init__(self, cache: Cache | None, run_id: str) -> None:
        self._cache = cache
        self._run_id = run_id
        self.counts: Counter[str] = Counter()

    def record(self, key: str, verdict: Verdict, job_id: str | None, detail: str) -> None:
        self.counts[verdict] += 1
        logger.info("request %s, job %s: %s", key[:12], job_id, detail)
        if self._cache is not None:
            self._cache.journal_decide(key, verdict, job_id, detail, self._run_id)

    def replaced(self, key: str, job_id: str, old_job_id: str, how: str) -> None:
        """The request of a job that was gone has a new job (``how``: posted, reconciled...)."""
        said = "resubmitted as" if how == "posted" else f"{how}:"
        self.record(
            key, "resubmitted", job_id, f"{said} job {job_id} (replacing job {old_job_id}, gone)"
        )

    def given_up(self, key: str, job_id: str, rounds: int) -> None:
        """The request's jobs disappeared too often: the row fails instead."""
        self.record(
            key,
            "given_up",
            job_id,
            f"its job disappeared {rounds} times: not resubmitted again; the row fails",
        )
