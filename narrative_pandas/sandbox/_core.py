"""The state one sandbox shares between its server and in-process transports: knobs, keys,
jobs, counters, seeded draws and the faults tests switch on (``fail_next``, outages)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._knobs import SandboxConfig, draw_latency
from ._records import unit
from ._store import JobStore, SandboxStats

__all__ = ["FailRule", "SandboxCore", "SystemWallClock", "WallClock"]

_FOREIGN_KNOBS = frozenset(
    {"foreign_jobs", "foreign_update_interval", "foreign_null_updated_at", "data_plane_ids"}
)


class WallClock(Protocol):
    """Where the sandbox reads the time: epoch seconds (``FakeClock`` fits, for tests)."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemWallClock:
    """Wall-clock time that never goes backwards (monotonic, anchored at the epoch once)."""

    def __init__(self) -> None:
        self._base = time.time() - time.monotonic()

    def now(self) -> float:
        return self._base + time.monotonic()

    def __repr__(self) -> str:
        return "SystemWallClock()"


@dataclass
class FailRule:
    """``fail_next``: answer the next ``remaining`` matching requests with ``status``."""

    remaining: int
    status: int
    path: str | None = None
    method: str | None = None
    retry_after: float | None = None
    detail: str | None = None

    def matches(self, method: str, template: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path in (template, path)
        )


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


class SandboxCore:
    """The shared, thread-safe state of one sandbox: knobs, keys, jobs, counters, fault rules."""

    def __init__(self, config: SandboxConfig, api_keys: Iterable[str], clock: WallClock) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {k: _key_id(k) for k in api_keys}
        self._rng = random.Random(config.seed)
        self._rules: list[FailRule] = []
        self._buckets: dict[str, list[float]] = {}
        self.stats = SandboxStats(self.unfinished_jobs)
        self.store = JobStore(self.stats)
        self._outage: tuple[float, int | None] | None = None
        self.connections: dict[tuple[Any, ...], asyncio.Transport] = {}
        """Open client connections of the server, by peer address (to reset them)."""
        self._sync_foreign()

    # --- knobs and rules -------------------------------------------------------------------
    def configure(self, knobs: Mapping[str, Any]) -> SandboxConfig:
        """Change knobs at runtime (validated as a whole before anything changes)."""
        with self._lock:
            self.config = self.config.with_knobs(knobs)
            if "seed" in knobs:
                self._rng = random.Random(self.config.seed)
            if "rate_limit_rps" in knobs:
                self._buckets.clear()
            config = self.config
        if _FOREIGN_KNOBS & set(knobs):
            self._sync_foreign()
        return config

    def _sync_foreign(self) -> None:
        """Make the store's updating foreign jobs match the ``foreign_*`` knobs."""
        config = self.config
        self.store.set_foreign(
            config.foreign_jobs,
            now=self.clock.now(),
            interval=config.foreign_update_interval,
            null_updated=config.foreign_null_updated_at,
            data_plane_id=config.data_plane_ids[0],
            seed=config.seed,
            skew=config.executor_skew,
            skew_fraction=config.executor_skew_fraction,
        )

    # --- faults set from tests -------------------------------------------------------------
    def start_outage(self, seconds: float, status: int | None) -> None:
        """Answer every request ``status`` (None: reset the connection) for ``seconds``."""
        with self._lock:
            self._outage = (self.clock.now() + seconds, status)

    def outage_status(self) -> tuple[bool, int | None]:
        """``(in an outage, its status)`` now."""
        with self._lock:
            if self._outage is None:
                return False, None
            until, status = self._outage
            if self.clock.now() >= until:
                self._outage = None
                return False, None
            return True, status

    def cancel_job(self, job_id: str) -> bool:
        """``pending_cancellation`` now, ``cancelled`` after one queue latency."""
        return self.store.cancel(job_id, self.clock.now(), self.latency(self.config.queue_latency))

    def add_jobs(self, n: int, state: str) -> list[str]:
        """``n`` other users' jobs in ``state``, newer than every job so far."""
        config = self.config
        return self.store.add_foreign(
            n,
            now=self.clock.now(),
            data_plane_id=config.data_plane_ids[0],
            state=state,
            seed=config.seed,
            skew=config.executor_skew,
            skew_fraction=config.executor_skew_fraction,
        )

    def skew_for(self, job_id: str) -> float:
        """The clock error of the executor that runs ``job_id`` (seeded by the job id)."""
        config = self.config
        if not config.executor_skew:
            return 0.0
        chosen = unit(f"{config.seed}:{job_id}:skew") < config.executor_skew_fraction
        return config.executor_skew if chosen else 0.0

    def add_key(self, key: str) -> None:
        with self._lock:
            self._keys[key] = _key_id(key)

    def add_rule(self, rule: FailRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def take_rule(self, method: str, template: str, path: str) -> FailRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, template, path):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return rule
        return None

    def reset(self) -> None:
        """Forget jobs, counters, fault rules, outages and rate-limit buckets (the foreign jobs
        the knobs ask for are made again)."""
        with self._lock:
            self._rules.clear()
            self._buckets.clear()
            self._outage = None
            self._rng = random.Random(self.config.seed)
        self.store.clear()
        self.stats.reset()
        self._sync_foreign()

    # --- draws -----------------------------------------------------------------------------
    def chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def pick(self, choices: tuple[int, ...]) -> int:
        with self._lock:
            return self._rng.choice(choices)

    def latency(self, latency: float | tuple[float, float]) -> float:
        if not isinstance(latency, tuple):
            return latency
        with self._lock:
            return draw_latency(latency, self._rng)

    # --- keys and limits -------------------------------------------------------------------
    def owner_of(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The key's id when the Authorization header carries a known Bearer key."""
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, key = value.decode("latin-1").strip().partition(" ")
                if scheme.lower() != "bearer":
                    return None
                return self._keys.get(key.strip())
        return None

    def take_token(self, owner: str, rps: float, now: float) -> float:
        """0 when the request may pass, else the seconds until the key's bucket refills."""
        with self._lock:
            bucket = self._buckets.get(owner)
            if bucket is None:
                bucket = self._buckets[owner] = [max(rps, 1.0), now]
            tokens = min(max(rps, 1.0), bucket[0] + (now - bucket[1]) * rps)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return 0.0
            bucket[0] = tokens
            return (1.0 - tokens) / rps

    def unfinished_jobs(self) -> int:
        return self.store.unfinished(self.clock.now())
