"""What the caches store and the rules both backends share: the records (results, claims,
journal entries), their encoding, the one rule of claims, and the :class:`Cache` interface.

The backends are :mod:`._cache_memory` (process memory) and :mod:`._cache_sqlite` (a file);
:mod:`._cache` tells the whole story and picks one for a ``cache=`` argument.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic_core

from . import _config
from ._decision_log import JournalDecision, Verdict, decision_row
from ._exceptions import ConfigurationError
from ._models import InferenceUsage, shared

logger = logging.getLogger("narrative_pandas")


_SECRET_FIELDS = frozenset({"api_key", "apikey", "api-key", "authorization", "x-api-key"})
"""Field names dropped from run records, whatever their value, so a key never reaches a file."""


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
JournalRow = tuple[
    str, str | None, str, str | None, float, str | None, str | None, int | None, str | None, float
]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


#: Usage texts shared between cached rows (:func:`~._models.shared`).
_USAGE_TEXTS: dict[str, str] = {}


def encode_result(result: CachedResult, now: float) -> ResultRow:
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
    """Token counts as stored by ``encode_result`` (a model_dump, validated when it was made):
    rebuilt without validating again (~1 µs instead of ~10 µs a row)."""
    fields = json.loads(text)
    if type(fields) is not dict:
        return InferenceUsage.model_validate(fields)  # raises: not what encode_result wrote
    return InferenceUsage.model_construct(**fields)


def decode_journal(row: Sequence[Any]) -> JournalEntry:
    key, job_id, tag, run_id, submitted_at, state, host, pid, nonce, heartbeat_at = row
    owner = None
    if host is not None and pid is not None and nonce is not None:
        owner = ClaimOwner(host, int(pid), nonce, run_id or "")
    state = state or ("submitted" if job_id else "posting")
    beat = float(heartbeat_at) if heartbeat_at is not None else float(submitted_at)
    return JournalEntry(key, job_id, tag, run_id, float(submitted_at), state, owner, beat)


def claimed_entry(row: Sequence[Any], owner: ClaimOwner) -> JournalEntry:
    """:func:`decode_journal` of a row :func:`decide_claim` just made for ``owner``, reusing
    ``owner`` (every POST claims one: a frozen ``ClaimOwner`` less to build); both backends."""
    key, job_id, tag, _, submitted_at, state, _, _, _, heartbeat_at = row
    return JournalEntry(key, job_id, tag, owner.run_id, submitted_at, state, owner, heartbeat_at)


def journal_row(
    key: str,
    job_id: str | None,
    tag: str,
    run_id: str | None,
    submitted_at: float,
    state: str,
    owner: ClaimOwner | None,
    heartbeat_at: float,
) -> JournalRow:
    if owner is None:
        return (key, job_id, tag, run_id, submitted_at, state, None, None, None, heartbeat_at)
    return (
        key, job_id, tag, owner.run_id, submitted_at, state,
        owner.host, owner.pid, owner.nonce, heartbeat_at,
    )  # fmt: skip


def decide_claim(
    found: JournalEntry | None,
    key: str,
    tag: str,
    owner: ClaimOwner,
    now: float,
    alive: Callable[[JournalEntry], bool],
    max_age: float | None,
) -> tuple[ClaimOutcome, JournalRow | None, JournalEntry | None]:
    """The one rule of claims, shared by both backends: what to answer and what row to store.

    A claim is inserted only when there is no entry, or the entry is a job id older than
    ``max_age`` (forgotten, as a plain read would), or its owner is gone (taken over: the
    intent's time and tag are kept, since that owner's POST may have created a job then).
    """
    if found is None or (found.job_id and not is_fresh(found, max_age, now)):
        return "new", journal_row(key, None, tag, None, now, "posting", owner, now), None
    if found.job_id:
        return "job", None, found
    if found.owned_by(owner):
        return "ours", None, found
    if alive(found):
        return "held", None, found
    row = journal_row(key, None, found.tag, None, found.submitted_at, "unknown", owner, now)
    return "taken_over", row, found


def unique_keys(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise TypeError("expected an iterable of keys, got a single str")
    return list(dict.fromkeys(keys))


def is_fresh(entry: JournalEntry, max_age: float | None, now: float) -> bool:
    return max_age is None or entry.submitted_at >= now - max_age


def _scrub(value: Any) -> Any:
    """Drop secret-named fields from dicts (nested dicts too; lists such as rows are kept)."""
    if not isinstance(value, dict):
        return value
    return {k: _scrub(v) for k, v in value.items() if str(k).lower() not in _SECRET_FIELDS}


def checked_blobs(blobs: Mapping[str, bytes | None] | None) -> dict[str, bytes]:
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


def encode_record(record: dict[str, Any]) -> str:
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


def run_summary(record: dict[str, Any], now: float) -> tuple[float, str, int | None]:
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


def run_listing(
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
        return [encode_result(r, 0.0) for r in self.get_many(keys).values()]

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
        return self._load_decisions(None if keys is None else unique_keys(keys))

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
live_caches: weakref.WeakSet[Cache] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    for cache in list(live_caches):
        cache._lock = threading.RLock()  # type: ignore[attr-defined]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_after_fork)
