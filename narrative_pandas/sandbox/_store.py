"""The sandbox's job store and counters: lazy job states, cheap listings, thread-safe stats.

A job's whole life is fixed when it is created (when it starts running, when it ends, how it
ends), and its state is computed from the clock whenever it is read, so no timer runs per job.
Transitions are kept in one time-sorted list, which lets ``GET /jobs?order_by=updated_at_desc``
walk the newest updates first and stop after one page instead of sorting every job.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "JOB_STATES",
    "ORDERS",
    "JobRecord",
    "JobStore",
    "SandboxStats",
    "format_timestamp",
    "route_template",
]

JOB_TYPE = "model_inference"
JOB_STATES = ("pending", "running", "completed", "failed", "cancelled", "pending_cancellation")
ORDERS = ("created_at_desc", "created_at_asc", "updated_at_desc", "updated_at_asc")
_PENDING, _RUNNING, _ENDED = 0, 1, 2
_REQUEST_SOURCE = {"type": "api", "source": "narrative-pandas-sandbox"}


def format_timestamp(epoch: float) -> str:
    """ISO 8601 in UTC without a zone, with microseconds, like the contract's examples."""
    stamp = datetime.fromtimestamp(epoch, tz=timezone.utc).replace(tzinfo=None)
    return stamp.isoformat(timespec="microseconds")


def route_template(path: str) -> str:
    """The route a path belongs to (``/jobs/abc`` -> ``/jobs/{job_id}``); others unchanged."""
    if path.startswith("/jobs/") and path.count("/") == 2 and len(path) > 6:
        return "/jobs/{job_id}"
    return path


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(eq=False, slots=True)
class JobRecord:
    """One job, with its whole timeline decided at creation."""

    seq: int
    job_id: str
    data_plane_id: str
    owner: str
    input: dict[str, Any]
    created: float
    started: float
    ended: float
    stamps: tuple[str, str, str]
    outcome: str
    result: dict[str, Any] | None
    failures: list[dict[str, Any]]
    removed: bool
    _frag_stage: int
    _frag: bytes

    def stage(self, now: float) -> int:
        """0 pending, 1 running, 2 ended (completed or failed) at time ``now``."""
        if now >= self.ended:
            return _ENDED
        if now >= self.started:
            return _RUNNING
        return _PENDING

    def state(self, stage: int) -> str:
        """The contract's state name for a stage."""
        return ("pending", "running", self.outcome)[stage]

    def as_dict(self, stage: int) -> dict[str, Any]:
        """The job object of ``GET /jobs/{id}`` at ``stage``: every field of the contract."""
        ended = stage == _ENDED
        return {
            "job_id": self.job_id,
            "data_plane_id": self.data_plane_id,
            "type": JOB_TYPE,
            "state": self.state(stage),
            "input": self.input,
            "result": self.result if ended else None,
            "failures": self.failures if ended else [],
            "request_source": _REQUEST_SOURCE,
            "executor": "narrative-sandbox",
            "execution_cluster": "sandbox-local",
            "idempotency_key": None,
            "created_at": self.stamps[0],
            "updated_at": self.stamps[stage],
            "ended_at": self.stamps[_ENDED] if ended else None,
        }

    def fragment(self, stage: int) -> bytes:
        """The job object as JSON bytes, cached for the current stage."""
        if self._frag_stage != stage:
            self._frag = _dumps(self.as_dict(stage))
            self._frag_stage = stage
        return self._frag


class SandboxStats:
    """Counters the tests read; every method is thread-safe.

    ``count(method, path, status)`` filters requests by method, route template
    (``"/model-inference/run"``, ``"/jobs/{job_id}"``, ``"/jobs"``) and answered status.
    """

    def __init__(self, unfinished: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self._unfinished = unfinished
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._jobs_created = 0
        self._duplicates = 0
        self._peak_unfinished = 0
        self._concurrent = 0
        self._peak_concurrent = 0

    @property
    def requests(self) -> int:
        """Requests answered (any route, any status)."""
        with self._lock:
            return sum(self._counts.values())

    def count(
        self, method: str | None = None, path: str | None = None, status: int | None = None
    ) -> int:
        """Requests answered that match every filter given."""
        want_method = method.upper() if method else None
        want_path = route_template(path) if path else None
        with self._lock:
            return sum(
                n
                for (m, p, s), n in self._counts.items()
                if (want_method is None or m == want_method)
                and (want_path is None or p == want_path)
                and (status is None or s == status)
            )

    @property
    def jobs_created(self) -> int:
        """Jobs created (including those whose POST was then answered 500)."""
        with self._lock:
            return self._jobs_created

    @property
    def duplicate_submissions(self) -> int:
        """Jobs created for a body (tags aside) that an earlier job already had: paid twice."""
        with self._lock:
            return self._duplicates

    @property
    def peak_unfinished_jobs(self) -> int:
        """Most jobs that were pending or running at the same moment."""
        with self._lock:
            return self._peak_unfinished

    def unfinished_jobs(self) -> int:
        """Jobs pending or running now."""
        return self._unfinished()

    @property
    def concurrent_requests(self) -> int:
        """Requests being answered right now."""
        with self._lock:
            return self._concurrent

    @property
    def peak_concurrent_requests(self) -> int:
        """Most requests being answered at the same moment."""
        with self._lock:
            return self._peak_concurrent

    def reset(self) -> None:
        """Zero the counters; peaks restart from what is unfinished/in flight now."""
        unfinished = self._unfinished()
        with self._lock:
            self._counts.clear()
            self._jobs_created = 0
            self._duplicates = 0
            self._peak_unfinished = unfinished
            self._peak_concurrent = self._concurrent

    def snapshot(self) -> dict[str, int]:
        """All counters at once, for printing."""
        return {
            "requests": self.requests,
            "jobs_created": self.jobs_created,
            "duplicate_submissions": self.duplicate_submissions,
            "peak_unfinished_jobs": self.peak_unfinished_jobs,
            "unfinished_jobs": self.unfinished_jobs(),
            "peak_concurrent_requests": self.peak_concurrent_requests,
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.snapshot().items())
        return f"SandboxStats({fields})"

    # --- updates from the app and the store ------------------------------------------------
    def request_started(self) -> None:
        with self._lock:
            self._concurrent += 1
            self._peak_concurrent = max(self._peak_concurrent, self._concurrent)

    def request_answered(self, method: str, template: str, status: int) -> None:
        with self._lock:
            self._counts[(method.upper(), template, status)] += 1

    def request_finished(self) -> None:
        with self._lock:
            self._concurrent -= 1

    def job_created(self, *, duplicate: bool, unfinished: int) -> None:
        with self._lock:
            self._jobs_created += 1
            self._duplicates += int(duplicate)
            self._peak_unfinished = max(self._peak_unfinished, unfinished)


class JobStore:
    """Every job of one sandbox, with lazy states, TTL expiry and paged listings."""

    def __init__(self, stats: SandboxStats) -> None:
        self._lock = threading.RLock()
        self._stats = stats
        self.clear()

    def clear(self) -> None:
        """Forget every job."""
        with self._lock:
            self._jobs: dict[str, JobRecord] = {}
            self._by_seq: dict[int, JobRecord] = {}
            self._order: list[JobRecord] = []
            self._events: list[tuple[float, int, int]] = []
            self._expiry: list[tuple[float, int]] = []
            self._unfinished: list[float] = []
            self._owner_unfinished: dict[str, list[float]] = {}
            self._plane_counts: Counter[str] = Counter()
            self._fingerprints: set[str] = set()
            self._removed = 0
            self._seq = 0
            self._last_created = -math.inf

    def create(
        self,
        *,
        job_id: str,
        data_plane_id: str,
        owner: str,
        input: dict[str, Any],
        fingerprint: str,
        now: float,
        queue: float,
        run: float,
        outcome: str,
        result: dict[str, Any] | None,
        failures: list[dict[str, Any]],
    ) -> JobRecord:
        """Record a new job whose timeline starts ``now``; updates the job counters."""
        with self._lock:
            created = max(now, self._last_created)
            self._last_created = created
            started = created + queue
            ended = started + run
            self._seq += 1
            seq = self._seq
            stamps = (format_timestamp(created), format_timestamp(started), format_timestamp(ended))
            failures = [{"message": f["message"], "timestamp": stamps[2], **f} for f in failures]
            record = JobRecord(
                seq, job_id, data_plane_id, owner, input, created, started, ended, stamps,
                outcome, result, failures, False, -1, b"",
            )  # fmt: skip
            self._jobs[job_id] = record
            self._by_seq[seq] = record
            self._order.append(record)
            for stage, when in enumerate((created, started, ended)):
                bisect.insort(self._events, (when, seq, stage))
            heapq.heappush(self._expiry, (ended, seq))
            self._plane_counts[data_plane_id] += 1
            unfinished = self._drain(self._unfinished, now)
            owned = self._owner_unfinished.setdefault(owner, [])
            self._drain(owned, now)
            if ended > now:
                heapq.heappush(self._unfinished, ended)
                heapq.heappush(owned, ended)
                unfinished += 1
            duplicate = fingerprint in self._fingerprints
            self._fingerprints.add(fingerprint)
        self._stats.job_created(duplicate=duplicate, unfinished=unfinished)
        return record

    @staticmethod
    def _drain(heap: list[float], now: float) -> int:
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return len(heap)

    def unfinished(self, now: float) -> int:
        """Jobs pending or running at ``now``."""
        with self._lock:
            return self._drain(self._unfinished, now)

    def unfinished_for(self, owner: str, now: float) -> tuple[int, float | None]:
        """Unfinished jobs of one key, and when the first of them ends."""
        with self._lock:
            heap = self._owner_unfinished.get(owner, [])
            count = self._drain(heap, now)
            return count, (heap[0] if heap else None)

    def expire(self, now: float, ttl: float | None) -> None:
        """Drop jobs that ended at least ``ttl`` seconds ago."""
        if ttl is None:
            return
        with self._lock:
            while self._expiry and self._expiry[0][0] + ttl <= now:
                _, seq = heapq.heappop(self._expiry)
                record = self._by_seq.pop(seq, None)
                if record is not None:
                    record.removed = True
                    del self._jobs[record.job_id]
                    self._plane_counts[record.data_plane_id] -= 1
                    self._removed += 1
            if self._removed > 1000 and self._removed * 2 > len(self._order):
                self._order = [r for r in self._order if not r.removed]
                self._events = [e for e in self._events if e[1] in self._by_seq]
                self._removed = 0

    def get(self, job_id: str, now: float, ttl: float | None) -> bytes | None:
        """The job as JSON bytes, or None when unknown or expired."""
        self.expire(now, ttl)
        with self._lock:
            record = self._jobs.get(job_id)
            return None if record is None else record.fragment(record.stage(now))

    def timelines(self) -> list[tuple[float, float, float]]:
        """``(created, started, ended)`` of every job ever created and not yet expired, oldest
        first."""
        with self._lock:
            return [(r.created, r.started, r.ended) for r in self._order if not r.removed]

    def all_jobs(self, now: float) -> list[dict[str, Any]]:
        """Every live job as a dict, oldest first."""
        with self._lock:
            return [r.as_dict(r.stage(now)) for r in self._order if not r.removed]

    def listing(
        self,
        *,
        now: float,
        ttl: float | None,
        job_type: str | None,
        state: str | None,
        data_plane_id: str | None,
        order_by: str,
        per_page: int,
        offset: int,
    ) -> tuple[int, list[bytes]]:
        """``(total_records, page)`` for ``GET /jobs``; the page holds JSON job objects."""
        self.expire(now, ttl)
        with self._lock:
            if job_type not in (None, JOB_TYPE):
                return 0, []
            if state is None:
                total = (
                    len(self._jobs)
                    if data_plane_id is None
                    else self._plane_counts.get(data_plane_id, 0)
                )
            else:
                total = sum(
                    1
                    for r in self._jobs.values()
                    if (data_plane_id is None or r.data_plane_id == data_plane_id)
                    and r.state(r.stage(now)) == state
                )
            page: list[bytes] = []
            if offset >= total:
                return total, page
            skipped = 0
            for record, stage in self._walk(order_by, now):
                if data_plane_id is not None and record.data_plane_id != data_plane_id:
                    continue
                if state is not None and record.state(stage) != state:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                page.append(record.fragment(stage))
                if len(page) >= per_page:
                    break
            return total, page

    def _walk(self, order_by: str, now: float) -> Iterator[tuple[JobRecord, int]]:
        if order_by.startswith("created_at"):
            records = reversed(self._order) if order_by.endswith("desc") else iter(self._order)
            for record in records:
                if not record.removed:
                    yield record, record.stage(now)
            return
        # updated_at: each live job appears once, at the transition it has reached by `now`.
        end = bisect.bisect_right(self._events, (now, math.inf, math.inf))
        indices = range(end - 1, -1, -1) if order_by.endswith("desc") else range(end)
        events, by_seq = self._events, self._by_seq
        for i in indices:
            _, seq, stage = events[i]
            found = by_seq.get(seq)
            if found is not None and found.stage(now) == stage:
                yield found, stage
