"""Tests of narrative_pandas._frame: outcomes become typed columns on the caller's index."""

from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

from narrative_pandas._exceptions import ConfigurationError
from narrative_pandas._frame import (
    METADATA_COLUMNS,
    RowOutcome,
    build_frame,
    check_collisions,
    output_column_names,
)
from narrative_pandas._models import InferenceUsage
from narrative_pandas._schema import OutputSpec


class Sentiment(BaseModel):
    """The model of the design doc."""

    label: Literal["positive", "negative", "neutral"]
    confidence: float


class Address(BaseModel):
    """A nested model."""

    city: str
    zip: Optional[int] = None  # noqa: UP045


class Person(BaseModel):
    """A model with every column kind."""

    name: str
    age: int
    adult: bool
    address: Address
    tags: list[str]


CATS = pd.CategoricalDtype(["positive", "negative", "neutral"], ordered=False)
META_DTYPES: dict[str, Any] = {
    "narrative_error": "string",
    "narrative_status": pd.CategoricalDtype(
        ["completed", "failed", "invalid", "timed_out", "stopped", "skipped"]
    ),
    "narrative_job_id": "string",
    "narrative_prompt_tokens": "Int64",
    "narrative_completion_tokens": "Int64",
    "narrative_total_tokens": "Int64",
}
SENTIMENT = OutputSpec.from_output(Sentiment)
PERSON = OutputSpec.from_output(Person)


def ok(label: str = "positive", confidence: float = 0.9, job: str = "job-1") -> RowOutcome:
    """A completed row."""
    return RowOutcome(
        output={"label": label, "confidence": confidence},
        job_id=job,
        usage=InferenceUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15),
    )


def failed(error: str = "model unavailable", job: str | None = "job-x") -> RowOutcome:
    """A failed row."""
    return RowOutcome(error=error, job_id=job, status="failed")


def frame(index: Any = None) -> pd.DataFrame:
    """Three reviews, on ``index`` (the review column as object dtype on every pandas)."""
    df = pd.DataFrame({"review": ["good", "bad", "meh"], "n": [1, 2, 3]}, index=index)
    typed: pd.DataFrame = df.astype({"review": object})
    return typed


def cells(out: pd.DataFrame, column: str) -> list[Any]:
    """A column as a list with every missing value as None."""
    return [
        None if v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v
        for v in out[column].tolist()
    ]


class TestBuildFrame:
    """build_frame returns df's columns plus typed outputs and metadata, per row position."""

    def test_columns_and_dtypes(self) -> None:
        """Exactly df's columns, then the outputs, then metadata, with the documented dtypes."""
        df = frame()
        out = build_frame(df, [ok(), failed(), ok("neutral", 0.5, "job-3")], SENTIMENT)
        assert list(out.columns) == ["review", "n", "label", "confidence", *METADATA_COLUMNS]
        assert out.dtypes.to_dict() == {
            "review": np.dtype(object),
            "n": np.dtype("int64"),
            "label": CATS,
            "confidence": "Float64",
            **META_DTYPES,
        }

    def test_values_of_completed_and_failed_rows(self) -> None:
        """Completed rows carry outputs and tokens; failed rows are NA with their error."""
        out = build_frame(frame(), [ok(), failed(), ok("neutral", 0.5, "job-3")], SENTIMENT)
        assert cells(out, "label") == ["positive", None, "neutral"]
        assert cells(out, "confidence") == [0.9, None, 0.5]
        assert cells(out, "narrative_error") == [None, "model unavailable", None]
        assert cells(out, "narrative_job_id") == ["job-1", "job-x", "job-3"]
        assert cells(out, "narrative_prompt_tokens") == [10, None, 10]
        assert cells(out, "narrative_completion_tokens") == [5, None, 5]
        assert cells(out, "narrative_total_tokens") == [15, None, 15]

    def test_all_rows_failed_keeps_columns_and_dtypes(self) -> None:
        """When every row fails the columns and dtypes are the same as on success."""
        out = build_frame(
            frame(), [failed(), failed(), RowOutcome(error="skipped", status="skipped")], SENTIMENT
        )
        good = build_frame(frame(), [ok(), ok(), ok()], SENTIMENT)
        assert out.dtypes.to_dict() == good.dtypes.to_dict()
        assert out["label"].isna().all()
        assert cells(out, "narrative_error") == [
            "model unavailable",
            "model unavailable",
            "skipped",
        ]

    @pytest.mark.parametrize(
        "index",
        [
            pd.Index([7, 7, 3]),
            pd.Index(["b", "a", "b"], name="key"),
            pd.MultiIndex.from_tuples([("x", 1), ("x", 1), ("y", 0)], names=["k", "v"]),
            pd.Index([30, 10, 20]),
            pd.date_range("2024-01-01", periods=3, freq="D")[::-1],
        ],
        ids=["duplicate", "string", "multiindex", "shuffled", "datetime"],
    )
    def test_index_is_kept_and_rows_stay_in_place(self, index: pd.Index) -> None:
        """Any index comes back identical, and row i gets outcome i (no label alignment)."""
        df = frame(index)
        out = build_frame(df, [ok("negative"), failed(), ok("neutral")], SENTIMENT)
        assert out.index.equals(df.index)
        assert out.index.names == df.index.names
        assert cells(out, "review") == ["good", "bad", "meh"]
        assert cells(out, "label") == ["negative", None, "neutral"]

    def test_df_is_not_modified(self) -> None:
        """The caller's frame keeps its columns and values; the result is independent of it."""
        df = frame()
        before = df.copy()
        out = build_frame(df, [ok(), ok(), ok()], SENTIMENT)
        assert out is not df
        pd.testing.assert_frame_equal(df, before)
        out.loc[out.index[0], "n"] = 99
        assert df["n"].tolist() == [1, 2, 3]

    def test_attrs_are_copied(self) -> None:
        """df.attrs carry over to the result as a copy."""
        df = frame()
        df.attrs["source"] = {"file": "a.csv"}
        out = build_frame(df, [ok(), ok(), ok()], SENTIMENT)
        assert out.attrs == {"source": {"file": "a.csv"}}
        out.attrs["source"]["file"] = "b.csv"
        assert df.attrs["source"]["file"] == "a.csv"

    def test_prefix(self) -> None:
        """prefix= names output and metadata columns."""
        out = build_frame(frame(), [ok(), ok(), ok()], SENTIMENT, prefix="ai_")
        assert list(out.columns) == ["review", "n", "ai_label", "ai_confidence"] + [
            "ai_" + name for name in METADATA_COLUMNS
        ]
        assert out["ai_label"].dtype == CATS
        assert out["ai_narrative_total_tokens"].dtype == "Int64"

    def test_flatten_on_and_off(self) -> None:
        """Nested objects become parent.child columns, or one object column with flatten=False."""
        person = {
            "name": "Ada",
            "age": 36,
            "adult": True,
            "address": {"city": "London", "zip": None},
            "tags": ["math", "code"],
        }
        outcomes = [RowOutcome(output=person), RowOutcome(error="boom", status="failed")]
        df = pd.DataFrame({"id": [1, 2]})
        out = build_frame(df, outcomes, PERSON)
        assert out.dtypes.to_dict() == {
            "id": np.dtype("int64"),
            "name": "string",
            "age": "Int64",
            "adult": "boolean",
            "address.city": "string",
            "address.zip": "Int64",
            "tags": np.dtype(object),
            **META_DTYPES,
        }
        assert cells(out, "address.city") == ["London", None]
        assert cells(out, "tags") == [["math", "code"], None]
        nested = build_frame(df, outcomes, PERSON, flatten=False)
        assert list(nested.columns)[:6] == ["id", "name", "age", "adult", "address", "tags"]
        assert nested["address"].dtype == np.dtype(object)
        assert cells(nested, "address") == [{"city": "London", "zip": None}, None]

    def test_lists_of_equal_length_stay_lists(self) -> None:
        """Object columns hold each row's list as one value, even when all have equal length."""
        outcomes = [
            RowOutcome(
                output={
                    "name": "a",
                    "age": 1,
                    "adult": False,
                    "address": {"city": "x"},
                    "tags": ["p", "q"],
                }
            ),
            RowOutcome(
                output={
                    "name": "b",
                    "age": 2,
                    "adult": True,
                    "address": {"city": "y"},
                    "tags": ["r", "s"],
                }
            ),
        ]
        out = build_frame(pd.DataFrame(index=[0, 1]), outcomes, PERSON)
        assert cells(out, "tags") == [["p", "q"], ["r", "s"]]

    def test_empty_frame(self) -> None:
        """An empty frame gives an empty result with every column and dtype."""
        df = frame().iloc[:0]
        out = build_frame(df, [], SENTIMENT)
        assert len(out) == 0
        assert out.dtypes.to_dict() == {
            "review": np.dtype(object),
            "n": np.dtype("int64"),
            "label": CATS,
            "confidence": "Float64",
            **META_DTYPES,
        }

    def test_frame_without_columns(self) -> None:
        """A frame with an index but no columns still gets the new columns on that index."""
        df = pd.DataFrame(index=pd.Index(["a", "a"]))
        out = build_frame(df, [ok(), failed()], SENTIMENT)
        assert list(out.columns) == ["label", "confidence", *METADATA_COLUMNS]
        assert out.index.equals(df.index)

    def test_values_that_do_not_fit_become_na(self) -> None:
        """A category outside the categories, or a value of the wrong type, becomes NA."""
        spec = OutputSpec.from_output(
            {
                "type": "object",
                "properties": {
                    "label": {"enum": ["a", "b"]},
                    "n": {"type": "integer"},
                    "flag": {"type": "boolean"},
                },
            }
        )
        outcomes = [
            RowOutcome(output={"label": "zzz", "n": 2.5, "flag": "yes"}),
            RowOutcome(output={"label": "b", "n": 3.0, "flag": False}),
            RowOutcome(output={"label": 1, "n": "x", "flag": None}),
        ]
        out = build_frame(pd.DataFrame(index=range(3)), outcomes, spec)
        assert cells(out, "label") == [None, "b", None]
        assert cells(out, "n") == [None, 3, None]
        assert cells(out, "flag") == [None, False, None]
        assert out["label"].dtype == pd.CategoricalDtype(["a", "b"])

    def test_outcome_count_must_match(self) -> None:
        """One outcome per row is required."""
        with pytest.raises(ValueError, match="2 outcomes for a frame of 3 rows"):
            build_frame(frame(), [ok(), ok()], SENTIMENT)

    def test_duplicate_column_names_in_df(self) -> None:
        """A frame with duplicate column labels keeps them all, in place."""
        df = pd.DataFrame([[1, 2], [3, 4]], columns=["a", "a"])
        out = build_frame(df, [ok(), ok()], SENTIMENT)
        assert list(out.columns) == ["a", "a", "label", "confidence", *METADATA_COLUMNS]
        assert out.iloc[:, 1].tolist() == [2, 4]

    def test_many_rows(self) -> None:
        """20,000 rows build, each row keeping its own outcome."""
        n = 20_000
        df = pd.DataFrame({"x": np.arange(n)}, index=np.arange(n)[::-1] % 7)
        outcomes = [ok(job=f"j{i}") if i % 2 else failed(job=None) for i in range(n)]
        out = build_frame(df, outcomes, SENTIMENT)
        assert len(out) == n
        assert out["label"].isna().sum() == n // 2
        assert out["narrative_job_id"].iloc[-1] == f"j{n - 1}"
        assert out.index.equals(df.index)


class TestColumnNames:
    """output_column_names and check_collisions run before anything is sent."""

    def test_output_column_names(self) -> None:
        """The prefixed output columns, in order, without metadata."""
        assert output_column_names(["review"], PERSON, prefix="p_") == [
            "p_name", "p_age", "p_adult", "p_address.city", "p_address.zip", "p_tags",
        ]  # fmt: skip
        assert output_column_names([], PERSON, flatten=False)[3] == "address"

    def test_no_collision(self) -> None:
        """Distinct names pass."""
        check_collisions(["review", "n"], SENTIMENT)

    def test_collision_with_an_input_column(self) -> None:
        """A new column that would overwrite an input column is refused with a prefix to use."""
        with pytest.raises(ConfigurationError) as info:
            check_collisions(["review", "label"], SENTIMENT)
        assert str(info.value) == (
            "the output would overwrite existing column 'label'. Pass prefix='ai_' to name the "
            "new columns ai_label, ..., or drop or rename those columns first."
        )
        assert isinstance(info.value, ValueError)

    def test_collision_with_an_earlier_result(self) -> None:
        """Running again on a result frame says so and suggests a free prefix."""
        earlier = build_frame(frame(), [ok(), ok(), ok()], SENTIMENT)
        with pytest.raises(ConfigurationError) as info:
            check_collisions(earlier.columns, SENTIMENT)
        message = str(info.value)
        assert message.startswith(
            "the output would overwrite existing columns 'label', 'confidence', "
            "'narrative_error', 'narrative_status', 'narrative_job_id'"
        )
        assert "(this frame looks like an earlier result of infer)" in message
        assert "Pass prefix='ai_'" in message
        check_collisions(earlier.columns, SENTIMENT, prefix="ai_")

    def test_suggested_prefix_is_free(self) -> None:
        """The suggested prefix itself collides with nothing."""
        with pytest.raises(ConfigurationError, match="Pass prefix='llm_'"):
            check_collisions(["label", "ai_label"], SENTIMENT)

    def test_collision_of_flattened_names(self) -> None:
        """Flattened names are checked as they will appear."""
        with pytest.raises(ConfigurationError, match=r"'address\.city'"):
            check_collisions(["address.city"], PERSON)
        check_collisions(["address.city"], PERSON, flatten=False)

    def test_property_named_like_metadata(self) -> None:
        """An output property named like a metadata column is refused."""
        spec = OutputSpec.from_output(
            {"type": "object", "properties": {"narrative_error": {"type": "string"}}}
        )
        with pytest.raises(ConfigurationError, match="named like a metadata column"):
            check_collisions([], spec)

    def test_non_string_columns_do_not_collide(self) -> None:
        """Integer column labels never clash with the string output names."""
        check_collisions([0, 1, ("label", "x")], SENTIMENT)
