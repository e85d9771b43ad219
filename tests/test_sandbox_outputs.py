"""Synthetic outputs: valid against the request's schema, deterministic per request."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
from datetime import date, datetime
from typing import Any, Literal

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field, conint, constr

from narrative_pandas._clock import FakeClock
from narrative_pandas.sandbox import DEFAULT_DATA_PLANE_ID, TRANSPORT_BASE_URL, Sandbox
from narrative_pandas.sandbox._outputs import (
    compile_schema,
    estimate_tokens,
    output_error,
    synthesize,
)

HAS_EMAIL_VALIDATOR = importlib.util.find_spec("email_validator") is not None
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


def strict(schema: Any) -> Draft202012Validator:
    """A validator that also checks formats."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


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


# --- pydantic models -------------------------------------------------------------------------
class Address(BaseModel):
    street: str
    zip_code: constr(pattern=r"^\d{5}(-\d{4})?$")  # type: ignore[valid-type]
    country: Literal["US", "CA", "MX"] = "US"


class Node(BaseModel):
    name: str
    children: list[Node] = []


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0, le=1)


class Everything(BaseModel):
    label: Literal["a", "b", "c"]
    stars: conint(ge=1, le=5)  # type: ignore[valid-type]
    ratio: float = Field(gt=0, lt=1)
    count: int = Field(ge=0, multiple_of=10)
    tags: list[str] = Field(min_length=2, max_length=4)
    code: str = Field(pattern=r"^[A-Z]{3}-\d{2,4}$", min_length=6, max_length=8)
    summary: str = Field(max_length=40)
    home: Address
    work: Address | None = None
    when: date
    at: datetime
    either: int | str
    maybe: int | None = None
    tree: Node
    scores: dict[str, float] = {}
    pair: tuple[int, str]
    kinds: set[Literal["x", "y", "z"]] = set()


class Deep(BaseModel):
    items: list[Everything] = Field(min_length=1, max_length=2)
    sentiment: Sentiment


MODELS: list[type[BaseModel]] = [Sentiment, Address, Node, Everything, Deep]
if HAS_EMAIL_VALIDATOR:  # pragma: no cover - depends on the environment
    from pydantic import EmailStr

    class Contact(BaseModel):
        email: EmailStr

    MODELS.append(Contact)


# --- tests -----------------------------------------------------------------------------------
class TestSynthesize:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(schema=root_schemas(), material=st.text(max_size=20))
    def test_outputs_follow_generated_schemas(self, schema: dict[str, Any], material: str) -> None:
        """For a wide range of schemas, the output validates (formats included)."""
        validator = strict(schema)
        compiled = compile_schema(schema)
        assert not isinstance(compiled, str)
        output = synthesize(schema, material, validator=compiled)
        errors = [e.message for e in validator.iter_errors(output)]
        assert errors == [], (json.dumps(schema), output)
        assert synthesize(schema, material, validator=compiled) == output

    @pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
    @settings(max_examples=20, deadline=None)
    @given(material=st.text(max_size=30))
    def test_outputs_follow_pydantic_schemas(self, model: type[BaseModel], material: str) -> None:
        """Outputs for pydantic-generated schemas validate and parse back into the model."""
        schema = model.model_json_schema()
        compiled = compile_schema(schema)
        assert not isinstance(compiled, str)
        output = synthesize(schema, material, validator=compiled)
        assert list(strict(schema).iter_errors(output)) == []
        model.model_validate(output)

    @pytest.mark.parametrize("pattern", PATTERNS)
    def test_patterns(self, pattern: str) -> None:
        """Strings for simple patterns match them."""
        schema = {"type": "string", "pattern": pattern}
        for i in range(20):
            assert re.search(pattern, synthesize(schema, str(i)))

    @pytest.mark.parametrize("fmt", FORMATS[1:])
    def test_formats(self, fmt: str) -> None:
        """Strings for formats pass the format checker."""
        schema = {"type": "string", "format": fmt}
        validator = strict(schema)
        for i in range(10):
            assert validator.is_valid(synthesize(schema, str(i)))

    def test_unsupported_pattern_falls_back_gracefully(self) -> None:
        """A look-around pattern does not break generation; a string still comes back."""
        schema = {"type": "string", "pattern": r"^(?=.*\d)(?=.*[a-z]).{8,}$"}
        assert isinstance(synthesize(schema, "x", validator=strict(schema)), str)

    def test_recursive_schema_ends(self) -> None:
        """A schema whose required property refers to itself through an array ends."""
        schema = {
            "$defs": {
                "N": {
                    "type": "object",
                    "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/N"}}},
                    "required": ["kids"],
                }
            },
            "$ref": "#/$defs/N",
        }
        assert strict(schema).is_valid(synthesize(schema, "tree"))

    def test_same_material_same_output_and_different_rows_differ(self) -> None:
        """The output is a function of the seed material; different rows mostly differ."""
        schema = Sentiment.model_json_schema()
        outputs = [json.dumps(synthesize(schema, f"row {i}")) for i in range(20)]
        assert outputs == [json.dumps(synthesize(schema, f"row {i}")) for i in range(20)]
        assert len(set(outputs)) >= 18

    def test_output_error_explains(self) -> None:
        """output_error names what is wrong and where."""
        compiled = compile_schema(Sentiment.model_json_schema())
        assert not isinstance(compiled, str)
        assert output_error(compiled, {"label": "positive", "confidence": 0.5}) is None
        message = output_error(compiled, {"label": "great", "confidence": 0.5})
        assert message is not None and "label" in message and "great" in message

    def test_compile_schema_caches_and_explains(self) -> None:
        """The same schema compiles once; an invalid one gives a message."""
        schema = Sentiment.model_json_schema()
        assert compile_schema(schema) is compile_schema(copy.deepcopy(schema))
        assert isinstance(compile_schema({"type": "strnig"}), str)
        assert compile_schema([1]) == "must be a JSON object"

    @pytest.mark.parametrize(("text", "tokens"), [("", 1), ("abc", 1), ("abcd", 1), ("abcde", 2)])
    def test_estimate_tokens(self, text: str, tokens: int) -> None:
        """About four characters per token, at least one."""
        assert estimate_tokens(text) == tokens


class TestOverTheWire:
    async def outputs(self, sandbox: Sandbox, requests: list[dict[str, Any]]) -> list[Any]:
        headers = {"Authorization": f"Bearer {sandbox.api_key}"}
        async with httpx.AsyncClient(
            transport=sandbox.transport(), base_url=TRANSPORT_BASE_URL, headers=headers
        ) as client:
            ids = [
                (await client.post("/model-inference/run", json=r)).json()["job_id"]
                for r in requests
            ]
            return [(await client.get(f"/jobs/{i}")).json()["result"] for i in ids]

    def request(self, text: str, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "data_plane_id": DEFAULT_DATA_PLANE_ID,
            "model": "anthropic.claude-haiku-4.5",
            "messages": [{"role": "user", "text": text}],
            "inference_config": {"output_format_schema": Everything.model_json_schema()},
        }
        body.update(changes)
        return body

    def sandbox(self, **knobs: Any) -> Sandbox:
        return Sandbox(clock=FakeClock(0), queue_latency=0, run_latency=0, **knobs)

    async def test_same_request_same_output_tags_aside(self) -> None:
        """The same request gets the same output, whatever its tags or message shape."""
        content = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
        results = await self.outputs(
            self.sandbox(),
            [
                self.request("hello"),
                self.request("hello", tags=["a"]),
                self.request("hello", messages=content),
                self.request("goodbye"),
            ],
        )
        outputs = [r["structured_output"] for r in results]
        assert outputs[0] == outputs[1] == outputs[2]
        assert outputs[3] != outputs[0]
        Everything.model_validate(outputs[0])

    async def test_seed_changes_outputs(self) -> None:
        """Another seed gives other outputs for the same request."""
        first = await self.outputs(self.sandbox(seed=1), [self.request("x")])
        second = await self.outputs(self.sandbox(seed=2), [self.request("x")])
        assert first[0]["structured_output"] != second[0]["structured_output"]

    async def test_usage_counts(self) -> None:
        """prompt tokens come from the message text, completion tokens from the output JSON."""
        text = "x" * 41
        [result] = await self.outputs(
            self.sandbox(),
            [
                self.request(
                    "", messages=[{"role": "system", "text": text}, {"role": "user", "text": "ab"}]
                )
            ],
        )
        compact = json.dumps(result["structured_output"], separators=(",", ":"), ensure_ascii=False)
        assert result["usage"] == {
            "prompt_tokens": math.ceil(43 / 4),
            "completion_tokens": math.ceil(len(compact) / 4),
            "total_tokens": math.ceil(43 / 4) + math.ceil(len(compact) / 4),
        }
