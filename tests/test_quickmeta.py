"""The quick meta-schema check never calls a broken schema valid, and takes the common schemas."""

from __future__ import annotations

import copy
import enum
from typing import Any, Literal

import pytest
from helpers import SENTIMENT_SCHEMA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError as JSONSchemaSchemaError
from pydantic import BaseModel, Field
from schema_strategies import SCHEMAS, root_schemas

from narrative_pandas._exceptions import SchemaError
from narrative_pandas._quickmeta import surely_valid_schema
from narrative_pandas._schema import KNOWN_KEYWORDS, OutputSpec


def meta_valid(schema: Any) -> bool:
    """What jsonschema says, with the format checker its ``check_schema`` uses."""
    try:
        Draft202012Validator.check_schema(schema)
    except JSONSchemaSchemaError:
        return False
    return True


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.5, -2.5, 2.0, "", "(", "[a-", "#/$defs/A", "http://x y", "a b"]),
    st.sampled_from(["string", "strin", "object", "#", "^a$", "\\d+", "uri", "x"]),
    st.lists(st.sampled_from(["a", "a", "string", "null", "colour", 1, None]), max_size=3),
    st.fixed_dictionaries({}, optional={"type": st.sampled_from(["string", "strin"])}),
    st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from([{}, "x", [], True]), max_size=2),
    st.just(({"type": "string"},)),
)
KEYWORDS = st.sampled_from([*sorted(KNOWN_KEYWORDS), "x-vendor", "propertes", "kind"])


def subschemas(node: Any) -> list[dict[str, Any]]:
    """Every dict reachable in ``node`` (subschemas, and some values that are not schemas)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += subschemas(value)
    elif isinstance(node, list):
        for value in node:
            found += subschemas(value)
    return found


class Colour(enum.Enum):
    """An Enum field: pydantic puts it in $defs behind a $ref."""

    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    """A nested model."""

    city: str = Field(description="the city", min_length=1, max_length=40)
    zip: str | None = Field(default=None, pattern=r"^\d{5}$")


class Everything(BaseModel):
    """Field kinds users write, with constraints and descriptions."""

    label: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0, le=1)
    stars: int = Field(gt=0, lt=6, multiple_of=1)
    colour: Colour
    tags: list[str] = Field(default_factory=list, max_length=5)
    pair: tuple[int, str]
    address: Address | None = None
    scores: dict[str, float] = {}
    flag: bool = Field(default=False, deprecated=True)


class TestOneSided:
    """A yes from the quick check is always a yes from jsonschema's check_schema."""

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(schema=st.one_of(SCHEMAS, root_schemas()), data=st.data())
    def test_a_yes_is_always_right_for_broken_schemas(
        self, schema: dict[str, Any], data: st.DataObject
    ) -> None:
        """One keyword anywhere set to an odd value: a yes means the meta-schema accepts it."""
        broken = copy.deepcopy(schema)
        for _ in range(data.draw(st.integers(1, 3))):
            node = data.draw(st.sampled_from(subschemas(broken)))
            # A copy: sampled values are shared objects, and a later draw may pick a dict
            # set here as its node; mutating the strategy's own value makes Hypothesis flaky.
            node[data.draw(KEYWORDS)] = copy.deepcopy(data.draw(ODD_VALUES))
        if surely_valid_schema(broken):
            assert meta_valid(broken), broken

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(schema=st.one_of(SCHEMAS, root_schemas()))
    def test_generated_user_schemas_take_the_fast_path(self, schema: dict[str, Any]) -> None:
        """Schemas like users give (formats, patterns, $defs, unions) need no jsonschema."""
        assert meta_valid(schema)
        assert surely_valid_schema(schema), schema

    @pytest.mark.parametrize(
        "model",
        [Everything, Address],
    )
    def test_pydantic_schemas_take_the_fast_path(self, model: type[BaseModel]) -> None:
        """What pydantic emits for the usual field kinds is judged without jsonschema."""
        schema = model.model_json_schema()
        assert meta_valid(schema)
        assert surely_valid_schema(schema), schema

    def test_the_readme_schema_takes_the_fast_path(self) -> None:
        """The hand-written sentiment schema of the README and the tests."""
        assert surely_valid_schema(SENTIMENT_SCHEMA)

    @pytest.mark.parametrize(
        "schema",
        [
            {"type": "strin"},
            {"type": []},
            {"type": ["string", "string"]},
            {"type": "object", "required": "label"},
            {"type": "object", "required": ["a", "a"]},
            {"type": "object", "required": ("a",)},
            {"type": "object", "properties": []},
            {"type": "object", "properties": {"a": "string"}},
            {"type": "string", "minLength": -1},
            {"type": "string", "maxLength": 1.5},
            {"type": "string", "pattern": "("},
            {"type": "integer", "multipleOf": 0},
            {"type": "integer", "minimum": "3"},
            {"anyOf": []},
            {"items": [{"type": "string"}]},
            {"prefixItems": []},
            {"$ref": "http://x y"},
            {"enum": "a"},
            {"title": 3},
            {"deprecated": "yes"},
            {"$defs": {"A": 1}},
        ],
    )
    def test_broken_schemas_are_left_to_jsonschema(self, schema: dict[str, Any]) -> None:
        """Each of these breaks the meta-schema: the quick check is not sure, jsonschema says no."""
        assert surely_valid_schema(schema) is False
        assert meta_valid(schema) is False

    @pytest.mark.parametrize(
        "schema",
        [
            {"type": "string", "minLength": 2.0},
            {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"},
            {"$id": "https://example.com/review", "type": "object"},
            {"type": "object", "dependentRequired": {"a": ["b"]}},
            {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
            {"oneOf": [{"type": "string"}], "discriminator": {"propertyName": "kind"}},
            {"$ref": "other.json#/A"},
        ],
    )
    def test_valid_forms_it_does_not_know_are_left_to_jsonschema(
        self, schema: dict[str, Any]
    ) -> None:
        """Not sure is not no: jsonschema accepts these, and OutputSpec asks it."""
        assert surely_valid_schema(schema) is False
        assert meta_valid(schema) is True


class TestOutputSpecMessages:
    """The messages of a broken schema still come from jsonschema, naming keyword and place."""

    def test_a_bad_type_deep_inside_is_named(self) -> None:
        """A misspelt type inside a property: the property, the keyword and the fix."""
        schema = {"type": "object", "properties": {"a": {"type": "strin"}}}
        with pytest.raises(SchemaError, match=r'properties\.a: "type": "strin".*"string"'):
            OutputSpec.from_output(schema)

    def test_a_bad_pattern_is_named(self) -> None:
        """A regex that does not compile fails before anything is sent."""
        schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}
        with pytest.raises(SchemaError, match=r'properties\.a: "pattern"') as info:
            OutputSpec.from_output(schema)
        assert info.value.keyword == "pattern"
