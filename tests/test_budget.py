"""max_total_tokens holds: long answers, answers without usage, and the reservation rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas._budget import TokenBudget
from narrative_pandas._job_request import JobRequest, RequestCommon
from narrative_pandas._models import InferenceUsage
from narrative_pandas.sandbox import Sandbox


class Essay(BaseModel):
    label: str
    score: float


LONG = "word " * 1600  # about 2,000 tokens at four characters a token


def long_answer(request: dict[str, Any]) -> dict[str, Any]:
    return {"label": LONG, "score": 0.5}


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(queue_latency=0.02, run_latency=0.1, responder=long_answer) as server:
        yield server


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"essay {i}" for i in range(n)]})


def billed(sb: Sandbox) -> tuple[int, list[int]]:
    """The tokens the service counted for every job it ran, and each job's total."""
    totals = [j["result"]["usage"]["total_tokens"] for j in sb.jobs() if j.get("result")]
    return sum(totals), totals


class StripUsage(httpx.AsyncBaseTransport):
    """A gateway that drops ``usage`` from every job it passes on (a service not reporting it)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        body = await response.aread()
        await response.aclose()
        if request.method == "GET" and response.status_code == 200:
            data = json.loads(body)
            for job in data.get("records", [data]):
                if isinstance(job.get("result"), dict):
                    job["result"].pop("usage", None)
            body = json.dumps(data).encode()
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body)

    async def aclose(self) -> None:
        await self._inner.aclose()


class TestLongAnswers:
    """Answers of about 2,000 tokens against max_total_tokens=20,000."""

    def test_without_max_tokens(self, sb: Sandbox) -> None:
        """Learned from the first answer: billed tokens stay within the budget plus one job."""
        with pytest.warns(npd.RowsStoppedWarning):
            out = frame(40).narrative.infer(
                "Essay: {text}",
                output=Essay,
                max_total_tokens=20_000,
                concurrency=16,
                progress=False,
                cache=False,
                api_key=sb.api_key,
                base_url=sb.base_url,
                data_plane_id=sb.data_plane_id,
            )
        total, per_job = billed(sb)
        assert total <= 20_000 + max(per_job)
        assert out.attrs["narrative"]["total_tokens"] == total
        stopped = out["narrative_error"].str.startswith("not submitted: max_total_tokens")
        assert stopped.sum() == 40 - sb.stats.jobs_created > 0
        assert sb.stats.duplicates == 0

    def test_with_max_tokens(self, sb: Sandbox) -> None:
        """In-flight jobs count at max_tokens: billed tokens stay within budget + max_tokens."""
        with pytest.warns(npd.RowsStoppedWarning):
            frame(40).narrative.infer(
                "Essay: {text}",
                output=Essay,
                max_total_tokens=20_000,
                max_tokens=2_200,
                concurrency=16,
                progress=False,
                cache=False,
                api_key=sb.api_key,
                base_url=sb.base_url,
                data_plane_id=sb.data_plane_id,
            )
        total, _ = billed(sb)
        assert total <= 20_000 + 2_200
        assert sb.stats.jobs_created >= 8  # the budget is used, not wasted


class TestNoUsageReported:
    """A service that reports no usage: tokens are estimated, and the budget still holds."""

    async def test_budget_holds_with_estimates(self) -> None:
        """max_total_tokens=3000 over 150 short rows: billed <= budget + one job; flagged."""
        with Sandbox(queue_latency=0.02, run_latency=0.05) as sb:
            async with npd.Client(
                sb.api_key, sb.base_url, data_plane_id=sb.data_plane_id, transport=StripUsage()
            ) as client:
                with pytest.warns(npd.RowsStoppedWarning):
                    out = await frame(150).narrative.ainfer(
                        "Essay: {text}",
                        output=Essay,
                        max_total_tokens=3000,
                        concurrency=16,
                        progress=False,
                        cache=False,
                        client=client,
                    )
            total, per_job = billed(sb)
        report = out.attrs["narrative"]
        assert 0 < sb.stats.jobs_created < 150
        assert total <= 3000 + max(per_job)
        assert report["tokens_estimated"] is True
        assert 0 < report["total_tokens"] <= 3000 + max(per_job)
        assert report["total_tokens"] >= total  # the estimate errs high
        assert out["narrative_total_tokens"].isna().all()  # rows show no invented figures


def request(prompt_tokens: int = 10) -> JobRequest:
    common = RequestCommon("plane", "anthropic.claude-haiku-4.5", {"output_format_schema": {}})
    return JobRequest.from_messages(f"k{prompt_tokens}", (("user", "x"),), common, 1, prompt_tokens)


class TestReservations:
    """The rules that decide whether one more job may start."""

    def test_one_job_at_a_time_until_something_is_learned(self) -> None:
        """Without max_tokens and before any answer, a second job waits for the first."""
        budget = TokenBudget(limit=10_000, max_tokens=None)
        first, second = request(10), request(11)
        assert budget.allows(first)
        budget.reserve(first)
        assert not budget.allows(second)
        budget.settle(
            first.key, InferenceUsage(prompt_tokens=10, completion_tokens=90, total_tokens=100)
        )
        assert budget.allows(second)

    def test_in_flight_counted_at_max_tokens(self) -> None:
        """With max_tokens=1000 and 3,000 left, at most two more jobs (prompt included)."""
        budget = TokenBudget(limit=3_000, max_tokens=1_000)
        started = 0
        for i in range(5):
            job = request(100 + i)
            if budget.allows(job):
                budget.reserve(job)
                started += 1
        assert started == 2

    def test_learned_estimate_is_high(self) -> None:
        """The learned completion is the largest seen and at least 1.5 x the mean."""
        budget = TokenBudget(limit=None, max_tokens=None)
        for completion in (100, 100, 400):
            budget.settle(
                "k", InferenceUsage(completion_tokens=completion, total_tokens=completion)
            )
        assert budget.completion_estimate() == 400
