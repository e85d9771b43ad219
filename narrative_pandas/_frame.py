"""Per-row outcomes -> a new frame: the caller's columns, typed output columns, ``narrative_*``.

Columns are built positionally (one list per column, then one concat), never aligned by label,
so duplicate, MultiIndex, string and shuffled indexes all come back exactly as they went in.
The same columns appear whatever happened to the rows: a failed row has NA outputs and says why
in ``narrative_error``, so pipelines downstream never break on a partial failure.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._exceptions import ConfigurationError
from ._models import InferenceUsage, TokenCounts
from ._schema import Dtype, OutputSpec

__all__ = [
    "METADATA_COLUMNS",
    "METADATA_DTYPES",
    "STATUS_CATEGORIES",
    "STATUS_DTYPE",
    "RowColumns",
    "RowOutcome",
    "build_frame",
    "build_frame_from_columns",
    "check_collisions",
    "output_column_names",
    "row_status",
    "status_codes_column",
]

logger = logging.getLogger("narrative_pandas")

# pandas-stubs overloads pd.array per literal dtype; the dtype here is only known at run time.
_array: Callable[..., Any] = pd.array

STATUS_CATEGORIES: tuple[str, ...] = (
    "completed",  # a schema-valid answer (fresh or from the cache)
    "failed",  # the job failed on the service, or could not be submitted
    "invalid",  # the answer did not match the output schema
    "timed_out",  # still unfinished at the per-job timeout (it stays journaled)
    "stopped",  # cancel, interrupt or token budget: a re-run collects or submits it
    "skipped",  # a missing value with missing="skip"
)
"""The categories of ``narrative_status``, in this order, in every result frame."""
STATUS_DTYPE = pd.CategoricalDtype(list(STATUS_CATEGORIES), ordered=False)

# RowOutcome.status (the engine's words) -> narrative_status; "pending" (a row still in flight,
# in partial()) has no category: NA.
_STATUS_OF: dict[str, str] = {
    "completed": "completed",
    "cached": "completed",
    "failed": "failed",
    "invalid": "invalid",
    "timeout": "timed_out",
    "timed_out": "timed_out",
    "cancelled": "stopped",
    "interrupted": "stopped",
    "budget": "stopped",
    "stopped": "stopped",
    "skipped": "skipped",
}

METADATA_COLUMNS: tuple[str, ...] = (
    "narrative_error",
    "narrative_status",
    "narrative_job_id",
    "narrative_prompt_tokens",
    "narrative_completion_tokens",
    "narrative_total_tokens",
)
METADATA_DTYPES: dict[str, Dtype] = {
    "narrative_error": "string",
    "narrative_status": STATUS_DTYPE,
    "narrative_job_id": "string",
    "narrative_prompt_tokens": "Int64",
    "narrative_completion_tokens": "Int64",
    "narrative_total_tokens": "Int64",
}


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """How one row ended: its validated output, or why it has none.

    ``output`` is used as given (a failed row carries ``None``); ``status`` is the engine's
    word (completed, cached, failed, invalid, timeout, cancelled, interrupted, budget, skipped,
    pending), mapped by :func:`row_status` to the ``narrative_status`` column.
    """

    output: dict[str, Any] | None = None
    error: str | None = None
    job_id: str | None = None
    usage: InferenceUsage | TokenCounts | None = None
    status: str = "completed"


# The engine's word -> category code (-1: NA), so the column is built from codes: a list of
# strings through pd.Categorical costs ~5 µs a row, this ~0.3 µs.
_CODE_OF: dict[str, int] = {
    word: STATUS_CATEGORIES.index(status) for word, status in _STATUS_OF.items()
} | {"pending": -1}


def status_column(outcomes: Sequence[RowOutcome]) -> pd.Categorical:
    """``narrative_status`` for ``outcomes`` (one code per row)."""
    code_of = _CODE_OF
    codes = np.fromiter(
        (code_of[o.status] if o.status in code_of else _code(row_status(o)) for o in outcomes),
        dtype=np.int8,
        count=len(outcomes),
    )
    return pd.Categorical.from_codes(codes, dtype=STATUS_DTYPE)


def _code(status: str | None) -> int:
    return -1 if status is None else STATUS_CATEGORIES.index(status)


def row_status(outcome: RowOutcome) -> str | None:
    """The ``narrative_status`` of a row (None while it is still in flight)."""
    status = _STATUS_OF.get(outcome.status)
    if status is None and outcome.status != "pending":
        # A word this table does not know yet: say whether the row has an answer, at least.
        status = "completed" if outcome.error is None else "failed"
    return status


def output_column_names(
    df_columns: Iterable[Hashable], spec: OutputSpec, *, prefix: str = "", flatten: bool = True
) -> list[str]:
    """The names of the output columns (prefixed), in order; metadata columns not included."""
    return [prefix + column.name for column in spec.columns(flatten=flatten)]


def check_collisions(
    df_columns: Iterable[Hashable], spec: OutputSpec, *, prefix: str = "", flatten: bool = True
) -> None:
    """Raise ConfigurationError if a new column would overwrite one of ``df``'s, or another."""
    existing = list(df_columns)
    new = output_column_names(existing, spec, prefix=prefix, flatten=flatten)
    new += [prefix + name for name in METADATA_COLUMNS]
    duplicated = sorted({name for name in new if new.count(name) > 1})
    if duplicated:
        raise ConfigurationError(
            f"the output schema has a property named like a metadata column "
            f"({', '.join(map(repr, duplicated))}); rename the property"
        )
    taken = set()
    for column in existing:
        try:
            taken.add(column)
        except TypeError:  # pragma: no cover - pandas column labels are hashable
            continue
    clashes = [name for name in new if name in taken]
    if not clashes:
        return
    suggestion = _free_prefix(existing, spec, flatten=flatten, start=prefix)
    previous = any(name.endswith("narrative_error") for name in clashes)
    why = " (this frame looks like an earlier result of infer)" if previous else ""
    raise ConfigurationError(
        f"the output would overwrite existing column{'s' if len(clashes) > 1 else ''} "
        f"{', '.join(map(repr, clashes))}{why}. Pass prefix={suggestion!r} to name the new "
        f"columns {suggestion}{new[0][len(prefix) :]}, ..., or drop or rename those columns first."
    )


def _free_prefix(existing: list[Hashable], spec: OutputSpec, *, flatten: bool, start: str) -> str:
    taken = set(existing)
    names = [c.name for c in spec.columns(flatten=flatten)] + list(METADATA_COLUMNS)
    for candidate in ("ai_", "llm_", "out_", "narrative2_", *(f"run{k}_" for k in range(2, 100))):
        prefix = start + candidate if start else candidate
        if not any(prefix + name in taken for name in names):
            return prefix
    return "ai_"  # pragma: no cover - a frame with every candidate taken


def build_frame(
    df: pd.DataFrame,
    outcomes: Sequence[RowOutcome],
    spec: OutputSpec,
    *,
    prefix: str = "",
    flatten: bool = True,
) -> pd.DataFrame:
    """A new frame: ``df``'s columns, one typed column per output property, then metadata.

    ``outcomes[i]`` belongs to the row at position ``i``; the index is kept exactly and ``df``
    is never modified.
    """
    n = len(df)
    if len(outcomes) != n:
        raise ValueError(f"{len(outcomes)} outcomes for a frame of {n} rows; expected one per row")
    usages = [o.usage for o in outcomes]
    columns = RowColumns(
        outputs=[o.output for o in outcomes],
        errors=[o.error for o in outcomes],
        job_ids=[o.job_id for o in outcomes],
        prompt_tokens=[u.prompt_tokens if u is not None else None for u in usages],
        completion_tokens=[u.completion_tokens if u is not None else None for u in usages],
        total_tokens=[u.total_tokens if u is not None else None for u in usages],
        status=status_column(outcomes),
    )
    return build_frame_from_columns(df, columns, spec, prefix=prefix, flatten=flatten)


@dataclass(frozen=True, slots=True)
class RowColumns:
    """What the frame needs of each row, one list per field (position ``i`` is row ``i``)."""

    outputs: Sequence[dict[str, Any] | None]
    errors: list[str | None]
    job_ids: list[str | None]
    prompt_tokens: list[int | None]
    completion_tokens: list[int | None]
    total_tokens: list[int | None]
    status: pd.Categorical


def build_frame_from_columns(
    df: pd.DataFrame,
    columns: RowColumns,
    spec: OutputSpec,
    *,
    prefix: str = "",
    flatten: bool = True,
) -> pd.DataFrame:
    """:func:`build_frame` from per-row lists (the all-cached path builds these directly)."""
    n = len(df)
    data: dict[str, Any] = {}
    for column, values in spec.column_values(columns.outputs, flatten=flatten):
        data[prefix + column.name] = _to_array(values, column.dtype)
    meta: dict[str, list[Any]] = {
        "narrative_error": columns.errors,
        "narrative_job_id": columns.job_ids,
        "narrative_prompt_tokens": columns.prompt_tokens,
        "narrative_completion_tokens": columns.completion_tokens,
        "narrative_total_tokens": columns.total_tokens,
    }
    for name, values in meta.items():
        data[prefix + name] = _to_array(values, METADATA_DTYPES[name])
        if name == "narrative_error":  # the status sits right beside the error
            data[prefix + "narrative_status"] = columns.status
    # Both sides on a fresh RangeIndex, so concat can only pair rows by position; the caller's
    # index (duplicates, MultiIndex, ...) is put back afterwards, exactly as it was.
    positions = pd.RangeIndex(n)
    new = pd.DataFrame(data, index=positions, copy=False)
    out: pd.DataFrame = (
        pd.concat([df.set_axis(positions, axis=0), new], axis=1) if len(df.columns) else new
    )
    out.index = df.index
    if not isinstance(df.columns, pd.MultiIndex):
        out.columns.name = df.columns.name
    out.attrs = copy.deepcopy(df.attrs)
    return out


def status_codes_column(codes: np.ndarray) -> pd.Categorical:
    """``narrative_status`` from category codes (positions in STATUS_CATEGORIES; -1 is NA)."""
    return pd.Categorical.from_codes(codes.astype(np.int8, copy=False), dtype=STATUS_DTYPE)


def _to_array(values: list[Any], dtype: Dtype) -> Any:
    """``values`` as a pandas array of ``dtype``; a value that does not fit becomes NA."""
    if isinstance(dtype, pd.CategoricalDtype):  # a str among the categories, else NA
        code = {c: i for i, c in enumerate(dtype.categories) if isinstance(c, str)}.get
        codes = [code(v, -1) if type(v) is str else -1 for v in values]
        return pd.Categorical.from_codes(np.array(codes, dtype=np.int32), dtype=dtype)
    if dtype == "object":
        array = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            array[i] = value
        return array
    if values.count(None) == len(values):  # e.g. no row failed: NA by one take, not a scan
        empty = _array([], dtype=dtype)
        return empty.take(np.full(len(values), -1, dtype=np.intp), allow_fill=True)
    try:
        return _array(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        return _array([_coerce(v, dtype) for v in values], dtype=dtype)


def _coerce(value: Any, dtype: Dtype) -> Any:
    """One value for ``dtype``, or None when it does not fit (validated outputs always fit)."""
    if value is None:
        return None
    try:
        _array([value], dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        logger.debug("value %r does not fit dtype %s; using NA", value, dtype)
        return None
    return value
