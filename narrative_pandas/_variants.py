"""Several requests per row in one run: ``samples=k`` and ``compare`` (models x prompts).

Each (variant, sample) is planned like an ordinary run (so every check still raises before a
request), then the plans are laid end to end into one :class:`RunPlan`: one engine, one cache,
one concurrency limit and one progress display for all of them. The run's frame (one block of
rows per plan) is folded back onto the caller's rows by ``_fold.Folding``:

- samples: sample ``s > 0`` of a request has its own key (the request's key and ``s``, hashed)
  and the tag ``npd-sample-<s>``, so identical-request dedupe, the cache and the journal keep
  the samples apart; sample 0 is the plain request (a ``samples=1`` result is reused). The
  majority answer per field is returned, with ``narrative_agreement``.
- compare: every variant's output and metadata columns get the suffix ``[<variant>]``; one
  ``agreement[<field>]`` column per output field follows.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ._exceptions import ConfigurationError
from ._plan import RunPlan

__all__ = ["SAMPLE_TAG_PREFIX", "Block", "check_samples", "combine", "sample_plan"]

SAMPLE_TAG_PREFIX = "npd-sample-"


def check_samples(samples: Any) -> int:
    """``samples`` as a positive int, or a clear error."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigurationError(
            f"samples={samples!r} is not valid; pass a whole number of jobs per row, e.g. "
            "samples=3 (1, the default, sends each row once)."
        )
    return samples


def sample_key(key: str, sample: int) -> str:
    """Sample ``sample``'s request key: the plain key for sample 0, a distinct hash after."""
    if sample == 0:
        return key
    return hashlib.sha256(f"{key}|sample={sample}".encode()).hexdigest()


def sample_plan(plan: RunPlan, sample: int) -> RunPlan:
    """The plan for one sample: same rows and bodies, its own keys and a per-sample tag."""
    if sample == 0:
        return plan
    tag = f"{SAMPLE_TAG_PREFIX}{sample}"
    commons: dict[int, Any] = {}
    requests = []
    for request in plan.requests:
        common = commons.get(id(request.common))
        if common is None:
            common = dataclasses.replace(request.common, tags=(*request.common.tags, tag))
            commons[id(request.common)] = common
        requests.append(
            dataclasses.replace(request, key=sample_key(request.key, sample), common=common)
        )
    keys = [None if k is None else sample_key(k, sample) for k in plan.row_keys]
    return dataclasses.replace(plan, row_keys=keys, requests=requests, _by_key=None)


@dataclass(frozen=True)
class Block:
    """Where one planned (variant, sample) sits in the combined run."""

    variant: str | None
    sample: int
    plan: RunPlan


def combine(blocks: Sequence[Block]) -> RunPlan:
    """One plan running every block's requests: rows laid end to end, identical keys shared.

    The requests are queued row by row across the blocks (row 0 of every variant and sample,
    then row 1...), not block after block, so rows finish whole: ``partial()`` of a comparison
    fills complete rows early and every variant's counts move together in the widget."""
    first = blocks[0].plan
    n = len(first.row_keys)
    row_keys: list[str | None] = []
    skipped: dict[int, str] = {}
    ordered: list[tuple[int, int, Any]] = []
    for number, block in enumerate(blocks):
        row_keys.extend(block.plan.row_keys)
        skipped.update({number * n + p: why for p, why in block.plan.skipped.items()})
        where: dict[str, int] = {}
        for position, key in enumerate(block.plan.row_keys):
            if key is not None:
                where.setdefault(key, position)
        ordered += [(where.get(r.key, n), number, r) for r in block.plan.requests]
    ordered.sort(key=lambda item: (item[0], item[1]))
    requests: dict[str, Any] = {}
    for _, _, request in ordered:
        known = requests.get(request.key)
        requests[request.key] = (
            request if known is None else dataclasses.replace(known, rows=known.rows + request.rows)
        )
    # The run's own frame has no input columns: fold() puts the caller's frame back.
    frame = pd.DataFrame(index=pd.RangeIndex(n * len(blocks)))
    return dataclasses.replace(
        first,
        df=frame,
        row_keys=row_keys,
        skipped=skipped,
        requests=list(requests.values()),
        _by_key=None,
    )
