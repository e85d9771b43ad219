"""examples=: few-shot turns from labelled rows, in the bodies sent; bad examples raise first."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from narrative_pandas import ConfigurationError

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}
PROMPT = "Product: {product}\nReview: {review}"
SYSTEM = "You label reviews."


@pytest.fixture
def examples() -> pd.DataFrame:
    """Two labelled rows (as review.apply(out) would give: extra columns are ignored)."""
    return pd.DataFrame(
        {
            "product": ["Kettle", "Lamp"],
            "review": ["Boils fast, love it.", "Flickers and died."],
            "label": pd.Categorical(["positive", "negative"]),
            "score": pd.array([0.9, -0.8], dtype="Float64"),
            "narrative_reviewed": [True, True],
        },
        index=[7, 3],
    )


@pytest.fixture
def rows() -> pd.DataFrame:
    return pd.DataFrame({"product": ["Mug", "Fan"], "review": ["Nice mug.", "Too loud."]})


def _expected_messages(product: str, review: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "text": SYSTEM},
        {"role": "user", "text": "Product: Kettle\nReview: Boils fast, love it."},
        {"role": "assistant", "text": json.dumps({"label": "positive", "score": 0.9})},
        {"role": "user", "text": "Product: Lamp\nReview: Flickers and died."},
        {"role": "assistant", "text": json.dumps({"label": "negative", "score": -0.8})},
        {"role": "user", "text": f"Product: {product}\nReview: {review}"},
    ]


class TestExamplesInTheBodies:
    """The example turns go after the system turn and before the row's turn, in order."""

    def test_bodies_sent_hold_the_example_turns_in_order(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame, examples: pd.DataFrame
    ) -> None:
        """The sandbox's recorded bodies are system, (user, assistant) x 2, then the row."""
        out = rows.narrative.infer(
            PROMPT, system=SYSTEM, output=SCHEMA, examples=examples, progress=False, **target
        )
        assert out["narrative_error"].isna().all()
        sent = sorted((j["input"]["messages"] for j in sandbox.jobs()), key=lambda m: m[-1]["text"])
        assert sent == [
            _expected_messages("Fan", "Too loud."),
            _expected_messages("Mug", "Nice mug."),
        ]
        assert sandbox.stats.jobs_created == 2

    def test_preview_shows_the_turns(self, rows: pd.DataFrame, examples: pd.DataFrame) -> None:
        """preview renders the same turns without sending anything."""
        view = rows.narrative.preview(PROMPT, system=SYSTEM, output=SCHEMA, examples=examples)
        assert view["messages"].iloc[0] == _expected_messages("Mug", "Nice mug.")

    def test_examples_change_the_cache_key(
        self, rows: pd.DataFrame, examples: pd.DataFrame
    ) -> None:
        """A prompt with examples is a different request from the same prompt without."""
        plain = rows.narrative.preview(PROMPT, output=SCHEMA)
        shots = rows.narrative.preview(PROMPT, output=SCHEMA, examples=examples)
        assert not set(plain["request_key"]) & set(shots["request_key"])


class TestBadExamples:
    """Bad examples raise a ConfigurationError naming the problem; nothing is sent."""

    def _fails(self, target: dict[str, str], rows: pd.DataFrame, examples: Any, match: str) -> None:
        with pytest.raises(ConfigurationError, match=match):
            rows.narrative.infer(PROMPT, output=SCHEMA, examples=examples, **target)

    def test_each_bad_example_raises_before_any_request(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame, examples: pd.DataFrame
    ) -> None:
        """Missing template column, missing field, off-schema answer, wrong type, empty frame."""
        self._fails(target, rows, examples.drop(columns="product"), "lacks a column")
        self._fails(target, rows, examples.drop(columns="score"), "'score'")
        off = examples.assign(label=["positive", "ecstatic"])
        self._fails(target, rows, off, r"row 3: .*ecstatic")
        too_big = examples.assign(score=[0.9, 3.0])
        self._fails(target, rows, too_big, r"row 3:")
        self._fails(target, rows, examples.iloc[:0], "empty")
        self._fails(target, rows, [{"label": "positive"}], "must be a DataFrame")
        assert sandbox.stats.requests == 0
