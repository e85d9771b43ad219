"""Tests of narrative_pandas._schema: schema checks, answer validation, column dtypes."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
from typing import Annotated, Any, Literal, Optional, Union

import pandas as pd
import pytest
from pydantic import BaseModel, ConfigDict, Field, RootModel

from narrative_pandas._exceptions import NarrativeError, SchemaError
from narrative_pandas._schema import OutputColumn, OutputSpec


class Color(enum.Enum):
    """A string Enum, emitted by pydantic as a $ref to an enum in $defs."""

    red = "red"
    blue = "blue"


class Address(BaseModel):
    """A nested model."""

    city: str
    zip: Optional[int] = None  # noqa: UP045 - the spelling users write


class Everything(BaseModel):
    """One field of every kind the dtype mapping covers."""

    label: Literal["positive", "negative", "neutral"]
    color: Color
    count: int
    score: float
    flag: bool
    text: str
    maybe: Optional[int] = None  # noqa: UP045
    address: Address
    other_address: Optional[Address] = None  # noqa: UP045
    tags: list[str]
    counts: dict[str, int]


class Sentiment(BaseModel):
    """The model of the design doc."""

    label: Literal["positive", "negative", "neutral"]
    confidence: float


class Node(BaseModel):
    """A recursive model: pydantic puts a $ref at the top level."""

    name: str
    child: Optional[Node] = None  # noqa: UP045


SENTIMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number"},
    },
    "required": ["label", "confidence"],
}

CATS = pd.CategoricalDtype(["positive", "negative", "neutral"], ordered=False)


def dtypes(spec: OutputSpec, *, flatten: bool = True) -> dict[str, Any]:
    """Column name -> dtype, in order."""
    return {c.name: c.dtype for c in spec.columns(flatten=flatten)}


def schema_error(schema: Any) -> SchemaError:
    """The SchemaError raised for ``schema``."""
    with pytest.raises(SchemaError) as info:
        OutputSpec.from_output(schema)
    return info.value


def obj(**properties: Any) -> dict[str, Any]:
    """A top-level object schema with these properties."""
    return {"type": "object", "properties": properties}


class TestFromOutput:
    """from_output accepts pydantic models and JSON Schema dicts, and refuses the rest."""

    def test_pydantic_model(self) -> None:
        """A model's schema is model_json_schema() and the model is kept for validation."""
        spec = OutputSpec.from_output(Sentiment)
        assert spec.schema == Sentiment.model_json_schema()
        assert spec.model is Sentiment

    def test_dict_is_deep_copied(self) -> None:
        """A dict schema is kept as given, as a copy the caller cannot change afterwards."""
        schema = {
            "type": "object",
            "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
        }
        spec = OutputSpec.from_output(schema)
        assert spec.schema == schema
        assert spec.model is None
        schema["properties"]["tags"]["items"]["type"] = "integer"  # type: ignore[index]
        assert spec.schema["properties"]["tags"]["items"] == {"type": "string"}

    def test_spec_passes_through(self) -> None:
        """An OutputSpec given again is returned as is."""
        spec = OutputSpec.from_output(Sentiment)
        assert OutputSpec.from_output(spec) is spec  # type: ignore[arg-type]

    def test_recursive_model_with_top_level_ref(self) -> None:
        """A recursive model (top-level $ref) is accepted; the recursion is one object column."""
        spec = OutputSpec.from_output(Node)
        assert dtypes(spec) == {"name": "string", "child": "object"}

    @pytest.mark.parametrize(
        ("output", "tail"),
        [
            (None, "; got None."),
            ('{"type": "object"}', "; got a str: if it is JSON text, pass json.loads(it)."),
            (
                Sentiment(label="positive", confidence=1.0),
                "; got an instance of Sentiment: pass the class itself.",
            ),
            (
                dict,
                "; got the class dict, which is not a pydantic model: declare its fields on a "
                "pydantic BaseModel.",
            ),
            (3, "; got int."),
        ],
    )
    def test_wrong_kind_of_output(self, output: Any, tail: str) -> None:
        """output= of the wrong kind is a TypeError that shows both accepted forms."""
        with pytest.raises(TypeError) as info:
            OutputSpec.from_output(output)
        assert str(info.value).startswith("output= must be a pydantic model class")
        assert str(info.value).endswith(tail)

    def test_model_without_json_schema(self) -> None:
        """A pydantic model pydantic cannot describe in JSON Schema is a SchemaError naming it."""

        class Opaque:
            pass

        class Bad(BaseModel):
            model_config = ConfigDict(arbitrary_types_allowed=True)
            thing: Opaque

        err = schema_error(Bad)
        assert str(err).startswith("cannot build a JSON Schema from the pydantic model Bad: ")
        assert isinstance(err, ValueError)
        assert isinstance(err, NarrativeError)

    def test_root_model_of_a_list(self) -> None:
        """A model whose schema is not an object (a RootModel of a list) is refused."""
        err = schema_error(RootModel[list[int]])
        assert err.keyword == "type"
        assert 'got "type": "array"' in str(err)


class TestSchemaChecks:
    """Schemas the service would refuse or silently misread are refused before sending."""

    def test_bad_type_names_keyword_and_path(self) -> None:
        """A misspelt type names "type", where it is, and the type it resembles."""
        err = schema_error(obj(label={"type": "strin"}))
        assert err.keyword == "type"
        assert err.path == "properties.label"
        assert str(err) == (
            'the output schema is invalid at properties.label: "type": "strin" is not a JSON '
            'Schema type (did you mean "string"?). Types are: array, boolean, integer, null, '
            "number, object, string"
        )

    def test_bad_type_in_list_items_and_unions(self) -> None:
        """Bad types deep inside items, anyOf and type lists are located precisely."""
        assert schema_error(obj(tags={"type": "array", "items": {"type": "strng"}})).path == (
            "properties.tags.items"
        )
        err = schema_error(obj(a={"anyOf": [{"type": "integr"}, {"type": "null"}]}))
        assert (err.keyword, err.path) == ("type", "properties.a.anyOf[0]")
        assert 'did you mean "integer"' in str(err)
        err = schema_error(obj(a={"type": ["string", "nul"]}))
        assert str(err).startswith(
            'the output schema is invalid at properties.a: "type": ["string", "nul"] is not a '
            'JSON Schema type (did you mean "null"?)'
        )

    def test_other_metaschema_failures(self) -> None:
        """Other keyword values the meta-schema rejects are named with the validator's reason."""
        err = schema_error(obj(label={"enum": "abc"}))
        assert (err.keyword, err.path) == ("enum", "properties.label")
        assert str(err) == (
            "the output schema is invalid at properties.label: \"enum\": 'abc' is not of type "
            "'array'"
        )
        err = schema_error({**obj(a={"type": "string"}), "required": "a"})
        assert (err.keyword, err.path) == ("required", "")
        assert str(err).startswith('the output schema is invalid at the top level: "required": ')

    def test_property_given_as_a_bare_type(self) -> None:
        """ "label": "string" (not a schema) says a schema must be an object."""
        err = schema_error(obj(label="string"))
        assert err.path == "properties.label"
        assert err.keyword == "properties"
        assert 'a schema must be an object such as {"type": "string"}' in str(err)

    def test_typo_at_top_level(self) -> None:
        """An unknown top-level keyword close to a known one is refused, naming both."""
        err = schema_error({"type": "object", "propertes": {"a": {"type": "string"}}})
        assert (err.keyword, err.path) == ("propertes", "")
        assert str(err) == (
            'the output schema has an unknown keyword "propertes" at the top level; did you mean '
            '"properties"? JSON Schema silently ignores unknown keywords, so "propertes" would '
            "have no effect."
        )

    @pytest.mark.parametrize(
        ("keyword", "known"),
        [
            ("maxLenght", "maxLength"),
            ("tpye", "type"),
            ("enums", "enum"),
            ("requried", "required"),
            ("minimun", "minimum"),
            ("maxlength", "maxLength"),
            ("Description", "description"),
            ("ref", "$ref"),
        ],
    )
    def test_typo_inside_a_property(self, keyword: str, known: str) -> None:
        """Typo'd keywords inside property schemas are refused with the intended keyword."""
        err = schema_error(obj(label={"type": "string", keyword: 3}))
        assert (err.keyword, err.path) == (keyword, "properties.label")
        assert f'unknown keyword "{keyword}" at properties.label; did you mean "{known}"?' in str(
            err
        )

    def test_typo_in_defs_and_items(self) -> None:
        """Typos are found in $defs and array items too."""
        schema = {
            **obj(
                a={"$ref": "#/$defs/A"},
                b={"type": "array", "items": {"type": "string", "patern": "x"}},
            ),
            "$defs": {"A": {"type": "string", "minLenght": 1}},
        }
        err = schema_error(schema)
        assert (err.keyword, err.path) == ("patern", "properties.b.items")
        del schema["properties"]["b"]["items"]["patern"]
        err = schema_error(schema)
        assert (err.keyword, err.path) == ("minLenght", "$defs.A")

    def test_unrelated_custom_keywords_are_kept(self) -> None:
        """Annotations unlike any keyword (and x- extensions, example, nullable) are allowed."""
        schema = obj(
            price={"type": "number", "unit": "EUR", "x-source": "crm", "example": 3.5},
            note={"type": "string", "comment": "free text", "nullable": True},
        )
        assert OutputSpec.from_output(schema).schema == schema

    def test_top_level_must_be_an_object(self) -> None:
        """A non-object top level says what the top level must be and how to wrap a value."""
        err = schema_error({"type": "string"})
        assert (err.keyword, err.path) == ("type", "")
        assert str(err) == (
            'the output schema\'s top level is not an object (got "type": "string"). The top '
            'level must be {"type": "object", "properties": {...}}: one property per output '
            'column. To get a single value, wrap it: {"type": "object", "properties": {"value": '
            '<your schema>}, "required": ["value"]}.'
        )

    def test_top_level_without_type(self) -> None:
        """Properties without "type": "object" are refused too."""
        err = schema_error({"properties": {"a": {"type": "string"}}})
        assert 'got no "type"' in str(err)

    @pytest.mark.parametrize("schema", [{"type": "object"}, {"type": "object", "properties": {}}])
    def test_top_level_needs_properties(self, schema: dict[str, Any]) -> None:
        """An object without properties would give no columns, so it is refused."""
        err = schema_error(schema)
        assert err.keyword == "properties"
        assert "so there would be no output columns" in str(err)

    def test_required_names_unknown_property(self) -> None:
        """A required name missing from properties is refused, with the close one."""
        err = schema_error({**obj(label={"type": "string"}), "required": ["lable"]})
        assert (err.keyword, err.path) == ("required", "")
        assert str(err) == (
            'the output schema is invalid at the top level: "required" lists "lable", which is '
            'not in "properties" (did you mean "label"?)'
        )

    def test_dangling_and_remote_refs(self) -> None:
        """A $ref that points nowhere, or outside the schema, is refused."""
        for ref in ("#/$defs/Missing", "https://example.com/s.json"):
            err = schema_error(obj(a={"$ref": ref}))
            assert (err.keyword, err.path) == ("$ref", "properties.a")
            assert "points nowhere" in str(err)

    def test_empty_enum(self) -> None:
        """An empty enum can never match, so it is refused."""
        err = schema_error(obj(a={"enum": []}))
        assert (err.keyword, err.path) == ("enum", "properties.a")

    def test_not_json(self) -> None:
        """A schema holding Python objects (not JSON) is refused."""
        err = schema_error(obj(a={"type": str}))
        assert str(err).startswith("the output schema must be plain JSON")

    def test_varied_pydantic_types_are_accepted(self) -> None:
        """Schemas pydantic emits for common field types pass the checks, with sensible dtypes."""

        class Cat(BaseModel):
            kind: Literal["cat"]

        class Dog(BaseModel):
            kind: Literal["dog"]
            bark: str

        class Model(BaseModel):
            when: dt.datetime
            amount: decimal.Decimal
            ids: set[int]
            pair: tuple[int, str]
            bounded: Annotated[int, Field(ge=0, le=10, multiple_of=2)]
            code: str = Field(min_length=1, max_length=5, pattern="^a")
            pet: Union[Cat, Dog] = Field(discriminator="kind")  # noqa: UP007
            old: float = Field(default=1.0, deprecated=True, description="d", examples=[2.0])

        assert dtypes(OutputSpec.from_output(Model)) == {
            "when": "string",
            "amount": "object",
            "ids": "object",
            "pair": "object",
            "bounded": "Int64",
            "code": "string",
            "pet": "object",
            "old": "Float64",
        }

    def test_pydantic_extra_typo(self) -> None:
        """A typo in a pydantic model's json_schema_extra is caught like any other."""

        class Model(BaseModel):
            label: str = Field(json_schema_extra={"maxLenght": 3})

        assert schema_error(Model).keyword == "maxLenght"


class TestColumns:
    """Column names and dtypes follow the schema."""

    EXPECTED: dict[str, Any] = {  # noqa: RUF012
        "label": CATS,
        "color": pd.CategoricalDtype(["red", "blue"]),
        "count": "Int64",
        "score": "Float64",
        "flag": "boolean",
        "text": "string",
        "maybe": "Int64",
        "address.city": "string",
        "address.zip": "Int64",
        "other_address.city": "string",
        "other_address.zip": "Int64",
        "tags": "object",
        "counts": "object",
    }

    def test_pydantic_dtypes(self) -> None:
        """Literal/Enum -> category, int -> Int64, float -> Float64, bool, str, nested flattened."""
        assert dtypes(OutputSpec.from_output(Everything)) == self.EXPECTED

    def test_same_dtypes_from_the_json_schema(self) -> None:
        """The model's JSON Schema, given as a dict, yields the same columns."""
        spec = OutputSpec.from_output(Everything.model_json_schema())
        assert dtypes(spec) == self.EXPECTED

    def test_string_dtype_is_the_na_string_dtype(self) -> None:
        """String columns are pandas' "string" dtype (pd.NA), also on pandas 3."""
        column = OutputSpec.from_output(Everything).columns()[5]
        assert column == OutputColumn(name="text", path=("text",), dtype="string")
        assert pd.Series(["a"], dtype=column.dtype).dtype == pd.StringDtype()

    def test_category_order_is_schema_order(self) -> None:
        """Categories keep the schema's order, unordered."""
        dtype = dtypes(OutputSpec.from_output(Sentiment))["label"]
        assert list(dtype.categories) == ["positive", "negative", "neutral"]
        assert dtype.ordered is False

    def test_paths(self) -> None:
        """Flattened columns carry the path to their value."""
        columns = OutputSpec.from_output(Everything).columns()
        assert [c.path for c in columns if c.name.startswith("address")] == [
            ("address", "city"),
            ("address", "zip"),
        ]

    def test_flatten_false(self) -> None:
        """With flatten=False nested objects stay one object column."""
        got = dtypes(OutputSpec.from_output(Everything), flatten=False)
        assert list(got) == [
            "label", "color", "count", "score", "flag", "text", "maybe", "address",
            "other_address", "tags", "counts",
        ]  # fmt: skip
        assert got["address"] == "object"
        assert got["other_address"] == "object"

    def test_raw_schema_dtypes(self) -> None:
        """Hand-written JSON Schema: nullable forms, const, enums of other types, unclear cases."""
        spec = OutputSpec.from_output(
            obj(
                a={"type": ["integer", "null"]},
                b={"anyOf": [{"type": "number"}, {"type": "null"}]},
                c={"oneOf": [{"type": "null"}, {"type": "boolean"}]},
                d={"enum": ["x", "y", None]},
                e={"const": "only"},
                f={"enum": [1, 2, 3]},
                g={"enum": [1, 2.5]},
                h={"enum": ["x", 1]},
                i={"type": ["integer", "number"]},
                j={"type": ["string", "integer"]},
                k={},
                l={"type": "array", "items": {"type": "integer"}},
                m={"type": "object", "additionalProperties": {"type": "string"}},
                n={"anyOf": [{"type": "string"}, {"type": "integer"}]},
                o={"allOf": [{"type": "string"}]},
                p={"type": "null"},
                q={"type": "string", "format": "date-time"},
                r={"enum": [True, False]},
            )
        )
        assert dtypes(spec) == {
            "a": "Int64",
            "b": "Float64",
            "c": "boolean",
            "d": pd.CategoricalDtype(["x", "y"]),
            "e": pd.CategoricalDtype(["only"]),
            "f": "Int64",
            "g": "Float64",
            "h": "object",
            "i": "Float64",
            "j": "object",
            "k": "object",
            "l": "object",
            "m": "object",
            "n": "object",
            "o": "string",
            "p": "object",
            "q": "string",
            "r": "boolean",
        }

    def test_raw_nested_objects_and_refs(self) -> None:
        """Nested objects (inline or via $defs) flatten to parent.child, at any depth."""
        schema = {
            **obj(
                place={
                    "type": "object",
                    "properties": {"geo": {"$ref": "#/$defs/Geo"}, "name": {"type": "string"}},
                },
                empty={"type": "object", "properties": {}},
            ),
            "$defs": {
                "Geo": {
                    "type": ["object", "null"],
                    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                }
            },
        }
        assert dtypes(OutputSpec.from_output(schema)) == {
            "place.geo.lat": "Float64",
            "place.geo.lon": "Float64",
            "place.name": "string",
            "empty": "object",
        }

    def test_aliases_name_the_columns(self) -> None:
        """Columns use the names in the schema, i.e. pydantic aliases."""

        class Aliased(BaseModel):
            score: float = Field(alias="Score")

        assert dtypes(OutputSpec.from_output(Aliased)) == {"Score": "Float64"}

    def test_flattened_name_clash(self) -> None:
        """A dotted property that clashes with a flattened nested one is refused."""
        spec = OutputSpec.from_output(
            obj(
                **{
                    "a.b": {"type": "string"},
                    "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                }
            )
        )
        with pytest.raises(SchemaError, match=r"both become the column 'a\.b'"):
            spec.columns()
        assert list(dtypes(spec, flatten=False)) == ["a.b", "a"]

    def test_column_values(self) -> None:
        """column_values digs each column's value out of every output, None where absent."""
        spec = OutputSpec.from_output(Everything)
        outputs: list[dict[str, Any] | None] = [
            {"label": "positive", "address": {"city": "Oslo", "zip": 150}},
            {"label": "negative", "address": None},
            None,
            {"address": "not an object"},
        ]
        values = dict((c.name, v) for c, v in spec.column_values(outputs))
        assert values["label"] == ["positive", "negative", None, None]
        assert values["address.city"] == ["Oslo", None, None, None]
        assert values["address.zip"] == [150, None, None, None]
        nested = dict((c.name, v) for c, v in spec.column_values(outputs, flatten=False))
        assert nested["address"] == [{"city": "Oslo", "zip": 150}, None, None, "not an object"]


class TestValidate:
    """validate() returns the normalised output or a short, useful reason."""

    OK: dict[str, Any] = {  # noqa: RUF012
        "label": "positive",
        "color": "red",
        "count": 3,
        "score": 0.5,
        "flag": True,
        "text": "hi",
        "address": {"city": "Oslo"},
        "tags": ["a"],
        "counts": {"a": 1},
    }

    def test_pydantic_success_is_normalised(self) -> None:
        """A valid answer comes back as model_dump(mode="json"): defaults filled, enum values."""
        output, error = OutputSpec.from_output(Everything).validate(self.OK)
        assert error is None
        assert output == {
            **self.OK,
            "maybe": None,
            "address": {"city": "Oslo", "zip": None},
            "other_address": None,
        }

    def test_pydantic_uses_aliases(self) -> None:
        """The normalised output is keyed like the schema (by alias)."""

        class Aliased(BaseModel):
            score: float = Field(alias="Score")

        assert OutputSpec.from_output(Aliased).validate({"Score": 1}) == ({"Score": 1.0}, None)

    def test_pydantic_failure_messages(self) -> None:
        """The first error is named with its location and the value received."""
        spec = OutputSpec.from_output(Sentiment)
        assert spec.validate({"label": "meh", "confidence": 0.5}) == (
            None,
            "output does not match the schema: 'label': Input should be 'positive', 'negative' "
            "or 'neutral' (got 'meh')",
        )
        assert spec.validate({"label": "positive"}) == (
            None,
            "output does not match the schema: 'confidence': Field required",
        )
        assert spec.validate({"label": "meh", "confidence": "x"})[1] == (
            "output does not match the schema: 'label': Input should be 'positive', 'negative' "
            "or 'neutral' (got 'meh') (and 1 more error)"
        )

    def test_pydantic_nested_location(self) -> None:
        """Nested and list locations read as a.b and a[0]."""
        spec = OutputSpec.from_output(Everything)
        _, error = spec.validate({**self.OK, "address": {"city": 3}})
        assert error == (
            "output does not match the schema: 'address.city': Input should be a valid string "
            "(got 3)"
        )
        _, error = spec.validate({**self.OK, "tags": ["a", 2]})
        assert error == (
            "output does not match the schema: 'tags[1]': Input should be a valid string (got 2)"
        )

    def test_json_schema_failure_messages(self) -> None:
        """Dict schemas validate with jsonschema; messages name where the answer is wrong."""
        spec = OutputSpec.from_output(SENTIMENT_SCHEMA)
        assert spec.validate({"label": "meh", "confidence": 0.5}) == (
            None,
            "output does not match the schema: 'label': 'meh' is not one of "
            "['positive', 'negative', 'neutral']",
        )
        assert spec.validate({"label": "positive"}) == (
            None,
            "output does not match the schema: 'confidence' is a required property",
        )
        assert spec.validate([1]) == (
            None,
            "output does not match the schema: [1] is not of type 'object'",
        )

    def test_json_schema_nested_location(self) -> None:
        """jsonschema locations read as a.b and a[0] as well."""
        spec = OutputSpec.from_output(Everything.model_json_schema())
        _, error = spec.validate({**self.OK, "address": {"city": 3}})
        assert (
            error == "output does not match the schema: 'address.city': 3 is not of type 'string'"
        )
        _, error = spec.validate({**self.OK, "tags": ["a", 2]})
        assert error == "output does not match the schema: 'tags[1]': 2 is not of type 'string'"

    def test_json_schema_success(self) -> None:
        """A valid answer is returned as is."""
        answer = {"label": "neutral", "confidence": 1}
        assert OutputSpec.from_output(SENTIMENT_SCHEMA).validate(answer) == (answer, None)

    def test_additional_properties(self) -> None:
        """additionalProperties: false is enforced."""
        spec = OutputSpec.from_output({**SENTIMENT_SCHEMA, "additionalProperties": False})
        _, error = spec.validate({"label": "neutral", "confidence": 1, "why": "x"})
        assert error == (
            "output does not match the schema: Additional properties are not allowed "
            "('why' was unexpected)"
        )

    def test_json_text_is_parsed(self) -> None:
        """An answer that arrives as JSON text is parsed first; non-JSON text is an error."""
        for spec in (OutputSpec.from_output(Sentiment), OutputSpec.from_output(SENTIMENT_SCHEMA)):
            assert spec.validate('{"label": "neutral", "confidence": 1}')[0] == {
                "label": "neutral",
                "confidence": 1.0,
            }
            assert spec.validate("not json") == (None, "output is not JSON: 'not json'")

    def test_null_output(self) -> None:
        """A job that returned no structured output says so."""
        for spec in (OutputSpec.from_output(Sentiment), OutputSpec.from_output(SENTIMENT_SCHEMA)):
            assert spec.validate(None) == (
                None,
                "the job returned no output (structured_output is null)",
            )

    def test_long_messages_are_clipped(self) -> None:
        """A huge offending value does not produce a huge error message."""
        spec = OutputSpec.from_output(SENTIMENT_SCHEMA)
        _, error = spec.validate({"label": "x" * 5000, "confidence": 1})
        assert error is not None
        assert len(error) < 300
        _, error = OutputSpec.from_output(Sentiment).validate(
            {"label": "x" * 5000, "confidence": 1}
        )
        assert error is not None
        assert len(error) < 300

    def test_repr(self) -> None:
        """The repr names the model and the columns."""
        assert repr(OutputSpec.from_output(Sentiment)) == "OutputSpec(Sentiment: label, confidence)"
