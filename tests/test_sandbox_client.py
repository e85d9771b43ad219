"""The project's ``Client`` against the sandbox: the two sides of the contract agree."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from narrative_pandas import (
    APIUnknownOutcomeError,
    AuthenticationError,
    BadRequestError,
    InferenceConfig,
    InferenceMessage,
    Job,
    JobsPage,
    ModelInferenceRunRequest,
    NotFoundError,
)
from narrative_pandas._client import Client
from narrative_pandas._clock import FakeClock
from narrative_pandas.sandbox import TRANSPORT_BASE_URL, Sandbox

T0 = 1_767_225_600.0


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0, le=1)


SCHEMA = Sentiment.model_json_schema()


def request(sandbox: Sandbox, text: str = "Loved it.", **config: Any) -> ModelInferenceRunRequest:
    """A run request as the library builds it."""
    return ModelInferenceRunRequest(
        data_plane_id=sandbox.data_plane_id,
        model="anthropic.claude-haiku-4.5",
        messages=[
            InferenceMessage(role="system", text="You label reviews."),
            InferenceMessage(role="user", text=text),
        ],
        inference_config=InferenceConfig(output_format_schema=SCHEMA, **config),
        tags=["test"],
    )


@pytest.fixture
def clock() -> FakeClock:
    """One fake clock for both sides: the client's waits move the sandbox's jobs along."""
    return FakeClock(T0)


@pytest.fixture
def sandbox(clock: FakeClock) -> Iterator[Sandbox]:
    with Sandbox(clock=clock, queue_latency=1.0, run_latency=2.0) as sb:
        yield sb


@pytest.fixture
async def client(sandbox: Sandbox, clock: FakeClock) -> AsyncIterator[Client]:
    async with Client(
        api_key=sandbox.api_key,
        base_url=sandbox.base_url,
        data_plane_id=sandbox.data_plane_id,
        clock=clock,
    ) as c:
        yield c


class TestRoundTrip:
    async def test_submit_wait_and_read(self, client: Client, sandbox: Sandbox) -> None:
        """A submitted job is pending, then completed with an output that follows the schema."""
        submitted = await client.run_model_inference(request(sandbox))
        assert isinstance(submitted, Job) and submitted.state == "pending"
        pending = await client.get_job(submitted.job_id)
        assert pending.state == "pending" and pending.result is None
        done = await client.wait_for_job(submitted.job_id, timeout=60, poll_interval=0.5)
        assert done.state == "completed" and done.is_terminal
        assert done.result is not None and done.result.usage is not None
        output = done.result.structured_output
        assert Draft202012Validator(SCHEMA).is_valid(output)
        assert Sentiment.model_validate(output).label in ("positive", "negative", "neutral")
        assert done.result.usage.total_tokens == (
            done.result.usage.prompt_tokens + done.result.usage.completion_tokens
        )
        assert done.created_at is not None and done.ended_at is not None
        assert done.ended_at > done.created_at
        assert done.input["tags"] == ["test"]

    async def test_list_jobs_finds_the_jobs(self, client: Client, sandbox: Sandbox) -> None:
        """list_jobs with the polling parameters returns the jobs, newest update first."""
        ids = [
            (await client.run_model_inference(request(sandbox, f"r{i}"))).job_id for i in range(3)
        ]
        page = await client.list_jobs(
            type="model_inference",
            data_plane_id=sandbox.data_plane_id,
            order_by="updated_at_desc",
            per_page=500,
        )
        assert isinstance(page, JobsPage)
        assert page.total_records == 3 and page.current_page == 1 and page.total_pages == 1
        assert {j.job_id for j in page.records} == set(ids)
        assert all(j.state == "pending" for j in page.records)

    async def test_failed_job_carries_its_failure(self, client: Client, sandbox: Sandbox) -> None:
        """A job over max_tokens ends failed with the token-limit message."""
        submitted = await client.run_model_inference(request(sandbox, max_tokens=1))
        failed = await client.wait_for_job(submitted.job_id, timeout=60, poll_interval=0.5)
        assert failed.state == "failed" and failed.result is None
        assert "Token limit exceeded" in failed.failure_message()

    async def test_content_block_mapping_is_accepted(
        self, client: Client, sandbox: Sandbox
    ) -> None:
        """A mapping with content-block messages goes through as sent."""
        body = {
            "model": "openai.gpt-4.1",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "inference_config": {"output_format_schema": SCHEMA},
        }
        job = await client.run_model_inference(body)
        stored = await client.get_job(job.job_id)
        assert stored.data_plane_id == sandbox.data_plane_id
        assert stored.input["messages"] == body["messages"]

    async def test_in_process_transport(self, sandbox: Sandbox, clock: FakeClock) -> None:
        """The client works over sandbox.transport() too, on the same jobs."""
        async with Client(
            api_key=sandbox.api_key,
            base_url=TRANSPORT_BASE_URL,
            data_plane_id=sandbox.data_plane_id,
            transport=sandbox.transport(),
            clock=clock,
        ) as in_process:
            job = await in_process.run_model_inference(request(sandbox))
            done = await in_process.wait_for_job(job.job_id, timeout=60, poll_interval=0.5)
        assert done.state == "completed"
        assert [j["job_id"] for j in sandbox.jobs()] == [job.job_id]


class TestErrors:
    async def test_wrong_key_is_an_authentication_error(
        self, sandbox: Sandbox, clock: FakeClock
    ) -> None:
        """A wrong key raises AuthenticationError with the logId, never showing the key."""
        async with Client(
            api_key="sk-sandbox-wrong", base_url=sandbox.base_url, clock=clock
        ) as wrong:
            with pytest.raises(AuthenticationError) as exc:
                await wrong.get_job("x")
        assert exc.value.status_code == 401 and exc.value.log_id
        assert "sk-sandbox-wrong" not in str(exc.value)

    async def test_unknown_plane_is_not_found(self, client: Client, sandbox: Sandbox) -> None:
        """An unknown data plane raises NotFoundError and creates nothing."""
        body = request(sandbox).to_body()
        body["data_plane_id"] = "00000000-0000-4000-8000-000000000000"
        with pytest.raises(NotFoundError):
            await client.run_model_inference(body)
        assert sandbox.stats.jobs_created == 0

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"model": "acme.unknown"}, "model"),
            (
                {"inference_config": {"output_format_schema": SCHEMA, "temperature": 3}},
                "temperature",
            ),
            (
                {"inference_config": {"output_format_schema": {"type": "strnig"}}},
                "output_format_schema",
            ),
            ({"messages": []}, "messages"),
        ],
    )
    async def test_invalid_requests_are_bad_requests(
        self, client: Client, sandbox: Sandbox, change: dict[str, Any], field: str
    ) -> None:
        """Invalid bodies raise BadRequestError whose detail names the field; no retry."""
        body = {**request(sandbox).to_body(), **change}
        with pytest.raises(BadRequestError) as exc:
            await client.run_model_inference(body)
        assert field in (exc.value.detail or "")
        assert sandbox.stats.count(method="POST") == 1

    async def test_unknown_job_is_not_found(self, client: Client) -> None:
        """get_job of an unknown id raises NotFoundError."""
        with pytest.raises(NotFoundError):
            await client.get_job("00000000-0000-4000-8000-000000000000")

    async def test_expired_job_is_not_found(
        self, client: Client, sandbox: Sandbox, clock: FakeClock
    ) -> None:
        """After the TTL a job raises NotFoundError."""
        sandbox.configure(ttl=5)
        job = await client.run_model_inference(request(sandbox))
        clock.advance(7.9)
        assert (await client.get_job(job.job_id)).state == "completed"
        clock.advance(0.2)
        with pytest.raises(NotFoundError):
            await client.get_job(job.job_id)


class TestRetries:
    async def test_503_with_retry_after_is_retried(self, client: Client, sandbox: Sandbox) -> None:
        """Two 503 answers to a POST are retried; one job is created."""
        sandbox.fail_next(2, status=503, path="/model-inference/run", retry_after=1)
        job = await client.run_model_inference(request(sandbox))
        assert job.job_id
        assert sandbox.stats.count(method="POST", status=503) == 2
        assert sandbox.stats.jobs_created == 1
        assert client.stats.retries == 2

    async def test_429_gates_then_succeeds(self, client: Client, sandbox: Sandbox) -> None:
        """A 429 with Retry-After is waited out and the read succeeds."""
        sandbox.fail_next(1, status=429, retry_after=2)
        page = await client.list_jobs()
        assert page.total_records == 0
        assert sandbox.stats.count(status=429) == 1
        assert client.stats.rate_limited == 1

    async def test_lost_post_answer_is_not_resubmitted(
        self, client: Client, sandbox: Sandbox
    ) -> None:
        """A POST that created its job but answered 500 raises APIUnknownOutcomeError, once."""
        sandbox.configure(post_500_after_create_rate=1.0)
        with pytest.raises(APIUnknownOutcomeError):
            await client.run_model_inference(request(sandbox))
        assert sandbox.stats.count(method="POST") == 1
        assert sandbox.stats.jobs_created == 1
        assert sandbox.stats.duplicate_submissions == 0
        page = await client.list_jobs(order_by="created_at_desc", per_page=1)
        assert page.total_records == 1

    async def test_rate_limit_knob_is_survived(self, client: Client, sandbox: Sandbox) -> None:
        """Under rate_limit_rps, a burst of reads all succeed through 429 retries."""
        sandbox.configure(rate_limit_rps=2)
        pages = [await client.list_jobs() for _ in range(5)]
        assert len(pages) == 5
        assert sandbox.stats.count(status=429) >= 1
        assert sandbox.stats.count(status=200) == 5
