"""Never hang, never pay twice, whatever the listing, the clocks and the replicas do.

Each test runs a real `infer` over HTTP against a sandbox with one fault knob on, and checks what
a user would notice: every row correct, no job paid twice (the sandbox's counter), the run ended
within a bounded number of polls, and the requests it took.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import httpx
import pandas as pd
import pytest
from helpers import python_script, spawn, wait_until
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas._client import Client as HTTPClient
from narrative_pandas._clock import FakeClock
from narrative_pandas._config import resolve_settings
from narrative_pandas._engine import Engine
from narrative_pandas._observation import MAX_DIRECT_GETS, WATCHDOG_POLLS
from narrative_pandas._plan import build_plan
from narrative_pandas._progress import make_progress
from narrative_pandas._sweep import MAX_PER_PAGE, ListingSweeper
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):
    label: str
    score: float


PROMPT = "Text: {text}"


def frame(n: int, prefix: str = "row") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{prefix} {i}" for i in range(n)]})


def run(sb: Sandbox, n: int, *, concurrency: int = 32, **options: Any) -> pd.DataFrame:
    options.setdefault("progress", False)
    options.setdefault("cache", False)
    return frame(n, options.pop("prefix", "row")).narrative.infer(
        PROMPT,
        output=Label,
        concurrency=concurrency,
        api_key=sb.api_key,
        base_url=sb.base_url,
        data_plane_id=sb.data_plane_id,
        **options,
    )


def assert_all_correct(out: pd.DataFrame, sb: Sandbox, rows: int) -> dict[str, Any]:
    """Every row has its answer, one job per row, nothing paid twice; returns the report."""
    assert out["narrative_error"].isna().all(), out["narrative_error"].dropna().head().tolist()
    assert out["label"].notna().all()
    assert sb.stats.jobs_created == rows
    assert sb.stats.duplicates == 0
    report: dict[str, Any] = out.attrs["narrative"]
    assert report["completed_rows"] == rows
    assert report["failed_rows"] == 0
    return report


def gets_per_row(sb: Sandbox, rows: int) -> float:
    return sb.stats.count(method="GET") / rows


def warnings_about(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and words in r.getMessage()
    ]


class TestExecutorSkew:
    """Jobs stamped by executors whose clocks disagree are all collected."""

    def test_two_seconds_behind(self, make_sandbox: Any) -> None:
        """Half the jobs stamped 2 s behind: every row, no hang, the margin is learned."""
        sb = make_sandbox(executor_skew=2.0, run_latency=0.5)
        out = run(sb, 120)
        report = assert_all_correct(out, sb, 120)
        assert report["polls"] <= 400
        assert gets_per_row(sb, 120) <= 1.0

    def test_two_hours_behind(self, make_sandbox: Any, caplog: pytest.LogCaptureFixture) -> None:
        """Half the jobs 2 h behind: the listing is read by creation instead, said once."""
        caplog.set_level(logging.INFO, logger="narrative_pandas")
        sb = make_sandbox(executor_skew=7200.0, run_latency=0.5)
        out = run(sb, 120)
        report = assert_all_correct(out, sb, 120)
        assert report["polls"] <= 400
        assert report["listing_mode"] == "created"
        assert len(warnings_about(caplog, "clocks disagree by about")) == 1
        assert gets_per_row(sb, 120) <= 1.0

    def test_two_hours_ahead(self, make_sandbox: Any) -> None:
        """Half the jobs 2 h ahead: every row, no duplicate."""
        sb = make_sandbox(executor_skew=-7200.0, run_latency=0.5)
        out = run(sb, 120)
        report = assert_all_correct(out, sb, 120)
        assert report["polls"] <= 400


class TestReplicationLag:
    """A job missing from reads just after creation is waited for, never resubmitted."""

    def test_three_rows_with_short_lag(self, make_sandbox: Any) -> None:
        """0.3 s of read-after-write lag: a 3-row run makes 3 jobs, not 15."""
        sb = make_sandbox(replication_lag=0.3)
        out = run(sb, 3)
        assert_all_correct(out, sb, 3)
        assert sb.stats.count(path="/jobs/{job_id}", status=404) >= 1

    def test_two_hundred_rows_with_long_lag(self, make_sandbox: Any) -> None:
        """1.5 s of lag on 200 rows: 200 jobs, 0 paid twice."""
        sb = make_sandbox(replication_lag=1.5)
        out = run(sb, 200)
        report = assert_all_correct(out, sb, 200)
        assert report["polls"] <= 600


class TestLyingTotals:
    """Wrong or missing totals never end a sweep early for good."""

    def test_every_page_claims_to_be_the_last(self, make_sandbox: Any) -> None:
        """total_records = this page's end, with 500 other jobs updating: every row."""
        sb = make_sandbox(total_records_mode="page_end", foreign_jobs=500)
        out = run(sb, 150)
        report = assert_all_correct(out, sb, 150)
        assert report["polls"] <= 500

    def test_missing_totals(self, make_sandbox: Any) -> None:
        """An older server's {"records": [...]} alone: every row."""
        sb = make_sandbox(total_records_mode="missing")
        out = run(sb, 100)
        assert_all_correct(out, sb, 100)
        assert gets_per_row(sb, 100) <= 1.0


class TestForeignJobs:
    """Other clients' jobs in the listing do not raise the cost per row."""

    def test_two_thousand_foreign_jobs_updating(self, make_sandbox: Any) -> None:
        """2,000 foreign jobs updating every second, 300 rows, 1 s jobs: GET/row <= 0.6."""
        sb = make_sandbox(
            foreign_jobs=2000, foreign_update_interval=1.0, queue_latency=0.0, run_latency=1.0
        )
        out = run(sb, 300, concurrency=32)
        report = assert_all_correct(out, sb, 300)
        assert gets_per_row(sb, 300) <= 0.6, sb.stats.count(method="GET")
        assert report["polls"] <= 600

    def test_two_thousand_foreign_jobs_switch_to_creation_order(self, make_sandbox: Any) -> None:
        """Updates of older jobs that are not ours dominate: the listing is read by creation."""
        sb = make_sandbox(
            foreign_jobs=2000, foreign_update_interval=1.0, queue_latency=0.0, run_latency=1.0
        )
        report = assert_all_correct(run(sb, 100, concurrency=32), sb, 100)
        assert report["listing_mode"] == "created"

    def test_a_run_alongside_keeps_reading_by_update(self, make_sandbox: Any) -> None:
        """Two runs at once (as two Dask workers): each one's jobs are the other's strangers,
        but made alongside its own, so reading by creation would read them too; both keep
        reading by update (one switched at once, on the other's faster start)."""
        sb = make_sandbox(queue_latency=0.0, run_latency=0.2)
        outs: dict[str, pd.DataFrame] = {}

        def one(prefix: str) -> None:
            outs[prefix] = run(sb, 600, concurrency=64, prefix=prefix)

        threads = [threading.Thread(target=one, args=(p,)) for p in ("left", "right")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sb.stats.jobs_created == 1200 and sb.stats.duplicates == 0
        for out in outs.values():
            assert out["narrative_error"].isna().all()
            assert out.attrs["narrative"]["listing_mode"] == "updated"

    def test_one_foreign_job_without_updated_at(self, make_sandbox: Any) -> None:
        """One foreign job with updated_at null does not switch the listing off."""
        sb = make_sandbox(foreign_jobs=20, foreign_null_updated_at=1)
        out = run(sb, 150)
        report = assert_all_correct(out, sb, 150)
        assert report["listing_mode"] == "updated"
        assert gets_per_row(sb, 150) <= 0.6


class TestSortOrders:
    """A refused or ignored order_by=updated_at_desc moves to created_at_desc, once."""

    def test_refused_updated_order(
        self, make_sandbox: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The older API (created_at_* only): every row, one refused call, said once."""
        caplog.set_level(logging.INFO, logger="narrative_pandas")
        sb = make_sandbox(listing_orders=("created_at_desc", "created_at_asc"))
        out = run(sb, 60)
        report = assert_all_correct(out, sb, 60)
        assert report["listing_mode"] == "created"
        assert sb.stats.count(path="/jobs", status=400) == 1
        assert len(warnings_about(caplog, "refused order_by=updated_at_desc")) == 1
        assert gets_per_row(sb, 60) <= 1.0

    def test_ignored_order(self, make_sandbox: Any, caplog: pytest.LogCaptureFixture) -> None:
        """A server serving created_at_desc whatever is asked: detected, said once."""
        caplog.set_level(logging.INFO, logger="narrative_pandas")
        sb = make_sandbox(listing_ignores_order=True, run_latency=(0.1, 0.6), seed=3)
        out = run(sb, 100)
        report = assert_all_correct(out, sb, 100)
        assert report["listing_mode"] == "created"
        assert len(warnings_about(caplog, "not ordered by updated_at")) == 1
        assert gets_per_row(sb, 100) <= 1.0


class TestStalls:
    """A listing that trickles neither hangs the run nor delays cancel()."""

    def test_dripping_listing_run_ends(
        self, make_sandbox: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A listing sending one byte every 10 s: the run polls job by job and ends."""
        caplog.set_level(logging.INFO, logger="narrative_pandas")
        sb = make_sandbox(listing_drip=0.1)
        out = run(sb, 30)
        report = assert_all_correct(out, sb, 30)
        assert report["listing_mode"] == "off"
        assert len(warnings_about(caplog, "polling job by job")) == 1

    def test_cancel_during_a_dripping_listing(self, make_sandbox: Any) -> None:
        """cancel() while a sweep is stalled ends the run without waiting for the listing."""
        sb = make_sandbox(listing_drip=0.1, queue_latency=30.0)
        started = frame(40).narrative.start(
            PROMPT,
            output=Label,
            concurrency=32,
            progress=False,
            cache=False,
            api_key=sb.api_key,
            base_url=sb.base_url,
            data_plane_id=sb.data_plane_id,
        )
        wait_until(lambda: sb.stats.count(path="/jobs") >= 1, what="a listing request")
        started.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            out = started.result(timeout=20)  # a hang detector: the drip would take minutes
        assert out.attrs["narrative"]["status"] == "cancelled"
        assert sb.stats.duplicates == 0
        assert sb.stats.count(path="/jobs") <= 2


class TestCancelledJobs:
    """Jobs the service cancels end their rows with the reason; nothing is resubmitted."""

    def test_cancel_rate(self, make_sandbox: Any) -> None:
        """20% of jobs go pending_cancellation -> cancelled: those rows fail, the rest complete."""
        sb = make_sandbox(cancel_rate=0.2, seed=5)
        with pytest.warns(npd.RowsFailedWarning):
            out = run(sb, 100)
        failed = out["narrative_error"].notna()
        assert 0 < failed.sum() < 100
        assert sb.stats.jobs_created == 100 and sb.stats.duplicates == 0
        assert out.loc[failed, "narrative_error"].str.contains("cancel").all()
        assert out.attrs["narrative"]["failed_rows"] == int(failed.sum())


class TestGarbagePost:
    """A POST that creates its job and answers garbage is reconciled, never paid twice."""

    def test_post_garbage_after_create(self, make_sandbox: Any) -> None:
        """20% of POSTs answer 200 with a body that is not JSON: every row, 0 duplicates."""
        sb = make_sandbox(post_garbage_after_create_rate=0.2, seed=2)
        out = run(sb, 60)
        assert out["narrative_error"].isna().all(), out["narrative_error"].dropna().tolist()
        assert sb.stats.duplicates == 0
        assert sb.stats.jobs_created == 60


class TestResumeAmongForeignJobs:
    """kill -9 mid-run while 2,000 other jobs update, then the same script again."""

    def test_kill_and_rerun(self, make_sandbox: Any, tmp_path: Path) -> None:
        """Every row correct, jobs created = rows, GET/row of the second run <= 1."""
        sb = make_sandbox(
            foreign_jobs=2000, foreign_update_interval=1.0, queue_latency=1.0, run_latency=0.3
        )
        cache = tmp_path / "cache.sqlite"
        script = python_script(
            tmp_path / "label.py",
            f"""
            import pandas as pd, narrative_pandas as npd
            from pydantic import BaseModel
            class Label(BaseModel):
                label: str
                score: float
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(150)]}})
            out = df.narrative.infer({PROMPT!r}, output=Label, cache={str(cache)!r},
                                     progress=False, concurrency=32,
                                     api_key={sb.api_key!r}, base_url={sb.base_url!r},
                                     data_plane_id={sb.data_plane_id!r})
            report = out.attrs["narrative"]
            print("DONE", out["narrative_error"].isna().sum(), report["resumed_rows"])
            """,
        )
        proc = spawn(script)
        wait_until(lambda: sb.stats.jobs_created >= 40, timeout=60, what="40 submissions")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        first_created = sb.stats.jobs_created
        assert 40 <= first_created < 150
        gets_before = sb.stats.count(method="GET")
        proc = spawn(script)
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        assert "DONE 150" in stdout
        assert sb.stats.jobs_created == 150
        assert sb.stats.duplicates == 0
        assert (sb.stats.count(method="GET") - gets_before) / 150 <= 1.0


class TestStopDuringAStalledListing:
    """A stop interrupts a poll whose listing never answers, counted in the clock seam's ticks."""

    async def test_stop_returns_within_a_few_ticks(self) -> None:
        """engine.stop() while GET /jobs hangs: run() returns, <= 3 clock waits after the stop."""
        listing_asked = asyncio.Event()
        never = asyncio.Event()
        posted: list[str] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                posted.append(f"job-{len(posted)}")
                return httpx.Response(200, json={"job_id": posted[-1]})
            if request.url.path == "/jobs":
                listing_asked.set()
                await never.wait()  # a listing that never answers
            job_id = request.url.path.rsplit("/", 1)[-1]
            return httpx.Response(200, json={"job_id": job_id, "state": "pending"})

        clock = FakeClock()
        settings = resolve_settings("sk-test", "https://api.test", "plane")
        plan = build_plan(frame(10), PROMPT, output=Label, settings=settings)
        async with HTTPClient(
            "sk-test",
            "https://api.test",
            data_plane_id="plane",
            transport=httpx.MockTransport(handler),
            clock=clock,
        ) as client:
            engine = Engine(
                client,
                plan.requests,
                plan.spec,
                cache=None,
                options=dataclasses.replace(plan.options, data_plane_id="plane"),
                tracker=make_progress(False, 10),
                run_id="stall",
                clock=clock,
            )
            task = asyncio.create_task(engine.run())
            await asyncio.wait_for(listing_asked.wait(), 10)
            ticks_at_stop = len(clock.sleeps)
            engine.stop("cancelled")
            outcomes = await asyncio.wait_for(task, 10)  # a hang detector, not a timing
        assert len(clock.sleeps) - ticks_at_stop <= 3
        assert len(outcomes) == 10
        assert {o.status for o in outcomes.values()} == {"cancelled"}
        assert engine.report.status == "cancelled"
        assert len(posted) == 10


class StaleListing(httpx.AsyncBaseTransport):
    """A listing served from a replica that stopped: every job in it stays ``running``."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path != "/jobs" or response.status_code != 200:
            return response
        body = json.loads(await response.aread())
        for job in body["records"]:
            job.update(state="running", result=None, ended_at=None)
        return httpx.Response(200, json=body, request=request)


class TestWatchdog:
    """A listing that shows every job but never their ends cannot hang the run."""

    async def test_stale_listing(self, sandbox: Sandbox) -> None:
        """Jobs stuck 'running' in the listing are fetched by the watchdog; every row ends."""
        sandbox.configure(queue_latency=0.02, run_latency=0.05)
        async with HTTPClient(
            sandbox.api_key,
            sandbox.base_url,
            data_plane_id=sandbox.data_plane_id,
            transport=StaleListing(sandbox.transport()),
        ) as client:
            out = await frame(40).narrative.ainfer(
                PROMPT, output=Label, client=client, concurrency=40, progress=False, cache=False
            )
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 40 and sandbox.stats.duplicates == 0
        assert sandbox.stats.count(path="/jobs/{job_id}") >= 36  # each seen ended by a GET
        # ceil(40 / MAX_DIRECT_GETS) watchdog rounds of WATCHDOG_POLLS + 1 polls each, plus slack
        rounds = -(-40 // MAX_DIRECT_GETS)
        assert out.attrs["narrative"]["polls"] <= rounds * (WATCHDOG_POLLS + 1) + 10


class _CreationListing:
    """A listing by creation for a sweeper: ``records`` newest first, served page by page."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.pages: list[int] = []  # per_page of every page served

    async def list_jobs_raw(self, *, per_page: int, offset: int, **_: Any) -> dict[str, Any]:
        self.pages.append(per_page)
        return {"records": self.records[offset : offset + per_page]}


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(1_800_000_000 + seconds, tz=timezone.utc).isoformat()


class TestForeignJobsMadeJustBeforeOurs:
    """2,000 other jobs made just before ours, and half of ours stamped 2 s behind by their
    executor (benchmark (g0)): by creation, those of ours lie below the other jobs."""

    async def test_a_sweep_that_read_every_page_reads_larger_pages_next(self) -> None:
        ours_new = [f"new-{i}" for i in range(20)]
        ours_behind = [f"behind-{i}" for i in range(12)]
        records = (
            [{"job_id": j, "state": "running", "created_at": _stamp(100)} for j in ours_new]
            + [{"job_id": f"other-{i}", "created_at": _stamp(99.9)} for i in range(2000)]
            + [{"job_id": j, "state": "running", "created_at": _stamp(98)} for j in ours_behind]
        )
        listing = _CreationListing(records)
        sweeper = ListingSweeper(cast(Any, listing), data_plane_id=None)
        sweeper.mode = "created"
        wanted = set(ours_new + ours_behind)
        oldest = datetime.fromtimestamp(1_800_000_000 + 98, tz=timezone.utc)
        results = [
            await sweeper.sweep(wanted, ours=wanted, oldest_created=oldest) for _ in range(5)
        ]
        # The first sweep reads its 8 pages and leaves the 12 jobs behind to GETs ...
        assert len(results[0].records) == 20 and not results[0].complete
        # ... later ones ask for pages twice as large, until one reaches them; none reads the
        # same 8 short pages again and again (before: every sweep did, 1 listing GET per row).
        assert [r.complete for r in results].index(True) <= 3
        assert all(r.complete and len(r.records) == 32 for r in results[3:])
        assert max(listing.pages) == MAX_PER_PAGE
