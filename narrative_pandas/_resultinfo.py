"""What a result frame is made of: its output fields, variants, input columns and cache file.

``infer`` and ``compare`` record this in ``out.attrs["narrative"]`` (keys ``fields``,
``variants``, ``input_columns``, ``template_columns``, ``schema``, ``cache_path``), so
``evaluate``, ``confusion`` and ``review`` know which columns are answers and which are
metadata without the caller repeating it. A frame built by hand (no attrs) is described from
its columns and the arguments given instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ._exceptions import ConfigurationError

__all__ = ["ResultInfo", "Variant", "describe_result", "result_attrs"]

ERROR_COLUMN = "narrative_error"
STATUS_COLUMN = "narrative_status"


@dataclass(frozen=True)
class Variant:
    """One model/prompt of a result: where its answers and its error column are."""

    name: str | None
    columns: dict[str, str]
    error_column: str | None
    status_column: str | None = None
    model: str | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class ResultInfo:
    """A result frame's layout (see the module docstring)."""

    fields: list[str]
    variants: list[Variant]
    input_columns: list[Hashable] = field(default_factory=list)
    template_columns: list[Hashable] = field(default_factory=list)
    schema: dict[str, Any] | None = None
    cache_path: str | None = None
    agreement_columns: dict[str, str] = field(default_factory=dict)

    @property
    def is_comparison(self) -> bool:
        return len(self.variants) > 1 or self.variants[0].name is not None

    def field_schema(self, name: str) -> dict[str, Any] | None:
        """The JSON Schema of output column ``name`` (``parent.child`` walks nested objects)."""
        node: Any = self.schema
        for part in name.split("."):
            if not isinstance(node, Mapping):
                return None
            node = _resolve(node.get("properties", {}).get(part), self.schema)
        return dict(node) if isinstance(node, Mapping) else None


def _resolve(node: Any, root: Any) -> Any:
    """Follow a local ``$ref`` (pydantic puts enums and nested models under ``$defs``)."""
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target
    if isinstance(node, Mapping) and "anyOf" in node:  # Optional[X]: the non-null branch
        options = [
            o for o in node["anyOf"] if not (isinstance(o, Mapping) and o.get("type") == "null")
        ]
        if len(options) == 1:
            return _resolve(options[0], root)
    return node


def result_attrs(
    *,
    fields: Sequence[str],
    input_columns: Sequence[Hashable],
    template_columns: Sequence[Hashable],
    schema: Mapping[str, Any],
    cache_path: str | None,
    prefix: str = "",
) -> dict[str, Any]:
    """The layout entries ``infer`` adds to ``out.attrs["narrative"]``."""
    return {
        "fields": list(fields),
        "output_columns": {name: prefix + name for name in fields},
        "error_column": prefix + ERROR_COLUMN,
        "status_column": prefix + STATUS_COLUMN,
        "input_columns": list(input_columns),
        "template_columns": list(template_columns),
        "schema": dict(schema),
        "cache_path": cache_path,
    }


def describe_result(df: pd.DataFrame, fields: Sequence[str] | None = None) -> ResultInfo:
    """The layout of ``df``: from its attrs when ``infer``/``compare`` made it, else guessed."""
    meta = df.attrs.get("narrative") if isinstance(df.attrs, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    status = meta.get("status_column", STATUS_COLUMN)
    status = status if status in df.columns else None
    if "variants" in meta and isinstance(meta["variants"], Mapping):
        variants = [
            Variant(
                name=str(name),
                columns=dict(v["columns"]),
                error_column=v.get("error_column"),
                status_column=v.get("status_column") if v.get("status_column") in df else None,
                model=v.get("model"),
                prompt=v.get("prompt"),
            )
            for name, v in meta["variants"].items()
        ]
        all_fields = list(meta.get("fields") or variants[0].columns)
    elif "fields" in meta:
        all_fields = list(meta["fields"])
        columns = dict(meta.get("output_columns") or {f: f for f in all_fields})
        variants = [
            Variant(
                None, columns, meta.get("error_column", ERROR_COLUMN), status, meta.get("model")
            )
        ]
    else:
        if fields is None:
            raise ConfigurationError(
                "this frame does not say which columns are the model's answers (it was not "
                "returned by infer or compare, or lost its attrs); pass fields=[...] or a "
                "mapping {output column: truth column} as truth."
            )
        all_fields = list(fields)
        error = ERROR_COLUMN if ERROR_COLUMN in df.columns else None
        variants = [Variant(None, {f: f for f in all_fields}, error, status)]
    chosen = list(fields) if fields is not None else all_fields
    unknown = [f for f in chosen if f not in all_fields]
    if unknown:
        raise ConfigurationError(
            f"unknown output field(s) {', '.join(map(repr, unknown))}; this result has "
            f"{', '.join(map(repr, all_fields))}."
        )
    for variant in variants:
        missing = [c for f, c in variant.columns.items() if f in chosen and c not in df.columns]
        if missing:
            raise ConfigurationError(
                f"column(s) {', '.join(map(repr, missing))} are not in the frame; select the "
                "answer columns too, or pass fields=[...] naming the columns that are there."
            )
    return ResultInfo(
        fields=chosen,
        variants=variants,
        input_columns=list(meta.get("input_columns") or []),
        template_columns=list(meta.get("template_columns") or []),
        schema=meta.get("schema"),
        cache_path=meta.get("cache_path"),
        agreement_columns=dict(meta.get("agreement_columns") or {}),
    )


def usable_rows(df: pd.DataFrame, variant: Variant) -> pd.Series:
    """True where the variant's row completed: no error (and status completed, where known)."""
    ok = pd.Series(True, index=df.index)
    if variant.error_column is not None and variant.error_column in df.columns:
        ok &= df[variant.error_column].isna().to_numpy()
    if variant.status_column is not None and variant.status_column in df.columns:
        ok &= (df[variant.status_column].astype("string") == "completed").fillna(False).to_numpy()
    result: pd.Series = ok
    return result
