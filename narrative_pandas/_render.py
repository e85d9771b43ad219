"""Rendering a frame's rows column-wise: what 100,000 rows cost is a few passes over lists.

Each placeholder's column is turned into text once (a string column as it is, an integer column
by one conversion, anything else value by value per its spec), each turn's texts are built in
one pass that concatenates literal chunks and column texts, and the result stays columnar
(:class:`RenderedColumns`): a turn is a list of texts, or one text every row shares (a template
without placeholders, a few-shot example). Per-row ``(role, text)`` tuples are made only for
the callers that ask for them (:meth:`RenderedColumns.turns`, :meth:`RenderedColumns.row`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._exceptions import TemplateError

if TYPE_CHECKING:
    from ._template import BoundTemplates, FieldRef, Placeholder, Template

__all__ = ["CONVERSIONS", "RenderedColumns", "Turns", "render_columns"]

CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}

Turns = tuple[tuple[str, str], ...]
"""A row's rendered messages as ``(role, text)`` pairs."""


def pair_turns(roles: tuple[str, ...], texts: str | tuple[str, ...]) -> Turns:
    """A row's ``(role, text)`` pairs from its roles and texts (a bare string: one turn)."""
    if isinstance(texts, str):
        return ((roles[0], texts),)
    return tuple(zip(roles, texts, strict=True))


@dataclass(frozen=True)
class RenderedColumns:
    """Every row's turns, column-wise: per turn, a text per row or one text for every row.

    ``skipped`` maps the position of each row ``missing="skip"`` left out to why; such a row's
    entries in ``texts`` are placeholders (its missing values rendered as "") and never sent.
    """

    rows: int
    roles: tuple[str, ...]
    texts: tuple[list[str] | str, ...]
    skipped: dict[int, str]

    def row(self, position: int) -> Turns:
        """The turns of the row at ``position``."""
        return pair_turns(self.roles, self.texts_at(position))

    def rows_at(self, positions: Sequence[int]) -> list[Turns]:
        """The turns of the rows at ``positions``, in one pass per turn."""
        roles = self.roles
        return [pair_turns(roles, texts) for texts in self.texts_of(positions)]

    def texts_at(self, position: int) -> str | tuple[str, ...]:
        """The texts of the row at ``position``: a bare string for a single turn (what a
        :class:`~._job_request.JobRequest` keeps beside the shared roles)."""
        if len(self.texts) == 1:
            text = self.texts[0]
            return text if isinstance(text, str) else text[position]
        return tuple(text if isinstance(text, str) else text[position] for text in self.texts)

    def texts_of(self, positions: Sequence[int]) -> Sequence[str | tuple[str, ...]]:
        """:meth:`texts_at` of each of ``positions``, in one pass per turn."""
        columns = [
            [text] * len(positions) if isinstance(text, str) else [text[p] for p in positions]
            for text in self.texts
        ]
        if len(columns) == 1:
            return columns[0]
        return list(zip(*columns, strict=True))

    def turns(self) -> list[Turns | str]:
        """One entry per row: its turns, or the reason it was skipped."""
        turns: list[Turns | str] = list(self.rows_at(range(self.rows)))
        for position, reason in self.skipped.items():
            turns[position] = reason
        return turns

    def with_turns(self, pairs: Turns) -> RenderedColumns:
        """Every row with ``pairs`` after its leading system turns (few-shot examples)."""
        head = 0
        while head < len(self.roles) and self.roles[head] == "system":
            head += 1
        return replace(
            self,
            roles=(*self.roles[:head], *(role for role, _ in pairs), *self.roles[head:]),
            texts=(*self.texts[:head], *(text for _, text in pairs), *self.texts[head:]),
        )

    def lengths(self) -> np.ndarray:
        """Characters of each row's turns together (skipped rows included)."""
        total = np.zeros(self.rows, dtype=np.int64)
        for text in self.texts:
            if isinstance(text, str):
                total += len(text)
            else:
                total += np.fromiter(map(len, text), dtype=np.int64, count=self.rows)
        return total


def render_columns(bound: BoundTemplates, df: pd.DataFrame, missing: str) -> RenderedColumns:
    """Render every row of ``df`` (whose columns ``bound`` was bound to) column-wise."""
    masks: dict[int, np.ndarray] = {}
    columns: dict[int, pd.Series] = {}
    for turn_positions in bound.positions:
        for pos in turn_positions:
            if pos not in masks:
                column = df.iloc[:, pos]
                columns[pos] = column
                masks[pos] = np.asarray(column.isna(), dtype=bool)
    strings: dict[tuple[int, str, str | None], list[str]] = {}
    texts: list[list[str] | str] = []
    for (_, template), placeholders, turn_positions in zip(
        bound.templates.turns, bound.placeholders, bound.positions, strict=True
    ):
        static = template.static_text
        if static is not None:
            texts.append(static)
            continue
        parts: list[list[str]] = []
        for ref, ph, pos in zip(template.fields, placeholders, turn_positions, strict=True):
            key = (pos, ph.spec, ph.conversion)
            if key not in strings:
                strings[key] = _column_texts(columns[pos], masks[pos], ph, ref, template, df.index)
            parts.append(strings[key])
        texts.append(_join(template.literals, parts))
    skipped: dict[int, str] = {}
    if missing == "skip" and masks:
        gaps = np.logical_or.reduce(list(masks.values()))
        for i in np.flatnonzero(gaps).tolist():
            skipped[i] = _skip_reason([bound.columns[p] for p, mask in masks.items() if mask[i]])
    roles = tuple(role for role, _ in bound.templates.turns)
    return RenderedColumns(rows=len(df), roles=roles, texts=tuple(texts), skipped=skipped)


def _join(literals: Sequence[str], parts: Sequence[list[str]]) -> list[str]:
    """Each row's text: ``literals[0] + parts[0][i] + literals[1] + ...`` (one pass per part)."""
    first, after = literals[0], literals[1]
    joined = [first + text + after for text in parts[0]] if first or after else parts[0]
    for part, literal in zip(parts[1:], literals[2:], strict=True):
        joined = [done + text + literal for done, text in zip(joined, part, strict=True)]
    return joined


def _column_texts(
    column: pd.Series,
    mask: np.ndarray,
    ph: Placeholder,
    ref: FieldRef,
    template: Template,
    index: pd.Index,
) -> list[str]:
    """Every row's value of one column as text, per the placeholder's conversion and spec."""
    spec = ph.spec
    convert = CONVERSIONS[ph.conversion] if ph.conversion else None
    if convert is None and not spec:
        if isinstance(column.dtype, pd.StringDtype):  # every value is a str, or missing
            texts: list[str] = column.fillna("").tolist() if mask.any() else column.tolist()
            return texts
        if isinstance(column.dtype, np.dtype) and column.dtype.kind in "iu":  # never missing
            texts = column.astype(str).tolist()
            return texts
        return [
            "" if m else (v if type(v) is str else str(v))
            for v, m in zip(column.tolist(), mask.tolist(), strict=True)
        ]
    values = column.tolist()
    flags = mask.tolist()
    try:
        if convert is None:
            return ["" if m else format(v, spec) for v, m in zip(values, flags, strict=True)]
        return ["" if m else format(convert(v), spec) for v, m in zip(values, flags, strict=True)]
    except (ValueError, TypeError):
        _raise_format_error(values, flags, ph, ref, template, index)
        raise  # pragma: no cover - the failing row is always found above


def _skip_reason(columns: list[Hashable]) -> str:
    if len(columns) == 1:
        return f"skipped: missing value in column {columns[0]!r}"
    return "skipped: missing values in columns " + ", ".join(repr(c) for c in columns)


def _raise_format_error(
    values: list[Any],
    mask: list[bool],
    ph: Placeholder,
    ref: FieldRef,
    template: Template,
    index: pd.Index,
) -> None:
    """Find the first row whose value the spec cannot format and raise a TemplateError for it."""
    convert = CONVERSIONS[ph.conversion] if ph.conversion else None
    for i, (v, m) in enumerate(zip(values, mask, strict=True)):
        if m:
            continue
        try:
            format(convert(v) if convert else v, ph.spec)
        except (ValueError, TypeError) as exc:
            raise TemplateError(
                f"cannot format column {ph.column!r} with the format spec {ph.spec!r} "
                f"(placeholder {ref} in {template.description}) at row {index[i]!r}: "
                f"value {_value_repr(v)} ({type(v).__name__}): {exc}",
                placeholder=str(ref),
                template=template.text,
            ) from exc


def _value_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
