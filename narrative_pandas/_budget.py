"""The token budget (``max_total_tokens``): a cap that holds, even when usage is not reported.

A job is submitted only if the tokens already used, plus a *reservation* for every job in flight,
plus this job's reservation stay within the budget. A reservation is the request's prompt
estimate (text and schema, about 4 characters a token, x1.25 for safety) plus its completion:

- ``max_tokens`` when the run sets it: a hard ceiling, so the budget is exceeded by at most what
  the prompt estimate missed;
- otherwise a high estimate learned from this run's answers: the largest completion seen, and at
  least 1.5 x the mean;
- before any answer is known and without ``max_tokens``: nothing to go on, so one job at a time
  until the first answer teaches the size (the overrun is then at most one job).

When the service reports no ``usage`` for a finished job, its tokens are estimated the same way
from the rendered prompt, the schema and the answer actually returned, and the run's report says
that its token figures are estimated (``tokens_estimated``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._models import InferenceUsage

if TYPE_CHECKING:
    from ._job_request import JobRequest

__all__ = ["CHARS_PER_TOKEN", "TokenBudget", "estimate_tokens"]

CHARS_PER_TOKEN = 4
#: Safety factor on prompt estimates made from characters.
PROMPT_SAFETY = 1.25
#: Learned completion estimate: at least this many times the mean answer seen.
MEAN_FACTOR = 1.5


def estimate_tokens(text: str) -> int:
    """Tokens in ``text``, about four characters each (at least 1)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


@dataclass
class TokenBudget:
    """Used tokens plus reservations for jobs in flight, against ``limit`` (None: no cap)."""

    limit: int | None
    max_tokens: int | None
    schema: Mapping[str, Any] | None = None
    used: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    completions: int = 0
    completion_tokens: int = 0
    largest_completion: int = 0
    estimated_jobs: int = 0

    def __post_init__(self) -> None:
        schema_text = json.dumps(self.schema, separators=(",", ":")) if self.schema else ""
        self._schema_tokens = estimate_tokens(schema_text) if schema_text else 0

    def prompt_estimate(self, request: JobRequest) -> int:
        """A high estimate of the prompt: rendered text plus schema, with a safety margin."""
        return math.ceil((request.prompt_tokens_estimate + self._schema_tokens) * PROMPT_SAFETY)

    def completion_estimate(self) -> int | None:
        """Completion tokens to reserve per job; None while nothing is known."""
        if self.max_tokens is not None:
            return self.max_tokens
        if self.completions:
            mean = self.completion_tokens / self.completions
            return max(self.largest_completion, math.ceil(MEAN_FACTOR * mean))
        return None

    def allows(self, request: JobRequest) -> bool:
        """True if ``request`` may be submitted now without risking the cap."""
        if self.limit is None:
            return True
        if self.used >= self.limit:
            return False
        completion = self.completion_estimate()
        if completion is None:  # nothing learned yet: one job at a time
            return not self.in_flight
        reserved = sum(self.in_flight.values())
        return self.used + reserved + self.prompt_estimate(request) + completion <= self.limit

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.used >= self.limit

    def reserve(self, request: JobRequest) -> None:
        if self.limit is not None:
            completion = self.completion_estimate() or 0
            self.in_flight[request.key] = self.prompt_estimate(request) + completion

    def settle(self, key: str, usage: InferenceUsage | None) -> None:
        """A job ended: count its tokens (reported, or :meth:`estimated_usage`), or with None
        just drop its reservation (not created, timed out, stopped)."""
        self.in_flight.pop(key, None)
        if usage is None:
            return
        self.used += usage.total_tokens
        if usage.completion_tokens:
            self.completions += 1
            self.completion_tokens += usage.completion_tokens
            self.largest_completion = max(self.largest_completion, usage.completion_tokens)

    def estimated_usage(self, request: JobRequest, output: Any) -> InferenceUsage:
        """Usage for a job the service reported none for: the rendered prompt and the schema,
        and the answer it returned (None for a job that failed), about 4 characters a token."""
        self.estimated_jobs += 1
        prompt = request.prompt_tokens_estimate + self._schema_tokens
        answer = "" if output is None else json.dumps(output, separators=(",", ":"))
        completion = estimate_tokens(answer) if answer else 0
        return InferenceUsage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
