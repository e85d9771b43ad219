"""A fast yes for output schemas that follow the JSON Schema meta-schema; ``jsonschema`` explains
every no.

``import jsonschema`` is slow wherever its optional format checkers are installed (JupyterLab
brings them): ``jsonschema._format`` imports ``rfc3987_syntax``, which builds a lark grammar at
import time, about 1.3 s of a user's first ``infer``. The schemas users pass (pydantic's, and the
hand-written ones of the README) use a small core of keywords, so :func:`surely_valid_schema`
checks those against the Draft 2020-12 meta-schema by hand. Like ``_quickcheck`` it is one-sided:
``True`` means ``Draft202012Validator.check_schema`` (with its format checker) surely passes;
``False`` only means "not sure", and :mod:`narrative_pandas._schema` then asks ``jsonschema``,
which also writes the message. A keyword it does not know makes it answer ``False``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["surely_valid_schema"]

_SIMPLE_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})
# "#", "#/$defs/Name", "#/properties/a~1b": fragments of characters RFC 3986 allows as they are.
_LOCAL_REF = re.compile(r"#(?:/[A-Za-z0-9._~$!&'()*+,;=:@-]*)*")
_MAX_DEPTH = 64


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    """A non-negative integer (ints only: a float such as 2.0 is left to ``jsonschema``)."""
    return type(value) is int and value >= 0


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _anything(value: Any) -> bool:
    return True


def _array(value: Any) -> bool:
    return type(value) is list


def _type(value: Any) -> bool:
    if isinstance(value, str):
        return value in _SIMPLE_TYPES
    return (
        type(value) is list
        and bool(value)
        and all(isinstance(v, str) and v in _SIMPLE_TYPES for v in value)
        and len(set(value)) == len(value)
    )


def _names(value: Any) -> bool:
    """``required``: a list of distinct strings."""
    return (
        type(value) is list
        and all(isinstance(v, str) for v in value)
        and len(set(value)) == len(value)
    )


def _regex(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        re.compile(value)
    except re.error:
        return False
    return True


def _ref(value: Any) -> bool:
    return isinstance(value, str) and _LOCAL_REF.fullmatch(value) is not None


# Keywords whose value is not a subschema, with the test the meta-schema puts on that value.
_VALUE_RULES: dict[str, Callable[[Any], bool]] = {
    "type": _type,
    "enum": _array,
    "const": _anything,
    "default": _anything,
    "examples": _array,
    "required": _names,
    "title": _string,
    "description": _string,
    "$comment": _string,
    "format": _string,
    "deprecated": _boolean,
    "readOnly": _boolean,
    "writeOnly": _boolean,
    "uniqueItems": _boolean,
    "minimum": _number,
    "maximum": _number,
    "exclusiveMinimum": _number,
    "exclusiveMaximum": _number,
    "multipleOf": _positive,
    "minLength": _count,
    "maxLength": _count,
    "minItems": _count,
    "maxItems": _count,
    "minProperties": _count,
    "maxProperties": _count,
    "pattern": _regex,
    "$ref": _ref,
}
_SUBSCHEMA = frozenset({"items", "additionalProperties", "not", "contains", "propertyNames"})
_SUBSCHEMA_LISTS = frozenset({"anyOf", "allOf", "oneOf", "prefixItems"})
_SUBSCHEMA_MAPS = frozenset({"properties", "$defs", "definitions"})


def surely_valid_schema(schema: Any) -> bool:
    """True when ``schema`` surely follows the Draft 2020-12 meta-schema; False: not sure."""
    return _valid(schema, 0)


def _valid(schema: Any, depth: int) -> bool:
    if isinstance(schema, bool):
        return True
    if type(schema) is not dict or depth > _MAX_DEPTH:
        return False
    for key, value in schema.items():
        rule = _VALUE_RULES.get(key)
        if rule is not None:
            if not rule(value):
                return False
        elif key in _SUBSCHEMA:
            if not _valid(value, depth + 1):
                return False
        elif key in _SUBSCHEMA_LISTS:
            if type(value) is not list or not value:
                return False
            if not all(_valid(item, depth + 1) for item in value):
                return False
        elif key in _SUBSCHEMA_MAPS:
            if type(value) is not dict or not all(isinstance(name, str) for name in value):
                return False
            if not all(_valid(item, depth + 1) for item in value.values()):
                return False
        elif not (isinstance(key, str) and key.startswith("x-")):
            return False  # unknown to this module: leave it to jsonschema
    return True
