"""Unknown means unknown: POSTs whose outcome was never learned are settled through the listing,
never resubmitted on a guess, and no fault lets an exception escape a task or the report and the
frame disagree. Each test turns on one of the sandbox's fault knobs."""

from __future__ import annotations

import gc
import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas import _sync
from narrative_pandas._cache import Claim, MemoryCache
from narrative_pandas._reconcile import Reconciler, Wanted, content_key
from narrative_pandas.sandbox import Sandbox
from narrative_pandas.sandbox._knobs import SandboxConfig

PROMPT = "Text: {text}"
FAULT_KNOBS = ("seed", "post_garbage_after_create_rate", "replication_lag", "cancel_rate")


class Label(BaseModel):
    """The output these tests ask for."""

    label: str
    score: float


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


@pytest.fixture
def faults(sandbox: Sandbox, caplog: pytest.LogCaptureFixture) -> Iterator[Sandbox]:
    """The sandbox; afterwards the fault knobs are calm again and no task exception was lost."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    yield sandbox
    defaults = SandboxConfig()
    sandbox.configure(**{name: getattr(defaults, name) for name in FAULT_KNOBS})
    gc.collect()  # an unretrieved task exception is logged when the task is collected
    assert "never retrieved" not in caplog.text


def check_every_row_ended(out: pd.DataFrame, rows: int) -> None:
    """Every row has an outcome, and the report counts exactly what the frame shows."""
    report = out.attrs["narrative"]
    errors = out["narrative_error"]
    assert len(out) == rows
    assert not errors.fillna("").str.contains("pending|not submitted").any()
    status = out["narrative_status"].astype(object)
    assert (
        report["completed_rows"] == int(errors.isna().sum()) == int((status == "completed").sum())
    )
    assert report["failed_rows"] + report["stopped_rows"] == int(errors.notna().sum())
    assert report["stopped_rows"] == int((status == "stopped").sum())
    assert report["completed_rows"] + report["failed_rows"] + report["stopped_rows"] == rows


def quick_client(target: dict[str, str], retries: int) -> npd.Client:
    """A client whose own retries give up quickly, so a short outage outlasts them."""
    return npd.Client(
        target["api_key"],
        target["base_url"],
        data_plane_id=target["data_plane_id"],
        max_retries=retries,
    )


class TestGarbageAnswers:
    @pytest.mark.parametrize("cache", [True, False])
    def test_created_job_answered_with_garbage_is_found_not_paid_twice(
        self, faults: Sandbox, target: dict[str, str], cache: bool
    ) -> None:
        """A 200 whose body is not JSON is an unknown outcome: reconciled, 0 duplicates."""
        faults.configure(post_garbage_after_create_rate=0.3, seed=7)
        out = frame(30).narrative.infer(
            PROMPT, output=Label, cache=cache, progress=False, concurrency=8, **target
        )
        check_every_row_ended(out, 30)
        assert out["narrative_error"].isna().all()
        assert faults.stats.jobs_created == 30
        assert faults.stats.duplicates == 0
        report = out.attrs["narrative"]
        assert report["reconciled_jobs"] > 0
        assert report["reconciled_jobs"] + report["jobs_submitted"] == 30

    def test_replication_lag_does_not_make_a_garbage_answer_look_absent(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """Jobs missing from the listing for a second after creation are still found."""
        faults.configure(post_garbage_after_create_rate=1.0, replication_lag=1.0)
        out = frame(4).narrative.infer(
            PROMPT, output=Label, progress=False, concurrency=4, **target
        )
        check_every_row_ended(out, 4)
        assert out["narrative_error"].isna().all()
        assert faults.stats.jobs_created == 4
        assert faults.stats.duplicates == 0
        assert out.attrs["narrative"]["reconciled_jobs"] == 4


class TestOutages:
    @pytest.mark.parametrize("status", [None, 503])
    def test_outage_longer_than_the_retries_never_pays_twice(
        self, faults: Sandbox, target: dict[str, str], status: int | None
    ) -> None:
        """An outage that outlasts the client's retries: rows wait, then finish; jobs == rows."""
        faults.configure(queue_latency=0.3, run_latency=0.05)
        client = quick_client(target, retries=1)
        run = frame(30).narrative.start(
            PROMPT, output=Label, progress=False, concurrency=8, client=client, **target
        )
        deadline = time.monotonic() + 60
        while faults.stats.jobs_created < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        faults.outage(8.0, status=status)
        try:
            out = run.result()
        finally:
            _sync.submit(client.aclose()).result()
        check_every_row_ended(out, 30)
        assert out["narrative_error"].isna().all()
        assert faults.stats.jobs_created == 30
        assert faults.stats.duplicates == 0

    def test_unreachable_listing_keeps_the_row_waiting_until_the_timeout(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """While the listing cannot be read, an unknown POST is never resent; timeout ends it."""
        faults.configure(post_garbage_after_create_rate=1.0)
        faults.fail_next(10_000, status=503, path="/jobs", method="GET")
        cache = MemoryCache()
        client = quick_client(target, retries=0)
        try:
            with pytest.warns(npd.RowsFailedWarning, match="submission outcome unknown"):
                out = frame(2).narrative.infer(
                    PROMPT,
                    output=Label,
                    cache=cache,
                    progress=False,
                    timeout=4.0,
                    client=client,
                    **target,
                )
        finally:
            _sync.submit(client.aclose()).result()
        check_every_row_ended(out, 2)
        assert out["narrative_error"].str.contains("submission outcome unknown").all()
        assert out.attrs["narrative"]["timed_out_rows"] == 2
        assert faults.stats.count(method="POST") == 2
        assert faults.stats.jobs_created == 2
        entries = cache.journal_entries()
        assert [(e.job_id, e.state) for e in entries] == [(None, "unknown")] * 2

    def test_cancel_while_an_outcome_is_unknown_keeps_the_claim(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """cancel() during reconciliation: the row says so, nothing is resent, the claim stays."""
        faults.configure(post_garbage_after_create_rate=1.0)
        faults.fail_next(10_000, status=503, path="/jobs", method="GET")
        cache = MemoryCache()
        client = quick_client(target, retries=0)
        try:
            run = frame(1).narrative.start(
                PROMPT, output=Label, cache=cache, progress=False, client=client, **target
            )
            deadline = time.monotonic() + 60
            while faults.stats.count(method="POST") < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            run.cancel()
            with pytest.warns(npd.RowsStoppedWarning):
                out = run.result()
        finally:
            _sync.submit(client.aclose()).result()
        check_every_row_ended(out, 1)
        error = out["narrative_error"].iloc[0]
        assert "submission outcome unknown" in error and "cancelled" in error, error
        assert out["narrative_status"].iloc[0] == "stopped"
        assert out.attrs["narrative"]["timed_out_rows"] == 0
        assert faults.stats.count(method="POST") == 1
        assert [e.state for e in cache.journal_entries()] == ["unknown"]


class BrokenJournal(MemoryCache):
    """An in-memory cache whose journal fails the way a damaged disk would."""

    def __init__(self, fail: str) -> None:
        super().__init__()
        self.fail = fail

    def journal_claim(self, key: str, tag: str, owner: Any, **options: Any) -> Claim:
        if self.fail == "claim":
            raise sqlite3.OperationalError("disk I/O error")
        return super().journal_claim(key, tag, owner, **options)

    def journal_job(self, key: str, job_id: str, tag: str, run_id: str | None) -> None:
        if self.fail == "job":
            raise sqlite3.OperationalError("disk I/O error")
        super().journal_job(key, job_id, tag, run_id)


class TestNoExceptionEscapes:
    def test_a_failing_claim_fails_its_rows_and_sends_nothing(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """A journal that cannot claim: every row says why, no POST goes out."""
        with pytest.warns(npd.RowsFailedWarning):
            out = frame(5).narrative.infer(
                PROMPT, output=Label, cache=BrokenJournal("claim"), progress=False, **target
            )
        check_every_row_ended(out, 5)
        assert out["narrative_error"].str.contains("OperationalError: disk I/O error").all()
        assert faults.stats.count(method="POST") == 0

    def test_a_job_that_cannot_be_journaled_is_still_collected(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """A job the journal could not record is polled anyway: the paid result is kept."""
        out = frame(5).narrative.infer(
            PROMPT, output=Label, cache=BrokenJournal("job"), progress=False, **target
        )
        check_every_row_ended(out, 5)
        assert out["narrative_error"].isna().all()
        assert faults.stats.jobs_created == 5


class TestReconciler:
    async def test_finds_a_job_behind_2500_newer_ones(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """The walk goes back to the intent's time, not a fixed number of records."""
        body = frame(1).narrative.preview(PROMPT, output=Label, **target)["body"].iloc[0]
        since = time.time()
        async with npd.Client(**target) as client:
            job = await client.run_model_inference(body)
            faults.add_jobs(2500)
            reconciler = Reconciler(client, data_plane_id=target["data_plane_id"])
            verdict = await reconciler.find(Wanted(body["tags"][-1], content_key(body), since))
        assert verdict.kind == "found"
        assert verdict.job is not None and verdict.job.job_id == job.job_id
        assert faults.stats.count(method="GET", path="/jobs") == 6  # 2,501 jobs, 500 a page

    async def test_a_request_never_sent_is_absent_only_after_the_whole_walk(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """ "Absent" is said only once the listing was read to its end (or past the intent)."""
        faults.add_jobs(700)
        body = frame(1).narrative.preview(PROMPT, output=Label, **target)["body"].iloc[0]
        async with npd.Client(**target) as client:
            reconciler = Reconciler(client, data_plane_id=target["data_plane_id"])
            wanted = Wanted(body["tags"][-1], content_key(body), time.time())
            verdict = await reconciler.find(wanted)
        assert verdict.kind == "absent"
        assert faults.stats.count(method="GET", path="/jobs") == 3  # 500, 200, then the end

    async def test_an_unreachable_listing_is_unknown_not_absent(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """A listing that cannot be read settles nothing."""
        body = frame(1).narrative.preview(PROMPT, output=Label, **target)["body"].iloc[0]
        faults.outage(30.0, status=503)
        async with quick_client(target, retries=0) as client:
            reconciler = Reconciler(client, data_plane_id=target["data_plane_id"])
            wanted = Wanted(body["tags"][-1], content_key(body), time.time())
            verdict = await reconciler.find(wanted)
        faults.outage(0.0)
        assert verdict.kind == "unknown"
        assert "could not be read" in verdict.reason

    async def test_callers_at_once_share_one_walk(
        self, faults: Sandbox, target: dict[str, str]
    ) -> None:
        """Twenty rows reconciling at the same moment cost one walk of the listing."""
        import asyncio

        bodies = frame(20).narrative.preview(PROMPT, output=Label, **target)["body"]
        since = time.time()
        async with npd.Client(**target) as client:
            jobs = [await client.run_model_inference(body) for body in bodies]
            reconciler = Reconciler(client, data_plane_id=target["data_plane_id"])
            verdicts = await asyncio.gather(
                *(
                    reconciler.find(Wanted(body["tags"][-1], content_key(body), since))
                    for body in bodies
                )
            )
        assert [v.job.job_id for v in verdicts if v.job] == [job.job_id for job in jobs]
        assert reconciler.walks == 1
