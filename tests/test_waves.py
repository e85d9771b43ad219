"""No gap between waves: a freed slot gets its next job at once, and looking never waits for
submitting.

Counts only (requests, the order they reached the server), never wall time.
"""

from __future__ import annotations

import asyncio

import httpx
import pandas as pd
from pydantic import BaseModel

from narrative_pandas._client import Client as HTTPClient
from narrative_pandas._submitter import READ_RESERVE
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):
    label: str
    score: float


PROMPT = "Text: {text}"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


class SlowPosts(httpx.AsyncBaseTransport):
    """POST answers take ``delay`` seconds; records what was on the wire when reads arrived."""

    def __init__(self, inner: httpx.AsyncBaseTransport, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.posts_sent = 0
        self.posts_in_flight = 0
        self.peak_posts_in_flight = 0
        #: For each read (GET), how many POSTs had reached the server before it.
        self.reads_after: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            self.reads_after.append(self.posts_sent)
            return await self.inner.handle_async_request(request)
        self.posts_sent += 1
        self.posts_in_flight += 1
        self.peak_posts_in_flight = max(self.peak_posts_in_flight, self.posts_in_flight)
        try:
            await asyncio.sleep(self.delay)
            return await self.inner.handle_async_request(request)
        finally:
            self.posts_in_flight -= 1


class TestReadsOvertakePosts:
    """A burst of POSTs never holds back the reads that find the next completions."""

    async def test_read_goes_out_during_a_post_burst(self, sandbox: Sandbox) -> None:
        """40 rows on 8 connections: at most 8 - 2 POSTs on the wire, and the first read after
        the burst starts reaches the server before the burst's 8th POST, not after its 39th."""
        sandbox.configure(queue_latency=0.02, run_latency=0.05)
        transport = SlowPosts(sandbox.transport(), delay=0.05)
        async with HTTPClient(
            sandbox.api_key,
            sandbox.base_url,
            data_plane_id=sandbox.data_plane_id,
            transport=transport,
            max_connections=8,
        ) as client:
            out = await frame(40).narrative.ainfer(
                PROMPT, output=Label, client=client, concurrency=40, progress=False, cache=False
            )
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 40 and sandbox.stats.duplicates == 0
        gate = 8 - min(READ_RESERVE, 8 // 4)
        assert transport.peak_posts_in_flight == gate
        # The first POST goes alone (slow start), then the burst of 39 and the first poll. A
        # read queued behind the burst would reach the server after 33 or more POSTs; one that
        # overtakes it, after at most 1 + gate.
        assert 1 <= transport.reads_after[0] <= 1 + gate, transport.reads_after
