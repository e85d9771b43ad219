"""Few-shot turns from labelled rows: ``infer(..., examples=labelled_df)``.

Each example row becomes the template's own turns rendered from that row (system turns aside),
then an ``assistant`` turn holding its answer as JSON, placed after the system message and ahead
of the row's own turns. Everything is checked before a request exists: the template's columns,
the output fields, and every answer against the output schema.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd

from ._exceptions import ConfigurationError, TemplateError
from ._models import InferenceMessage
from ._schema import OutputSpec
from ._template import BoundTemplates

__all__ = ["example_turns", "plain"]

_MAX_SHOWN = 5


def plain(value: Any) -> Any:
    """A JSON-ready value: numpy/pandas scalars and arrays made plain, NA made None."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _answer(row: pd.Series, spec: OutputSpec, has: set[Hashable]) -> dict[str, Any]:
    """The example's answer object, from top-level or flattened ``parent.child`` columns."""
    answer: dict[str, Any] = {}
    for column in spec.columns(flatten=True):
        name = column.name
        source = (
            name if name in has else ".".join(column.path[:1]) if column.path[0] in has else None
        )
        if source is None:
            continue
        value = plain(row[source])
        if source == name and len(column.path) > 1:
            node = answer
            for part in column.path[:-1]:
                node = node.setdefault(part, {})
            if value is not None:
                node[column.path[-1]] = value
        elif value is not None:
            answer[column.path[0]] = value
    return answer


def example_turns(examples: Any, bound: BoundTemplates, spec: OutputSpec) -> list[InferenceMessage]:
    """The few-shot turns for ``examples``, in the frame's order; raises on any bad example."""
    if not isinstance(examples, pd.DataFrame):
        raise ConfigurationError(
            f"examples= must be a DataFrame with the template's columns and the output fields "
            f"(e.g. review.apply(out) filtered to reviewed rows); got {type(examples).__name__}."
        )
    if examples.empty:
        raise ConfigurationError("examples= is empty; pass at least one labelled row, or None.")
    has: set[Hashable] = set(examples.columns)
    fields = [c for c in spec.columns(flatten=True)]
    missing_fields = [c.name for c in fields if c.name not in has and c.path[0] not in has]
    required = set(spec.schema.get("required", []))
    missing_required = [n for n in missing_fields if n.split(".")[0] in required]
    try:
        rendered = bound.templates.bind(list(examples.columns)).render(examples, missing="empty")
    except TemplateError as exc:
        raise ConfigurationError(
            f"examples= lacks a column the template uses: {exc}. Give the examples the same "
            "input columns as the frame being labelled."
        ) from None
    if missing_required:
        raise ConfigurationError(
            f"examples= has no column for the output field(s) "
            f"{', '.join(map(repr, missing_required))}; add the labelled answers as columns "
            "named like the output fields."
        )
    turns: list[InferenceMessage] = []
    problems: list[str] = []
    for (label, row), messages in zip(examples.iterrows(), rendered, strict=True):
        answer = _answer(row, spec, has)
        valid, why = spec.validate(answer)
        if valid is None:
            problems.append(f"row {label!r}: {why}")
            continue
        assert not isinstance(messages, str)  # missing="empty" never skips
        turns.extend(
            InferenceMessage.model_construct(role=m.role, text=m.text)
            for m in messages
            if m.role != "system"
        )
        text = json.dumps(valid, ensure_ascii=False, separators=(", ", ": "))
        turns.append(InferenceMessage.model_construct(role="assistant", text=text))
    if problems:
        shown = "; ".join(problems[:_MAX_SHOWN])
        more = f" (and {len(problems) - _MAX_SHOWN} more)" if len(problems) > _MAX_SHOWN else ""
        raise ConfigurationError(
            f"{len(problems)} example answer(s) do not follow the output schema: {shown}{more}. "
            "Fix or drop those rows of examples=."
        )
    return turns
