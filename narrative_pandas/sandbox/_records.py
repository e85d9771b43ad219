"""One job of the sandbox: its timeline, the stamps its executor puts on it, and its JSON face.

A job's life is a list of transitions decided in advance (``pending`` at creation, then
``running`` or ``pending_cancellation``, then how it ends), so its state is computed from the
clock whenever it is read and no timer runs per job. Other users' jobs that keep changing
(``foreign_jobs``) follow a :class:`Cycle` instead, also computed from the clock.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "FOREIGN_OWNER",
    "JOB_STATES",
    "JOB_TYPE",
    "TERMINAL_STATES",
    "Cycle",
    "JobRecord",
    "format_timestamp",
    "unit",
]

JOB_TYPE = "model_inference"
JOB_STATES = ("pending", "running", "completed", "failed", "cancelled", "pending_cancellation")
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})
FOREIGN_OWNER = "foreign"
"""The owner of other users' jobs: no API key of the sandbox owns them."""
COMPANY_ID = 1
FOREIGN_USER_ID = 9001


def format_timestamp(epoch: float) -> str:
    """ISO 8601 in UTC without a zone, with microseconds, like the contract's examples."""
    stamp = datetime.fromtimestamp(epoch, tz=timezone.utc).replace(tzinfo=None)
    return stamp.isoformat(timespec="microseconds")


def unit(material: str) -> float:
    """A number in [0, 1) fixed by ``material`` (a seeded, reproducible draw)."""
    digest = hashlib.sha256(material.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def user_id_of(owner: str) -> int:
    """The user id the contract's ``request_source`` shows for a key (stable per key)."""
    if owner == FOREIGN_OWNER:
        return FOREIGN_USER_ID
    return 100 + int(hashlib.sha256(owner.encode("utf-8")).hexdigest()[:6], 16) % 900


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(slots=True)
class Cycle:
    """A foreign job that flips pending/running every ``interval`` seconds from ``anchor``.

    ``phase`` (a fraction of the interval) spreads the jobs' updates; ``base_count`` and
    ``base_time`` carry the updates made before the last change of interval.
    """

    anchor: float
    phase: float
    interval: float | None
    base_count: int = 0
    base_time: float = 0.0

    def at(self, now: float) -> tuple[int, float]:
        """``(updates so far, real time of the last update)`` at ``now``."""
        if self.interval is None:
            return self.base_count, self.base_time
        first = self.anchor + self.phase * self.interval
        if now < first:
            return self.base_count, self.base_time
        done = int((now - first) // self.interval) + 1
        return self.base_count + done, first + (done - 1) * self.interval

    def retime(self, now: float, interval: float | None) -> None:
        """Keep the updates made so far and continue with a new interval from ``now``."""
        self.base_count, self.base_time = self.at(now)
        self.anchor = now
        self.interval = interval


@dataclass(eq=False, slots=True)
class JobRecord:
    """One job. ``times`` are real (sandbox clock) times of its transitions to ``states``;
    the stamps it shows are those times minus ``skew`` (its executor's clock error)."""

    seq: int
    job_id: str
    data_plane_id: str
    owner: str
    input: dict[str, Any]
    times: list[float]
    states: list[str]
    skew: float = 0.0
    visible: float = -math.inf
    result: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    cycle: Cycle | None = None
    null_updated: bool = False
    removed: bool = False
    stamps: list[str] = field(default_factory=list)
    _frag_key: tuple[int, bool] | None = None
    _frag: bytes = b""
    _head: bytes = b""

    def __post_init__(self) -> None:
        self.restamp()

    # --- timeline --------------------------------------------------------------------------
    @property
    def foreign(self) -> bool:
        return self.owner == FOREIGN_OWNER

    @property
    def created(self) -> float:
        return self.times[0]

    @property
    def ended(self) -> float:
        """Real time the job reaches a terminal state (``inf`` if it never does)."""
        return self.times[-1] if self.states[-1] in TERMINAL_STATES else math.inf

    def stamp_time(self, stage: int) -> float:
        """The executor's time for transition ``stage``: what the listing sorts by."""
        return self.times[stage] - self.skew

    def restamp(self) -> None:
        """Recompute the stamps after the timeline changed."""
        self.stamps = [format_timestamp(t - self.skew) for t in self.times]
        self._frag_key = None
        self._head = b""

    def stage(self, now: float) -> int:
        """Index of the last transition reached at ``now`` (0 before and at creation)."""
        times = self.times
        if now >= times[-1]:
            return len(times) - 1
        if len(times) == 3:  # the usual pending -> running -> ended, on every listing
            return 1 if now >= times[1] else 0
        return max(0, bisect.bisect_right(times, now) - 1)

    def version(self, now: float) -> int:
        """What changes when the job's JSON changes: the stage, or a cycling job's updates."""
        if self.cycle is not None:
            return self.cycle.at(now)[0]
        return self.stage(now)

    def state_at(self, now: float) -> str:
        if self.cycle is not None:
            return ("pending", "running")[self.cycle.at(now)[0] % 2]
        return self.states[self.stage(now)]

    def updated_stamp_time(self, now: float) -> float:
        """The shown ``updated_at`` as epoch seconds (even when it is shown as null)."""
        if self.cycle is not None:
            count, when = self.cycle.at(now)
            return (when if count else self.created) - self.skew
        return self.stamp_time(self.stage(now))

    # --- JSON face -------------------------------------------------------------------------
    def _fixed(self) -> dict[str, Any]:
        """The fields that never change once the job exists."""
        return {
            "job_id": self.job_id,
            "data_plane_id": self.data_plane_id,
            "type": JOB_TYPE,
            "input": self.input,
            "request_source": {
                "type": "api_user",
                "company_id": COMPANY_ID,
                "user_id": user_id_of(self.owner),
            },
            "executor": "sandbox-executor-b" if self.skew else "sandbox-executor-a",
            "execution_cluster": "dedicated" if unit(self.job_id) < 0.25 else "shared",
            "idempotency_key": str(uuid.uuid5(uuid.NAMESPACE_OID, self.job_id)),
            "created_at": self.stamps[0],
        }

    def _moving(self, now: float) -> dict[str, Any]:
        """The fields that change as the job moves on."""
        state = self.state_at(now)
        ended = state in TERMINAL_STATES
        updated: str | None
        if self.null_updated:
            updated = None
        elif self.cycle is not None:
            updated = format_timestamp(self.updated_stamp_time(now))
        else:
            updated = self.stamps[self.stage(now)]
        return {
            "state": state,
            "result": self.result if state == "completed" else None,
            "failures": self.failures if ended else [],
            "updated_at": updated,
            "ended_at": self.stamps[-1] if ended else None,
        }

    def as_dict(self, now: float) -> dict[str, Any]:
        """The job object of ``GET /jobs/{id}`` at ``now``: every field of the contract."""
        return {**self._fixed(), **self._moving(now)}

    def fragment(self, now: float) -> bytes:
        """The job object as JSON bytes, cached until the job changes (the fixed fields are
        encoded once: other users' jobs change every second)."""
        key = (self.version(now), self.null_updated)
        if self._frag_key != key:
            if not self._head:
                self._head = _dumps(self._fixed())[:-1] + b","
            self._frag = self._head + _dumps(self._moving(now))[1:]
            self._frag_key = key
        return self._frag
