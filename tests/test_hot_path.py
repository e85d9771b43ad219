"""The per-row hot path of a run: what it reads and builds per job, counted, not timed.

A run at scale spends its CPU per row above the HTTP layer on decoding listing records, on the
job objects it builds and on its own bookkeeping; these tests pin what that work is allowed to
be (which records are decoded, how many objects of a kind are made) through real runs against
the sandbox, so a change that brings the cost back fails here, not only in a benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas._cache import CachedResult, MemoryCache
from narrative_pandas._deadlines import Deadlines
from narrative_pandas._exceptions import APITimeoutError
from narrative_pandas._models import Job, JobRecord
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):
    label: str
    score: float


class SlowPostAnswers(httpx.AsyncBaseTransport):
    """Forwards to the sandbox in process; a POST's answer comes back ``delay`` s after its job
    was created, so listing pages read meanwhile show jobs whose ids the run does not know yet."""

    def __init__(self, inner: httpx.AsyncBaseTransport, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            await asyncio.sleep(self.delay)
        return response


async def infer_through(
    sandbox: Sandbox, transport: httpx.AsyncBaseTransport, rows: int, **options: Any
) -> pd.DataFrame:
    async with npd.Client(
        api_key=sandbox.api_key,
        base_url=sandbox.base_url,
        data_plane_id=sandbox.data_plane_id,
        transport=transport,
    ) as client:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(rows)]})
        return await df.narrative.ainfer(
            "Text: {text}", output=Label, client=client, progress=False, cache=False, **options
        )


class TestJobsCreatedDuringASweep:
    """Jobs this run creates while a listing page is on its way are the run's own jobs."""

    async def test_never_taken_for_other_clients_jobs(
        self, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Pages full of jobs whose POSTs have not answered yet: still read by update."""
        sandbox.configure(queue_latency=0.0, run_latency=0.0)
        transport = SlowPostAnswers(sandbox.transport(), delay=0.2)
        with caplog.at_level(logging.WARNING, logger="narrative_pandas"):
            out = await infer_through(sandbox, transport, 400, concurrency=100)
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 400 and sandbox.stats.duplicates == 0
        assert not [r for r in caplog.records if "other jobs fill" in r.getMessage()]
        assert out.attrs["narrative"]["listing_mode"] == "updated"


class TestSharedDeadlines:
    """Every request of a client shares one deadline timer; an overdue one still times out."""

    async def test_many_requests_one_timer(self) -> None:
        """A thousand requests that finish in time schedule one timer between them."""
        deadlines = Deadlines(30.0)

        async def request() -> None:
            with deadlines.bound():
                await asyncio.sleep(0)

        await asyncio.gather(*(request() for _ in range(1000)))
        assert deadlines.timers == 1

    async def test_overdue_request_raises_timeout_error(self) -> None:
        """A request past its deadline raises asyncio.TimeoutError; a prompt one is untouched."""
        deadlines = Deadlines(0.05)
        finished: list[str] = []

        async def request(name: str, seconds: float) -> None:
            with deadlines.bound():
                await asyncio.sleep(seconds)
            finished.append(name)

        slow, quick = await asyncio.gather(
            request("slow", 10.0), request("quick", 0.0), return_exceptions=True
        )
        assert isinstance(slow, asyncio.TimeoutError)
        assert quick is None and finished == ["quick"]

    async def test_outside_cancellation_stays_a_cancellation(self) -> None:
        """A request cancelled by its caller (a run stopping) is not reported as a timeout."""
        deadlines = Deadlines(30.0)

        async def request() -> None:
            with deadlines.bound():
                await asyncio.sleep(10.0)

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def test_trickling_answer_ends_at_the_deadline(self) -> None:
        """A server that sends a byte now and then cannot hold a read past the client's deadline."""

        done = asyncio.Event()

        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                for _ in range(100):
                    if reader.at_eof():
                        break
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            except ConnectionError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
                done.set()

        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with npd.Client(
                "k-secret", f"http://127.0.0.1:{port}", timeout=1.0, deadline=0.3, max_retries=0
            ) as client:
                with pytest.raises(APITimeoutError):
                    await client.get_job("j")
                assert client._deadlines.timers >= 1
            await asyncio.wait_for(done.wait(), 10)  # the server's side is closed, too
        finally:
            server.close()
            await server.wait_closed()


class CountingCache(MemoryCache):
    """The in-memory cache, counting how its results arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.put_calls = 0
        self.results_put = 0

    def put_many(self, results: Iterable[CachedResult]) -> None:
        batch = list(results)
        self.put_calls += 1
        self.results_put += len(batch)
        super().put_many(batch)


class TestCacheWritesPerPoll:
    """A poll's finished rows reach the cache in one write, and the journal is emptied."""

    def test_results_written_per_poll_not_per_row(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """300 rows, 100 at a time: every result cached, in far fewer writes than rows."""
        sandbox.configure(queue_latency=0.0, run_latency=0.2)
        cache = CountingCache()
        out = pd.DataFrame({"text": [f"row {i}" for i in range(300)]}).narrative.infer(
            "Text: {text}", output=Label, concurrency=100, progress=False, cache=cache, **target
        )
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 300 and sandbox.stats.duplicates == 0
        assert cache.results_put == 300 and len(cache) == 300
        assert cache.put_calls <= out.attrs["narrative"]["polls"] < 300 / 3
        assert cache.journal_entries() == []


class TestForeignRecordsNotDecoded:
    """Other clients' records on the listing's pages are skipped before any model is built."""

    def test_only_our_records_become_job_records(
        self, sandbox: Sandbox, target: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """500 other jobs on the listing: a JobRecord or a Job only ever for one of ours."""
        sandbox.configure(queue_latency=0.0, run_latency=0.3, foreign_jobs=500)
        made: list[str] = []
        validated: list[Any] = []
        real_of = JobRecord.of.__func__  # type: ignore[attr-defined]
        real_validate = Job.model_validate

        def counting_of(cls: type[JobRecord], record: Any) -> JobRecord:
            made.append(record.get("job_id"))
            return real_of(cls, record)  # type: ignore[no-any-return]

        def counting_validate(*args: Any, **kwargs: Any) -> Job:
            validated.append(args)
            return real_validate(*args, **kwargs)

        monkeypatch.setattr(JobRecord, "of", classmethod(counting_of))
        monkeypatch.setattr(Job, "model_validate", counting_validate)
        out = pd.DataFrame({"text": [f"row {i}" for i in range(60)]}).narrative.infer(
            "Text: {text}", output=Label, concurrency=20, progress=False, cache=False, **target
        )
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 60 and sandbox.stats.duplicates == 0
        ours = set(out["narrative_job_id"])
        assert set(made) <= ours
        # a Job is validated only for a job fetched on its own (GET /jobs/{id}), always ours
        assert {args[0].get("job_id") for args in validated} <= ours
        assert len(validated) <= sandbox.stats.count(path="/jobs/{job_id}")
