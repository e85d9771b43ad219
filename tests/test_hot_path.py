"""The per-row hot path of a run: what it reads and builds per job, counted, not timed.

A run at scale spends its CPU per row above the HTTP layer on decoding listing records, on the
job objects it builds and on its own bookkeeping; these tests pin what that work is allowed to
be (which records are decoded, how many objects of a kind are made) through real runs against
the sandbox, so a change that brings the cost back fails here, not only in a benchmark.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
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
