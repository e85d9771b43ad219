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

    def __post_init__(self) -> None:
        for name in ("queue_latency", "run_latency", "response_delay"):
            object.__setattr__(self, name, _check_latency(name, getattr(self, name)))
        for name in ("failure_rate", "error_rate", "post_500_after_create_rate"):
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
