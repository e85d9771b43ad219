"""evaluate and confusion: figures equal scikit-learn's, failed and unlabelled rows left out."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
)

import narrative_pandas as npd
from narrative_pandas import ConfigurationError

LABELS = ["positive", "negative", "neutral", "mixed"]  # "mixed" is never predicted below
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": LABELS},
        "flag": {"type": "boolean"},
        "score": {"type": "number"},
        "stars": {"type": "integer"},
    },
    "required": ["label", "flag", "score", "stars"],
}


def _known_frame() -> pd.DataFrame:
    """A result-shaped frame with known answers, two failed rows and missing truth."""
    rng = np.random.default_rng(7)
    n = 60
    truth = rng.choice(LABELS, size=n)
    predicted = np.where(rng.random(n) < 0.7, truth, rng.choice(LABELS[:3], size=n))
    predicted = np.where(predicted == "mixed", "neutral", predicted)  # never "mixed"
    flag_truth = rng.random(n) < 0.5
    flag = np.where(rng.random(n) < 0.8, flag_truth, ~flag_truth)
    score_truth = rng.normal(size=n)
    score = score_truth + rng.normal(scale=0.5, size=n)
    stars_truth = rng.integers(1, 6, size=n)
    stars = np.clip(stars_truth + rng.integers(-1, 2, size=n), 1, 5)
    df = pd.DataFrame(
        {
            "text": [f"row {i}" for i in range(n)],
            "label": pd.Categorical(predicted, categories=LABELS),
            "flag": pd.array(flag, dtype="boolean"),
            "score": pd.array(score, dtype="Float64"),
            "stars": pd.array(stars, dtype="Int64"),
            "narrative_error": pd.array([None] * n, dtype="string"),
            "true_label": pd.array(truth, dtype="string"),
            "true_flag": pd.array(flag_truth, dtype="boolean"),
            "true_score": score_truth,
            "true_stars": pd.array(stars_truth, dtype="Int64"),
        },
        index=pd.Index([f"r{i}" for i in range(n)], name="id"),
    )
    failed = [3, 17]
    for column in ("label", "flag", "score", "stars"):
        df.iloc[failed, df.columns.get_loc(column)] = pd.NA
    df.iloc[failed, df.columns.get_loc("narrative_error")] = "failed: model error"
    df.iloc[[5, 40], df.columns.get_loc("true_label")] = pd.NA
    df.iloc[[8], df.columns.get_loc("true_flag")] = pd.NA
    df.iloc[[9], df.columns.get_loc("true_score")] = np.nan
    return df


TRUTH = {"label": "true_label", "flag": "true_flag", "score": "true_score", "stars": "true_stars"}


def _kept(df: pd.DataFrame, truth_column: str) -> pd.Series:
    return df["narrative_error"].isna() & df[truth_column].notna()


class TestEvaluateEqualsScikitLearn:
    """Every figure equals scikit-learn's on the rows that are compared."""

    def test_enum_field_with_a_category_never_predicted(self) -> None:
        """Accuracy, macro F1 and kappa of an enum match sklearn ("mixed" is never predicted)."""
        df = _known_frame()
        row = df.narrative.evaluate(TRUTH, fields=["label"]).iloc[0]
        keep = _kept(df, "true_label")
        t, p = df.loc[keep, "true_label"].astype(str), df.loc[keep, "label"].astype(str)
        assert "mixed" in set(t) and "mixed" not in set(p)
        assert row["field"] == "label" and row["kind"] == "categorical"
        assert row["n"] == keep.sum() == 56
        assert row["n_missing"] == 4 and row["n_failed"] == 2
        assert row["accuracy"] == pytest.approx(accuracy_score(t, p))
        assert row["macro_f1"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0))
        assert row["cohen_kappa"] == pytest.approx(cohen_kappa_score(t, p))
        assert math.isnan(row["mae"]) and math.isnan(row["pearson_r"])

    def test_boolean_field(self) -> None:
        """A boolean field is scored as two classes, like sklearn on the bools."""
        df = _known_frame()
        row = df.narrative.evaluate(TRUTH, fields=["flag"]).iloc[0]
        keep = _kept(df, "true_flag")
        t, p = df.loc[keep, "true_flag"].astype(bool), df.loc[keep, "flag"].astype(bool)
        assert row["n"] == 57
        assert row["accuracy"] == pytest.approx(accuracy_score(t, p))
        assert row["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
        assert row["cohen_kappa"] == pytest.approx(cohen_kappa_score(t, p))

    def test_number_field(self) -> None:
        """MAE and Pearson's r of a number field match sklearn and numpy; no class figures."""
        df = _known_frame()
        row = df.narrative.evaluate(TRUTH, fields=["score"]).iloc[0]
        keep = _kept(df, "true_score")
        t, p = df.loc[keep, "true_score"], df.loc[keep, "score"].astype(float)
        assert row["kind"] == "numeric" and row["n"] == 57
        assert row["mae"] == pytest.approx(mean_absolute_error(t, p))
        assert row["pearson_r"] == pytest.approx(np.corrcoef(t, p)[0, 1])
        assert math.isnan(row["accuracy"])

    def test_integer_field_gets_both_families(self) -> None:
        """An integer rating is scored both as classes and as numbers."""
        df = _known_frame()
        row = df.narrative.evaluate(TRUTH, fields=["stars"]).iloc[0]
        keep = _kept(df, "true_stars")
        t, p = df.loc[keep, "true_stars"].astype(int), df.loc[keep, "stars"].astype(int)
        assert row["kind"] == "integer"
        assert row["accuracy"] == pytest.approx(accuracy_score(t, p))
        assert row["cohen_kappa"] == pytest.approx(cohen_kappa_score(t, p))
        assert row["mae"] == pytest.approx(mean_absolute_error(t, p))
        assert row["pearson_r"] == pytest.approx(np.corrcoef(t, p)[0, 1])

    def test_one_row_per_field_in_the_order_given(self) -> None:
        """A mapping of four fields gives four rows with the documented columns."""
        out = _known_frame().narrative.evaluate(TRUTH)
        assert list(out["field"]) == ["label", "flag", "score", "stars"]
        assert list(out.columns) == [
            "field", "kind", "n", "n_missing", "n_failed",
            "accuracy", "macro_f1", "cohen_kappa", "mae", "pearson_r",
        ]  # fmt: skip
        assert out["n"].dtype == "int64"

    def test_status_column_leaves_out_rows_not_completed(self) -> None:
        """Where narrative_status exists, a row whose status is not completed is left out."""
        df = _known_frame()
        df["narrative_status"] = pd.array(["completed"] * len(df), dtype="string")
        df.iloc[10, df.columns.get_loc("narrative_status")] = "cancelled"
        row = df.narrative.evaluate(TRUTH, fields=["label"]).iloc[0]
        assert row["n"] == 55 and row["n_failed"] == 3

    def test_series_truth_is_aligned_on_the_index(self) -> None:
        """A Series in another order is aligned by label, not position."""
        df = _known_frame()
        shuffled = df["true_label"].sample(frac=1.0, random_state=1)
        by_series = df.narrative.evaluate({"label": shuffled})
        by_column = df.narrative.evaluate({"label": "true_label"})
        pd.testing.assert_frame_equal(by_series, by_column)


class TestEvaluateOnARealRun:
    """evaluate reads the output fields of an infer result from its attrs."""

    def test_infer_result_with_failed_rows(self, sandbox: Any, target: dict[str, str]) -> None:
        """On the sandbox, failed rows are counted out and the figure is sklearn's."""
        texts = [f"text {i} {'good' if i % 3 else 'bad'}" for i in range(30)]

        def responder(request: dict[str, Any]) -> dict[str, Any]:
            text = request["messages"][-1]["text"]
            if "text 7 " in text or "text 8 " in text:
                return {"label": "not-a-label"}  # off-schema: the row fails
            return {"label": "positive" if "good" in text else "negative"}

        sandbox.configure(responder=responder, validate_responder=False)
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
            "required": ["label"],
        }
        df = pd.DataFrame({"text": texts})
        df["truth"] = ["positive" if i % 4 else "negative" for i in range(30)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", npd.RowsFailedWarning)
            out = df.narrative.infer("{text}", output=schema, progress=False, **target)
        row = out.narrative.evaluate("truth").iloc[0]
        keep = out["narrative_error"].isna()
        assert row["n"] == 28 and row["n_failed"] == 2
        t, p = out.loc[keep, "truth"], out.loc[keep, "label"].astype(str)
        assert row["accuracy"] == pytest.approx(accuracy_score(t, p))
        assert row["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))


class TestEvaluateErrors:
    """Unclear requests raise a ConfigurationError that says what to pass."""

    def test_several_fields_need_a_choice(self) -> None:
        """A single truth column for a result with several fields asks which field."""
        df = _known_frame()
        df.attrs["narrative"] = {"fields": ["label", "flag", "score", "stars"]}
        with pytest.raises(ConfigurationError, match="fields="):
            df.narrative.evaluate("true_label")
        assert df.narrative.evaluate("true_label", fields=["label"])["n"].iloc[0] == 56

    def test_unknown_truth_column(self) -> None:
        """A truth that is not a column names the columns there are."""
        with pytest.raises(ConfigurationError, match="not a column"):
            _known_frame().narrative.evaluate({"label": "nope"})

    def test_frame_without_layout_needs_fields(self) -> None:
        """A hand-made frame with a single truth column must say which field it is for."""
        with pytest.raises(ConfigurationError, match="pass fields"):
            _known_frame().narrative.evaluate("true_label")


class TestConfusion:
    """confusion is the labelled matrix, in schema order, shown as a heatmap table."""

    def test_equals_sklearn_in_schema_order(self) -> None:
        """Counts equal sklearn's confusion_matrix with the schema's labels."""
        df = _known_frame()
        cm = df.narrative.confusion("label", "true_label")
        keep = _kept(df, "true_label")
        expected = confusion_matrix(
            df.loc[keep, "true_label"].astype(str), df.loc[keep, "label"].astype(str), labels=LABELS
        )
        assert list(cm.index) == LABELS and list(cm.columns) == LABELS
        assert cm.index.name == "truth" and cm.columns.name == "answer"
        np.testing.assert_array_equal(cm.to_numpy(), expected)
        assert int(cm["mixed"].sum()) == 0  # never predicted, still a column

    def test_boolean_order_and_normalize(self) -> None:
        """Booleans come False, True; normalize='truth' makes each row sum to one."""
        cm = _known_frame().narrative.confusion("flag", "true_flag", normalize="truth")
        assert list(cm.index) == [False, True]
        np.testing.assert_allclose(cm.sum(axis=1).to_numpy(), [1.0, 1.0])

    def test_heatmap_html_without_matplotlib(self) -> None:
        """The notebook view is a styled table with background colours; slices are plain frames."""
        cm = _known_frame().narrative.confusion("label", "true_label")
        html = cm._repr_html_()
        assert html is not None and "background-color: rgb(" in html
        assert type(cm.loc[["positive"]]) is pd.DataFrame

    def test_bad_normalize(self) -> None:
        """An unknown normalize= is refused with the choices."""
        with pytest.raises(ConfigurationError, match="'truth'"):
            _known_frame().narrative.confusion("label", "true_label", normalize="rows")
