"""Several requests per row in one run: ``samples=k`` and ``compare`` (models x prompts).

Each (variant, sample) is planned like an ordinary run (so every check still raises before a
request), then the plans are laid end to end into one :class:`RunPlan`: one engine, one cache,
one concurrency limit and one progress display for all of them. The run's frame (one block of
rows per plan) is folded back onto the caller's rows when it finishes:

- samples: sample ``s > 0`` of a request has its own key (the request's key and ``s``, hashed)
  and the tag ``npd-sample-<s>``, so identical-request dedupe, the cache and the journal keep
  the samples apart; sample 0 is the plain request (a ``samples=1`` result is reused). The
  majority answer per field is returned, with ``narrative_agreement``.
- compare: every variant's output and metadata columns get the suffix ``[<variant>]``; one
  ``agreement[<field>]`` column per output field follows.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._exceptions import ConfigurationError
from ._frame import METADATA_COLUMNS
from ._plan import RunPlan

if TYPE_CHECKING:
    from ._run import Run

__all__ = [
    "SAMPLE_TAG_PREFIX",
    "Block",
    "agreement",
    "check_samples",
    "combine",
    "fold",
    "sample_plan",
]

SAMPLE_TAG_PREFIX = "npd-sample-"
AGREEMENT = "narrative_agreement"
SAMPLES_DONE = "narrative_samples"
TOKEN_COLUMNS = ("narrative_prompt_tokens", "narrative_completion_tokens", "narrative_total_tokens")


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
    """One plan running every block's requests: rows laid end to end, identical keys shared."""
    first = blocks[0].plan
    n = len(first.row_keys)
    row_keys: list[str | None] = []
    skipped: dict[int, str] = {}
    requests: dict[str, Any] = {}
    for number, block in enumerate(blocks):
        row_keys.extend(block.plan.row_keys)
        skipped.update({number * n + p: why for p, why in block.plan.skipped.items()})
        for request in block.plan.requests:
            known = requests.get(request.key)
            requests[request.key] = (
                request
                if known is None
                else dataclasses.replace(known, rows=known.rows + request.rows)
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


# ---------------------------------------------------------------------- folding the result


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _majority(values: list[Any]) -> tuple[Any, int]:
    """The most common answer (ties: the one seen first) and how many gave it."""
    counts = Counter(_hashable(v) for v in values)
    best = max(counts.values())
    for value in values:
        if counts[_hashable(value)] == best:
            return value, best
    raise AssertionError("unreachable")  # pragma: no cover


def agreement(
    columns: Sequence[pd.Series], ok: Sequence[np.ndarray[Any, Any]]
) -> tuple[list[Any], list[Any], list[int]]:
    """Per row: the majority value, the share agreeing with it, and which input gave it first.

    Only inputs marked ok on a row (completed, with an answer) vote; NA where none did.
    """
    n = len(columns[0])
    values = [c.to_numpy(dtype=object) for c in columns]
    winners: list[Any] = [None] * n
    shares: list[Any] = [None] * n
    first: list[int] = [-1] * n
    for row in range(n):
        voters = [i for i in range(len(columns)) if ok[i][row] and not _isna(values[i][row])]
        if not voters:
            continue
        votes = [values[i][row] for i in voters]
        winner, count = _majority(votes)
        winners[row] = winner
        shares[row] = count / len(voters)
        key = _hashable(winner)
        first[row] = next(i for i in voters if _hashable(values[i][row]) == key)
    return winners, shares, first


def _lowest(per_field: Sequence[Any], dtypes: Sequence[Any]) -> Any:
    """The row's overall agreement: the lowest over its fields. Fractional number fields are
    left out (unless all fields are), since two answers rarely match to the last digit."""
    chosen = [
        v for v, d in zip(per_field, dtypes, strict=True) if not pd.api.types.is_float_dtype(d)
    ]
    overall = pd.array((chosen or list(per_field))[0], dtype="Float64")
    for values in (chosen or list(per_field))[1:]:
        overall = np.minimum(overall, pd.array(values, dtype="Float64"))
    return pd.array(overall, dtype="Float64")


def _isna(value: Any) -> bool:
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return False
    return bool(pd.isna(value))


def _ok(frame: pd.DataFrame, prefix: str) -> np.ndarray[Any, Any]:
    return frame[prefix + "narrative_error"].isna().to_numpy()


def _fold_samples(parts: list[pd.DataFrame], fields: list[str], prefix: str) -> pd.DataFrame:
    """One frame from the samples of one variant: majority answers, agreement, summed tokens."""
    ok = [_ok(p, prefix) for p in parts]
    out = pd.DataFrame(index=parts[0].index)
    chosen = np.full(len(out), -1)
    shares: dict[str, list[Any]] = {}
    for name in fields:
        column = prefix + name
        winners, share, first = agreement([p[column] for p in parts], ok)
        out[column] = pd.Series(winners, index=out.index, dtype=object).astype(
            parts[0][column].dtype
        )
        shares[name] = share
        chosen = np.where(chosen < 0, np.asarray(first), chosen)
    for name in METADATA_COLUMNS:
        column = prefix + name
        if name in TOKEN_COLUMNS:
            total = parts[0][column].fillna(0)
            for other in parts[1:]:
                total = total + other[column].fillna(0)
            seen = np.logical_or.reduce([p[column].notna().to_numpy() for p in parts])
            out[column] = total.where(seen).astype("Int64")
        else:
            picks = [parts[c if c >= 0 else 0][column].iloc[r] for r, c in enumerate(chosen)]
            out[column] = pd.Series(picks, index=out.index, dtype=object).astype(
                parts[0][column].dtype
            )
    done = np.sum(ok, axis=0)
    # a row with at least one completed sample has an answer, so no error
    out[prefix + "narrative_error"] = out[prefix + "narrative_error"].where(done == 0)
    out[prefix + SAMPLES_DONE] = pd.array(done, dtype="Int64")
    per_field = [pd.array(shares[f], dtype="Float64") for f in fields]
    out[prefix + AGREEMENT] = _lowest(per_field, [parts[0][prefix + f].dtype for f in fields])
    if len(fields) > 1:
        for name, values in zip(fields, per_field, strict=True):
            out[f"{prefix}{AGREEMENT}[{name}]"] = values
    folded: pd.DataFrame = out
    return folded


def fold(
    df: pd.DataFrame,
    blocks: Sequence[Block],
    *,
    fields: list[str],
    prefix: str,
    layout: dict[str, Any],
) -> Callable[[Run, pd.DataFrame], pd.DataFrame]:
    """The ``on_finish`` that turns the combined run's frame back into the caller's rows."""
    n = len(df)

    def finish(run: Run, fresh: pd.DataFrame) -> pd.DataFrame:
        by_variant: dict[str | None, list[pd.DataFrame]] = {}
        for number, block in enumerate(blocks):
            part = fresh.iloc[number * n : (number + 1) * n].reset_index(drop=True)
            by_variant.setdefault(block.variant, []).append(part)
        samples = max(b.sample for b in blocks) + 1
        folded = {
            name: parts[0] if samples == 1 else _fold_samples(parts, fields, prefix)
            for name, parts in by_variant.items()
        }
        report = {**run.report, **copy.deepcopy(layout), "rows": n, "samples": samples}
        report["jobs_rows"] = len(fresh)
        if list(folded) == [None]:
            outputs = folded[None]
        else:
            outputs = _side_by_side(folded, fields, prefix, report)
        joined = (
            pd.concat([df.reset_index(drop=True), outputs], axis=1) if len(df.columns) else outputs
        )
        joined.index = df.index
        joined.attrs = copy.deepcopy(df.attrs)
        joined.attrs["narrative"] = report
        return joined

    return finish


def _side_by_side(
    folded: dict[str | None, pd.DataFrame], fields: list[str], prefix: str, report: dict[str, Any]
) -> pd.DataFrame:
    """Each variant's columns suffixed ``[variant]``, then ``agreement[field]`` per field."""
    renamed = []
    variants = report["variants"]
    for name, part in folded.items():
        renamed.append(part.rename(columns=lambda c, v=name: f"{c}[{v}]"))
        info = variants[name]
        error = part[prefix + "narrative_error"]
        info["counts"] = {
            "completed_rows": int(error.isna().sum()),
            "failed_rows": int(error.notna().sum()),
            "total_tokens": int(part[prefix + "narrative_total_tokens"].fillna(0).sum()),
        }
    out = pd.concat(renamed, axis=1)
    ok = [_ok(p, prefix) for p in folded.values()]
    agreement_columns: dict[str, str] = {}
    per_field = []
    for name in fields:
        _, share, _ = agreement([p[prefix + name] for p in folded.values()], ok)
        column = f"{prefix}agreement[{name}]"
        out[column] = pd.array(share, dtype="Float64")
        agreement_columns[name] = column
        per_field.append(out[column])
    dtypes = [next(iter(folded.values()))[prefix + f].dtype for f in fields]
    out[prefix + "agreement"] = _lowest(per_field, dtypes)
    out[prefix + "narrative_error"] = _any_error(folded, prefix)
    report["agreement_columns"] = agreement_columns
    report["agreement_column"] = prefix + "agreement"
    result: pd.DataFrame = out
    return result


def _any_error(folded: dict[str | None, pd.DataFrame], prefix: str) -> Any:
    """Per row: ``"<variant>: <why>"`` for each variant that failed there (NA when none did)."""
    column = prefix + "narrative_error"
    n = len(next(iter(folded.values())))
    texts: list[str | None] = [None] * n
    for name, part in folded.items():
        for row, error in enumerate(part[column].to_numpy(dtype=object)):
            if not _isna(error):
                piece = f"{name}: {error}"
                texts[row] = piece if texts[row] is None else f"{texts[row]}; {piece}"
    return pd.array(texts, dtype="string")
