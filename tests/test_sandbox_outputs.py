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
from schema_strategies import FORMATS, PATTERNS, root_schemas

from narrative_pandas._clock import FakeClock
from narrative_pandas.sandbox import DEFAULT_DATA_PLANE_ID, TRANSPORT_BASE_URL, Sandbox
from narrative_pandas.sandbox._outputs import (
    compile_schema,
    estimate_tokens,
    output_error,
    synthesize,
)

HAS_EMAIL_VALIDATOR = importlib.util.find_spec("email_validator") is not None


def strict(schema: Any) -> Draft202012Validator:
    """A validator that also checks formats."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


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
