"""The result cache and the journal of in-flight jobs, so that no inference job is paid for twice.

Inference jobs are billed. Re-running a cell, interrupting a run or restarting the kernel must
neither pay again for a row already answered nor lose a job already submitted. Three stores make
that true, all behind one :class:`Cache` interface:

``results``
    One entry per *completed, schema-valid* request, keyed by
    :func:`narrative_pandas._models.request_fingerprint` of the request body (a SHA-256 hex digest
    of data plane, model, messages and inference config). Only successes are stored (the engine
    puts a result only after it validated the output against the schema), so failed, timed-out or
    invalid rows are retried by the next run instead of being remembered.
``journal``
    One entry per request whose job is in flight. Before a POST a run *claims* the request
    (:meth:`Cache.journal_claim`: one transaction that inserts only when no live claim exists), so
    two runs, threads or processes never both submit it; the entry gets the job id once the
    server answered, and is removed once the result is cached or the job failed / is gone. A claim
    names its owner (host, pid, a per-process nonce, run id) and carries a heartbeat; another run
    takes it over only when that owner is gone, and then reconciles it through the job listing
    (by ``tag``) before anything is sent.
``runs``
    One JSON record per run (its options, input rows and requests), so ``attach(run_id)`` can
    finish a run after a restart.

What is stored, exactly
-----------------------
========  ===================================================================================
results   ``key`` (the request hash), ``output`` (the model's validated ``structured_output``, as
          JSON text), ``usage`` (token counts, as JSON text), ``job_id``, ``model``,
          ``created_at`` (epoch seconds)
journal   ``key``, ``job_id`` (or NULL for a claim), ``tag`` (the label sent with the job),
          ``run_id``, ``submitted_at`` (epoch seconds of the first intent), ``state``
          (``posting``, ``unknown`` or ``submitted``), the owner's ``owner_host``,
          ``owner_pid``, ``owner_nonce`` and ``heartbeat_at`` (epoch seconds)
runs      ``run_id``, the caller's record as JSON text (options, input rows, requests),
          ``status``, ``rows``, ``created_at``, ``updated_at``
decisions what the engine decided after a job answered 404 (``_decision_log``): ``key``,
          ``at``, ``verdict``, ``job_id``, ``detail``, ``run_id``; at most a few rows per 404
          streak, kept after the journal entry is gone
meta      ``schema_version``
========  ===================================================================================

``results`` and ``journal`` hold no prompt (only its hash), but **outputs are stored in clear
text, and a run record holds what is needed to finish the run elsewhere: its options, its input
rows and the rendered requests (prompts included)**. Treat a cache file like the data it came
from; delete a run's record with :meth:`Cache.delete_run` once it is done if that matters.

Everything is stored as JSON text, never pickled, so nothing but these fields can slip in. The
API key is never stored: the cache is never given it, run records lose any ``api_key`` /
``authorization`` field, and a record that still contains the key's value is refused.

Where
-----
* :class:`MemoryCache` (``cache=True``, the default): process-local dictionaries; gone when the
  process ends. One instance per process (:func:`default_cache`), so re-running a cell is free
  and an interrupted cell resumes its jobs; only a file survives a kernel restart.
* :class:`SQLiteCache` (``cache="path/to/file.sqlite"``): one SQLite file (plus its ``-wal`` and
  ``-shm`` companions while open), created with owner-only permissions where the OS allows. Safe
  for several threads and processes at once (WAL journal, busy timeout, short transactions).
* ``cache=False``: nothing is cached or journaled.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic_core

from . import _config
from ._decision_log import (
    INSERT_DECISION,
    JournalDecision,
    Verdict,
    decision_row,
    ensure_table,
    ordered,
    read_decisions,
)
from ._exceptions import CacheLockedError, ConfigurationError
from ._models import InferenceUsage, shared
from ._sqlite_writer import (
    SQLiteWriter,
    Statement,
    is_lock_error,
    locked_message,
)

__all__ = [
    "SCHEMA_VERSION",
    "Cache",
    "CachedResult",
    "Claim",
    "ClaimOwner",
    "JournalDecision",
    "JournalEntry",
    "MemoryCache",
    "ResultRow",
    "SQLiteCache",
    "decode_result",
    "default_cache",
    "resolve_cache",
]

logger = logging.getLogger("narrative_pandas")

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

_SECRET_FIELDS = frozenset({"api_key", "apikey", "api-key", "authorization", "x-api-key"})
"""Field names dropped from run records, whatever their value, so a key never reaches a file."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class CachedResult:
    """One completed, schema-valid result, keyed by the request fingerprint."""

    key: str
    output: dict[str, Any]
    usage: InferenceUsage | None
    job_id: str | None
    model: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim: one run's engine in one process on one host.

    ``nonce`` is ``<process nonce>:<engine token>``: it tells a reused pid apart, and two
    engines of one process (or of one run id) apart."""

    host: str
    pid: int
    nonce: str
    run_id: str


@dataclass(frozen=True)
class JournalEntry:
    """A job in flight; ``job_id`` is None while only the claim (the intent to POST) is known.

    ``state`` is ``posting`` (claimed, the POST about to be or being sent), ``unknown`` (its
    outcome was never learned: reconcile through the listing before any POST) or ``submitted``.
    ``owner`` is None for entries written without a claim (``journal_intent``, older files).
    ``decisions``: what the engine decided about its jobs' 404s (filled by ``journal_entries``).
    """

    key: str
    job_id: str | None
    tag: str
    run_id: str | None
    submitted_at: float
    state: str = field(default="", compare=False)
    owner: ClaimOwner | None = field(default=None, compare=False)
    heartbeat_at: float = field(default=0.0, compare=False)
    decisions: tuple[JournalDecision, ...] = field(default=(), compare=False)

    def owned_by(self, owner: ClaimOwner) -> bool:
        """True when ``owner`` (this very run of this very process) holds the entry."""
        return self.owner is not None and self.owner.nonce == owner.nonce


ClaimOutcome = Literal["new", "ours", "taken_over", "job", "held", "cached"]


@dataclass(frozen=True)
class Claim:
    """What :meth:`Cache.journal_claim` found and did.

    ``new``/``ours``: the caller holds the claim and may POST. ``taken_over``: the caller now
    holds a claim whose dead owner may have sent its POST (``previous``): reconcile first.
    ``job``: a job exists (``entry.job_id``): poll it. ``held``: a live owner holds it: wait.
    ``cached``: the result is already cached (``result``).
    """

    outcome: ClaimOutcome
    entry: JournalEntry | None = None
    previous: JournalEntry | None = None
    result: CachedResult | None = None


# --------------------------------------------------------------------------------------------
# Encoding shared by both backends, so they behave identically (JSON in, fresh objects out).

ResultRow = tuple[str, str, str | None, str | None, str | None, float]
#: key, job_id, tag, run_id, submitted_at, state, owner_host, owner_pid, owner_nonce, heartbeat_at
_JournalRow = tuple[
    str, str | None, str, str | None, float, str | None, str | None, int | None, str | None, float
]
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


def _record_jobs(conn: sqlite3.Connection, rows: list[_JournalRow]) -> None:
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


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


#: Usage texts shared between cached rows (:func:`~._models.shared`).
_USAGE_TEXTS: dict[str, str] = {}


def _encode_result(result: CachedResult, now: float) -> ResultRow:
    if not isinstance(result, CachedResult):
        raise TypeError(f"expected a CachedResult, got {type(result).__name__}")
    if not isinstance(result.output, dict):
        raise TypeError(
            f"CachedResult.output must be a dict (the structured output), "
            f"got {type(result.output).__name__}"
        )
    # pydantic-core's encoder: a sixth of ``json.dumps``'s time for these small dicts (one per row)
    usage = None if result.usage is None else shared(_USAGE_TEXTS, result.usage.model_dump_json())
    created = result.created_at if result.created_at > 0 else now
    output = pydantic_core.to_json(result.output, inf_nan_mode="constants").decode()
    return (result.key, output, usage, result.job_id, result.model, float(created))


def decode_result(row: Sequence[Any]) -> CachedResult:
    key, output, usage, job_id, model, created_at = row
    return CachedResult(
        key=key,
        output=json.loads(output),
        usage=None if usage is None else _decode_usage(usage),
        job_id=job_id,
        model=model,
        created_at=float(created_at),
    )


def _decode_usage(text: str) -> InferenceUsage:
    """Token counts as stored by ``_encode_result`` (a model_dump, validated when it was made):
    rebuilt without validating again (~1 µs instead of ~10 µs a row)."""
    fields = json.loads(text)
    if type(fields) is not dict:
        return InferenceUsage.model_validate(fields)  # raises: not what _encode_result wrote
    return InferenceUsage.model_construct(**fields)


def _decode_journal(row: Sequence[Any]) -> JournalEntry:
    key, job_id, tag, run_id, submitted_at, state, host, pid, nonce, heartbeat_at = row
    owner = None
    if host is not None and pid is not None and nonce is not None:
        owner = ClaimOwner(host, int(pid), nonce, run_id or "")
    state = state or ("submitted" if job_id else "posting")
    beat = float(heartbeat_at) if heartbeat_at is not None else float(submitted_at)
    return JournalEntry(key, job_id, tag, run_id, float(submitted_at), state, owner, beat)


def _claimed_entry(row: Sequence[Any], owner: ClaimOwner) -> JournalEntry:
    """:func:`_decode_journal` of a row :func:`_decide_claim` just made for ``owner``, reusing
    ``owner`` (every POST claims one: a frozen ``ClaimOwner`` less to build); both backends."""
    key, job_id, tag, _, submitted_at, state, _, _, _, heartbeat_at = row
    return JournalEntry(key, job_id, tag, owner.run_id, submitted_at, state, owner, heartbeat_at)


def _journal_row(
    key: str,
    job_id: str | None,
    tag: str,
    run_id: str | None,
    submitted_at: float,
    state: str,
    owner: ClaimOwner | None,
    heartbeat_at: float,
) -> _JournalRow:
    if owner is None:
        return (key, job_id, tag, run_id, submitted_at, state, None, None, None, heartbeat_at)
    return (
        key, job_id, tag, owner.run_id, submitted_at, state,
        owner.host, owner.pid, owner.nonce, heartbeat_at,
    )  # fmt: skip


def _decide_claim(
    found: JournalEntry | None,
    key: str,
    tag: str,
    owner: ClaimOwner,
    now: float,
    alive: Callable[[JournalEntry], bool],
    max_age: float | None,
) -> tuple[ClaimOutcome, _JournalRow | None, JournalEntry | None]:
    """The one rule of claims, shared by both backends: what to answer and what row to store.

    A claim is inserted only when there is no entry, or the entry is a job id older than
    ``max_age`` (forgotten, as a plain read would), or its owner is gone (taken over: the
    intent's time and tag are kept, since that owner's POST may have created a job then).
    """
    if found is None or (found.job_id and not _is_fresh(found, max_age, now)):
        return "new", _journal_row(key, None, tag, None, now, "posting", owner, now), None
    if found.job_id:
        return "job", None, found
    if found.owned_by(owner):
        return "ours", None, found
    if alive(found):
        return "held", None, found
    row = _journal_row(key, None, found.tag, None, found.submitted_at, "unknown", owner, now)
    return "taken_over", row, found


def _unique(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise TypeError("expected an iterable of keys, got a single str")
    return list(dict.fromkeys(keys))


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


def _is_fresh(entry: JournalEntry, max_age: float | None, now: float) -> bool:
    return max_age is None or entry.submitted_at >= now - max_age


def _scrub(value: Any) -> Any:
    """Drop secret-named fields from dicts (nested dicts too; lists such as rows are kept)."""
    if not isinstance(value, dict):
        return value
    return {k: _scrub(v) for k, v in value.items() if str(k).lower() not in _SECRET_FIELDS}


def _checked_blobs(blobs: Mapping[str, bytes | None] | None) -> dict[str, bytes]:
    """The blobs to store, refused if one holds the API key (the same rule as records)."""
    out: dict[str, bytes] = {}
    for blob_id, data in (blobs or {}).items():
        if data is None:
            continue
        if not isinstance(data, bytes):
            raise TypeError(f"blob {blob_id!r} must be bytes, got {type(data).__name__}")
        for secret in _known_secrets():
            if secret.encode() in data:
                raise ConfigurationError(
                    "Refusing to store a run's data that contains the API key (is it in a "
                    "column of the frame?); pass the key through settings, never inside the data."
                )
        out[blob_id] = data
    return out


def _known_secrets() -> list[str]:
    candidates = [os.environ.get(_config.ENV_API_KEY)]
    configured = getattr(_config, "_configured", None)
    candidates.append(getattr(configured, "api_key", None))
    return [c for c in candidates if isinstance(c, str) and len(c) >= 8]


def _encode_record(record: dict[str, Any]) -> str:
    """The run record as JSON text, without secret fields; refuses one that holds the API key."""
    if not isinstance(record, dict):
        raise TypeError(f"a run record must be a dict, got {type(record).__name__}")
    text = _dumps(_scrub(record))
    for secret in _known_secrets():
        if secret in text or _dumps(secret)[1:-1] in text:
            raise ConfigurationError(
                "Refusing to store a run record that contains the API key; "
                "pass the key through settings, never inside run arguments."
            )
    return text


def _run_summary(record: dict[str, Any], now: float) -> tuple[float, str, int | None]:
    """``created_at``, ``status`` and ``rows`` of a run record (see :meth:`Cache.save_run`)."""
    created = record.get("created_at")
    created_at = float(created) if isinstance(created, (int, float)) else now
    status = record.get("status")
    rows = record.get("rows")
    if isinstance(rows, bool):
        n_rows = None
    elif isinstance(rows, int):
        n_rows = rows
    elif isinstance(rows, (list, dict)):
        n_rows = len(rows)
    else:
        n_rows = None
    return created_at, status if isinstance(status, str) else "running", n_rows


def _run_listing(
    run_id: str, created_at: float, updated_at: float, status: str, rows: int | None
) -> dict[str, Any]:
    return {
        "id": run_id,
        "created_at": created_at,
        "updated_at": updated_at,
        "status": status,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------


class Cache(abc.ABC):
    """Where results, in-flight jobs and run records live.

    Thread-safe; every method is synchronous and fast (no network). Only completed results whose
    output passed the schema are ever ``put`` (the engine's rule), so failures are always retried.
    See the module docstring for exactly what is stored.
    """

    # results ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResult]:
        """The cached results among ``keys`` (missing keys are simply absent)."""

    def put(self, result: CachedResult) -> None:
        """Store one result (``created_at`` 0 means now)."""
        self.put_many([result])

    def result_rows(self, keys: Sequence[str]) -> list[ResultRow]:
        """The stored rows of the ``keys`` that have a result, undecoded (unique ``keys``).

        A row is ``(key, output JSON, usage JSON or None, job_id, model, created_at)``; the
        all-hit path of a re-run decodes them column-wise (``_cached_answers``). This default
        serves caches that only implement ``get_many``.
        """
        return [_encode_result(r, 0.0) for r in self.get_many(keys).values()]

    @abc.abstractmethod
    def put_many(self, results: Iterable[CachedResult]) -> None:
        """Store many results at once (one transaction on disk); a key stored again is replaced."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Forget the results of ``keys`` (e.g. for ``refresh=True``)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Forget every cached result. The journal and run records are kept: they stand for jobs
        already paid for."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of cached results."""

    # journal ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def journal_intent(self, key: str, tag: str, run_id: str | None) -> None:
        """Record an intent without a claim (replaces any older entry). The engine claims with
        :meth:`journal_claim` instead; this low-level write stays for tools and tests."""

    @abc.abstractmethod
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
        """Claim ``key`` for ``owner`` before its POST, atomically (one transaction).

        Looks at the cached result (when ``check_results``) and the journal entry of ``key``
        and inserts a claim only when nothing live is there; ``alive(entry)`` says whether the
        owner of a job-less entry is still there. See :class:`Claim` for the answers.
        """

    def journal_claim_many(
        self,
        wanted: Sequence[tuple[str, str]],
        owner: ClaimOwner,
        *,
        alive: Callable[[JournalEntry], bool],
        max_age: float | None = None,
        check_results: bool = True,
    ) -> list[Claim]:
        """:meth:`journal_claim` for each ``(key, tag)`` in order, one answer each.

        A file makes them one transaction (a wave of POSTs costs one commit, not one each);
        this default, for caches that only implement ``journal_claim``, claims one by one.
        """
        return [
            self.journal_claim(
                key, tag, owner, alive=alive, max_age=max_age, check_results=check_results
            )
            for key, tag in wanted
        ]

    @abc.abstractmethod
    def journal_mark_unknown(self, key: str, owner: ClaimOwner) -> None:
        """Mark ``owner``'s claim of ``key`` as ``unknown``: its POST may have created a job."""

    @abc.abstractmethod
    def journal_release(self, key: str, owner: ClaimOwner) -> None:
        """Drop ``owner``'s job-less claim of ``key`` (its POST surely created nothing)."""

    @abc.abstractmethod
    def journal_forget(self, key: str, job_id: str) -> None:
        """Drop the entry of ``key`` if it still names ``job_id`` (that job ended or is gone);
        a newer claim of the same key is kept."""

    @abc.abstractmethod
    def journal_heartbeat(self, owner: ClaimOwner, at: float | None = None) -> int:
        """Stamp now (or ``at``) on every job-less claim of ``owner``; returns how many there
        are. A run that ends stamps 0, so another process takes its claims over at once."""

    @abc.abstractmethod
    def journal_job(self, key: str, job_id: str, tag: str, run_id: str | None) -> None:
        """Record the job id of ``key``. ``submitted_at`` stays the intent's time when the intent
        with the same tag is still the entry, else it is now."""

    def journal_jobs(self, jobs: Sequence[tuple[str, str, str]], run_id: str | None) -> None:
        """:meth:`journal_job` for many ``(key, job_id, tag)`` (a wave's answers: one queued
        write for a file instead of one per row)."""
        for key, job_id, tag in jobs:
            self.journal_job(key, job_id, tag, run_id)

    def journal_forget_many(self, settled: Iterable[tuple[str, str]]) -> None:
        """:meth:`journal_forget` for many ``(key, job_id)`` (what polls settled)."""
        for key, job_id in settled:
            self.journal_forget(key, job_id)

    @abc.abstractmethod
    def journal_get_many(
        self, keys: Iterable[str], max_age: float | None = None
    ) -> dict[str, JournalEntry]:
        """The journal entries among ``keys``; with ``max_age`` (seconds), entries submitted
        longer ago are left out of the answer (they stay stored until replaced or removed)."""

    @abc.abstractmethod
    def journal_remove(self, keys: Iterable[str]) -> None:
        """Drop the entries of ``keys`` (result cached, job failed or gone)."""

    @abc.abstractmethod
    def journal_entries(self, run_id: str | None = None) -> list[JournalEntry]:
        """All entries, oldest first; only those of ``run_id`` when it is given. Each carries
        the ``decisions`` recorded for its key."""

    def journal_decide(
        self, key: str, verdict: Verdict, job_id: str | None, detail: str, run_id: str | None
    ) -> None:
        """Record a decision about ``key``'s job after a 404 (see ``_decision_log``); queued,
        never waited for."""
        self._store_decisions(
            [decision_row(key, self._clock_now(), verdict, job_id, detail, run_id)]
        )

    def journal_decisions(self, keys: Iterable[str] | None = None) -> list[JournalDecision]:
        """The decisions recorded for ``keys`` (every key when None), oldest first. They stay
        after the journal entry is gone, so a resubmission can be explained later."""
        return self._load_decisions(None if keys is None else _unique(keys))

    @abc.abstractmethod
    def _store_decisions(self, rows: list[Any]) -> None: ...

    @abc.abstractmethod
    def _load_decisions(self, keys: list[str] | None) -> list[JournalDecision]: ...

    def _with_decisions(self, entries: list[JournalEntry]) -> list[JournalEntry]:
        if not entries:
            return entries
        by_key: dict[str, list[JournalDecision]] = {}
        for decision in self._load_decisions([e.key for e in entries]):
            by_key.setdefault(decision.key, []).append(decision)
        return [
            dataclasses.replace(e, decisions=tuple(by_key[e.key])) if e.key in by_key else e
            for e in entries
        ]

    # runs ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def save_run(
        self,
        run_id: str,
        record: dict[str, Any],
        *,
        blobs: Mapping[str, bytes | None] | None = None,
    ) -> None:
        """Store a run's JSON-serialisable record, replacing any earlier one of that id.

        The listing's ``status`` is ``record["status"]`` (default ``"running"``), ``rows`` is
        ``record["rows"]`` if an int or its length if a list/dict, ``created_at`` is
        ``record["created_at"]`` if a number, else the time of the first save. Fields named like
        an API key (``api_key``, ``authorization``...) are dropped; a record holding the key's
        value raises :class:`~narrative_pandas.ConfigurationError`.

        ``blobs`` are the large parts the record refers to by id (the input frame, the plan):
        ``id -> bytes`` to store, or ``id -> None`` for one already stored. A blob is stored
        once whatever the number of runs that refer to it, and is deleted with the last of them
        (:meth:`delete_run`, :meth:`prune_runs`). Bytes holding the API key are refused too.
        """

    @abc.abstractmethod
    def stored_blobs(self, ids: Iterable[str]) -> set[str]:
        """The ids among ``ids`` already stored (so a caller builds only the missing ones)."""

    @abc.abstractmethod
    def load_blob(self, blob_id: str) -> bytes | None:
        """The bytes stored under ``blob_id``, or None."""

    @abc.abstractmethod
    def load_run(self, run_id: str) -> dict[str, Any] | None:
        """The stored record of ``run_id`` (with updates merged), or None."""

    @abc.abstractmethod
    def update_run(self, run_id: str, **fields: Any) -> None:
        """Merge ``fields`` into the record of ``run_id`` (e.g. ``status="done"``).

        Raises KeyError when no run has that id.
        """

    @abc.abstractmethod
    def delete_run(self, run_id: str) -> None:
        """Forget the record of ``run_id`` (no error if there is none)."""

    @abc.abstractmethod
    def list_runs(self) -> list[dict[str, Any]]:
        """Summaries of the stored runs, newest first: ``id``, ``created_at``, ``updated_at``,
        ``status``, ``rows``."""

    def prune_runs(
        self, *, older_than: float | None = None, keep_last: int | None = None
    ) -> list[str]:
        """Delete old run records and the blobs only they used; return the ids deleted.

        A run goes when it was created more than ``older_than`` seconds ago *and* is not among
        the ``keep_last`` newest (give one or both). Results and the journal are untouched: a
        pruned run's rows still come from the cache, only ``attach`` to it is no longer possible.
        """
        if older_than is None and keep_last is None:
            raise ValueError("prune_runs needs older_than= (seconds) and/or keep_last= (runs)")
        if older_than is not None and (isinstance(older_than, bool) or older_than < 0):
            raise ValueError(f"older_than must be seconds >= 0, got {older_than!r}")
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
        ):
            raise ValueError(f"keep_last must be an int >= 0, got {keep_last!r}")
        runs = self.list_runs()  # newest first
        protected = {r["id"] for r in runs[: keep_last or 0]} if keep_last is not None else set()
        cutoff = None if older_than is None else self._clock_now() - older_than
        doomed = [
            r["id"]
            for r in runs
            if r["id"] not in protected and (cutoff is None or r["created_at"] < cutoff)
        ]
        self._delete_runs(doomed)
        return doomed

    def _clock_now(self) -> float:
        now: Callable[[], float] = getattr(self, "_now", time.time)
        return now()

    def _delete_runs(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            self.delete_run(run_id)

    def flush(self, timeout: float | None = None) -> None:  # noqa: B027 - an optional hook
        """Wait until every write queued by this process is stored (nothing to do in memory)."""

    def checkpoint(self) -> bool:
        """Fold a file's write-ahead log into the file, if nobody needs it now (never waits).

        Called when a run ends, so the file's size on disk is what it holds (the log otherwise
        keeps its largest size, and pages in both). True when done or nothing to do."""
        return True

    # lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Release OS resources (the cache stays usable: it reopens on the next call)."""

    @property
    @abc.abstractmethod
    def persistent(self) -> bool:
        """True when entries outlive the process."""

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Locks of live caches are replaced in a forked child, where another thread may have held them.
_live_caches: weakref.WeakSet[Cache] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    for cache in list(_live_caches):
        cache._lock = threading.RLock()  # type: ignore[attr-defined]


def _write_queued_before_fork() -> None:
    """A forked child starts with an empty queue: what the parent queued goes in first."""
    for cache in list(_live_caches):
        if isinstance(cache, SQLiteCache) and cache._pid == os.getpid():
            try:
                cache._writer.flush()
            except CacheLockedError:
                logger.warning(
                    "forking while %s is locked: queued writes stay with the parent", cache
                )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_write_queued_before_fork, after_in_child=_reset_locks_after_fork)


@atexit.register
def _write_queued_at_exit() -> None:
    """What a file cache still holds in its queue goes in before the interpreter ends."""
    for cache in list(_live_caches):
        if isinstance(cache, SQLiteCache):
            try:
                cache.close()
            except Exception:  # best effort at exit; the journal covers the rest
                logger.debug("could not close cache %s at exit", cache, exc_info=True)


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
        self._journal: dict[str, _JournalRow] = {}
        self._runs: dict[str, tuple[str, float, float, str, int | None]] = {}
        self._blobs: dict[str, bytes] = {}
        self._run_blobs: dict[str, frozenset[str]] = {}
        self._decisions: list[Any] = []
        _live_caches.add(self)

    def __repr__(self) -> str:
        return f"MemoryCache(results={len(self)})"

    @property
    def persistent(self) -> bool:
        return False

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResult]:
        wanted = _unique(keys)
        with self._lock:
            rows = [self._results[k] for k in wanted if k in self._results]
        return {row[0]: decode_result(row) for row in rows}

    def result_rows(self, keys: Sequence[str]) -> list[ResultRow]:
        with self._lock:
            found = self._results
            return [found[k] for k in keys if k in found]

    def put_many(self, results: Iterable[CachedResult]) -> None:
        now = self._now()
        rows = [_encode_result(r, now) for r in results]
        with self._lock:
            for row in rows:
                self._results[row[0]] = row

    def delete(self, keys: Iterable[str]) -> None:
        wanted = _unique(keys)
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
            self._journal[key] = _journal_row(key, None, tag, run_id, now, "posting", None, now)

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
            found = None if row is None else _decode_journal(row)
            outcome, new_row, previous = _decide_claim(found, key, tag, owner, now, alive, max_age)
            if new_row is not None:
                self._journal[key] = new_row
        entry = _claimed_entry(new_row, owner) if new_row is not None else found
        return Claim(outcome, entry, previous)

    def journal_mark_unknown(self, key: str, owner: ClaimOwner) -> None:
        with self._lock:
            row = self._journal.get(key)
            if row is not None and row[1] is None and _decode_journal(row).owned_by(owner):
                self._journal[key] = (*row[:5], "unknown", *row[6:])

    def journal_release(self, key: str, owner: ClaimOwner) -> None:
        with self._lock:
            row = self._journal.get(key)
            if row is not None and row[1] is None and _decode_journal(row).owned_by(owner):
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
                if row[1] is None and _decode_journal(row).owned_by(owner):
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
                self._journal[key] = _journal_row(
                    key, job_id, tag, run_id, now, "submitted", None, now
                )

    def journal_get_many(
        self, keys: Iterable[str], max_age: float | None = None
    ) -> dict[str, JournalEntry]:
        wanted = _unique(keys)
        now = self._now()
        with self._lock:
            rows = [self._journal[k] for k in wanted if k in self._journal]
        entries = (_decode_journal(row) for row in rows)
        return {e.key: e for e in entries if _is_fresh(e, max_age, now)}

    def journal_remove(self, keys: Iterable[str]) -> None:
        wanted = _unique(keys)
        with self._lock:
            for key in wanted:
                self._journal.pop(key, None)

    def journal_entries(self, run_id: str | None = None) -> list[JournalEntry]:
        with self._lock:
            rows = list(self._journal.values())
        entries = [_decode_journal(r) for r in rows if run_id is None or r[3] == run_id]
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
        text = _encode_record(record)
        new_blobs = _checked_blobs(blobs)
        now = self._now()
        created_at, status, rows = _run_summary(record, now)
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
            return {i for i in _unique(ids) if i in self._blobs}

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
            text = _encode_record(record)
            now = self._now()
            _, status, rows = _run_summary(record, now)
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
        listing = [_run_listing(rid, c, u, s, n) for rid, (_, c, u, s, n) in items]
        return sorted(listing, key=lambda r: (r["created_at"], r["id"]), reverse=True)

    def close(self) -> None:
        """Nothing to release; the entries stay (the default cache is shared by every run)."""


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
        _live_caches.add(self)

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
        wanted = _unique(keys)

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
        rows = [_encode_result(r, now) for r in results]
        if rows:  # sooner than writes queued ahead of it is harmless: ``early``
            self._execute_soon(_PUT, rows, _RESULTS, "result", early=True)

    def _delete_keys(self, table: str, keys: Iterable[str]) -> None:
        wanted = _unique(keys)

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
        row = _journal_row(key, None, tag, run_id, now, "posting", None, now)
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
        keys = _unique(key for key, _ in wanted)

        def claim(conn: sqlite3.Connection) -> list[Claim]:
            hits: dict[str, Any] = {}
            if check_results:
                select = "SELECT key, output, usage, job_id, model, created_at FROM results"
                hits = {row[0]: row for row in _select_keys(conn, select, keys)}
            select = f"SELECT {_JOURNAL_COLUMNS} FROM journal"
            current: dict[str, JournalEntry | None] = {
                row[0]: _decode_journal(row) for row in _select_keys(conn, select, keys)
            }
            claims: list[Claim] = []
            inserts: list[_JournalRow] = []
            for key, tag in wanted:
                if key in hits:
                    claims.append(Claim("cached", result=decode_result(hits[key])))
                    continue
                found = current.get(key)
                outcome, row, previous = _decide_claim(found, key, tag, owner, now, alive, max_age)
                if row is None:
                    claims.append(Claim(outcome, found, previous))
                    continue
                entry = current[key] = _claimed_entry(row, owner)
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
        row = _journal_row(key, job_id, tag, run_id, now, "submitted", None, now)
        # lost in a kill, the claim stays: taken over and reconciled by its tag
        self._execute_soon(_record_jobs, [row], _JOURNAL, "journal entry")

    def journal_jobs(self, jobs: Sequence[tuple[str, str, str]], run_id: str | None) -> None:
        if type(self).journal_job is not SQLiteCache.journal_job:  # a subclass hooks it
            super().journal_jobs(jobs, run_id)
            return
        now = self._now()
        rows = [_journal_row(k, j, t, run_id, now, "submitted", None, now) for k, j, t in jobs]
        if rows:
            self._execute_soon(_record_jobs, rows, _JOURNAL, "journal entry")

    def journal_get_many(
        self, keys: Iterable[str], max_age: float | None = None
    ) -> dict[str, JournalEntry]:
        wanted = _unique(keys)
        now = self._now()

        def read(conn: sqlite3.Connection) -> list[Any]:
            return _select_keys(conn, f"SELECT {_JOURNAL_COLUMNS} FROM journal", wanted)

        entries = (_decode_journal(row) for row in (self._read(read) if wanted else []))
        return {e.key: e for e in entries if _is_fresh(e, max_age, now)}

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
        return self._with_decisions([_decode_journal(row) for row in rows])

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
        text = _encode_record(record)
        new_blobs = _checked_blobs(blobs)
        refs = [(run_id, blob_id) for blob_id in dict.fromkeys(blobs or ())]
        now = self._now()
        created_at, status, rows = _run_summary(record, now)
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
        wanted = _unique(ids)
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
        patch = _encode_record(fields)
        now = self._now()
        status = fields.get("status")
        rows = _run_summary(fields, now)[2] if "rows" in fields else None

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
        return [_run_listing(*row) for row in rows]

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


# --------------------------------------------------------------------------------------------

_default_lock = threading.Lock()
_default: MemoryCache | None = None
_disk_caches: dict[str, SQLiteCache] = {}


def default_cache() -> MemoryCache:
    """The process-wide in-memory cache (one instance, so re-running a cell costs nothing)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MemoryCache()
        return _default


def resolve_cache(cache: bool | str | os.PathLike[str] | Cache | None) -> Cache | None:
    """Turn a ``cache=`` argument into a cache.

    ``True`` or ``None`` -> the process-wide :func:`default_cache`; ``False`` -> None (no cache,
    no journal); a path -> a :class:`SQLiteCache` there (one instance per absolute path in this
    process); a :class:`Cache` -> itself. Anything else raises ConfigurationError.
    """
    if cache is None or cache is True:
        return default_cache()
    if cache is False:
        return None
    if isinstance(cache, Cache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        raw = os.fspath(cache)
        if isinstance(raw, str) and raw and raw != ":memory:":
            resolved = str(Path(raw).expanduser().resolve())
            with _default_lock:
                found = _disk_caches.get(resolved)
                if found is None:
                    found = _disk_caches[resolved] = SQLiteCache(resolved)
            return found
    raise ConfigurationError(
        f"cache={cache!r} is not accepted. Use cache=True (in-memory, the default), "
        "cache=False (no caching), a file path such as cache='narrative-cache.sqlite' "
        "(kept on disk across restarts), or a narrative_pandas Cache instance."
    )
