"""Folding a run of several jobs per row back onto the caller's rows (``samples=k``, ``compare``).

The run itself sees one block of rows per (variant, sample) (``_variants.combine``). A
:class:`Folding` turns that frame, whole or partial, into the frame the user asked for:

- samples: the majority answer per field, ``narrative_agreement`` (per field too when there
  are several) and ``narrative_samples`` (completed samples); token columns sum every sample.
- compare: every variant's output and metadata columns with the suffix ``[<variant>]``, one
  ``agreement[<field>]`` per output field, ``agreement`` (the lowest) and ``narrative_error``.

``result()``, ``partial()`` and ``attach`` all fold the same way: a row with a job still in
flight (no ``narrative_status`` yet) is pending in the folded frame too (NA answers and
agreement, ``narrative_error`` "pending") rather than a premature majority. The folding is
also what a disk cache's run record keeps (:meth:`Folding.to_record`) so that ``attach`` in a
new process returns the same shape, and it gives the progress display its per-variant rows.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._frame import METADATA_COLUMNS
from ._variant_progress import VariantBreakdown

if TYPE_CHECKING:
    from ._variants import Block

__all__ = ["AGREEMENT", "SAMPLES_DONE", "Folding", "agreement"]

AGREEMENT = "narrative_agreement"
SAMPLES_DONE = "narrative_samples"
PENDING = "pending"
TOKEN_COLUMNS = ("narrative_prompt_tokens", "narrative_completion_tokens", "narrative_total_tokens")


@dataclass(frozen=True, eq=False)
class Folding:
    """How a run's blocks of rows fold back onto the caller's frame ``df``.

    ``blocks`` holds (variant, sample) per block, in the run's order (variant ``None``: a plain
    ``samples=k`` run); ``layout`` is what ``attrs["narrative"]`` describes the result with
    (``fields``, ``variants``...).
    """

    df: pd.DataFrame
    blocks: tuple[tuple[str | None, int], ...]
    fields: tuple[str, ...]
    prefix: str
    layout: dict[str, Any]

    @classmethod
    def of(
        cls, df: pd.DataFrame, blocks: Sequence[Block], *, prefix: str, layout: dict[str, Any]
    ) -> Folding:
        """The folding of ``blocks`` (as planned) onto ``df``."""
        return cls(
            df=df,
            blocks=tuple((b.variant, b.sample) for b in blocks),
            fields=tuple(layout["fields"]),
            prefix=prefix,
            layout=layout,
        )

    @property
    def samples(self) -> int:
        """Jobs per row and variant."""
        return max(sample for _, sample in self.blocks) + 1

    @property
    def variants(self) -> list[str]:
        """The variants' names in order (empty for a plain ``samples=k`` run)."""
        return list(dict.fromkeys(v for v, _ in self.blocks if v is not None))

    def breakdown(self, row_keys: Sequence[str | None]) -> VariantBreakdown | None:
        """Rows per variant for the progress display; ``None`` without variants."""
        names = self.variants
        if not names:
            return None
        index = {name: i for i, name in enumerate(names)}
        return VariantBreakdown.of_blocks(
            names, [index[v] for v, _ in self.blocks if v is not None], row_keys
        )

    # -- the run record (attach) -----------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """Everything but the frame, as JSON-ready values (the frame is stored as a blob)."""
        layout = json.loads(json.dumps(self.layout, default=str))
        return {
            "rows": len(self.df),
            "blocks": [[variant, sample] for variant, sample in self.blocks],
            "fields": list(self.fields),
            "prefix": self.prefix,
            "layout": layout,
        }

    @classmethod
    def from_record(cls, df: pd.DataFrame, record: dict[str, Any]) -> Folding:
        """The folding :meth:`to_record` stored, onto ``df`` (the run's input frame)."""
        return cls(
            df=df,
            blocks=tuple((variant, int(sample)) for variant, sample in record["blocks"]),
            fields=tuple(record["fields"]),
            prefix=str(record["prefix"]),
            layout=dict(record["layout"]),
        )

    # -- folding ---------------------------------------------------------------------------

    def fold(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The caller's rows from the run's ``frame`` (whole or partial; its attrs hold the
        run's report)."""
        n = len(self.df)
        by_variant: dict[str | None, list[pd.DataFrame]] = {}
        for number, (variant, _) in enumerate(self.blocks):
            part = frame.iloc[number * n : (number + 1) * n].reset_index(drop=True)
            by_variant.setdefault(variant, []).append(part)
        samples = self.samples
        fields, prefix = list(self.fields), self.prefix
        folded = {
            name: parts[0] if samples == 1 else _fold_samples(parts, fields, prefix)
            for name, parts in by_variant.items()
        }
        run_report = frame.attrs.get("narrative", {})
        report = {**run_report, **copy.deepcopy(self.layout), "rows": n, "samples": samples}
        report["jobs_rows"] = len(frame)
        if list(folded) == [None]:
            outputs = folded[None]
        else:
            outputs = _side_by_side(folded, fields, prefix, report)
        df = self.df
        joined = (
            pd.concat([df.reset_index(drop=True), outputs], axis=1) if len(df.columns) else outputs
        )
        joined.index = df.index
        joined.attrs = copy.deepcopy(df.attrs)
        joined.attrs["narrative"] = report
        return joined


# ---------------------------------------------------------------------- majority and agreement


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


def _pending(frame: pd.DataFrame, prefix: str) -> np.ndarray[Any, Any]:
    """Rows whose job is still in flight (a partial frame): no ``narrative_status`` yet."""
    return frame[prefix + "narrative_status"].isna().to_numpy()


# ---------------------------------------------------------------------- samples


def _fold_samples(parts: list[pd.DataFrame], fields: list[str], prefix: str) -> pd.DataFrame:
    """One frame from the samples of one variant: majority answers, agreement, summed tokens.

    A row with a sample still in flight is pending: no answer, agreement or status yet."""
    pending = np.logical_or.reduce([_pending(p, prefix) for p in parts])
    ok = [_ok(p, prefix) & ~pending for p in parts]
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
    done = np.sum([_ok(p, prefix) for p in parts], axis=0)
    # a row with at least one completed sample has an answer, so no error
    error = prefix + "narrative_error"
    out[error] = out[error].where(done == 0).mask(pending, PENDING)
    for name in ("narrative_status", "narrative_job_id"):
        out[prefix + name] = out[prefix + name].where(~pending)
    out[prefix + SAMPLES_DONE] = pd.array(done, dtype="Int64")
    per_field = [pd.array(shares[f], dtype="Float64") for f in fields]
    out[prefix + AGREEMENT] = _lowest(per_field, [parts[0][prefix + f].dtype for f in fields])
    if len(fields) > 1:
        for name, values in zip(fields, per_field, strict=True):
            out[f"{prefix}{AGREEMENT}[{name}]"] = values
    folded: pd.DataFrame = out
    return folded


# ---------------------------------------------------------------------- compare


def _counts(part: pd.DataFrame, prefix: str) -> dict[str, int]:
    """A variant's rows by status (as the run report counts them) and its tokens."""
    status = part[prefix + "narrative_status"].astype(object)
    completed = int((status == "completed").sum())
    stopped = int((status == "stopped").sum())
    pending = int(status.isna().sum())
    return {
        "completed_rows": completed,
        "failed_rows": len(part) - completed - stopped - pending,
        "stopped_rows": stopped,
        "pending_rows": pending,
        "total_tokens": int(part[prefix + "narrative_total_tokens"].fillna(0).sum()),
    }


def _side_by_side(
    folded: dict[str | None, pd.DataFrame], fields: list[str], prefix: str, report: dict[str, Any]
) -> pd.DataFrame:
    """Each variant's columns suffixed ``[variant]``, then ``agreement[field]`` per field.

    A row some variant has not finished has no agreement yet (NA)."""
    renamed = []
    variants = report["variants"]
    for name, part in folded.items():
        renamed.append(part.rename(columns=lambda c, v=name: f"{c}[{v}]"))
        variants[name]["counts"] = _counts(part, prefix)
    out = pd.concat(renamed, axis=1)
    ok = [_ok(p, prefix) for p in folded.values()]
    unfinished = np.logical_or.reduce([_pending(p, prefix) for p in folded.values()])
    agreement_columns: dict[str, str] = {}
    per_field = []
    for name in fields:
        _, share, _ = agreement([p[prefix + name] for p in folded.values()], ok)
        column = f"{prefix}agreement[{name}]"
        out[column] = pd.Series(share, index=out.index, dtype="Float64").where(~unfinished)
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
    """Per row: ``"<variant>: <why>"`` for each variant that failed there (NA when none did);
    a row still in flight for some variant says ``"<variant>: pending"``."""
    column = prefix + "narrative_error"
    n = len(next(iter(folded.values())))
    texts: list[str | None] = [None] * n
    for name, part in folded.items():
        for row, error in enumerate(part[column].to_numpy(dtype=object)):
            if not _isna(error):
                piece = f"{name}: {error}"
                texts[row] = piece if texts[row] is None else f"{texts[row]}; {piece}"
    return pd.array(texts, dtype="string")
