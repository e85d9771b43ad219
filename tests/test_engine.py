"""The engine against servers that answer the listing differently (the contract allows it).

The sandbox runs in process; a transport in front of it reshapes ``GET /jobs`` answers the way
other servers may: the old ``{"records": [...]}`` shape, a smaller page cap, no ordering, inputs
recorded without tags.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas.sandbox import Sandbox

Reshape = Callable[[httpx.Request, dict[str, Any]], dict[str, Any]]


class ReshapingTransport(httpx.AsyncBaseTransport):
    """Forwards to the sandbox in process and rewrites the JSON of listing answers."""

    def __init__(self, inner: httpx.AsyncBaseTransport, reshape: Reshape) -> None:
        self.inner = inner
        self.reshape = reshape
        self.listings = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        if request.url.path == "/jobs" and "per_page" in params:
            params["per_page"] = str(min(int(params["per_page"]), 50))
            request = httpx.Request(
                request.method,
                request.url.copy_with(params=params),
                headers=request.headers,
            )
        response = await self.inner.handle_async_request(request)
        if request.url.path != "/jobs" or response.status_code != 200:
            return response
        self.listings += 1
        body = json.loads(await response.aread())
        body = self.reshape(request, body)
        return httpx.Response(200, json=body, request=request)


class Echo(BaseModel):
    """Echo of the number."""

    echo: int


def echo_responder(request: dict[str, Any]) -> dict[str, Any]:
    text = request["messages"][-1]["text"]
    return {"echo": int(text.split()[-1])}


def old_shape(_: httpx.Request, body: dict[str, Any]) -> dict[str, Any]:
    return {"records": body["records"]}


def shuffled(_: httpx.Request, body: dict[str, Any]) -> dict[str, Any]:
    records = list(body["records"])
    random.Random(len(records)).shuffle(records)
    return {**body, "records": records}


def without_tags(_: httpx.Request, body: dict[str, Any]) -> dict[str, Any]:
    records = []
    for job in body["records"]:
        job = dict(job)
        job["input"] = {k: v for k, v in (job.get("input") or {}).items() if k != "tags"}
        records.append(job)
    return {**body, "records": records}


async def run(sandbox: Sandbox, reshape: Reshape, rows: int, **options: Any) -> pd.DataFrame:
    transport = ReshapingTransport(sandbox.transport(), reshape)
    async with npd.Client(
        api_key=sandbox.api_key,
        base_url=sandbox.base_url,
        data_plane_id=sandbox.data_plane_id,
        transport=transport,
    ) as client:
        df = pd.DataFrame({"n": range(rows)})
        out = await df.narrative.ainfer(
            "Number {n}", output=Echo, client=client, progress=False, **options
        )
    out.attrs["listings"] = transport.listings
    return out


class TestListingVariants:
    async def test_old_shape_and_smaller_page_cap(self, sandbox: Sandbox) -> None:
        """Records-only pages capped at 50 per page: every row still gets its own answer."""
        sandbox.configure(responder=echo_responder, queue_latency=0.1, run_latency=(0.1, 0.6))
        out = await run(sandbox, old_shape, 200, concurrency=200)
        assert list(out["echo"]) == list(range(200))
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.duplicate_submissions == 0

    async def test_unordered_listing_falls_back_to_reading_by_creation(
        self, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A listing not ordered by updated_at is abandoned (once, with a warning) for reading
        by creation, which needs no order to find each job by its id."""
        sandbox.configure(responder=echo_responder, queue_latency=0.05, run_latency=0.1)
        with caplog.at_level(logging.WARNING, logger="narrative_pandas"):
            out = await run(sandbox, shuffled, 40, concurrency=40)
        assert list(out["echo"]) == list(range(40))
        assert out["narrative_error"].isna().all()
        assert sum("not ordered by updated_at" in r.message for r in caplog.records) == 1
        assert out.attrs["narrative"]["listing_mode"] == "created"
        assert out.attrs["listings"] > 0
        assert sandbox.stats.jobs_created == 40 and sandbox.stats.duplicates == 0

    async def test_reconcile_by_content_when_input_has_no_tags(self, sandbox: Sandbox) -> None:
        """A POST that created its job but answered 500 is found by its content, not resent."""
        sandbox.configure(
            responder=echo_responder, post_500_after_create_rate=0.4, seed=2, run_latency=0.05
        )
        out = await run(sandbox, without_tags, 30, concurrency=10)
        assert list(out["echo"]) == list(range(30))
        assert sandbox.stats.count(method="POST", status=500) > 0
        assert sandbox.stats.jobs_created == 30
        assert sandbox.stats.duplicate_submissions == 0
