"""A fast yes for outputs that follow their schema; ``jsonschema`` still explains every no.

Validating each answer with ``jsonschema`` costs about 18 µs for a two-field schema: a few
percent of the library's CPU per row. Most schemas given to the service use a small core of
keywords, so :func:`compile_quick_check` turns such a schema into nested closures (about 1 µs).
The check is one-sided on purpose: ``True`` means valid for certain; ``False`` only means "not
sure", and :class:`~narrative_pandas._schema.OutputSpec` then asks ``jsonschema`` (which also
writes the message). A keyword it does not know makes the whole schema fall back to
``jsonschema``, so the two can never disagree about a valid output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["QuickCheck", "compile_quick_check"]

QuickCheck = Callable[[Any], bool]

# Keywords that never affect validity (Draft 2020-12 without a format checker: ``format`` is an
# annotation only, as in the ``Draft202012Validator`` that OutputSpec builds).
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
        "$schema",
    }
)
_HANDLED = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
        "maxProperties",
        "items",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "anyOf",
        "allOf",
    }
)
_SIMPLE = (str, int, float, bool, type(None))


class _Unsupported(Exception):
    """The schema uses a keyword or form this module leaves to ``jsonschema``."""


def compile_quick_check(schema: Any) -> QuickCheck | None:
    """A one-sided check for ``schema`` (True: surely valid), or None where it cannot tell."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "number": _is_number,
    "integer": _is_integer,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _same(value: Any, expected: Any) -> bool:
    """Equal in JSON's sense for the simple cases (True is not 1); anything else is "not sure"."""
    return type(value) is type(expected) and isinstance(value, _SIMPLE) and value == expected


def _bound(schema: Mapping[str, Any], name: str, *, whole: bool = False) -> float | None:
    """The numeric keyword ``name`` as written (ints stay ints: ``float`` would round a large
    ``minimum`` and compare wrongly), None when absent; a count (``whole``) must be integral."""
    value: float | None = schema.get(name)
    if value is None:
        return None
    if not (_is_integer(value) if whole else _is_number(value)):
        raise _Unsupported(name)
    return value


def _compile(schema: Any) -> QuickCheck:
    if schema is True or schema == {}:
        return lambda value: True
    if not isinstance(schema, Mapping):
        raise _Unsupported("a schema that is not an object or true")
    unknown = set(schema) - _HANDLED - _ANNOTATIONS
    if unknown:
        raise _Unsupported(", ".join(sorted(unknown)))
    checks: list[QuickCheck] = []

    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else kinds
        if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
            raise _Unsupported("type")
        tests = [_TYPES[n] for n in names]
        if len(tests) == 1:
            checks.append(tests[0])
        else:
            checks.append(lambda v: any(test(v) for test in tests))

    if "enum" in schema:
        options = schema["enum"]
        if not isinstance(options, list):
            raise _Unsupported("enum")
        checks.append(lambda v: any(_same(v, option) for option in options))
    if "const" in schema:
        constant = schema["const"]
        checks.append(lambda v: _same(v, constant))

    checks.extend(_number_checks(schema))
    checks.extend(_string_checks(schema))
    checks.extend(_object_checks(schema))
    checks.extend(_array_checks(schema))

    for name in ("anyOf", "allOf"):
        if name in schema:
            branches = schema[name]
            if not isinstance(branches, list) or not branches:
                raise _Unsupported(name)
            checks.append(_combined([_compile(b) for b in branches], every=name == "allOf"))

    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _never(value: Any) -> bool:
    return False


def _combined(subs: list[QuickCheck], *, every: bool) -> QuickCheck:
    if every:
        return lambda value: all(sub(value) for sub in subs)
    return lambda value: any(sub(value) for sub in subs)


def _number_checks(schema: Mapping[str, Any]) -> list[QuickCheck]:
    found: list[QuickCheck] = []
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    above, below = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    if low is not None:
        found.append(lambda v: not _is_number(v) or v >= low)
    if high is not None:
        found.append(lambda v: not _is_number(v) or v <= high)
    if above is not None:
        found.append(lambda v: not _is_number(v) or v > above)
    if below is not None:
        found.append(lambda v: not _is_number(v) or v < below)
    return found


def _string_checks(schema: Mapping[str, Any]) -> list[QuickCheck]:
    found: list[QuickCheck] = []
    shortest, longest = (
        _bound(schema, "minLength", whole=True),
        _bound(schema, "maxLength", whole=True),
    )
    if shortest is not None:
        found.append(lambda v: not isinstance(v, str) or len(v) >= shortest)
    if longest is not None:
        found.append(lambda v: not isinstance(v, str) or len(v) <= longest)
    return found


def _object_checks(schema: Mapping[str, Any]) -> list[QuickCheck]:
    found: list[QuickCheck] = []
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping) or not all(isinstance(k, str) for k in properties):
        raise _Unsupported("properties")
    compiled = {name: _compile(sub) for name, sub in properties.items()}
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _Unsupported("required")
    extra = schema.get("additionalProperties", True)
    extra_check: QuickCheck | None = (
        None if extra is True else _never if extra is False else _compile(extra)
    )
    fewest, most = (
        _bound(schema, "minProperties", whole=True),
        _bound(schema, "maxProperties", whole=True),
    )

    if not (compiled or required or extra is not True or fewest is not None or most is not None):
        return found

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        for name in required:
            if name not in value:
                return False
        if fewest is not None and len(value) < fewest:
            return False
        if most is not None and len(value) > most:
            return False
        for name, item in value.items():
            sub = compiled.get(name)
            if sub is not None:
                if not sub(item):
                    return False
            elif extra_check is not None and not extra_check(item):
                return False
        return True

    found.append(check)
    return found


def _array_checks(schema: Mapping[str, Any]) -> list[QuickCheck]:
    found: list[QuickCheck] = []
    if "items" in schema:
        each = _compile(schema["items"]) if schema["items"] is not False else None
        if each is None:
            found.append(lambda v: not isinstance(v, list) or not v)
        else:
            found.append(lambda v: not isinstance(v, list) or all(each(i) for i in v))
    fewest, most = _bound(schema, "minItems", whole=True), _bound(schema, "maxItems", whole=True)
    if fewest is not None:
        found.append(lambda v: not isinstance(v, list) or len(v) >= fewest)
    if most is not None:
        found.append(lambda v: not isinstance(v, list) or len(v) <= most)
    return found
