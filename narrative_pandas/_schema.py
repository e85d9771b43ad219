"""The output spec: what each answer must look like, and which typed columns it becomes.

``output=`` is a pydantic model class or a JSON Schema dict. This module turns it into the
``output_format_schema`` that is sent, checks that schema before anything is paid for (a typo'd
keyword such as ``"propertes"`` is silently ignored by JSON Schema, so it is an error here),
validates each job's answer, and derives one pandas dtype per output column.

``jsonschema`` is imported only when it is needed (its import costs over a second where Jupyter
is installed): ``_quickmeta`` says yes to the usual schemas and ``_quickcheck`` to their valid
answers; a pydantic model validates its own answers; jsonschema judges the rest and writes every
message.


===========================================  ==============================================
schema                                       column dtype
===========================================  ==============================================
``integer``                                  ``Int64``
``number``                                   ``Float64``
``boolean``                                  ``boolean``
``string``                                   ``string``
string ``enum`` / ``const`` (Literal, Enum)  ``category``, categories in schema order
``anyOf [T, null]``, ``type [T, "null"]``    as ``T``
nested object with ``properties``            one column per leaf, ``parent.child``
arrays, free-form objects, anything else     ``object``
===========================================  ==============================================
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from ._exceptions import SchemaError
from ._quickcheck import compile_quick_check
from ._quickmeta import surely_valid_schema

if TYPE_CHECKING:  # jsonschema is imported only when a schema or an answer needs it
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError as JSONSchemaSchemaError
    from jsonschema.exceptions import ValidationError as JSONSchemaValidationError

__all__ = ["KNOWN_KEYWORDS", "OutputColumn", "OutputSpec"]

logger = logging.getLogger("narrative_pandas")

Dtype = str | pd.api.extensions.ExtensionDtype

JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")

# Draft 2020-12 vocabularies, plus what pydantic and OpenAPI emit and earlier drafts' names.
KNOWN_KEYWORDS: frozenset[str] = frozenset(
    {
        # core
        "$schema", "$id", "$ref", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary",
        "$comment", "$defs",
        # applicator
        "prefixItems", "items", "contains", "additionalProperties", "properties",
        "patternProperties", "dependentSchemas", "propertyNames", "if", "then", "else",
        "allOf", "anyOf", "oneOf", "not",
        # unevaluated
        "unevaluatedItems", "unevaluatedProperties",
        # validation
        "type", "const", "enum", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
        "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
        "uniqueItems", "maxContains", "minContains", "maxProperties", "minProperties",
        "required", "dependentRequired",
        # meta-data, format, content
        "title", "description", "default", "deprecated", "readOnly", "writeOnly", "examples",
        "format", "contentEncoding", "contentMediaType", "contentSchema",
        # earlier drafts, pydantic and OpenAPI
        "definitions", "dependencies", "additionalItems", "$recursiveRef", "$recursiveAnchor",
        "id", "example", "nullable", "discriminator",
    }
)  # fmt: skip

_SCHEMA_VALUED = frozenset(
    {
        "additionalProperties", "items", "contains", "propertyNames", "if", "then", "else",
        "not", "unevaluatedItems", "unevaluatedProperties", "contentSchema", "additionalItems",
    }
)  # fmt: skip
_SCHEMA_LISTS = frozenset({"prefixItems", "allOf", "anyOf", "oneOf"})
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "dependentSchemas", "$defs", "definitions"}
)
# Keywords a typo is checked against: the $-keywords only match their exact unprefixed
# spelling ("ref", "defs"), so custom annotations such as "comment" or "id" stay allowed.
_TYPO_TARGETS = sorted(k for k in KNOWN_KEYWORDS if not k.startswith("$"))
_DOLLAR_TYPOS = {"ref": "$ref", "defs": "$defs"}
_TYPO_CUTOFF = 0.75
_MESSAGE_LIMIT = 200


@dataclass(frozen=True)
class OutputColumn:
    """One output column: its name, its path in the answer, and its pandas dtype."""

    name: str
    path: tuple[str, ...]
    dtype: Dtype


class OutputSpec:
    """A checked output schema: what is sent, how answers are validated, which columns result."""

    schema: dict[str, Any]
    model: type[BaseModel] | None

    def __init__(self, schema: dict[str, Any], model: type[BaseModel] | None = None) -> None:
        _check_schema(schema)
        self.schema = schema
        self.model = model
        self._validator: Draft202012Validator | None = None
        self._quick_check = compile_quick_check(schema)
        self._columns: dict[bool, list[OutputColumn]] = {}

    @classmethod
    def from_output(cls, output: type[BaseModel] | Mapping[str, Any]) -> OutputSpec:
        """Build the spec from a pydantic model class or a JSON Schema dict.

        Raises :class:`SchemaError` (naming the bad keyword and where it is) for a schema the
        service cannot use, and :class:`TypeError` for an ``output`` of the wrong kind.
        """
        if isinstance(output, OutputSpec):
            return output
        if isinstance(output, type) and issubclass(output, BaseModel):
            try:
                schema = output.model_json_schema()
            except Exception as exc:  # pydantic raises several kinds here
                raise SchemaError(
                    f"cannot build a JSON Schema from the pydantic model {output.__name__}: "
                    f"{exc}. Use field types pydantic can describe in JSON Schema "
                    "(str, int, float, bool, Literal, Enum, lists, nested models).",
                ) from exc
            return cls(schema, output)
        if isinstance(output, Mapping):
            return cls(copy.deepcopy(dict(output)), None)
        raise TypeError(_wrong_output_message(output))

    def __repr__(self) -> str:
        what = self.model.__name__ if self.model is not None else "JSON Schema"
        try:
            names = ", ".join(c.name for c in self.columns())
        except SchemaError:
            names = ", ".join(map(str, self.schema.get("properties", {})))
        return f"OutputSpec({what}: {names})"

    # ------------------------------------------------------------------ validation

    def validate(self, value: Any) -> tuple[dict[str, Any] | None, str | None]:
        """``(normalised output, None)`` when ``value`` follows the schema, else ``(None, why)``.

        A JSON string is parsed first. With a pydantic model the output is
        ``model_validate(value).model_dump(mode="json", by_alias=True)``.
        """
        if value is None:
            return None, "the job returned no output (structured_output is null)"
        if isinstance(value, (str, bytes, bytearray)):
            try:
                value = json.loads(value)
            except ValueError:
                return None, f"output is not JSON: {_clip(repr(value))}"
        if self.model is not None:
            try:
                instance = self.model.model_validate(value)
            except PydanticValidationError as exc:
                return None, _pydantic_message(exc)
            return instance.model_dump(mode="json", by_alias=True), None
        if self._quick_check is not None and type(value) is dict and self._quick_check(value):
            return value, None
        from jsonschema.exceptions import best_match

        if self._validator is None:
            from jsonschema import Draft202012Validator

            self._validator = Draft202012Validator(self.schema)
        error = best_match(self._validator.iter_errors(value))
        if error is not None:
            return None, _instance_message(error)
        if not isinstance(value, dict):  # pragma: no cover - the top level is an object
            return None, f"output is not a JSON object: {_clip(repr(value))}"
        return value, None

    # ------------------------------------------------------------------ columns

    def columns(self, *, flatten: bool = True) -> list[OutputColumn]:
        """The output columns, in schema order; nested objects become ``parent.child``."""
        if flatten not in self._columns:
            self._columns[flatten] = _Columns(self.schema, flatten).build()
        return list(self._columns[flatten])

    def column_values(
        self, outputs: Sequence[Mapping[str, Any] | None], *, flatten: bool = True
    ) -> list[tuple[OutputColumn, list[Any]]]:
        """Each output column with its values, one per output (None where absent or missing)."""
        level: dict[tuple[str, ...], list[Any]] = {(): list(outputs)}
        result: list[tuple[OutputColumn, list[Any]]] = []
        for column in self.columns(flatten=flatten):
            for depth in range(1, len(column.path) + 1):
                path = column.path[:depth]
                if path not in level:
                    key = path[-1]
                    level[path] = [
                        v.get(key) if type(v) is dict else None if v is None else _get(v, key)
                        for v in level[path[:-1]]
                    ]
            result.append((column, level[column.path]))
        return result


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, Mapping) else None


def _wrong_output_message(output: Any) -> str:
    usage = (
        "output= must be a pydantic model class (class Sentiment(BaseModel): label: "
        "Literal['positive', 'negative']) or a JSON Schema dict ({'type': 'object', "
        "'properties': {...}})"
    )
    if output is None:
        return usage + "; got None."
    if isinstance(output, BaseModel):
        return f"{usage}; got an instance of {type(output).__name__}: pass the class itself."
    if isinstance(output, type):
        return (
            f"{usage}; got the class {output.__name__}, which is not a pydantic model: "
            "declare its fields on a pydantic BaseModel."
        )
    if isinstance(output, (str, bytes)):
        return f"{usage}; got a {type(output).__name__}: if it is JSON text, pass json.loads(it)."
    return f"{usage}; got {type(output).__name__}."


# ---------------------------------------------------------------------- schema checks


def _where(path: Sequence[str | int]) -> str:
    """``properties.label`` / ``properties.a.anyOf[0]``; "" for the top level."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _at(where: str) -> str:
    return f"at {where}" if where else "at the top level"


def _check_schema(schema: Any) -> None:
    """Raise SchemaError for anything that would make the service refuse or ignore the schema."""
    if not isinstance(schema, Mapping):
        raise SchemaError(
            f"the output schema must be a JSON object (a dict), got {type(schema).__name__}"
        )
    try:
        json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(
            f"the output schema must be plain JSON (dicts, lists, strings, numbers, booleans, "
            f"None): {exc}"
        ) from exc
    if not surely_valid_schema(schema):
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError as JSONSchemaSchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except JSONSchemaSchemaError as exc:
            raise _metaschema_error(exc) from None
    _Walker(schema).walk(schema, [])
    _check_top_level(schema)


def _next_state(keyword: str) -> str:
    """What the path segment after ``keyword`` is: a name, an index, a subschema or a value."""
    if keyword in _SCHEMA_MAPS:
        return "name"
    if keyword in _SCHEMA_LISTS:
        return "index"
    if keyword in _SCHEMA_VALUED:
        return "schema"
    return "value"


def _metaschema_error(err: JSONSchemaSchemaError) -> SchemaError:
    """A SchemaError naming the keyword of the schema that the meta-schema rejected."""
    location: list[str | int] = []
    keyword: str | None = None
    state = "keyword"
    for part in err.absolute_path:
        if state == "keyword":
            keyword = str(part)
            state = _next_state(keyword)
        elif state in ("name", "index"):
            assert keyword is not None
            location += [keyword, part]
            keyword = None
            state = "keyword"
        elif state == "schema":
            assert keyword is not None
            location.append(keyword)
            keyword = str(part)
            state = _next_state(keyword)
        # state == "value": inside a keyword's value, e.g. required[0]; the keyword is known
    where = _where(location)
    if keyword is None:
        # The subschema itself is not a schema: e.g. "properties": {"label": "string"}.
        parent = location[-2] if len(location) >= 2 else None
        return SchemaError(
            f"the output schema is invalid {_at(where)}: {_clip(err.message)}; a schema must "
            'be an object such as {"type": "string"}',
            keyword=None if parent is None else str(parent),
            path=where,
        )
    if keyword == "type":
        return _bad_type_error(err.instance, where)
    return SchemaError(
        f'the output schema is invalid {_at(where)}: "{keyword}": {_clip(err.message)}',
        keyword=keyword,
        path=where,
    )


def _bad_type_error(value: Any, where: str) -> SchemaError:
    names = value if isinstance(value, list) else [value]
    bad = [v for v in names if v not in JSON_TYPES]
    hint = ""
    if bad and isinstance(bad[0], str):
        close = difflib.get_close_matches(bad[0].lower(), JSON_TYPES, n=1, cutoff=0.6)
        if close:
            hint = f' (did you mean "{close[0]}"?)'
    shown = json.dumps(value) if _jsonable(value) else repr(value)
    return SchemaError(
        f'the output schema is invalid {_at(where)}: "type": {shown} is not a JSON Schema '
        f"type{hint}. Types are: {', '.join(JSON_TYPES)}",
        keyword="type",
        path=where,
    )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class _Walker:
    """Walks every subschema: typo'd keywords, dangling $refs, impossible enums and requireds."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def walk(self, node: Any, path: list[str | int]) -> None:
        if not isinstance(node, Mapping):
            return
        where = _where(path)
        for key in node:
            if not isinstance(key, str):
                raise SchemaError(
                    f"the output schema has a non-string key {key!r} {_at(where)}",
                    keyword=str(key),
                    path=where,
                )
            if key not in KNOWN_KEYWORDS and not key.startswith("x-"):
                self._unknown(key, where)
        self._check_values(node, where)
        for key, value in node.items():
            if key in _SCHEMA_VALUED:
                self.walk(value, [*path, key])
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                for k, item in enumerate(value):
                    self.walk(item, [*path, key, k])
            elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
                for name, item in value.items():
                    self.walk(item, [*path, key, name])

    def _unknown(self, key: str, where: str) -> None:
        suggestion = _DOLLAR_TYPOS.get(key)
        if suggestion is None:
            lowered = {k.lower(): k for k in _TYPO_TARGETS}
            suggestion = lowered.get(key.lower())
        if suggestion is None:
            close = difflib.get_close_matches(key, _TYPO_TARGETS, n=1, cutoff=_TYPO_CUTOFF)
            suggestion = close[0] if close else None
        if suggestion is None:
            logger.debug("output schema: unknown keyword %r %s kept as is", key, _at(where))
            return
        raise SchemaError(
            f'the output schema has an unknown keyword "{key}" {_at(where)}; did you mean '
            f'"{suggestion}"? JSON Schema silently ignores unknown keywords, so "{key}" '
            "would have no effect.",
            keyword=key,
            path=where,
        )

    def _check_values(self, node: Mapping[str, Any], where: str) -> None:
        ref = node.get("$ref")
        if isinstance(ref, str) and _resolve_pointer(self.root, ref) is None:
            raise SchemaError(
                f'the output schema is invalid {_at(where)}: "$ref": {ref!r} points nowhere; '
                'only references inside the schema ("#/$defs/Name") can be used, because the '
                "service receives only this schema",
                keyword="$ref",
                path=where,
            )
        if "enum" in node and not node["enum"]:
            raise SchemaError(
                f'the output schema is invalid {_at(where)}: "enum" is empty, so no answer '
                "could ever match; list the allowed values",
                keyword="enum",
                path=where,
            )
        props = node.get("properties")
        required = node.get("required")
        if (
            isinstance(props, Mapping)
            and isinstance(required, list)
            and "patternProperties" not in node
        ):
            for name in required:
                if name not in props:
                    close = difflib.get_close_matches(str(name), [str(p) for p in props], n=1)
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                    raise SchemaError(
                        f'the output schema is invalid {_at(where)}: "required" lists '
                        f'"{name}", which is not in "properties"{hint}',
                        keyword="required",
                        path=where,
                    )


def _resolve_pointer(root: Mapping[str, Any], ref: str) -> Any:
    """The subschema a local ``$ref`` ("#/$defs/Name") points at, or None."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    pointer = ref[1:]
    if not pointer:
        return root
    if not pointer.startswith("/"):
        return None
    for raw in pointer[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


_TOP_LEVEL_FIX = (
    'The top level must be {"type": "object", "properties": {...}}: one property per output '
    "column. To get a single value, wrap it: "
    '{"type": "object", "properties": {"value": <your schema>}, "required": ["value"]}.'
)


def _check_top_level(schema: Mapping[str, Any]) -> None:
    top: Any = schema
    seen: set[str] = set()
    while isinstance(top, Mapping) and isinstance(top.get("$ref"), str) and top["$ref"] not in seen:
        seen.add(top["$ref"])
        top = _resolve_pointer(schema, top["$ref"])
    kind = top.get("type") if isinstance(top, Mapping) else None
    if kind != "object":
        got = f'got "type": {json.dumps(kind)}' if kind is not None else 'got no "type"'
        raise SchemaError(
            f"the output schema's top level is not an object ({got}). {_TOP_LEVEL_FIX}",
            keyword="type",
            path="",
        )
    props = top.get("properties")
    if not isinstance(props, Mapping) or not props:
        got = 'empty "properties"' if isinstance(props, Mapping) else 'no "properties"'
        raise SchemaError(
            f"the output schema's top level has {got}, so there would be no output columns. "
            f"{_TOP_LEVEL_FIX}",
            keyword="properties",
            path="",
        )


# ---------------------------------------------------------------------- columns


class _Columns:
    """Derives the output columns and their dtypes from a checked schema."""

    def __init__(self, schema: Mapping[str, Any], flatten: bool) -> None:
        self.root = schema
        self.flatten = flatten
        self.out: list[OutputColumn] = []

    def build(self) -> list[OutputColumn]:
        top, refs = self._unwrap(self.root, frozenset())
        assert top is not None
        for name, sub in top["properties"].items():
            self._add((name,), sub, refs)
        names = [c.name for c in self.out]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise SchemaError(
                f"two output properties would both become the column {clashes[0]!r} (a dotted "
                "property name clashes with a flattened nested one); rename one, or pass "
                "flatten=False",
                keyword="properties",
                path="",
            )
        return self.out

    def _add(self, path: tuple[str, ...], sub: Any, refs: frozenset[str]) -> None:
        node, refs = self._unwrap(sub, refs)
        if self.flatten and node is not None and _is_object_with_properties(node):
            for child, child_schema in node["properties"].items():
                self._add((*path, child), child_schema, refs)
            return
        dtype: Dtype = "object" if node is None else _dtype(node)
        self.out.append(OutputColumn(name=".".join(path), path=path, dtype=dtype))

    def _unwrap(
        self, sub: Any, refs: frozenset[str]
    ) -> tuple[dict[str, Any] | None, frozenset[str]]:
        """Follow $ref, single-entry allOf/anyOf/oneOf and nullable unions to the schema of T."""
        for _ in range(64):
            if not isinstance(sub, Mapping):
                return None, refs
            ref = sub.get("$ref")
            if isinstance(ref, str):
                if ref in refs:  # a recursive model: stop flattening here
                    return None, refs
                target = _resolve_pointer(self.root, ref)
                if not isinstance(target, Mapping):
                    return None, refs
                refs = refs | {ref}
                sub = {**target, **{k: v for k, v in sub.items() if k != "$ref"}}
                continue
            for key in ("anyOf", "oneOf", "allOf"):
                options = sub.get(key)
                if not isinstance(options, list):
                    continue
                keep = [o for o in options if not (key != "allOf" and _is_null(o))]
                if len(keep) == 1:
                    rest = {k: v for k, v in sub.items() if k != key}
                    inner = keep[0]
                    sub = {**rest, **inner} if isinstance(inner, Mapping) else inner
                    break
            else:
                return dict(sub), refs
        return None, refs


def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and (
        schema.get("type") == "null" or ("const" in schema and schema["const"] is None)
    )


def _is_object_with_properties(node: Mapping[str, Any]) -> bool:
    kind = node.get("type")
    kinds = [k for k in kind if k != "null"] if isinstance(kind, list) else [kind]
    props = node.get("properties")
    return kinds == ["object"] and isinstance(props, Mapping) and bool(props)


def _dtype(node: Mapping[str, Any]) -> Dtype:
    """The pandas dtype of one leaf schema."""
    if "enum" in node or "const" in node:
        raw = node["enum"] if "enum" in node else [node["const"]]
        values = [v for v in raw if v is not None] if isinstance(raw, list) else []
        if values and all(isinstance(v, str) for v in values):
            return pd.CategoricalDtype(list(dict.fromkeys(values)), ordered=False)
        if values and all(isinstance(v, bool) for v in values):
            return "boolean"
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return "Int64"
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return "Float64"
        return "object"
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = {k for k in kind if k != "null"}
        if kinds == {"integer", "number"}:
            return "Float64"
        if len(kinds) != 1:
            return "object"
        kind = kinds.pop()
    return _TYPE_DTYPES.get(kind, "object") if isinstance(kind, Hashable) else "object"


_TYPE_DTYPES: dict[Any, Dtype] = {
    "integer": "Int64",
    "number": "Float64",
    "boolean": "boolean",
    "string": "string",
}


# ---------------------------------------------------------------------- answer messages


def _clip(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _loc(parts: Sequence[str | int]) -> str:
    return _where([p if isinstance(p, int) else str(p) for p in parts])


def _instance_message(error: JSONSchemaValidationError) -> str:
    where = _loc(list(error.absolute_path))
    prefix = f"'{where}': " if where else ""
    return f"output does not match the schema: {prefix}{_clip(error.message)}"


def _pydantic_message(exc: PydanticValidationError) -> str:
    errors = exc.errors(include_url=False)
    if not errors:  # pragma: no cover - pydantic always reports at least one
        return "output does not match the schema"
    first = errors[0]
    where = _loc(list(first["loc"]))
    text = f"'{where}': {first['msg']}" if where else first["msg"]
    if first["type"] != "missing":
        text += f" (got {_clip(repr(first.get('input')), 80)})"
    more = len(errors) - 1
    if more:
        text += f" (and {more} more error{'s' if more > 1 else ''})"
    return f"output does not match the schema: {text}"
