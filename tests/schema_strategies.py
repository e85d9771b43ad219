"""Hypothesis strategies for JSON Schemas like the ones users give (shared by several tests)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

FORMATS = [None, "date", "date-time", "time", "email", "uri", "uuid", "ipv4", "hostname"]
PATTERNS = [
    r"^[A-Z]{3}-\d{2,4}$",
    r"^\d{5}(-\d{4})?$",
    r"[a-z]+@[a-z]+\.com",
    r"^(cat|dog|bird)$",
    r"^[^\s]{2,8}$",
    r"^\w+$",
    r"^#[0-9a-fA-F]{6}$",
    r"^[A-Za-z][A-Za-z0-9_]*$",
    r"^(?:\+?1[-. ]?)?\d{3}[-. ]?\d{4}$",
    r"^\S+ \S+$",
]
NAMES = st.sampled_from(
    ["label", "score", "summary", "confidence", "tags", "when", "city", "kind", "n", "note"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-50, 50),
    st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=6),
)


# --- schema strategies -----------------------------------------------------------------------
@st.composite
def string_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    kind = draw(st.sampled_from(["plain", "format", "pattern"]))
    if kind == "format":
        fmt = draw(st.sampled_from(FORMATS[1:]))
        schema["format"] = fmt
    elif kind == "pattern":
        schema["pattern"] = draw(st.sampled_from(PATTERNS))
    else:
        low = draw(st.integers(0, 6))
        if draw(st.booleans()):
            schema["minLength"] = low
        if draw(st.booleans()):
            schema["maxLength"] = low + draw(st.integers(0, 12))
    return schema


@st.composite
def integer_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    low = draw(st.integers(-1000, 1000))
    width = draw(st.integers(10, 300))
    if draw(st.booleans()):
        if draw(st.booleans()):
            schema["minimum"] = low
        else:
            schema["exclusiveMinimum"] = low - 1
    if draw(st.booleans()):
        if draw(st.booleans()):
            schema["maximum"] = low + width
        else:
            schema["exclusiveMaximum"] = low + width + 1
    if draw(st.booleans()):
        schema["multipleOf"] = draw(st.sampled_from([2, 3, 5]))
    return schema


@st.composite
def number_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    low = draw(st.floats(-1e4, 1e4, allow_nan=False))
    width = draw(st.floats(0.01, 1e4))
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = low + width
    if draw(st.booleans()) and width >= 2:
        schema["multipleOf"] = draw(st.sampled_from([0.5, 0.25, 1]))
    return schema


def enum_schemas() -> st.SearchStrategy[dict[str, Any]]:
    values = st.lists(SCALARS, min_size=1, max_size=5, unique_by=lambda v: json.dumps(v))
    return st.one_of(
        values.map(lambda v: {"enum": v}),
        st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4, unique=True).map(
            lambda v: {"type": "string", "enum": v}
        ),
        SCALARS.map(lambda v: {"const": v}),
    )


TYPED_LEAVES = st.one_of(
    string_schemas(),
    integer_schemas(),
    number_schemas(),
    st.just({"type": "boolean"}),
)
LEAVES = st.one_of(TYPED_LEAVES, enum_schemas(), st.just({"type": "null"}), st.just({}))


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


@st.composite
def objects(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    props = {name: draw(children) for name in names}
    schema: dict[str, Any] = {"type": "object", "properties": props}
    schema["required"] = [n for n in names if draw(st.booleans())]
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    return schema


@st.composite
def arrays(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    low = draw(st.integers(0, 3))
    schema: dict[str, Any] = {"type": "array", "minItems": low}
    if draw(st.booleans()):
        schema["maxItems"] = low + draw(st.integers(0, 3))
    if draw(st.booleans()):
        schema["items"] = {"type": "string", "minLength": 1}
        schema["uniqueItems"] = True
    else:
        schema["items"] = draw(children)
    return schema


@st.composite
def one_ofs(draw: st.DrawFn) -> dict[str, Any]:
    makers = {
        "string": string_schemas(),
        "integer": integer_schemas(),
        "boolean": st.just({"type": "boolean"}),
        "null": st.just({"type": "null"}),
        "object": st.just({"type": "object", "properties": {"x": {"type": "integer"}}}),
        "array": st.just({"type": "array", "items": {"type": "string"}}),
    }
    kinds = draw(st.lists(st.sampled_from(sorted(makers)), min_size=1, max_size=3, unique=True))
    return {"oneOf": [draw(makers[k]) for k in kinds]}


@st.composite
def all_ofs(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    if draw(st.booleans()):
        low = draw(st.integers(-50, 50))
        return {"allOf": [{"type": "integer", "minimum": low}, {"maximum": low + 20}]}
    first, second = draw(objects(children)), draw(objects(children))
    clash = set(first["properties"]) & set(second["properties"])
    for name in clash:
        del second["properties"][name]
    second["required"] = [r for r in second["required"] if r in second["properties"]]
    first.pop("additionalProperties", None)
    second.pop("additionalProperties", None)
    return {"allOf": [first, second]}


def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        objects(children),
        arrays(children),
        st.lists(children, min_size=1, max_size=3).map(lambda branches: {"anyOf": branches}),
        one_ofs(),
        all_ofs(children),
        TYPED_LEAVES.map(nullable),
        children.map(lambda s: {"anyOf": [s, {"type": "null"}]}),
    )


SCHEMAS = st.recursive(LEAVES, extend, max_leaves=12)


def hoist(schema: Any, defs: dict[str, Any], flips: list[bool]) -> Any:
    """Move object property schemas into $defs behind a $ref, as pydantic does."""
    if not isinstance(schema, dict):
        return schema
    out = {k: hoist(v, defs, flips) if k in ("items",) else v for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict):
        props = {}
        for name, sub in schema["properties"].items():
            sub = hoist(sub, defs, flips)
            if flips and flips.pop():
                key = f"D{len(defs)}"
                defs[key] = sub
                sub = {"$ref": f"#/$defs/{key}"}
            props[name] = sub
        out["properties"] = props
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            out[key] = [hoist(s, defs, flips) for s in schema[key]]
    return out


@st.composite
def root_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema = draw(objects(SCHEMAS)) if draw(st.booleans()) else draw(SCHEMAS)
    if draw(st.booleans()):
        defs: dict[str, Any] = {}
        flips = draw(st.lists(st.booleans(), max_size=8))
        schema = hoist(schema, defs, flips)
        if defs:
            schema = {**schema, "$defs": defs}
    return dict(schema)
