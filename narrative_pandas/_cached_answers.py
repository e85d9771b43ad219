"""Answers already in the cache, read column-wise: the path of a re-run that sends nothing.

A fully cached re-run of 100,000 rows should take well under two seconds, so it skips what a
live run needs per row: the rows come back in one query (or one scan of a results table that
holds little else), every output is parsed by one JSON parse and every token count by
another (they were validated when they were stored), and the frame is built from plain lists
without a per-row outcome object. When any request misses, the hits already read are decoded
one by one and handed to the engine, which runs the rest as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic_core

from ._cache import ResultRow, decode_result
from ._frame import STATUS_CATEGORIES, RowColumns, status_codes_column

if TYPE_CHECKING:
    from ._cache import Cache, CachedResult

__all__ = ["CachedAnswers", "RowAnswers", "cached_columns", "read_cached"]

_COMPLETED = STATUS_CATEGORIES.index("completed")
_SKIPPED = STATUS_CATEGORIES.index("skipped")


@dataclass(frozen=True, slots=True)
class RowAnswers:
    """One entry per row of a frame (None on rows without a request, e.g. skipped ones)."""

    outputs: list[dict[str, Any] | None]
    job_ids: list[str | None]
    prompt_tokens: list[int | None]
    completion_tokens: list[int | None]
    total_tokens: list[int | None]


@dataclass(frozen=True, slots=True)
class CachedAnswers:
    """The cached answer of every unique request of a run, one list per field."""

    position: dict[str, int]  # request key -> index into the lists below
    outputs: list[dict[str, Any]]
    job_ids: list[str | None]
    prompt_tokens: list[int | None]
    completion_tokens: list[int | None]
    total_tokens: list[int | None]

    @classmethod
    def from_rows(cls, rows: Sequence[ResultRow]) -> CachedAnswers:
        """Decode stored rows (``Cache.result_rows``) with two JSON parses in all.

        Raises ``ValueError`` when a stored value is not what ``encode_result`` writes (a
        damaged file): the caller then decodes row by row, which says which one.
        """
        # Each stored output is one JSON object, so joining them makes one JSON array; parsed by
        # pydantic-core's parser (what wrote them), which takes 40% less time than json's here.
        outputs = _parse("[" + ",".join(map(_OUTPUT, rows)) + "]")
        stored_usages = list(map(_USAGE, rows))
        if None in stored_usages:
            stored_usages = [u or "null" for u in stored_usages]
        usages = _parse("[" + ",".join(stored_usages) + "]")
        if len(outputs) != len(rows) or len(usages) != len(rows):
            raise ValueError("a stored output is not one JSON value")
        if outputs and set(map(type, outputs)) != {dict}:
            raise ValueError("a stored output is not a JSON object")
        counts = _all_counts(usages)
        return cls(
            position=dict(zip(map(_KEY, rows), range(len(rows)), strict=True)),
            outputs=outputs,
            job_ids=list(map(_JOB_ID, rows)),
            prompt_tokens=counts[0],
            completion_tokens=counts[1],
            total_tokens=counts[2],
        )

    def by_row(self, row_keys: Sequence[str | None]) -> RowAnswers:
        """The answers laid out per row (rows sharing a request share its answer)."""
        at = self.position
        if None in row_keys:
            found: Any = (-1 if k is None else at[k] for k in row_keys)
        else:
            found = map(at.__getitem__, row_keys)  # type: ignore[arg-type]
        index = np.fromiter(found, dtype=np.intp, count=len(row_keys))
        return RowAnswers(
            outputs=_take(self.outputs, index),
            job_ids=_take(self.job_ids, index),
            prompt_tokens=_take(self.prompt_tokens, index),
            completion_tokens=_take(self.completion_tokens, index),
            total_tokens=_take(self.total_tokens, index),
        )


def _parse(text: str) -> Any:
    """JSON text to Python values (NaN and Infinity as ``encode_result`` writes them)."""
    try:
        return pydantic_core.from_json(text, allow_inf_nan=True)
    except ValueError as exc:  # the same error json.loads gives, for the caller's fallback
        raise ValueError(f"a stored value is not JSON: {exc}") from None


def _take(values: list[Any], index: np.ndarray) -> list[Any]:
    """``values[i]`` for each ``i`` of ``index``, None where ``i`` is -1."""
    source = np.empty(len(values) + 1, dtype=object)
    source[: len(values)] = values
    source[-1] = None  # index -1 reads this
    taken: list[Any] = source[index].tolist()
    return taken


_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
# The fields of a stored row (``ResultRow``) the all-cached path reads.
_KEY, _OUTPUT, _USAGE, _JOB_ID = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(3)


def _all_counts(usages: list[Any]) -> list[list[int | None]]:
    """The three token counts of every stored usage, one list per count."""
    if None not in usages:  # what encode_result writes: every usage has every count
        try:
            columns = [list(c) for c in zip(*map(itemgetter(*_COUNTS), usages), strict=True)]
        except (KeyError, TypeError):
            columns = []
        if len(columns) == len(_COUNTS) and all(set(map(type, c)) == {int} for c in columns):
            return columns
    return [_counts(usages, name) for name in _COUNTS]


def _counts(usages: list[Any], name: str) -> list[int | None]:
    """One token count per stored usage (None where there is none)."""
    try:  # what encode_result writes: every usage has every count
        counts = [None if u is None else u[name] for u in usages]
    except (KeyError, TypeError):
        if not all(u is None or type(u) is dict for u in usages):
            raise ValueError("stored token counts are not a JSON object") from None
        counts = [None if u is None else u.get(name, 0) for u in usages]
    if not all(c is None or type(c) is int for c in counts):
        raise ValueError(f"a stored {name} is not an integer")
    return counts


def read_cached(
    cache: Cache, keys: Sequence[str]
) -> tuple[CachedAnswers | None, dict[str, CachedResult]]:
    """``(answers, {})`` when every one of ``keys`` (unique) is cached, else ``(None, hits)``."""
    rows = cache.result_rows(keys)
    if len(rows) == len(keys):
        try:
            return CachedAnswers.from_rows(rows), {}
        except ValueError:
            pass  # decoded one by one below, which names the bad row
    return None, {row[0]: decode_result(row) for row in rows}


def cached_columns(
    answers: CachedAnswers, row_keys: Sequence[str | None], skipped: Mapping[int, str]
) -> RowColumns:
    """The frame's per-row lists when every request was cached: rows with a request are
    completed, the others are the plan's skipped rows with their reason."""
    rows = answers.by_row(row_keys)
    errors: list[str | None] = [None] * len(row_keys)
    codes = np.full(len(row_keys), _COMPLETED, dtype=np.int8)
    for position, reason in skipped.items():
        errors[position] = reason
        codes[position] = _SKIPPED
    return RowColumns(
        outputs=rows.outputs,
        errors=errors,
        job_ids=rows.job_ids,
        prompt_tokens=rows.prompt_tokens,
        completion_tokens=rows.completion_tokens,
        total_tokens=rows.total_tokens,
        status=status_codes_column(codes),
    )
