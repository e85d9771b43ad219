"""Tests of the demo data set and the demo's rule-based responder."""

from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from narrative_pandas._demo import (
    REVIEW_PROMPT,
    REVIEW_SYSTEM,
    ReviewLabel,
    review_responder,
)
from narrative_pandas.data import load_reviews

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_reviews.py"
CSV = ROOT / "narrative_pandas" / "data" / "reviews.csv"
VALIDATOR = jsonschema.Draft202012Validator(ReviewLabel.model_json_schema())


def _request(user: str, *, system: str | None = REVIEW_SYSTEM) -> dict[str, Any]:
    """A run request body as the sandbox hands it to a responder."""
    messages = [{"role": "system", "text": system}] if system is not None else []
    messages.append({"role": "user", "text": user})
    return {
        "data_plane_id": "fef9904e-d263-4930-85f7-1e28cce40f89",
        "model": "anthropic.claude-haiku-4.5",
        "messages": messages,
        "inference_config": {"output_format_schema": ReviewLabel.model_json_schema()},
        "tags": ["demo"],
    }


def _label(review: str, product: str = "Folio 7 E-Reader") -> dict[str, Any]:
    """The responder's answer for one review rendered through the demo prompt."""
    return review_responder(_request(REVIEW_PROMPT.format(product=product, review=review)))


def _assert_valid(output: dict[str, Any]) -> None:
    """The output satisfies the schema both as JSON Schema and as the pydantic model."""
    VALIDATOR.validate(output)
    ReviewLabel.model_validate(output)


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    """The shipped review data."""
    return load_reviews()


class TestLoadReviews:
    """load_reviews returns the documented frame."""

    def test_shape_and_columns(self, reviews: pd.DataFrame) -> None:
        """300 rows with the six documented columns, in order, on a RangeIndex."""
        assert reviews.shape == (300, 6)
        assert list(reviews.columns) == [
            "review_id",
            "product",
            "category",
            "stars",
            "review",
            "date",
        ]
        assert isinstance(reviews.index, pd.RangeIndex)

    def test_dtypes(self, reviews: pd.DataFrame) -> None:
        """Ids and stars are int64, text columns are the string dtype, date is a naive datetime."""
        assert reviews["review_id"].dtype == "int64"
        assert reviews["stars"].dtype == "int64"
        for column in ("product", "category", "review"):
            assert reviews[column].dtype == "string", column
        assert pd.api.types.is_datetime64_dtype(reviews["date"])
        assert getattr(reviews["date"].dtype, "tz", None) is None

    def test_values(self, reviews: pd.DataFrame) -> None:
        """Ids run 1..300, stars 1..5, eight categories, dates in order within 2024-2025."""
        assert reviews["review_id"].tolist() == list(range(1, 301))
        assert set(reviews["stars"]) == {1, 2, 3, 4, 5}
        assert set(reviews["category"]) == {
            "headphones",
            "coffee grinder",
            "running shoes",
            "desk lamp",
            "backpack",
            "blender",
            "e-reader",
            "yoga mat",
        }
        assert reviews["date"].is_monotonic_increasing
        assert reviews["date"].min() >= pd.Timestamp("2024-01-01")
        assert reviews["date"].max() <= pd.Timestamp("2025-06-30")
        assert reviews[["product", "category", "stars", "date"]].notna().all().all()

    def test_missing_and_long_reviews(self, reviews: pd.DataFrame) -> None:
        """Exactly six reviews are missing (<NA>, not ""), and two are over 1000 characters."""
        assert int(reviews["review"].isna().sum()) == 6
        assert not (reviews["review"] == "").any()
        lengths = reviews["review"].str.len()
        assert int((lengths > 1000).sum()) == 2
        assert int((lengths.dropna() < 10).sum()) == 0

    def test_file_is_small_utf8(self) -> None:
        """The committed CSV is UTF-8 with plain line ends and under 100 KB."""
        raw = CSV.read_bytes()
        assert len(raw) < 100_000
        assert b"\r" not in raw
        assert "Café" in raw.decode("utf-8")

    def test_prompt_placeholders_are_columns(self, reviews: pd.DataFrame) -> None:
        """Every placeholder of the demo prompt names a column of the data."""
        fields = {name for _, name, _, _ in string.Formatter().parse(REVIEW_PROMPT) if name}
        assert fields == {"product", "review"}
        assert fields <= set(reviews.columns)


class TestGenerator:
    """scripts/make_reviews.py reproduces the committed CSV."""

    def test_reproduces_committed_csv(self, tmp_path: Path) -> None:
        """Running the script with --out writes the committed file byte for byte."""
        out = tmp_path / "reviews.csv"
        subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, timeout=60)
        assert out.read_bytes() == CSV.read_bytes()


class TestResponderSchema:
    """The responder's output always satisfies ReviewLabel's schema."""

    def test_schema_shape(self) -> None:
        """The schema is valid Draft 2020-12, closed, and bounds score and topics."""
        schema = ReviewLabel.model_json_schema()
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == {"sentiment", "score", "topics"}
        assert schema["properties"]["score"]["minimum"] == -1
        assert schema["properties"]["score"]["maximum"] == 1
        assert schema["properties"]["topics"]["maxItems"] == 4
        assert schema["properties"]["sentiment"]["enum"] == [
            "positive",
            "negative",
            "mixed",
            "neutral",
        ]

    def test_every_review_in_the_data(self, reviews: pd.DataFrame) -> None:
        """Each of the 300 rows (missing reviews rendered as "") yields a valid answer."""
        for product, review in zip(reviews["product"], reviews["review"], strict=True):
            _assert_valid(_label(review if isinstance(review, str) else "", product))

    @pytest.mark.parametrize(
        "request_body",
        [
            {},
            {"messages": None},
            {"messages": "Review: great"},
            {"messages": [None, 3, "x"]},
            {"messages": [{"role": "system", "text": "Great product, love it."}]},
            {"messages": [{"role": "user"}]},
            {"messages": [{"role": "user", "text": None}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
        ],
        ids=[
            "empty-body",
            "null-messages",
            "string-messages",
            "junk-messages",
            "no-user-message",
            "user-without-text",
            "null-text",
            "null-content-block",
        ],
    )
    def test_malformed_requests_count_as_empty(self, request_body: dict[str, Any]) -> None:
        """Malformed requests or a missing user message give neutral, 0, no topics."""
        output = review_responder(request_body)
        _assert_valid(output)
        assert output == {"sentiment": "neutral", "score": 0.0, "topics": []}

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "   \n\t ",
            "nan",
            "<NA>",
            "Review: ",
            "😀🔥💯 ★★★★★",
            "\u202eetirovaf ym si sihT\u202c",
            "e\u0301\u0301\u0301 zero\u200bwidth \ufeff",
            "\x00\x01\x1f control",
            "\ud800 lone surrogate",
            "素晴らしい製品です。 ممتاز جدا",
            "ÉNORME BATTERIE, ÇA VA",
            "!!!???...,,,;;;",
            "not " * 500,
            "too " * 500,
            "battery noise comfort price shipping durable service fit manual quality",
            "great " * 5000,
            "awful " * 5000,
        ],
    )
    def test_edge_case_texts(self, text: str) -> None:
        """Empty, unicode-heavy, control-character and enormous texts still validate."""
        _assert_valid(review_responder(_request(text)))
        _assert_valid(_label(text))

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_any_text(self, text: str) -> None:
        """Any text at all yields a valid answer."""
        _assert_valid(review_responder(_request(text)))

    def test_extreme_texts_stay_in_range(self) -> None:
        """A wall of praise or of complaints scores at the ends of [-1, 1], never beyond."""
        assert review_responder(_request("great " * 5000)) == {
            "sentiment": "positive",
            "score": 1.0,
            "topics": [],
        }
        worst = review_responder(_request("awful " * 5000))
        assert worst["sentiment"] == "negative"
        assert worst["score"] == -1.0

    def test_topics_capped_at_four(self) -> None:
        """A review naming ten topics reports the first four, in order of mention."""
        text = "battery noise comfort price shipping durable service fit manual quality"
        assert review_responder(_request(text))["topics"] == [
            "battery",
            "noise",
            "comfort",
            "price",
        ]


class TestResponderLabels:
    """The responder's labels make sense for a reader."""

    def test_agrees_with_stars(self, reviews: pd.DataFrame) -> None:
        """On non-empty rows rated 4-5 or 1-2, the label agrees with the stars at least 80% of
        the time (5 or 4 stars: positive or mixed; 1 or 2 stars: negative or mixed)."""
        polar = reviews[reviews["review"].notna() & (reviews["stars"] != 3)]
        agree = 0
        for row in polar.itertuples():
            sentiment = _label(str(row.review), str(row.product))["sentiment"]
            expected = {"positive", "mixed"} if row.stars >= 4 else {"negative", "mixed"}
            agree += sentiment in expected
        assert len(polar) > 200
        assert agree / len(polar) >= 0.8

    def test_every_label_occurs(self, reviews: pd.DataFrame) -> None:
        """The data exercises all four sentiments and all ten topics."""
        labels = [
            _label(review, product)
            for product, review in zip(reviews["product"], reviews["review"], strict=True)
            if isinstance(review, str)
        ]
        assert {label["sentiment"] for label in labels} == {
            "positive",
            "negative",
            "mixed",
            "neutral",
        }
        assert {topic for label in labels for topic in label["topics"]} == set(
            ReviewLabel.model_json_schema()["properties"]["topics"]["items"]["enum"]
        )

    @pytest.mark.parametrize(
        ("text", "sentiment", "topics"),
        [
            (
                "The battery lasts forever and the sound is excellent.",
                "positive",
                ["battery", "quality"],
            ),
            (
                "Not comfortable at all, and the strap broke after a week.",
                "negative",
                ["comfort", "durability"],
            ),
            (
                "Great sound, but the battery dies by lunchtime and it is overpriced.",
                "mixed",
                ["quality", "battery", "price"],
            ),
            ("No complaints, shipping was quick.", "positive", ["shipping"]),
            ("Not bad at all.", "positive", []),
            ("Would not recommend.", "negative", []),
            ("Would not buy again.", "negative", []),
            ("They run half a size small and pinch my toes.", "negative", ["fit", "comfort"]),
            ("Way too loud for an open-plan office.", "negative", ["noise"]),
            ("Customer service sent a replacement without any fuss.", "positive", ["service"]),
            ("It arrived on Tuesday.", "neutral", ["shipping"]),
            ("I bought it as a gift for my brother.", "neutral", []),
            ("Worth every penny.", "positive", ["price"]),
            ("Waste of money, it fell apart in a week.", "negative", ["price", "durability"]),
            ("It’s not good, the manual is confusing.", "negative", ["instructions"]),
        ],
    )
    def test_hand_picked_sentences(self, text: str, sentiment: str, topics: list[str]) -> None:
        """Plain sentences get the sentiment and topics a reader would give them."""
        output = _label(text)
        assert output["sentiment"] == sentiment
        assert output["topics"] == topics
        sign = {"positive": 1, "negative": -1, "neutral": 0}.get(sentiment)
        if sign is not None:
            assert (output["score"] > 0) - (output["score"] < 0) == sign

    def test_exact_answer(self) -> None:
        """A simple negated review gets exactly the documented answer."""
        assert _label("Not comfortable.") == {
            "sentiment": "negative",
            "score": -0.43,
            "topics": ["comfort"],
        }

    def test_reads_only_the_review_line(self) -> None:
        """Instructions around the Review: line (even naming topics and labels) are ignored."""
        prompt = (
            "Topics: battery, noise, price. Answer positive or negative.\n"
            "Review: The screen is crisp.\n\nGreat job, thanks! Is it broken or excellent?"
        )
        assert review_responder(_request(prompt)) == {
            "sentiment": "positive",
            "score": 0.5,
            "topics": ["quality"],
        }

    def test_last_user_message_and_content_blocks(self) -> None:
        """Only the last user turn counts, and the content-block message shape is read too."""
        body = {
            "messages": [
                {"role": "user", "text": "Review: Terrible, broken, awful."},
                {"role": "assistant", "text": '{"sentiment": "negative"}'},
                {"role": "user", "content": [{"type": "text", "text": "Review: Excellent grip."}]},
            ]
        }
        assert review_responder(body) == {
            "sentiment": "positive",
            "score": 0.5,
            "topics": ["quality"],
        }

    def test_deterministic_and_pure(self) -> None:
        """The same request gives the same answer and is left unmodified."""
        body = _request(REVIEW_PROMPT.format(product="Vortex 900 Blender", review="Loud but fast."))
        snapshot = repr(body)
        assert review_responder(body) == review_responder(body)
        assert repr(body) == snapshot
