"""The quick output check never calls an invalid output valid, and takes the common schemas."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from helpers import SENTIMENT_SCHEMA as SENTIMENT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schema_strategies import SCHEMAS, root_schemas

from narrative_pandas._quickcheck import compile_quick_check
from narrative_pandas._schema import OutputSpec
from narrative_pandas.sandbox._outputs import synthesize

JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-1000, 1000),
        st.floats(-1e4, 1e4, allow_nan=False),
        st.sampled_from([0, 1, 1.0, 2.5, -1, "", "a", "positive", "label", True, False]),
        st.text(max_size=12),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["label", "score", "summary", "confidence", "tags", "n", "x", "z"]),
            children,
            max_size=5,
        ),
    ),
    max_leaves=16,
)


def mutate(value: Any, data: st.DataObject) -> Any:
    """A near miss of a valid output: one value swapped, one key dropped or one key added."""
    out = copy.deepcopy(value)
    if isinstance(out, dict) and out:
        key = data.draw(st.sampled_from(sorted(out)))
        action = data.draw(st.sampled_from(["swap", "drop", "add", "deeper"]))
        if action == "swap":
            out[key] = data.draw(JSON)
        elif action == "drop":
            del out[key]
        elif action == "add":
            out[data.draw(st.sampled_from(["extra", "zz", key + "_"]))] = data.draw(JSON)
        else:
            out[key] = mutate(out[key], data)
        return out
    if isinstance(out, list) and out:
        index = data.draw(st.integers(0, len(out) - 1))
        out[index] = data.draw(JSON) if data.draw(st.booleans()) else mutate(out[index], data)
        return out
    return data.draw(JSON)


def assert_agrees(schema: dict[str, Any], instance: Any) -> None:
    check = compile_quick_check(schema)
    if check is not None and check(instance):
        assert Draft202012Validator(schema).is_valid(instance), (schema, instance)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=st.one_of(SCHEMAS, root_schemas()), data=st.data())
def test_a_yes_is_always_right(schema: dict[str, Any], data: st.DataObject) -> None:
    valid = synthesize(schema, "seed", validator=Draft202012Validator(schema))
    near = [mutate(valid, data) for _ in range(3)]
    if isinstance(valid, dict):  # every one-key omission and an unknown key
        near += [{k: v for k, v in valid.items() if k != gone} for gone in valid]
        near.append({**valid, "unexpected": 1})
    for instance in (valid, *near, data.draw(JSON)):
        assert_agrees(schema, instance)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS, data=st.data())
def test_valid_outputs_of_supported_schemas_take_the_fast_path(
    schema: dict[str, Any], data: st.DataObject
) -> None:
    check = compile_quick_check(schema)
    validator = Draft202012Validator(schema)
    instance = synthesize(schema, data.draw(st.text(max_size=8)), validator=validator)
    if check is None or not validator.is_valid(instance):
        return
    # Outside enum/const of lists and objects (where it says "not sure"), a yes is expected.
    if "enum" not in str(schema) and "const" not in str(schema):
        assert check(instance), (schema, instance)


NESTED = {
    "type": "object",
    "title": "Review",
    "properties": {
        "summary": {"type": "string", "minLength": 1, "maxLength": 20, "description": "short"},
        "stars": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 6},
        "topics": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "when": {"type": "string", "format": "date"},
        "reply": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "meta": {
            "type": "object",
            "properties": {"lang": {"const": "en"}},
            "additionalProperties": {"type": "integer"},
            "minProperties": 1,
        },
    },
    "required": ["summary", "stars"],
}


@pytest.mark.parametrize(
    ("schema", "instance", "expected"),
    [
        (SENTIMENT, {"label": "positive", "confidence": 0.9}, True),
        (SENTIMENT, {"label": "positive", "confidence": 1}, True),
        (SENTIMENT, {"label": "positive", "confidence": 1.5}, False),
        (SENTIMENT, {"label": "great", "confidence": 0.5}, False),
        (SENTIMENT, {"label": "positive"}, False),
        (SENTIMENT, {"label": "positive", "confidence": 0.5, "extra": 1}, False),
        (SENTIMENT, {"label": "positive", "confidence": True}, False),
        (SENTIMENT, {"label": "positive", "confidence": "0.5"}, False),
        (NESTED, {"summary": "ok", "stars": 5, "topics": ["a"], "when": "not a date"}, True),
        (NESTED, {"summary": "ok", "stars": 5.0, "reply": None, "meta": {"lang": "en"}}, True),
        (NESTED, {"summary": "ok", "stars": 5, "meta": {"lang": "en", "n": 2}}, True),
        (NESTED, {"summary": "ok", "stars": 6}, False),
        (NESTED, {"summary": "ok", "stars": 2.5}, False),
        (NESTED, {"summary": "", "stars": 1}, False),
        (NESTED, {"summary": "ok", "stars": 1, "topics": []}, False),
        (NESTED, {"summary": "ok", "stars": 1, "topics": ["a", 1]}, False),
        (NESTED, {"summary": "ok", "stars": 1, "reply": 3}, False),
        (NESTED, {"summary": "ok", "stars": 1, "meta": {}}, False),
        (NESTED, {"summary": "ok", "stars": 1, "meta": {"lang": "en", "n": "x"}}, False),
        (NESTED, {"summary": "ok", "stars": True}, False),
    ],
)
def test_common_schemas_are_compiled_and_judged(
    schema: dict[str, Any], instance: Any, expected: bool
) -> None:
    check = compile_quick_check(schema)
    assert check is not None
    assert check(instance) is expected
    assert Draft202012Validator(schema).is_valid(instance) is expected


def test_large_integer_bounds_are_compared_exactly() -> None:
    """2**53 + 1 as a float is 2**53: the bound must not be rounded into a wrong yes."""
    check = compile_quick_check({"type": "integer", "minimum": 2**53 + 1})
    assert check is not None
    assert check(2**53) is False
    assert check(2**53 + 1) is True


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a"},
        {"type": "integer", "multipleOf": 3},
        {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        {"not": {"type": "string"}},
        {"$ref": "#/$defs/A", "$defs": {"A": {"type": "string"}}},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"type": "object", "properties": {"a": False}},
        {"type": "object", "x-vendor": 1},
        {"type": "colour"},
    ],
)
def test_keywords_it_does_not_know_leave_everything_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_quick_check(schema) is None


def test_output_spec_still_explains_a_no() -> None:
    spec = OutputSpec.from_output(SENTIMENT)
    assert spec.validate({"label": "positive", "confidence": 0.25}) == (
        {"label": "positive", "confidence": 0.25},
        None,
    )
    output, why = spec.validate({"label": "great", "confidence": 0.25})
    assert output is None
    assert why is not None and "label" in why and "great" in why
