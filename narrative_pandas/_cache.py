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
    One small record per run (its options, schema and where it sends) and the blobs it refers
    to by content (the input frame, the plan), so ``attach(run_id)`` can finish a run after a
    restart (``_run_record``).

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
runs      ``run_id``, the caller's record as JSON text (options, schema, target; the ids of
          its blobs), ``status``, ``rows``, ``created_at``, ``updated_at``
blobs     ``id`` (``frame-``/``plan-`` and the hash of the content), ``data``, ``size``,
          ``created_at``: the input frame in ``_frame_codec``'s columnar form and the plan as
          JSON, zlib-compressed, each stored once however many runs use it; ``run_blobs`` says
          which runs use which, so pruning a run drops the blobs only it used
decisions what the engine decided after a job answered 404 (``_decision_log``): ``key``,
          ``at``, ``verdict``, ``job_id``, ``detail``, ``run_id``; at most a few rows per 404
          streak, kept after the journal entry is gone
meta      ``schema_version``
========  ===================================================================================

``results`` and ``journal`` hold no prompt (only its hash), but **outputs are stored in clear
text, and a run record holds what is needed to finish the run elsewhere: its options, its input
rows and the rendered requests (prompts included)**. Treat a cache file like the data it came
from; delete a run's record with :meth:`Cache.delete_run` once it is done if that matters.

Everything is stored as JSON text or, for a frame, as plain column bytes, never pickled, so
nothing but these fields can slip in. The API key is never stored: the cache is never given it,
run records lose any ``api_key`` / ``authorization`` field, and a record or blob that still
contains the key's value is refused.

Where
-----
* :class:`MemoryCache` (``cache=True``, the default): process-local dictionaries; gone when the
  process ends. One instance per process (:func:`default_cache`), so re-running a cell is free
  and an interrupted cell resumes its jobs; only a file survives a kernel restart.
* :class:`SQLiteCache` (``cache="path/to/file.sqlite"``): one SQLite file (plus its ``-wal`` and
  ``-shm`` companions while open), created with owner-only permissions where the OS allows. Safe
  for several threads and processes at once (WAL journal, busy timeout, short transactions).
* ``cache=False``: nothing is cached or journaled.

Modules: ``_cache_base`` (the records, their encoding, the rule of claims, the interface),
``_cache_memory``, ``_cache_sqlite`` (built on ``_sqlite_store`` and its writer thread
``_sqlite_writer``, with ``_cache_sqlite_journal`` and ``_cache_sqlite_runs``); this one
re-exports them and turns a ``cache=`` argument into a cache.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ._cache_base import (
    Cache,
    CachedResult,
    Claim,
    ClaimOwner,
    JournalEntry,
    ResultRow,
    decode_result,
)
from ._cache_memory import MemoryCache
from ._cache_sqlite import SQLiteCache
from ._decision_log import JournalDecision
from ._exceptions import ConfigurationError
from ._sqlite_store import SCHEMA_VERSION

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
