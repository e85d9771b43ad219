"""review: the queue order, labels, apply, the widget's Python side, and reviews that persist."""

from __future__ import annotations

import contextlib
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import python_script, spawn

import narrative_pandas as npd
from narrative_pandas import ConfigurationError

HAIKU, SONNET = "anthropic.claude-haiku-4.5", "anthropic.claude-sonnet-4.5"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["label", "stars"],
}


def responder(request: dict[str, Any]) -> dict[str, Any]:
    """'broken' rows fail (off-schema answer); 'split' rows differ between the two models."""
    text = request["messages"][-1]["text"]
    if "broken" in text:
        return {"label": "??"}
    if "split" in text and "sonnet" in request["model"]:
        return {"label": "negative", "stars": 2}
    return {"label": "positive", "stars": 4}


TEXTS = ["fine one", "split two", "fine three", "broken four", "split five"]


def _compare(target: dict[str, str], cache: Any = True) -> pd.DataFrame:
    df = pd.DataFrame({"text": TEXTS}, index=pd.Index([101, 102, 103, 104, 105], name="id"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", npd.RowsFailedWarning)
        return df.narrative.compare(
            "Text: {text}",
            output=SCHEMA,
            models={"haiku": HAIKU, "sonnet": SONNET},
            cache=cache,
            progress=False,
            **target,
        )


@pytest.fixture
def cmp(sandbox: Any, target: dict[str, str]) -> pd.DataFrame:
    sandbox.configure(responder=responder, validate_responder=False)
    return _compare(target)


class TestReviewOrder:
    """Failed rows first, then the least agreement, then the rest."""

    def test_auto_order_and_reasons(self, cmp: pd.DataFrame) -> None:
        """104 failed, 102 and 105 disagree, then 101 and 103."""
        rv = cmp.narrative.review(name="order")
        assert rv.order == [104, 102, 105, 101, 103]
        assert [rv.reason(i) for i in range(3)] == ["failed", "agreement 0.50", "agreement 0.50"]
        assert rv.current == 104

    def test_explicit_order_and_column(self, cmp: pd.DataFrame) -> None:
        """A list of labels is the queue as given; a column sorts ascending."""
        assert cmp.narrative.review(sort_by=[103, 101], name="x").order == [103, 101]
        assert cmp.narrative.review(sort_by="agreement", name="y").order[:2] == [104, 102]
        with pytest.raises(ConfigurationError, match="not in the frame"):
            cmp.narrative.review(sort_by=[999])


class TestReviewLabels:
    """accept/correct make labels; apply puts them in the frame."""

    def test_accept_correct_labels_and_apply(self, cmp: pd.DataFrame) -> None:
        """One accepted and one edited row show in labels and in apply's frame, nothing else."""
        rv = cmp.narrative.review(fields=["label"], name="labels")
        with pytest.raises(ConfigurationError, match="no answer to accept"):
            rv.accept()  # 104 failed in both variants: there is no answer to accept
        rv.correct("neutral")  # 104: the failed row gets a hand label
        rv.next()
        rv.accept()  # 102: majority of a 1-1 tie is the first variant's "positive"
        labels = rv.labels
        assert list(labels["index"]) == [104, 102]
        assert list(labels["field"]) == ["label", "label"]
        assert list(labels["value"]) == ["neutral", "positive"]
        assert list(labels["source"]) == ["edited", "accepted"]
        assert str(labels["reviewed_at"].dtype) == "datetime64[ns, UTC]"
        fixed = rv.apply(cmp)
        assert list(fixed["narrative_reviewed"]) == [False, True, False, True, False]
        assert fixed.loc[104, "label"] == "neutral" and fixed.loc[102, "label"] == "positive"
        assert fixed["label"].dtype == "category"
        assert rv.reviewed == 2 and rv.current == 105

    def test_invalid_value_is_refused(self, cmp: pd.DataFrame) -> None:
        """A value outside the enum or range raises and is not kept."""
        rv = cmp.narrative.review(name="invalid")
        with pytest.raises(ConfigurationError, match="not a valid 'label'"):
            rv.correct("great", field="label")
        with pytest.raises(ConfigurationError, match="not a valid 'stars'"):
            rv.correct(9, field="stars")
        with pytest.raises(ConfigurationError, match="say which field"):
            rv.correct("positive")
        assert rv.labels.empty

    def test_labels_serve_as_truth(self, cmp: pd.DataFrame) -> None:
        """evaluate(review) scores each variant against the reviewed values."""
        rv = cmp.narrative.review(fields=["label"], name="truth")
        rv.goto(102)
        rv.correct("negative")
        rv.goto(105)
        rv.correct("negative")
        figures = cmp.narrative.evaluate(rv)
        assert list(figures["variant"]) == ["haiku", "sonnet"]
        assert list(figures["n"]) == [2, 2]
        assert list(figures["accuracy"]) == [0.0, 1.0]


class TestReviewWidgetPythonSide:
    """The widget's controls call the review (clicks and keys as the kernel receives them)."""

    def test_buttons_toggles_and_keys(self, cmp: pd.DataFrame) -> None:
        """Click Accept, pick an enum button, type 'n' and 'p' in the key box."""
        rv = cmp.narrative.review(fields=["label"], sort_by=[102, 105, 101], name="widget")
        rv.widget()
        view = rv._widget
        assert "Row 1 of 3" in view.header.value and "split two" in view.inputs.value
        assert "haiku" in view.answers.value and "sonnet" in view.answers.value
        view.accept_button.click()
        assert rv.current == 105 and "reviewed 1" in view.header.value
        editor = view.editors["label"]
        assert list(editor.options) == [
            ("positive", "positive"),
            ("negative", "negative"),
            ("neutral", "neutral"),
        ]
        editor.value = "negative"  # a click on the "negative" button
        assert rv.current == 105
        view.keys.value = "n"
        assert view.keys.value == "" and rv.current == 101
        view.keys.value = "p"
        assert rv.current == 105 and editor.value == "negative"
        view.keys.value = "3"  # third enum value
        assert list(rv.labels["value"]) == ["positive", "neutral"]
        assert list(rv.labels["source"]) == ["accepted", "edited"]


class TestReviewPersists:
    """With a disk cache, a review survives the process and resumes where it stopped."""

    def test_labels_come_back_in_a_new_process(
        self, sandbox: Any, target: dict[str, str], tmp_path: Path
    ) -> None:
        """Labels made here are read by a new process on the same cache; it resumes at row 3."""
        sandbox.configure(responder=responder, validate_responder=False)
        path = tmp_path / "labels.sqlite"
        cmp = _compare(target, cache=str(path))
        rv = cmp.narrative.review(fields=["label"])
        rv.correct("neutral")
        rv.next()
        rv.accept()
        assert rv.current == 105
        with contextlib.closing(sqlite3.connect(path)) as conn:
            stored = conn.execute(
                "SELECT row_index, field, source FROM npd_review_labels"
            ).fetchall()
        assert sorted(stored) == [("102", "label", "accepted"), ("104", "label", "edited")]
        script = python_script(
            tmp_path / "again.py",
            f"""
            import warnings, pandas as pd, narrative_pandas as npd
            warnings.simplefilter("ignore")
            df = pd.DataFrame({{"text": {TEXTS!r}}},
                              index=pd.Index([101, 102, 103, 104, 105], name="id"))
            cmp = df.narrative.compare("Text: {{text}}", output={SCHEMA!r},
                models={{"haiku": {HAIKU!r}, "sonnet": {SONNET!r}}}, cache={str(path)!r},
                progress=False, api_key={target["api_key"]!r}, base_url={target["base_url"]!r},
                data_plane_id={target["data_plane_id"]!r})
            rv = cmp.narrative.review(fields=["label"])
            print("LABELS", list(rv.labels["index"]), list(rv.labels["value"]),
                  list(rv.labels["source"]), "AT", rv.current,
                  "JOBS", cmp.attrs["narrative"]["jobs_submitted"])
            """,
        )
        proc = spawn(script)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        expected = "LABELS [104, 102] ['neutral', 'positive'] ['edited', 'accepted'] AT 105"
        assert expected in stdout
        assert (
            "JOBS 2" in stdout
        )  # only the failed row's job is sent again (failures aren't cached)


class TestReviewEditors:
    """Booleans get a toggle, numbers and strings a text box checked against the schema."""

    def test_toggle_and_checked_text_boxes(self) -> None:
        """An out-of-range number is refused in the widget; valid edits and undo work."""
        schema = {
            "type": "object",
            "properties": {
                "urgent": {"type": "boolean"},
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "note": {"type": "string", "maxLength": 10},
            },
            "required": ["urgent", "stars", "note"],
        }
        df = pd.DataFrame(
            {
                "text": ["a", "b"],
                "urgent": pd.array([True, False], dtype="boolean"),
                "stars": pd.array([4, 2], dtype="Int64"),
                "note": pd.array(["ok", "meh"], dtype="string"),
                "narrative_error": pd.array([None, None], dtype="string"),
            }
        )
        df.attrs["narrative"] = {
            "fields": ["urgent", "stars", "note"],
            "schema": schema,
            "template_columns": ["text"],
        }
        rv = df.narrative.review(name="editors")
        rv.widget()
        view = rv._widget
        assert [rv.kind(f) for f in rv.fields] == ["boolean", "integer", "string"]
        assert view.editors["urgent"].value is True
        assert view.editors["stars"].value == "4"
        view.editors["stars"].value = "9"
        assert "maximum" in view.message.value and rv.labels.empty
        view.editors["stars"].value = "three"
        assert "not a valid integer" in view.message.value and rv.labels.empty
        view.editors["stars"].value = "3"
        view.editors["urgent"].value = False
        view.editors["note"].value = "fine"
        labels = rv.labels
        assert list(labels["field"]) == ["stars", "urgent", "note"]
        assert list(labels["value"]) == [3, False, "fine"]
        assert list(labels["source"]) == ["edited"] * 3
        fixed = rv.apply()
        assert fixed.loc[0, "stars"] == 3 and not fixed.loc[0, "urgent"]
        assert fixed["stars"].dtype == "Int64" and fixed["urgent"].dtype == "boolean"
        rv.undo()
        assert rv.labels.empty and view.editors["stars"].value == "4"
