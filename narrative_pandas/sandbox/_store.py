"""The sandbox's job store: lazy job states, cheap listings, expiry, lag, and other users' jobs.

Transitions are kept in one list sorted by their stamps, which lets
``GET /jobs?order_by=updated_at_desc`` walk the newest updates first and stop after one page
instead of sorting every job. Stamps are the executor's (skewed) times, so the listing's order
can differ from the real order of updates, as on a real service. Other users' jobs that keep
updating are sorted on each listing and merged in.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._knobs import ORDERS
from ._records import (
    FOREIGN_OWNER,
    JOB_STATES,
    JOB_TYPE,
    TERMINAL_STATES,
    Cycle,
    JobRecord,
    format_timestamp,
    unit,
)
from ._stats import SandboxStats, route_template

__all__ = [
    "JOB_STATES",
    "ORDERS",
    "JobRecord",
    "JobStore",
    "NewJob",
    "SandboxStats",
    "format_timestamp",
    "route_template",
]

_FOREIGN_SCHEMA = {
    "type": "object",
    "properties": {"segment": {"type": "string"}},
    "required": ["segment"],
}


_CANCELLED: dict[str, Any] = {"message": "Job was cancelled", "value": {"reason": "cancelled"}}


@dataclass(frozen=True)
class NewJob:
    """What the app decided about a job it is creating."""

    job_id: str
    data_plane_id: str
    owner: str
    input: dict[str, Any]
    fingerprint: str
    queue: float
    run: float
    outcome: str
    result: dict[str, Any] | None
    failures: list[dict[str, Any]]
    cancelled: bool = False
    skew: float = 0.0
    lag: float = 0.0


def _foreign_input(data_plane_id: str, n: int) -> dict[str, Any]:
    """A request another user's pipeline sent: its own model, prompt and tags."""
    return {
        "data_plane_id": data_plane_id,
        "model": "openai.gpt-4.1",
        "messages": [{"role": "user", "text": f"Classify account #{n} into a segment."}],
        "inference_config": {"output_format_schema": _FOREIGN_SCHEMA},
        "tags": ["crm-nightly", f"batch-{n // 500}"],
    }


class JobStore:
    """Every job of one sandbox, with lazy states, TTL expiry, lag and paged listings."""

    def __init__(self, stats: SandboxStats) -> None:
        self._lock = threading.RLock()
        self._stats = stats
        self.clear()

    def clear(self) -> None:
        """Forget every job."""
        with self._lock:
            self._jobs: dict[str, JobRecord] = {}
            self._by_seq: dict[int, JobRecord] = {}
            self._order: list[JobRecord] = []  # by created stamp
            self._order_keys: list[tuple[float, int]] = []
            self._events: list[tuple[float, int, int]] = []  # (stamp, seq, stage), by stamp
            self._expiry: list[tuple[float, int]] = []
            self._unfinished: list[float] = []
            self._owner_unfinished: dict[str, list[float]] = {}
            self._hidden: list[tuple[float, int]] = []  # (visible from, seq) of lagging jobs
            self._cycling: list[JobRecord] = []  # foreign jobs that keep updating
            self._plane_counts: Counter[str] = Counter()
            self._fingerprints: set[str] = set()
            self._removed = 0
            self._seq = 0
            self._last_created = -math.inf
            self._max_ahead = 0.0  # largest amount a stamp runs ahead of real time

    # --- creating and changing jobs ------------------------------------------------------
    def _next_created(self, now: float) -> float:
        created = max(now, self._last_created)
        self._last_created = created
        self._seq += 1
        return created

    def _add(self, record: JobRecord, *, events: bool = True) -> None:
        self._jobs[record.job_id] = record
        self._by_seq[record.seq] = record
        key = (record.stamp_time(0), record.seq)
        at = bisect.bisect_right(self._order_keys, key)
        self._order_keys.insert(at, key)
        self._order.insert(at, record)
        self._max_ahead = max(self._max_ahead, -record.skew)
        if events:
            for stage in range(len(record.times)):
                bisect.insort(self._events, (record.stamp_time(stage), record.seq, stage))
        if record.ended < math.inf:
            heapq.heappush(self._expiry, (record.ended, record.seq))
        self._plane_counts[record.data_plane_id] += 1

    def create(self, job: NewJob, now: float) -> JobRecord:
        """Record a new job of a key whose timeline starts ``now``; updates the counters."""
        with self._lock:
            created = self._next_created(now)
            started = created + job.queue
            ended = started + job.run
            middle = "pending_cancellation" if job.cancelled else "running"
            outcome = "cancelled" if job.cancelled else job.outcome
            ended_stamp = format_timestamp(ended - job.skew)
            reasons = [_CANCELLED] if job.cancelled else job.failures
            failures = [{"message": f["message"], "timestamp": ended_stamp, **f} for f in reasons]
            record = JobRecord(
                self._seq, job.job_id, job.data_plane_id, job.owner, job.input,
                [created, started, ended], ["pending", middle, outcome], job.skew,
                created + job.lag, None if job.cancelled else job.result, failures,
            )  # fmt: skip
            self._add(record)
            if job.lag > 0:
                heapq.heappush(self._hidden, (record.visible, record.seq))
            unfinished = self._drain(self._unfinished, now)
            owned = self._owner_unfinished.setdefault(job.owner, [])
            self._drain(owned, now)
            if ended > now:
                heapq.heappush(self._unfinished, ended)
                heapq.heappush(owned, ended)
                unfinished += 1
            duplicate = job.fingerprint in self._fingerprints
            self._fingerprints.add(job.fingerprint)
        self._stats.job_created(duplicate=duplicate, unfinished=unfinished)
        return record

    def add_foreign(
        self,
        n: int,
        *,
        now: float,
        data_plane_id: str,
        state: str,
        seed: int,
        skew: float = 0.0,
        skew_fraction: float = 0.0,
        cycle_interval: float | None = None,
        cycling: bool = False,
    ) -> list[str]:
        """Create ``n`` other users' jobs now, newer than every job so far; returns their ids.

        ``cycling`` jobs keep flipping pending/running every ``cycle_interval`` seconds (the
        ``foreign_jobs`` knob); the others stay in ``state`` (``add_jobs``).
        """
        created_ids = []
        with self._lock:
            for _ in range(n):
                real = self._next_created(now)
                material = hashlib.sha256(f"{seed}:foreign:{self._seq}".encode()).digest()
                job_id = str(uuid.UUID(bytes=material[:16], version=4))
                shifted = skew if unit(f"{seed}:{job_id}:skew") < skew_fraction else 0.0
                newest = self._order_keys[-1][0] if self._order_keys else -math.inf
                created = max(real, newest + shifted)  # its stamp is the newest of all
                index = len(self._cycling) if cycling else self._seq
                record = JobRecord(
                    self._seq, job_id, data_plane_id, FOREIGN_OWNER,
                    _foreign_input(data_plane_id, index), [created], [state], shifted,
                )  # fmt: skip
                if state == "completed":
                    record.result = {
                        "structured_output": {"segment": "smb"},
                        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
                    }
                elif state in ("failed", "cancelled"):
                    message = (
                        "Job was cancelled by its owner"
                        if state == "cancelled"
                        else ("Model inference failed: the model provider returned an error")
                    )
                    record.failures = [
                        {"message": message, "timestamp": record.stamps[0], "value": {}}
                    ]
                if cycling:
                    phase = 1.0 - unit(f"{seed}:{job_id}:phase")  # in (0, 1]
                    record.cycle = Cycle(created, phase, cycle_interval)
                    self._cycling.append(record)
                self._add(record, events=not cycling)
                created_ids.append(job_id)
        self._stats.foreign_created(n)
        return created_ids

    def set_foreign(
        self,
        count: int,
        *,
        now: float,
        interval: float | None,
        null_updated: int,
        data_plane_id: str,
        seed: int,
        skew: float,
        skew_fraction: float,
    ) -> None:
        """Make ``count`` foreign jobs keep updating (adding or removing the newest ones)."""
        with self._lock:
            extra = len(self._cycling) - count
            for record in self._cycling[count:]:
                self._remove(record)
            if extra > 0:
                del self._cycling[count:]
            for record in self._cycling:
                if record.cycle is not None and record.cycle.interval != interval:
                    record.cycle.retime(now, interval)
        if extra < 0:
            self.add_foreign(
                -extra, now=now, data_plane_id=data_plane_id, state="pending", seed=seed,
                skew=skew, skew_fraction=skew_fraction, cycle_interval=interval, cycling=True,
            )  # fmt: skip
        with self._lock:
            for i, record in enumerate(self._cycling):
                if record.null_updated != (i < null_updated):
                    record.null_updated = i < null_updated
                    record._frag_key = None

    def cancel(self, job_id: str, now: float, delay: float) -> bool:
        """Move a job to ``pending_cancellation`` now and to ``cancelled`` ``delay`` later.

        False when the job has already ended or is being cancelled; KeyError when unknown.
        """
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                raise KeyError(f"no job {job_id!r} in the sandbox (unknown or expired)")
            if record.cycle is not None:  # a foreign job stops cycling where it is
                record.states = [record.state_at(now)]
                record.times = [record.created]
                record.cycle = None
                record.null_updated = False
                self._cycling.remove(record)
            stage = record.stage(now)
            if record.states[stage] in TERMINAL_STATES | {"pending_cancellation"}:
                return False
            seq = record.seq
            self._events = [e for e in self._events if e[1] != seq or e[2] <= stage]
            record.times = [*record.times[: stage + 1], max(now, record.times[stage]), 0.0]
            record.times[-1] = record.times[-2] + delay
            record.states = [*record.states[: stage + 1], "pending_cancellation", "cancelled"]
            record.result = None
            record.restamp()
            record.failures = [{**_CANCELLED, "timestamp": record.stamps[-1]}]
            for i in (stage + 1, stage + 2):
                bisect.insort(self._events, (record.stamp_time(i), seq, i))
            self._rebuild_heaps()
            return True

    def _rebuild_heaps(self) -> None:
        live = [r for r in self._by_seq.values()]
        self._expiry = [(r.ended, r.seq) for r in live if r.ended < math.inf]
        heapq.heapify(self._expiry)
        own = [r for r in live if not r.foreign]
        self._unfinished = [r.ended for r in own]
        heapq.heapify(self._unfinished)
        self._owner_unfinished = {}
        for r in own:
            self._owner_unfinished.setdefault(r.owner, []).append(r.ended)
        for heap in self._owner_unfinished.values():
            heapq.heapify(heap)

    def _remove(self, record: JobRecord) -> None:
        if record.removed:
            return
        record.removed = True
        self._by_seq.pop(record.seq, None)
        self._jobs.pop(record.job_id, None)
        self._plane_counts[record.data_plane_id] -= 1
        self._removed += 1

    # --- counting ------------------------------------------------------------------------
    @staticmethod
    def _drain(heap: list[float], now: float) -> int:
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return len(heap)

    def unfinished(self, now: float) -> int:
        """Jobs of the keys pending or running at ``now``."""
        with self._lock:
            return self._drain(self._unfinished, now)

    def unfinished_for(self, owner: str, now: float) -> tuple[int, float | None]:
        """Unfinished jobs of one key, and when the first of them ends."""
        with self._lock:
            heap = self._owner_unfinished.get(owner, [])
            count = self._drain(heap, now)
            return count, (heap[0] if heap else None)

    def _still_hidden(self, now: float) -> list[JobRecord]:
        while self._hidden and self._hidden[0][0] <= now:
            heapq.heappop(self._hidden)
        found = (self._by_seq.get(seq) for _, seq in self._hidden)
        return [r for r in found if r is not None]

    def expire(self, now: float, ttl: float | None) -> None:
        """Drop jobs that ended at least ``ttl`` seconds ago."""
        if ttl is None:
            return
        with self._lock:
            while self._expiry and self._expiry[0][0] + ttl <= now:
                _, seq = heapq.heappop(self._expiry)
                record = self._by_seq.get(seq)
                if record is not None:
                    self._remove(record)
            if self._removed > 1000 and self._removed * 2 > len(self._order):
                kept = [
                    (k, r)
                    for k, r in zip(self._order_keys, self._order, strict=True)
                    if not r.removed
                ]
                self._order_keys = [k for k, _ in kept]
                self._order = [r for _, r in kept]
                self._events = [e for e in self._events if e[1] in self._by_seq]
                self._removed = 0

    # --- reading -------------------------------------------------------------------------
    def get(self, job_id: str, now: float, ttl: float | None) -> bytes | None:
        """The job as JSON bytes, or None when unknown, expired or not yet replicated."""
        self.expire(now, ttl)
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or now < record.visible:
                return None
            return record.fragment(now)

    def timelines(self) -> list[tuple[float, float, float]]:
        """``(created, started, ended)`` of every job of the keys not yet expired, oldest
        first (other users' jobs left out)."""
        with self._lock:
            return [
                (r.times[0], r.times[1], r.times[-1])
                for r in sorted(self._by_seq.values(), key=lambda r: r.seq)
                if not r.foreign
            ]

    def all_jobs(self, now: float, *, foreign: bool = False) -> list[dict[str, Any]]:
        """Every live job of the keys (and of other users with ``foreign``), oldest first."""
        with self._lock:
            records = sorted(self._by_seq.values(), key=lambda r: r.seq)
            return [r.as_dict(now) for r in records if foreign or not r.foreign]

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

            def wanted(r: JobRecord) -> bool:  # for the totals
                return (data_plane_id is None or r.data_plane_id == data_plane_id) and (
                    state is None or r.state_at(now) == state
                )

            if state is None:
                total = (
                    len(self._jobs)
                    if data_plane_id is None
                    else self._plane_counts.get(data_plane_id, 0)
                )
                total -= sum(1 for r in self._still_hidden(now) if wanted(r))
            else:
                total = sum(1 for r in self._jobs.values() if now >= r.visible and wanted(r))
            page: list[bytes] = []
            if offset >= total:
                return total, page
            skipped = 0
            for record in self._walk(order_by, now):
                if now < record.visible:
                    continue
                if data_plane_id is not None and record.data_plane_id != data_plane_id:
                    continue
                if state is not None and record.state_at(now) != state:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                page.append(record.fragment(now))
                if len(page) >= per_page:
                    break
            return total, page

    def _walk(self, order_by: str, now: float) -> Iterator[JobRecord]:
        desc = order_by.endswith("desc")
        if order_by.startswith("created_at"):
            records = reversed(self._order) if desc else iter(self._order)
            yield from (r for r in records if not r.removed)
            return
        # updated_at: NULLs first when descending, last when ascending (SQL's default).
        nulls = [r for r in self._cycling if r.null_updated]
        if desc:
            yield from reversed(nulls)
        if len(nulls) == len(self._cycling):
            yield from (record for _, _, record in self._walk_events(now, desc))
        else:  # (stamp, seq) never ties across jobs, so the records themselves are not compared
            cycling = sorted(
                (
                    (r.updated_stamp_time(now), r.seq, r)
                    for r in self._cycling
                    if not r.null_updated
                ),
                reverse=desc,
            )
            streams = (self._walk_events(now, desc), cycling)
            yield from (record for _, _, record in heapq.merge(*streams, reverse=desc))
        if not desc:
            yield from nulls

    def _walk_events(self, now: float, desc: bool) -> Iterator[tuple[float, int, JobRecord]]:
        """Each job once, at the transition it has reached by ``now``, in stamp order."""
        events, by_seq = self._events, self._by_seq
        end = bisect.bisect_right(events, (now + self._max_ahead, math.inf, math.inf))
        for i in range(end - 1, -1, -1) if desc else range(end):
            stamp, seq, stage = events[i]
            found = by_seq.get(seq)
            if found is not None and found.cycle is None and found.stage(now) == stage:
                yield stamp, seq, found
