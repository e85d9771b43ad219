"""The sandbox's knobs: one frozen dataclass, validated up front and swappable at runtime.

Everything that makes the sandbox slow, flaky or strict lives here, so tests can turn one thing on
at a time (``Sandbox(failure_rate=0.2)``, ``sandbox.configure(rate_limit_rps=5)``).
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .._models import KNOWN_MODELS

__all__ = [
    "DEFAULT_DATA_PLANE_ID",
    "ORDERS",
    "TOTAL_RECORDS_MODES",
    "Latency",
    "Responder",
    "SandboxConfig",
    "draw_latency",
    "parse_latency",
]

DEFAULT_DATA_PLANE_ID = str(
    uuid.uuid5(uuid.NAMESPACE_URL, "https://narrative.io/sandbox/data-plane")
)
"""The data plane every sandbox knows; fixed, so notebooks can hard-code it."""

Latency = float | tuple[float, float]
"""Seconds: a fixed value, or a ``(low, high)`` range drawn uniformly from the seeded generator."""

ORDERS = ("created_at_desc", "created_at_asc", "updated_at_desc", "updated_at_asc")
"""Every ``order_by`` of ``GET /jobs`` in the contract."""

TOTAL_RECORDS_MODES = ("exact", "page_end", "missing")
"""How ``GET /jobs`` reports ``total_records`` (see ``SandboxConfig.total_records_mode``)."""

Responder = Callable[[dict[str, Any]], Any | Awaitable[Any]]
"""Turns a request (the JSON body, messages normalised to ``{"role", "text"}``) into an output."""


def _check_latency(name: str, value: Any) -> Latency:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be seconds or a (low, high) pair, not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        return float(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = (_check_latency(name, v) for v in value)
        if not isinstance(low, float) or not isinstance(high, float) or low > high:
            raise ValueError(f"{name} range must be (low, high) with low <= high, not {value!r}")
        return (low, high)
    raise ValueError(f"{name} must be seconds or a (low, high) pair, not {value!r}")


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction between 0 and 1, not {value!r}")
    return float(value)


def _check_positive_or_none(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number or None, not {value!r}")


def draw_latency(latency: Latency, rng: random.Random) -> float:
    """One draw of a latency knob (a fixed value draws nothing from ``rng``)."""
    if isinstance(latency, tuple):
        low, high = latency
        return low if low == high else rng.uniform(low, high)
    return latency


def parse_latency(text: str) -> Latency:
    """Parse the CLI forms ``"1.0"`` and ``"0.5-2"`` into a latency knob."""
    text = text.strip()
    if "-" in text[1:]:
        low, _, high = text.partition("-")
        return _check_latency("latency", (float(low), float(high)))
    return _check_latency("latency", float(text))


@dataclass(frozen=True)
class SandboxConfig:
    """Every knob of the sandbox. Change them at runtime with ``Sandbox.configure(**knobs)``.

    Latencies are seconds, fixed or a ``(low, high)`` range (drawn from the seeded generator).
    Rates are fractions in [0, 1]. ``None`` turns a limit off.
    """

    seed: int = 0
    """Seeds latencies, injected errors, failure draws and synthetic outputs."""
    queue_latency: Latency = 0.05
    """Time a job stays ``pending``."""
    run_latency: Latency = 0.2
    """Time a job stays ``running`` before it completes or fails."""
    ttl: float | None = None
    """Seconds after a job *ends* before it expires (then 404 and gone from listings)."""
    failure_rate: float = 0.0
    """Fraction of requests whose job ends ``failed`` (decided by request hash and seed)."""
    responder: Responder | None = None
    """Produces outputs instead of the synthetic generator (sync or async callable)."""
    validate_responder: bool = True
    """Fail jobs whose responder answer breaks the schema; False completes them as answered."""
    rate_limit_rps: float | None = None
    """Requests per second per API key (token bucket, burst = one second); 429 beyond."""
    max_unfinished_jobs: int | None = None
    """POSTs are answered 429 while this many jobs of the key are unfinished."""
    error_rate: float = 0.0
    """Fraction of requests answered with a random status of ``error_statuses`` (nothing done)."""
    error_statuses: tuple[int, ...] = (500, 502, 503)
    post_500_after_create_rate: float = 0.0
    """Fraction of POSTs that create their job and still answer 500 (the lost-answer case)."""
    response_delay: Latency = 0.0
    """Extra time before every answer."""
    extra_models: tuple[str, ...] = ()
    """Model ids accepted besides the contract's list."""
    unavailable_models: tuple[str, ...] = ()
    """Accepted model ids whose jobs fail with "model not available in this data plane"."""
    data_plane_ids: tuple[str, ...] = (DEFAULT_DATA_PLANE_ID,)
    """Data planes the sandbox knows; the first is the default."""
    unknown_data_plane_status: int = 404
    """The contract allows 404 or 403 for an unknown data plane."""
    invalid_schema_as_job_failure: bool = False
    """Accept an invalid ``output_format_schema`` and fail the job instead of answering 400."""
    cancel_rate: float = 0.0
    """Fraction of jobs that go ``pending_cancellation`` -> ``cancelled`` instead of running."""
    post_garbage_after_create_rate: float = 0.0
    """Fraction of POSTs that create their job and answer 200 with a body that is not JSON."""

    # --- what a large, eventually consistent deployment does --------------------------------
    executor_skew: float = 0.0
    """Seconds the clock of some executors is behind (negative: ahead). Jobs they run carry
    stamps shifted by it, and the ``updated_at_*``/``created_at_*`` listings sort by the
    shifted stamps, so the listing's order no longer follows the real order of updates."""
    executor_skew_fraction: float = 0.5
    """Fraction of jobs (chosen by job id and seed) run by the skewed executors."""
    replication_lag: float = 0.0
    """Seconds after creation during which a job answers 404 and is missing from ``GET /jobs``
    (read replicas behind the primary)."""
    foreign_jobs: int = 0
    """Other users' jobs of the same company in the default data plane, created when the knob
    is set (raising it adds jobs, lowering it removes the newest ones)."""
    foreign_update_interval: float | None = 1.0
    """Seconds between two updates of each foreign job (they cycle pending/running, so they stay
    at the top of ``updated_at_desc``); ``None``: they never update."""
    foreign_null_updated_at: int = 0
    """How many of the foreign jobs carry ``updated_at: null`` (sorted first in
    ``updated_at_desc`` and last in ``updated_at_asc``, as SQL's NULLS FIRST/LAST default)."""
    listing_orders: tuple[str, ...] = ORDERS
    """``order_by`` values ``GET /jobs`` accepts; others are answered 400 (the older API knows
    only ``("created_at_desc", "created_at_asc")``)."""
    listing_ignores_order: bool = False
    """``GET /jobs`` serves ``created_at_desc`` whatever ``order_by`` says."""
    total_records_mode: str = "exact"
    """``"exact"``; ``"page_end"`` (``total_records`` = offset + this page's length, so every
    page looks like the last); ``"missing"`` (the answer is just ``{"records": [...]}``)."""
    listing_drip: float | None = None
    """Bytes per second at which ``GET /jobs`` bodies are sent (``0.1``: a byte every 10 s, a
    stall); ``None`` sends them at once."""

    def __post_init__(self) -> None:
        for name in ("queue_latency", "run_latency", "response_delay"):
            object.__setattr__(self, name, _check_latency(name, getattr(self, name)))
        for name in (
            "failure_rate",
            "error_rate",
            "post_500_after_create_rate",
            "post_garbage_after_create_rate",
            "cancel_rate",
            "executor_skew_fraction",
        ):
            object.__setattr__(self, name, _check_rate(name, getattr(self, name)))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, not {self.seed!r}")
        if self.ttl is not None and not (isinstance(self.ttl, (int, float)) and self.ttl >= 0):
            raise ValueError(f"ttl must be seconds >= 0 or None, not {self.ttl!r}")
        if self.rate_limit_rps is not None and not self.rate_limit_rps > 0:
            raise ValueError(f"rate_limit_rps must be > 0 or None, not {self.rate_limit_rps!r}")
        if self.max_unfinished_jobs is not None and not (
            isinstance(self.max_unfinished_jobs, int) and self.max_unfinished_jobs > 0
        ):
            raise ValueError(
                "max_unfinished_jobs must be a positive int or None, "
                f"not {self.max_unfinished_jobs!r}"
            )
        statuses = tuple(self.error_statuses)
        if not statuses or any(not (isinstance(s, int) and 400 <= s <= 599) for s in statuses):
            raise ValueError(f"error_statuses must be HTTP error codes, not {statuses!r}")
        object.__setattr__(self, "error_statuses", statuses)
        for name in ("extra_models", "unavailable_models", "data_plane_ids"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(str(v) for v in value))
        if not self.data_plane_ids:
            raise ValueError("data_plane_ids needs at least one data plane id")
        if self.unknown_data_plane_status not in (403, 404):
            raise ValueError("unknown_data_plane_status must be 403 or 404")
        if self.responder is not None and not callable(self.responder):
            raise ValueError("responder must be a callable taking the request dict")
        self._check_deployment_knobs()

    def _check_deployment_knobs(self) -> None:
        skew = self.executor_skew
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not math.isfinite(skew):
            raise ValueError(f"executor_skew must be a finite number of seconds, not {skew!r}")
        object.__setattr__(self, "executor_skew", float(skew))
        lag = self.replication_lag
        if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not 0 <= lag < math.inf:
            raise ValueError(
                f"replication_lag must be a finite number of seconds >= 0, not {lag!r}"
            )
        object.__setattr__(self, "replication_lag", float(lag))
        for name in ("foreign_jobs", "foreign_null_updated_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
        if self.foreign_null_updated_at > self.foreign_jobs:
            raise ValueError(
                f"foreign_null_updated_at ({self.foreign_null_updated_at}) cannot exceed "
                f"foreign_jobs ({self.foreign_jobs})"
            )
        _check_positive_or_none("foreign_update_interval", self.foreign_update_interval)
        _check_positive_or_none("listing_drip", self.listing_drip)
        orders = self.listing_orders
        orders = (orders,) if isinstance(orders, str) else tuple(orders)
        wrong = [o for o in orders if o not in ORDERS]
        if not orders or wrong:
            raise ValueError(
                f"listing_orders must be a non-empty subset of {', '.join(ORDERS)}, "
                f"not {self.listing_orders!r}"
            )
        object.__setattr__(self, "listing_orders", orders)
        if not isinstance(self.listing_ignores_order, bool):
            raise ValueError("listing_ignores_order must be True or False")
        if self.total_records_mode not in TOTAL_RECORDS_MODES:
            raise ValueError(
                f"total_records_mode must be one of {', '.join(TOTAL_RECORDS_MODES)}, "
                f"not {self.total_records_mode!r}"
            )

    @property
    def models(self) -> frozenset[str]:
        """Model ids the sandbox accepts."""
        return frozenset(KNOWN_MODELS) | frozenset(self.extra_models)

    @classmethod
    def knob_names(cls) -> frozenset[str]:
        """The names ``configure`` accepts."""
        return frozenset(f.name for f in fields(cls))

    def with_knobs(self, knobs: Mapping[str, Any]) -> SandboxConfig:
        """A copy with ``knobs`` changed; unknown names raise TypeError.

        ``latency`` is accepted as another name for ``run_latency`` (the CLI's ``--latency``).
        """
        if "latency" in knobs:
            if "run_latency" in knobs:
                raise TypeError("give latency or run_latency, not both")
            knobs = {("run_latency" if k == "latency" else k): v for k, v in knobs.items()}
        unknown = set(knobs) - self.knob_names()
        if unknown:
            raise TypeError(
                f"unknown sandbox knob(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(self.knob_names()))}"
            )
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(knobs)
        return SandboxConfig(**values)
