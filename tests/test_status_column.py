"""``narrative_status``: one category column, the same six categories, on every path a frame takes.

Each test reaches a result frame a different way (infer, start().result(), partial(), attach,
Dask, an ``only_failed`` merge) against the sandbox, and checks the column's dtype, position and
values against what the run did (the report and ``run.status()``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import wait_until
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas._frame import STATUS_CATEGORIES
from narrative_pandas.sandbox import Sandbox

CATEGORIES = ["completed", "failed", "invalid", "timed_out", "stopped", "skipped"]
PROMPT = "Text: {text}"


class Label(BaseModel):
    label: str
    score: float


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """A model stand-in: rows saying "fail" fail on the service, "bad" ones break the schema."""
    text = request["messages"][-1]["text"]
    if "fail" in text:
        raise RuntimeError("the model provider returned an error")
    if "bad" in text:
        return {"label": 1}
    return {"label": "ok", "score": 0.5}


def mixed_frame() -> pd.DataFrame:
    texts = ["good 0", "fail 1", "bad 2", None, "good 4", "fail 5", "good 6"]
    return pd.DataFrame({"text": texts}, index=[f"r{i}" for i in range(len(texts))])


def check_column(out: pd.DataFrame, prefix: str = "") -> None:
    """The column is categorical with exactly the six categories, right after narrative_error."""
    column = out[prefix + "narrative_status"]
    assert isinstance(column.dtype, pd.CategoricalDtype)
    assert list(column.cat.categories) == CATEGORIES
    assert not column.cat.ordered
    names = list(out.columns)
    assert names.index(prefix + "narrative_status") == names.index(prefix + "narrative_error") + 1


def counts(out: pd.DataFrame) -> dict[str, int]:
    return {k: int(v) for k, v in out["narrative_status"].value_counts().items() if v}


class TestCategories:
    def test_the_six_categories_in_order(self) -> None:
        """The categories are exported in the documented order."""
        assert list(STATUS_CATEGORIES) == CATEGORIES


class TestInfer:
    def test_every_kind_of_outcome(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """completed, failed, invalid and skipped rows each get their status; the report agrees."""
        sandbox.configure(responder=answer, validate_responder=False)
        with pytest.warns(npd.RowsFailedWarning, match="3 of 7 rows failed"):
            out = mixed_frame().narrative.infer(
                PROMPT, output=Label, missing="skip", progress=False, **target
            )
        check_column(out)
        assert out["narrative_status"].tolist() == [
            "completed",
            "failed",
            "invalid",
            "skipped",
            "completed",
            "failed",
            "completed",
        ]
        assert out.loc[out["narrative_status"] == "completed", "narrative_error"].isna().all()
        assert out.loc[out["narrative_status"] != "completed", "narrative_error"].notna().all()
        report = out.attrs["narrative"]
        assert report["completed_rows"] == 3
        assert report["invalid_rows"] == 1
        assert report["skipped_rows"] == 1
        assert report["stopped_rows"] == 0
        assert report["failed_rows"] == 4  # failed + invalid + skipped: every row with an error

    def test_timed_out_rows(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A job still unfinished at the per-job timeout is timed_out, not failed or stopped."""
        sandbox.configure(queue_latency=30.0)
        with pytest.warns(npd.RowsFailedWarning, match=r"2 x timed out after 0\.3s"):
            out = pd.DataFrame({"text": ["a", "b"]}).narrative.infer(
                PROMPT, output=Label, timeout=0.3, progress=False, **target
            )
        check_column(out)
        assert out["narrative_status"].tolist() == ["timed_out", "timed_out"]
        assert out.attrs["narrative"]["timed_out_rows"] == 2
        assert not out["narrative_error"].str.contains(out["narrative_job_id"].iloc[0]).any()

    def test_prefix_applies(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """With prefix=, the column is prefixed like the other metadata columns."""
        out = pd.DataFrame({"text": ["a"]}).narrative.infer(
            PROMPT, output=Label, prefix="ai_", progress=False, **target
        )
        check_column(out, prefix="ai_")
        assert out["ai_narrative_status"].tolist() == ["completed"]

    def test_cached_rows_are_completed(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A row served from the cache is completed like a fresh one."""
        df = pd.DataFrame({"text": ["a", "b"]})
        df.narrative.infer(PROMPT, output=Label, progress=False, **target)
        again = df.narrative.infer(PROMPT, output=Label, progress=False, **target)
        assert again.attrs["narrative"]["cached_rows"] == 2
        assert again["narrative_status"].tolist() == ["completed", "completed"]


class TestStartResultAndPartial:
    def test_cancel_stops_rows_and_everything_agrees(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """After a cancel: stopped rows in the frame == run.status() == the report."""
        sandbox.configure(queue_latency=30.0)
        run = pd.DataFrame({"text": [f"t{i}" for i in range(12)]}).narrative.start(
            PROMPT, output=Label, concurrency=4, progress=False, **target
        )
        wait_until(lambda: sandbox.stats.jobs_created == 4, what="4 submissions")
        partial = run.partial()
        check_column(partial)
        assert partial["narrative_status"].isna().all()  # in flight: no status yet
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            out = run.result()
        check_column(out)
        assert counts(out) == {"stopped": 12}
        status = run.status()
        report = out.attrs["narrative"]
        assert status["stopped"] == report["stopped_rows"] == 12
        assert status["failed"] == report["failed_rows"] == 0

    def test_partial_mixes_finished_and_pending(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """partial(): finished rows have their status, rows in flight have none (NA)."""
        df = pd.DataFrame({"text": ["done", "waits"]})
        df.head(1).narrative.infer(PROMPT, output=Label, progress=False, **target)  # cached now
        sandbox.configure(queue_latency=30.0)
        run = df.narrative.start(PROMPT, output=Label, progress=False, **target)
        wait_until(lambda: run.status()["cached"] == 1, what="the cached row")
        partial = run.partial()
        check_column(partial)
        assert partial["narrative_status"].iloc[0] == "completed"
        assert pd.isna(partial["narrative_status"].iloc[1])
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            run.result()


class TestAttach:
    def test_attached_run_has_the_column(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """A run cancelled, then finished by attach(): stopped first, completed after."""
        sandbox.configure(queue_latency=1.0, run_latency=0.05)
        path = str(tmp_path / "runs.sqlite")
        df = pd.DataFrame({"text": [f"t{i}" for i in range(6)]})
        run = df.narrative.start(
            PROMPT, output=Label, concurrency=3, cache=path, progress=False, **target
        )
        wait_until(lambda: sandbox.stats.jobs_created == 3, what="3 submissions")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            first = run.result()
        assert counts(first) == {"stopped": 6}
        attached = npd.attach(run.id, cache=path, api_key=target["api_key"], progress=False)
        out = attached.result()
        check_column(out)
        assert counts(out) == {"completed": 6}
        assert sandbox.stats.jobs_created == 6
        assert sandbox.stats.duplicate_submissions == 0


class TestOnlyFailed:
    def test_merge_keeps_the_column_and_reruns_every_unanswered_row(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """only_failed re-runs failed, invalid and stopped rows; the merge has fresh statuses."""
        sandbox.configure(responder=answer, validate_responder=False)
        df = pd.DataFrame({"text": ["good 0", "fail 1", "bad 2", "good 3"]})
        with pytest.warns(npd.RowsFailedWarning):
            first = df.narrative.infer(PROMPT, output=Label, progress=False, **target)
        assert counts(first) == {"completed": 2, "failed": 1, "invalid": 1}
        sandbox.configure(responder=lambda request: {"label": "fixed", "score": 1.0})
        merged = df.narrative.infer(
            PROMPT, output=Label, only_failed=first, progress=False, **target
        )
        check_column(merged)
        assert counts(merged) == {"completed": 4}
        assert merged.attrs["narrative"]["rerun_rows"] == 2
        assert merged["label"].tolist() == ["ok", "fixed", "fixed", "ok"]

    def test_stopped_rows_are_rerun(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """Rows a cancel stopped have no completed answer, so only_failed runs them again."""
        sandbox.configure(queue_latency=1.0)
        df = pd.DataFrame({"text": [f"t{i}" for i in range(5)]})
        run = df.narrative.start(PROMPT, output=Label, concurrency=2, progress=False, **target)
        wait_until(lambda: sandbox.stats.jobs_created == 2, what="2 submissions")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            first = run.result()
        sandbox.configure(queue_latency=0.02)
        merged = df.narrative.infer(
            PROMPT, output=Label, only_failed=first, progress=False, **target
        )
        assert merged.attrs["narrative"]["rerun_rows"] == 5
        assert counts(merged) == {"completed": 5}
        assert sandbox.stats.jobs_created == 5  # the 2 submitted jobs were collected
        assert sandbox.stats.duplicate_submissions == 0


class TestDask:
    def test_meta_and_computed_frame(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """The lazy frame's meta and the computed frame both carry the categorical column."""
        dd = pytest.importorskip("dask.dataframe")
        import narrative_pandas.dask as npd_dask

        sandbox.configure(responder=answer, validate_responder=False)
        df = pd.DataFrame({"text": ["good 0", "fail 1", "bad 2", "good 3"]})
        lazy = dd.from_pandas(df, npartitions=2).narrative.infer(PROMPT, output=Label, **target)
        check_column(lazy._meta)
        with pytest.warns(npd.RowsFailedWarning):
            out = npd_dask.compute(lazy, scheduler="sync")
        check_column(out)
        assert out["narrative_status"].tolist() == ["completed", "failed", "invalid", "completed"]
        assert out.attrs["narrative"]["stopped_rows"] == 0


class TestCancelIsNotAFailure:
    def test_warning_counts_and_a_second_call_finishes(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Cancel with jobs submitted and not: one RowsStoppedWarning, no ids, never "failed";
        frame, run.status() and report agree; the same call again completes every row, paying
        for none twice."""
        sandbox.configure(queue_latency=1.0, run_latency=0.05)
        df = pd.DataFrame({"text": [f"t{i}" for i in range(20)]})
        run = df.narrative.start(PROMPT, output=Label, concurrency=5, progress=False, **target)
        wait_until(lambda: sandbox.stats.jobs_created == 5, what="5 submissions")
        run.cancel()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            out = run.result()
        assert [w.category for w in seen] == [npd.RowsStoppedWarning]
        text = str(seen[0].message)
        assert text.startswith("20 of 20 rows were stopped before they had an answer (15 x not ")
        assert re.search(r"; 5 x still (pending|running) when cancelled; a later run", text)
        assert "Running the same call again collects the jobs already submitted" in text
        assert "failed" not in text
        assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", text)

        status = run.status()
        report = out.attrs["narrative"]
        assert counts(out) == {"stopped": 20}
        assert status["stopped"] == report["stopped_rows"] == 20
        assert status["failed"] == report["failed_rows"] == 0
        assert status["completed"] == report["completed_rows"] == 0

        again = df.narrative.infer(PROMPT, output=Label, progress=False, **target)
        assert counts(again) == {"completed": 20}
        assert again.attrs["narrative"]["resumed_rows"] == 5
        assert sandbox.stats.jobs_created == 20
        assert sandbox.stats.duplicate_submissions == 0

    def test_errors_raise_does_not_raise_for_stopped_rows(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """errors="raise" is about failures: a cancelled run returns its frame and warns."""
        sandbox.configure(queue_latency=1.0)
        run = pd.DataFrame({"text": ["a", "b", "c"]}).narrative.start(
            PROMPT, output=Label, concurrency=1, errors="raise", progress=False, **target
        )
        wait_until(lambda: sandbox.stats.jobs_created == 1, what="1 submission")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning, match="3 of 3 rows were stopped"):
            out = run.result()
        assert counts(out) == {"stopped": 3}
