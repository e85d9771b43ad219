"""The columnar plan: rows rendered per turn, a table of unique requests, objects on demand.

``build_plan`` holds each turn's texts as one list and the unique requests as a
:class:`RequestTable`; a :class:`JobRequest` is built only when the engine iterates the
requests. These tests pin the table to what the per-row definitions give, and check that
``preview`` and a fully cached re-run (through the real HTTP path and a SQLite cache) build
none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import SENTIMENT_SCHEMA

import narrative_pandas as npd
from narrative_pandas._config import resolve_settings
from narrative_pandas._job_request import JobRequest, RequestCommon
from narrative_pandas._plan import RunPlan, build_plan
from narrative_pandas._request_table import RequestTable, request_commons, request_keys
from narrative_pandas._template import MessageTemplates
from narrative_pandas.sandbox import Sandbox

TEXTS = ["good", "bad", None, "good", "fine", 'with "quotes"']


@pytest.fixture
def frame() -> pd.DataFrame:
    """Six rows: a missing value, and rows 0 and 3 asking the same."""
    return pd.DataFrame({"t": TEXTS, "n": [1, 2, 3, 1, 5, 6]})


def plan_of(df: pd.DataFrame, prompt: str | None = "T: {t} #{n}", **options: Any) -> RunPlan:
    settings = resolve_settings(None, None, "dp-1")
    return build_plan(df, prompt, output=SENTIMENT_SCHEMA, settings=settings, **options)


def classic(plan: RunPlan, df: pd.DataFrame, **options: Any) -> dict[str, tuple[Any, int, int]]:
    """Per key: the row's turns (rendered row by row), rows sharing it, and ~chars/4."""
    bound = MessageTemplates.build("T: {t} #{n}").bind(df.columns)
    turns = bound.render_turns(df, **options)
    found: dict[str, tuple[Any, int, int]] = {}
    for key, row in zip(plan.row_keys, turns, strict=True):
        if key is None:
            assert isinstance(row, str)
            continue
        shared = sum(1 for k in plan.row_keys if k == key)
        found[key] = (row, shared, max(1, -(-sum(len(t) for _, t in row) // 4)))
    return found


class TestRequestTable:
    """The table behaves as the list of requests the plan used to hold."""

    @pytest.mark.parametrize("missing", ["empty", "skip"])
    def test_requests_equal_the_per_row_definitions(
        self, frame: pd.DataFrame, missing: str
    ) -> None:
        """Each request has its row's turns, the count of rows sharing it and its estimate."""
        plan = plan_of(frame, missing=missing)
        assert isinstance(plan.requests, RequestTable)
        expected = classic(plan, frame, missing=missing)
        requests = list(plan.requests)
        assert [r.key for r in requests] == list(expected)  # first-row order
        for request in requests:
            assert (request.messages, request.rows, request.prompt_tokens_estimate) == expected[
                request.key
            ]
        assert len(requests) == (4 if missing == "skip" else 5)
        assert plan.deduplicated == 1

    @pytest.mark.parametrize(
        "options",
        [
            {"missing": "skip"},
            {"system": "Be brief ✓.", "messages": [{"role": "assistant", "text": "Sure."}]},
        ],
        ids=["one turn", "fixed turns around it"],
    )
    def test_record_json_is_what_the_request_objects_give(self, options: dict[str, Any]) -> None:
        """The run record's requests, made column-wise, load as the per-object form does:
        quotes, backslashes, newlines and non-ASCII text survive, and fixed turns too."""
        texts = ['say "hi"', "naïve\nline two", "back\\slash", "emoji 🙂", None, 'say "hi"']
        df = pd.DataFrame({"t": texts, "n": [0, 1, 2, 3, 4, 0]})  # rows 0 and 5 ask the same
        messages = options.pop("messages", None)
        if messages is not None:
            options["messages"] = [*messages, {"role": "user", "text": "T: {t} #{n}"}]
        plan = plan_of(df, None if messages is not None else "T: {t} #{n}", **options)
        table = plan.requests
        assert isinstance(table, RequestTable)
        expected = [
            [r.key, 0, [list(m) for m in r.messages], r.prompt_tokens_estimate] for r in table
        ]
        assert json.loads(table.record_json()) == expected
        assert len(expected) == (4 if options.get("missing") == "skip" else 5)
        assert len(table.rendered.roles) == (1 if messages is None else 3)

    def test_indexing_slicing_and_building_once(self, frame: pd.DataFrame) -> None:
        """Indexes (negative too) and slices give the same requests; iterating twice gives
        the same objects."""
        table = plan_of(frame).requests
        assert isinstance(table, RequestTable)
        single = table[-1]
        assert single == list(table)[-1]
        assert table[1:3] == list(table)[1:3]
        built, again = list(table), list(table)
        assert all(a is b for a, b in zip(built, again, strict=True))
        assert table[0] is built[0]
        with pytest.raises(IndexError):
            table[len(table)]

    def test_keys_and_shared_parts_without_objects(
        self, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """request_keys and request_commons read the table's columns, no request built."""
        table = plan_of(frame).requests
        assert isinstance(table, RequestTable)
        monkeypatch.setattr(RequestTable, "_make", _refuse)
        assert request_keys(table) == table.keys
        distinct, which = request_commons(table)
        assert distinct == [table.common] and which == [0] * len(table)

    def test_shared_parts_of_a_plain_list(self) -> None:
        """A list of requests with two shared parts maps each request to its own."""
        one = RequestCommon("dp", "m", {})
        two = RequestCommon("dp", "m2", {})
        requests = [
            JobRequest.from_messages(f"k{i}", (("user", "x"),), c, 1, 1)
            for i, c in enumerate([one, two, one])
        ]
        assert request_keys(requests) == ["k0", "k1", "k2"]
        assert request_commons(requests) == ([one, two], [0, 1, 0])

    def test_no_rows(self) -> None:
        """An empty frame plans no request and no key."""
        plan = plan_of(pd.DataFrame({"t": pd.Series([], dtype=str), "n": []}))
        assert plan.row_keys == [] and len(plan.requests) == 0 and plan.row_bodies() == []


class TestRenderedColumns:
    """Turns held per column give the per-row turns the engine used to get."""

    def test_constant_turns_are_held_once(self, frame: pd.DataFrame) -> None:
        """A template without placeholders is one text, not one per row."""
        bound = MessageTemplates.build("T: {t}", system="Be brief.").bind(frame.columns)
        rendered = bound.render_columns(frame)
        assert rendered.texts[0] == "Be brief."
        assert rendered.row(1) == (("system", "Be brief."), ("user", "T: bad"))
        assert rendered.turns() == bound.render_turns(frame)

    def test_example_turns_go_after_the_system_turns(self, frame: pd.DataFrame) -> None:
        """with_turns puts fixed turns after the leading system turns of every row."""
        bound = MessageTemplates.build("T: {t}", system="S").bind(frame.columns)
        shots = (("user", "T: great"), ("assistant", '{"label": "positive"}'))
        rendered = bound.render_columns(frame, missing="skip").with_turns(shots)
        assert rendered.roles == ("system", "user", "assistant", "user")
        assert rendered.row(0) == (("system", "S"), *shots, ("user", "T: good"))
        assert rendered.skipped == {2: "skipped: missing value in column 't'"}
        assert rendered.lengths().tolist()[0] == len("S" + "T: great" + shots[1][1] + "T: good")


class TestNothingBuiltPerRow:
    """preview and a fully cached re-run never build a request object."""

    def test_preview_builds_no_request(
        self, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """preview's bodies, keys and estimates come from the table's columns."""
        monkeypatch.setattr(RequestTable, "_make", _refuse)
        view = frame.narrative.preview("T: {t} #{n}", output=SENTIMENT_SCHEMA, missing="skip")
        assert view["body"].isna().tolist() == [False, False, True, False, False, False]
        assert view["estimated_prompt_tokens"].isna().sum() == 1

    def test_a_fully_cached_rerun_builds_no_request(
        self,
        frame: pd.DataFrame,
        sandbox: Sandbox,
        target: dict[str, str],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The second identical run with a SQLite cache reads every answer, sends nothing and
        builds no request object; its frame equals the first run's."""
        options: dict[str, Any] = {
            "output": SENTIMENT_SCHEMA,
            "progress": False,
            "cache": str(tmp_path / "c.sqlite"),
            **target,
        }
        first = npd.infer(frame, "T: {t} #{n}", **options)
        assert sandbox.stats.jobs_created == 5  # rows 0 and 3 share one job
        requests = sandbox.stats.requests
        monkeypatch.setattr(RequestTable, "_make", _refuse)
        second = npd.infer(frame, "T: {t} #{n}", **options)
        assert sandbox.stats.requests == requests
        assert second.attrs["narrative"]["cached_rows"] == 6
        pd.testing.assert_frame_equal(first, second)


def _refuse(self: RequestTable, i: int) -> JobRequest:
    raise AssertionError(f"request {i} was built as an object")
