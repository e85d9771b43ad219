"""The sandbox's knobs (latencies, failures, limits, injected errors, TTL, and the faults of a
large, eventually consistent deployment) and its counters."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

import narrative_pandas
from narrative_pandas import _config
from narrative_pandas._clock import FakeClock
from narrative_pandas.sandbox import (
    DEFAULT_DATA_PLANE_ID,
    TRANSPORT_BASE_URL,
    Sandbox,
    SandboxConfig,
    current_sandbox,
    use_sandbox,
)

T0 = 1_767_225_600.0
RUN = "/model-inference/run"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}


def body(text: str = "A review.", **config: Any) -> dict[str, Any]:
    """A valid run request; ``config`` adds inference_config fields."""
    return {
        "data_plane_id": DEFAULT_DATA_PLANE_ID,
        "model": "anthropic.claude-haiku-4.5",
        "messages": [{"role": "user", "text": text}],
        "inference_config": {"output_format_schema": copy.deepcopy(SCHEMA), **config},
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@asynccontextmanager
async def connect(sandbox: Sandbox, key: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client onto ``sandbox`` (no socket)."""
    headers = {"Authorization": f"Bearer {key or sandbox.api_key}"}
    async with httpx.AsyncClient(
        transport=sandbox.transport(), base_url=TRANSPORT_BASE_URL, headers=headers
    ) as client:
        yield client


async def submit(client: httpx.AsyncClient, request: dict[str, Any]) -> str:
    response = await client.post(RUN, json=request)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


class TestLifecycle:
    async def test_states_follow_the_clock(self, clock: FakeClock) -> None:
        """pending until queue latency, running until run latency, then completed."""
        sb = Sandbox(clock=clock, queue_latency=1.0, run_latency=2.0)
        async with connect(sb) as client:
            job_id = await submit(client, body())
            seen = [(await job(client, job_id))["state"]]
            for step in (0.99, 0.02, 1.98, 0.02):
                clock.advance(step)
                seen.append((await job(client, job_id))["state"])
        assert seen == ["pending", "pending", "running", "running", "completed"]

    async def test_timestamps_mark_each_transition(self, clock: FakeClock) -> None:
        """updated_at moves at each transition; ended_at is the completion time."""
        sb = Sandbox(clock=clock, queue_latency=1.0, run_latency=2.0)
        async with connect(sb) as client:
            job_id = await submit(client, body())
            clock.advance(10)
            done = await job(client, job_id)
        assert done["created_at"] == "2026-01-01T00:00:00.000000"
        assert done["updated_at"] == done["ended_at"] == "2026-01-01T00:00:03.000000"

    async def test_zero_latency_completes_at_once(self, clock: FakeClock) -> None:
        """With no latency a job is completed as soon as it exists."""
        sb = Sandbox(clock=clock, queue_latency=0, run_latency=0)
        async with connect(sb) as client:
            done = await job(client, await submit(client, body()))
        assert done["state"] == "completed"
        assert done["created_at"] == done["updated_at"] == done["ended_at"]

    def test_real_small_latencies_pass_through_every_state(self) -> None:
        """Over HTTP with 50 ms latencies, polling sees pending, running, completed in order."""
        order = ["pending", "running", "completed"]
        with Sandbox(queue_latency=0.05, run_latency=0.05) as sb:
            headers = {"Authorization": f"Bearer {sb.api_key}"}
            with httpx.Client(base_url=sb.base_url, headers=headers) as client:
                job_id = client.post(RUN, json=body()).json()["job_id"]
                states = [client.get(f"/jobs/{job_id}").json()["state"]]
                while states[-1] != "completed":
                    states.append(client.get(f"/jobs/{job_id}").json()["state"])
        distinct = list(dict.fromkeys(states))
        assert distinct == [s for s in order if s in distinct]
        assert distinct[-1] == "completed"

    async def test_latency_ranges_are_seeded(self, clock: FakeClock) -> None:
        """The same seed draws the same latencies from a range."""

        async def durations(seed: int) -> list[tuple[str, str]]:
            fake = FakeClock(T0)
            sb = Sandbox(clock=fake, seed=seed, queue_latency=(0, 5), run_latency=(1, 9))
            async with connect(sb) as client:
                for i in range(5):
                    await submit(client, body(f"row {i}"))
            fake.advance(100)
            return [(j["created_at"], j["ended_at"]) for j in sb.jobs()]

        first, again, other = await durations(1), await durations(1), await durations(2)
        assert first == again
        assert first != other


class TestFailures:
    async def test_failure_rate_one_fails_every_job(self, clock: FakeClock) -> None:
        """failure_rate=1 ends every job failed with a failures entry and no result."""
        sb = Sandbox(clock=clock, failure_rate=1.0)
        async with connect(sb) as client:
            job_id = await submit(client, body())
            clock.advance(5)
            failed = await job(client, job_id)
        assert failed["state"] == "failed"
        assert failed["result"] is None
        assert failed["ended_at"] is not None
        [failure] = failed["failures"]
        assert set(failure) == {"message", "timestamp", "value"}
        assert failure["message"] and failure["timestamp"] == failed["ended_at"]

    async def test_failure_rate_is_per_request_and_deterministic(self) -> None:
        """About the given fraction fails, and the same requests fail again with the same seed."""

        async def states(seed: int) -> list[str]:
            clock = FakeClock(T0)
            sb = Sandbox(clock=clock, seed=seed, failure_rate=0.5)
            async with connect(sb) as client:
                for i in range(60):
                    await submit(client, body(f"row {i}"))
            clock.advance(10)
            return [j["state"] for j in sb.jobs()]

        first = await states(3)
        assert first == await states(3)
        assert 15 <= first.count("failed") <= 45
        assert set(first) == {"completed", "failed"}

    async def test_token_limit_exceeded(self, clock: FakeClock) -> None:
        """An answer longer than max_tokens fails with "Token limit exceeded"."""
        sb = Sandbox(clock=clock)
        async with connect(sb) as client:
            short = await submit(client, body(max_tokens=1))
            enough = await submit(client, body("other", max_tokens=1000))
            clock.advance(5)
            failed, completed = await job(client, short), await job(client, enough)
        assert failed["state"] == "failed"
        assert "Token limit exceeded" in failed["failures"][0]["message"]
        assert completed["state"] == "completed"
        assert completed["result"]["usage"]["completion_tokens"] <= 1000

    async def test_unavailable_model_fails_the_job(self, clock: FakeClock) -> None:
        """unavailable_models makes jobs of that model fail with a message naming it."""
        sb = Sandbox(clock=clock, unavailable_models=("openai.o4-mini",))
        async with connect(sb) as client:
            request = {**body(), "model": "openai.o4-mini"}
            job_id = await submit(client, request)
            clock.advance(5)
            failed = await job(client, job_id)
        assert failed["state"] == "failed"
        assert "openai.o4-mini" in failed["failures"][0]["message"]

    async def test_extra_models_are_accepted(self, clock: FakeClock) -> None:
        """extra_models extends the list of accepted model ids."""
        sb = Sandbox(clock=clock)
        async with connect(sb) as client:
            request = {**body(), "model": "acme.next-1"}
            assert (await client.post(RUN, json=request)).status_code == 400
            sb.configure(extra_models=("acme.next-1",))
            assert (await client.post(RUN, json=request)).status_code == 200

    async def test_invalid_schema_as_job_failure(self, clock: FakeClock) -> None:
        """With invalid_schema_as_job_failure, a bad schema makes a failed job, not a 400."""
        sb = Sandbox(clock=clock, invalid_schema_as_job_failure=True)
        async with connect(sb) as client:
            request = body()
            request["inference_config"]["output_format_schema"] = {"type": "strnig"}
            job_id = await submit(client, request)
            clock.advance(5)
            failed = await job(client, job_id)
        assert failed["state"] == "failed"
        assert "output_format_schema" in failed["failures"][0]["message"]

    async def test_403_for_unknown_data_plane_when_asked(self, clock: FakeClock) -> None:
        """unknown_data_plane_status=403 answers unknown planes with 403."""
        sb = Sandbox(clock=clock, unknown_data_plane_status=403)
        async with connect(sb) as client:
            response = await client.post(RUN, json={**body(), "data_plane_id": "nope"})
        assert response.status_code == 403


class TestResponder:
    async def test_responder_answers_with_normalised_messages(self, clock: FakeClock) -> None:
        """The responder gets the body with {role, text} messages; its answer is the output."""
        seen: list[dict[str, Any]] = []

        def responder(request: dict[str, Any]) -> dict[str, Any]:
            seen.append(request)
            return {"label": "positive", "score": len(request["messages"])}

        sb = Sandbox(clock=clock, responder=responder)
        async with connect(sb) as client:
            request = body(temperature=0)
            request["messages"] = [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "text": "Hi"},
            ]
            request["tags"] = ["x"]
            job_id = await submit(client, request)
            clock.advance(5)
            done = await job(client, job_id)
        assert done["result"]["structured_output"] == {"label": "positive", "score": 2}
        assert seen[0]["messages"] == [
            {"role": "system", "text": "Be brief."},
            {"role": "user", "text": "Hi"},
        ]
        assert seen[0]["inference_config"]["temperature"] == 0
        assert seen[0]["tags"] == ["x"]
        assert done["input"]["messages"] == request["messages"]

    async def test_async_responder(self, clock: FakeClock) -> None:
        """An async responder is awaited."""

        async def responder(request: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"label": "negative", "score": 1}

        sb = Sandbox(clock=clock, responder=responder, run_latency=0, queue_latency=0)
        async with connect(sb) as client:
            done = await job(client, await submit(client, body()))
        assert done["result"]["structured_output"] == {"label": "negative", "score": 1}

    async def test_invalid_answer_fails_the_job(self, clock: FakeClock) -> None:
        """An answer that breaks the schema fails the job, saying so."""
        sb = Sandbox(clock=clock, responder=lambda r: {"label": "maybe", "score": 9})
        async with connect(sb) as client:
            job_id = await submit(client, body())
            clock.advance(5)
            failed = await job(client, job_id)
        assert failed["state"] == "failed"
        assert "does not match output_format_schema" in failed["failures"][0]["message"]

    async def test_validate_responder_false_completes_invalid_answers(
        self, clock: FakeClock
    ) -> None:
        """With validate_responder=False the invalid answer is delivered as the output."""
        answer = {"label": "maybe", "score": 9, "extra": True}
        sb = Sandbox(clock=clock, responder=lambda r: answer, validate_responder=False)
        async with connect(sb) as client:
            job_id = await submit(client, body())
            clock.advance(5)
            done = await job(client, job_id)
        assert done["state"] == "completed"
        assert done["result"]["structured_output"] == answer

    async def test_raising_responder_fails_with_its_message(self, clock: FakeClock) -> None:
        """A responder that raises fails the job with the exception's message."""

        def responder(request: dict[str, Any]) -> Any:
            raise RuntimeError("model overloaded")

        sb = Sandbox(clock=clock, responder=responder)
        async with connect(sb) as client:
            job_id = await submit(client, body())
            clock.advance(5)
            failed = await job(client, job_id)
        assert failed["state"] == "failed"
        assert failed["failures"][0]["message"] == "model overloaded"


class TestRateLimits:
    async def test_rate_limit_rps_answers_429_with_retry_after(self, clock: FakeClock) -> None:
        """Beyond rate_limit_rps requests in a second, answers are 429 with Retry-After."""
        sb = Sandbox(clock=clock, rate_limit_rps=2)
        async with connect(sb) as client:
            statuses = [(await client.get("/jobs")).status_code for _ in range(3)]
            limited = await client.get("/jobs")
            clock.advance(1.0)
            after = (await client.get("/jobs")).status_code
        assert statuses == [200, 200, 429]
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["status"] == 429
        assert after == 200
        assert sb.stats.count(status=429) == 2

    async def test_rate_limit_is_per_key(self, clock: FakeClock) -> None:
        """One key's burst does not limit another key."""
        sb = Sandbox(clock=clock, rate_limit_rps=1)
        other = sb.add_api_key()
        async with connect(sb) as client, connect(sb, other) as second:
            assert (await client.get("/jobs")).status_code == 200
            assert (await client.get("/jobs")).status_code == 429
            assert (await second.get("/jobs")).status_code == 200

    async def test_max_unfinished_jobs(self, clock: FakeClock) -> None:
        """POSTs are answered 429 while max_unfinished_jobs jobs of the key are unfinished."""
        sb = Sandbox(clock=clock, max_unfinished_jobs=2, queue_latency=1, run_latency=2)
        async with connect(sb) as client:
            await submit(client, body("a"))
            clock.advance(0.5)
            await submit(client, body("b"))
            refused = await client.post(RUN, json=body("c"))
            reads = (await client.get("/jobs")).status_code
            clock.advance(2.6)  # the first job ends at +3.0
            accepted = await client.post(RUN, json=body("c"))
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "3"
        assert reads == 200
        assert accepted.status_code == 200
        assert sb.stats.jobs_created == 3


class TestInjectedErrors:
    async def test_error_rate_one_answers_only_errors(self, clock: FakeClock) -> None:
        """error_rate=1 answers every request with one of error_statuses and creates nothing."""
        sb = Sandbox(clock=clock, error_rate=1.0, error_statuses=(502,))
        async with connect(sb) as client:
            responses = [await client.post(RUN, json=body()) for _ in range(3)]
            responses.append(await client.get("/jobs"))
        assert [r.status_code for r in responses] == [502] * 4
        assert all(set(r.json()) >= {"logId", "status", "detail"} for r in responses)
        assert sb.stats.jobs_created == 0

    async def test_error_rate_is_seeded(self) -> None:
        """The same seed injects errors into the same requests, from the default statuses."""

        async def statuses(seed: int) -> list[int]:
            sb = Sandbox(clock=FakeClock(T0), seed=seed, error_rate=0.3)
            async with connect(sb) as client:
                return [(await client.get("/jobs")).status_code for _ in range(50)]

        first = await statuses(7)
        assert first == await statuses(7)
        assert set(first) - {200} <= {500, 502, 503}
        assert 5 <= sum(s != 200 for s in first) <= 30

    async def test_post_500_after_create(self, clock: FakeClock) -> None:
        """post_500_after_create_rate=1 creates the job and still answers 500."""
        sb = Sandbox(clock=clock, post_500_after_create_rate=1.0)
        async with connect(sb) as client:
            response = await client.post(RUN, json=body())
            listed = (await client.get("/jobs")).json()
        assert response.status_code == 500
        assert response.json()["status"] == 500
        assert sb.stats.jobs_created == 1
        assert listed["total_records"] == 1

    async def test_response_delay_overlaps_requests(self, clock: FakeClock) -> None:
        """With response_delay, concurrent requests are in flight together."""
        sb = Sandbox(clock=clock, response_delay=0.05)
        async with connect(sb) as client:
            responses = await asyncio.gather(*(client.get("/jobs") for _ in range(5)))
        assert [r.status_code for r in responses] == [200] * 5
        assert sb.stats.peak_concurrent_requests == 5
        assert sb.stats.concurrent_requests == 0


class TestFailNext:
    async def test_next_n_requests_get_the_status(self, clock: FakeClock) -> None:
        """fail_next(2, 503, retry_after=3) answers two requests 503 with Retry-After: 3."""
        sb = Sandbox(clock=clock)
        sb.fail_next(2, status=503, retry_after=3)
        async with connect(sb) as client:
            responses = [await client.post(RUN, json=body()) for _ in range(3)]
        assert [r.status_code for r in responses] == [503, 503, 200]
        assert responses[0].headers["retry-after"] == "3"
        assert responses[0].json()["instance"] == RUN
        assert sb.stats.jobs_created == 1

    async def test_path_and_method_filters(self, clock: FakeClock) -> None:
        """A rule for one route leaves the others alone."""
        sb = Sandbox(clock=clock)
        sb.fail_next(1, status=429, path="/jobs/{job_id}", method="get")
        async with connect(sb) as client:
            job_id = await submit(client, body())
            listed = await client.get("/jobs")
            first = await client.get(f"/jobs/{job_id}")
            second = await client.get(f"/jobs/{job_id}")
        assert listed.status_code == 200
        assert (first.status_code, second.status_code) == (429, 200)
        assert "retry-after" not in first.headers

    async def test_rules_queue_up(self, clock: FakeClock) -> None:
        """Successive fail_next calls apply in order."""
        sb = Sandbox(clock=clock)
        sb.fail_next(1, status=500)
        sb.fail_next(1, status=502)
        async with connect(sb) as client:
            codes = [(await client.get("/jobs")).status_code for _ in range(3)]
        assert codes == [500, 502, 200]

    def test_n_must_be_positive(self) -> None:
        """fail_next(0) is refused."""
        with pytest.raises(ValueError, match="at least 1"):
            Sandbox().fail_next(0)


class TestTTL:
    async def test_jobs_expire_ttl_after_ending(self, clock: FakeClock) -> None:
        """A job is 404 and gone from listings once ttl seconds passed since it ended."""
        sb = Sandbox(clock=clock, ttl=10, queue_latency=1, run_latency=2)
        async with connect(sb) as client:
            job_id = await submit(client, body())
            clock.advance(12.9)  # ended at +3, expires at +13
            alive = await client.get(f"/jobs/{job_id}")
            clock.advance(0.2)
            assert sb.jobs() == []
            gone = await client.get(f"/jobs/{job_id}")
            listed = (await client.get("/jobs")).json()
        assert alive.status_code == 200
        assert gone.status_code == 404
        assert listed["total_records"] == 0 and listed["records"] == []
        assert sb.jobs() == []

    async def test_no_ttl_keeps_jobs(self, clock: FakeClock) -> None:
        """By default jobs never expire."""
        sb = Sandbox(clock=clock)
        async with connect(sb) as client:
            job_id = await submit(client, body())
            clock.advance(10 * 365 * 86400)
            assert (await client.get(f"/jobs/{job_id}")).status_code == 200


class TestStats:
    async def test_request_counters(self, clock: FakeClock) -> None:
        """requests and count() tally by method, route template and status."""
        sb = Sandbox(clock=clock)
        async with connect(sb) as client:
            job_id = await submit(client, body())
            await client.get(f"/jobs/{job_id}")
            await client.get("/jobs/unknown")
            await client.get("/jobs")
            await client.post(RUN, json={})
        stats = sb.stats
        assert stats.requests == 5
        assert stats.count(method="POST") == 2
        assert stats.count(path=RUN, status=200) == 1
        assert stats.count(path=RUN, status=400) == 1
        assert stats.count(path="/jobs/{job_id}") == 2
        assert stats.count(path="/jobs/anything", status=404) == 1
        assert stats.count(method="GET", path="/jobs") == 1
        assert stats.count(status=500) == 0

    async def test_duplicate_submissions_ignore_tags(self, clock: FakeClock) -> None:
        """A body equal to an earlier one (tags aside) counts as a duplicate submission."""
        sb = Sandbox(clock=clock)
        async with connect(sb) as client:
            await submit(client, {**body(), "tags": ["run-1"]})
            await submit(client, {**body(), "tags": ["run-2"]})
            await submit(client, body("different text"))
            content_shape = body()
            content_shape["messages"] = [
                {"role": "user", "content": [{"type": "text", "text": "A review."}]}
            ]
            await submit(client, content_shape)
        assert sb.stats.jobs_created == 4
        assert sb.stats.duplicate_submissions == 2

    async def test_peak_and_current_unfinished_jobs(self, clock: FakeClock) -> None:
        """peak_unfinished_jobs is the most jobs unfinished together; unfinished_jobs() is now."""
        sb = Sandbox(clock=clock, queue_latency=0, run_latency=1.0)
        async with connect(sb) as client:
            for i in range(3):
                await submit(client, body(f"burst {i}"))
            clock.advance(0.5)
            assert sb.stats.unfinished_jobs() == 3
            clock.advance(0.6)
            assert sb.stats.unfinished_jobs() == 0
            for i in range(2):
                await submit(client, body(f"later {i}"))
        assert sb.stats.peak_unfinished_jobs == 3
        assert sb.stats.unfinished_jobs() == 2

    async def test_reset(self, clock: FakeClock) -> None:
        """stats.reset() zeroes counters; peaks restart from what is unfinished now."""
        sb = Sandbox(clock=clock, run_latency=5)
        async with connect(sb) as client:
            await submit(client, body("a"))
            await submit(client, body("a"))
        sb.stats.reset()
        assert sb.stats.requests == 0
        assert sb.stats.jobs_created == 0
        assert sb.stats.duplicate_submissions == 0
        assert sb.stats.peak_unfinished_jobs == 2
        assert sb.stats.peak_concurrent_requests == 0
        assert len(sb.jobs()) == 2
        sb.reset()
        assert sb.jobs() == [] and sb.stats.unfinished_jobs() == 0

    async def test_snapshot_and_repr(self, clock: FakeClock) -> None:
        """The stats print as one line of counters."""
        sb = Sandbox(clock=clock)
        assert sb.stats.snapshot()["requests"] == 0
        assert repr(sb.stats).startswith("SandboxStats(requests=0")


class TestConfigure:
    def test_configure_changes_knobs_at_runtime(self) -> None:
        """configure() returns the new config and the sandbox uses it."""
        sb = Sandbox()
        config = sb.configure(failure_rate=0.25, run_latency=(0.1, 0.2))
        assert sb.config is config
        assert (config.failure_rate, config.run_latency) == (0.25, (0.1, 0.2))

    def test_latency_is_another_name_for_run_latency(self) -> None:
        """latency=... sets run_latency, as the CLI's --latency does."""
        assert Sandbox(latency=0.3).config.run_latency == 0.3
        assert Sandbox().configure(latency=(1, 2)).run_latency == (1.0, 2.0)
        with pytest.raises(TypeError, match="not both"):
            Sandbox(latency=1, run_latency=2)

    @pytest.mark.parametrize(
        ("knobs", "error"),
        [
            ({"failure_rate": 1.5}, ValueError),
            ({"run_latency": -1}, ValueError),
            ({"run_latency": (2, 1)}, ValueError),
            ({"rate_limit_rps": 0}, ValueError),
            ({"max_unfinished_jobs": 0}, ValueError),
            ({"error_statuses": (200,)}, ValueError),
            ({"unknown_data_plane_status": 500}, ValueError),
            ({"no_such_knob": 1}, TypeError),
        ],
    )
    def test_invalid_knobs_are_refused(self, knobs: dict[str, Any], error: type[Exception]) -> None:
        """Invalid knobs raise and leave the config as it was."""
        sb = Sandbox()
        before = sb.config
        with pytest.raises(error):
            sb.configure(**knobs)
        assert sb.config is before
        with pytest.raises(error):
            Sandbox(**knobs)

    def test_default_config(self) -> None:
        """The defaults: one data plane, no failures, no limits, no TTL."""
        config = SandboxConfig()
        assert config.data_plane_ids == (DEFAULT_DATA_PLANE_ID,)
        assert (config.failure_rate, config.error_rate, config.ttl) == (0.0, 0.0, None)
        assert config.error_statuses == (500, 502, 503)
        assert "anthropic.claude-haiku-4.5" in config.models


class TestTransport:
    async def test_transport_shares_state_with_the_server(self) -> None:
        """Jobs made over HTTP are seen in-process and vice versa, in the same counters."""
        with Sandbox(run_latency=0, queue_latency=0) as sb:
            headers = {"Authorization": f"Bearer {sb.api_key}"}
            async with httpx.AsyncClient(base_url=sb.base_url, headers=headers) as over_http:
                over_socket = await submit(over_http, body("socket"))
                async with connect(sb) as in_process:
                    in_memory = await submit(in_process, body("memory"))
                    assert (await job(in_process, over_socket))["state"] == "completed"
                assert (await job(over_http, in_memory))["state"] == "completed"
            assert sb.stats.jobs_created == 2
            assert sb.stats.count(path="/jobs/{job_id}", status=200) == 2

    def test_base_url_without_a_server(self) -> None:
        """Before start() the base URL is the loopback name meant for transport()."""
        assert Sandbox().base_url == TRANSPORT_BASE_URL == "http://sandbox.localhost"


class TestUseSandbox:
    @pytest.fixture(autouse=True)
    def _restore_settings(self, monkeypatch: pytest.MonkeyPatch) -> Any:
        monkeypatch.setattr(_config, "_configured", _config._configured)
        monkeypatch.setattr(_config, "_sandbox_target", _config._sandbox_target)
        yield
        running = current_sandbox()
        if running is not None:
            running.stop()

    def test_becomes_the_default_target_and_warns_once(
        self, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """use_sandbox() targets the library at the sandbox, logs one warning, prints nothing."""
        from narrative_pandas.sandbox import _server

        _server._warned = False
        with caplog.at_level(logging.WARNING, logger="narrative_pandas"):
            sb = use_sandbox(run_latency=0.01)
            again = use_sandbox()
        assert again is sb and sb.running
        settings = _config.resolve_settings()
        assert settings.base_url == sb.base_url
        assert settings.data_plane_id == sb.data_plane_id
        assert settings.api_key is not None and settings.api_key.reveal() == sb.api_key
        warnings = [r for r in caplog.records if r.name == "narrative_pandas"]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert "synthetic" in warnings[0].getMessage().lower()
        assert sb.api_key not in caplog.text
        assert capsys.readouterr() == ("", "")
        response = httpx.get(
            f"{settings.base_url}/jobs", headers={"Authorization": f"Bearer {sb.api_key}"}
        )
        assert response.status_code == 200

    def test_knobs_restart_and_configure_resets(self) -> None:
        """Knobs restart the sandbox with them; configure() stops targeting it."""
        first = use_sandbox()
        second = use_sandbox(failure_rate=0.5)
        assert second is not first and not first.running
        assert second.config.failure_rate == 0.5
        assert _config.sandbox_target_active()
        narrative_pandas.configure()
        assert not _config.sandbox_target_active()


# --- the faults of a large, eventually consistent deployment, over real HTTP -----------------
@contextmanager
def serve(clock: FakeClock | None = None, **knobs: Any) -> Iterator[tuple[Sandbox, httpx.Client]]:
    """A sandbox served on loopback with ``knobs``, and a client onto it carrying its key."""
    with Sandbox(clock=clock, **knobs) as sb:
        headers = {"Authorization": f"Bearer {sb.api_key}"}
        with httpx.Client(base_url=sb.base_url, headers=headers) as http:
            yield sb, http


def post(http: httpx.Client, text: str) -> str:
    response = http.post(RUN, json=body(text))
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def listing(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/jobs", params={"per_page": 500, **params})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def ids(page: dict[str, Any]) -> list[str]:
    return [record["job_id"] for record in page["records"]]


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc).timestamp()


class TestExecutorSkew:
    def test_listing_order_differs_from_the_real_update_order(self, clock: FakeClock) -> None:
        """With half the executors 30 s behind, updated_at_desc follows the stamps, not reality."""
        with serve(clock, queue_latency=0, run_latency=0, executor_skew=30.0) as (sb, http):
            real_order = []
            for i in range(40):
                real_order.append(post(http, f"job {i}"))
                clock.advance(1.0)
            records = listing(http, order_by="updated_at_desc")["records"]
            stamps = [epoch(r["updated_at"]) for r in records]
            assert stamps == sorted(stamps, reverse=True)
            assert [r["job_id"] for r in records] != real_order[::-1]
            assert sorted(r["job_id"] for r in records) == sorted(real_order)
            shifts = {
                r["job_id"]: T0 + real_order.index(r["job_id"]) - epoch(r["created_at"])
                for r in records
            }
            skewed = {job_id for job_id, shift in shifts.items() if shift > 1}
            assert {round(shift, 3) for shift in shifts.values()} == {0.0, 30.0}
            assert 8 <= len(skewed) <= 32  # half of 40, by job id: outside this 1 in 10,000
            executors = {r["executor"] for r in records if r["job_id"] in skewed}
            assert len(executors) == 1
            assert executors.isdisjoint(r["executor"] for r in records if r["job_id"] not in skewed)
            oldest_first = ids(listing(http, order_by="updated_at_asc"))
            assert oldest_first == [r["job_id"] for r in records][::-1]
            assert sb.stats.jobs_created == 40

    def test_stamps_ahead_of_real_time_are_listed(self, clock: FakeClock) -> None:
        """Executors 2 h ahead stamp jobs in the future, and those jobs are still listed."""
        with serve(clock, queue_latency=1.0, executor_skew=-7200.0, executor_skew_fraction=1.0) as (
            _,
            http,
        ):
            job_id = post(http, "ahead")
            page = listing(http, order_by="updated_at_desc")
            assert ids(page) == [job_id]
            assert epoch(page["records"][0]["updated_at"]) == pytest.approx(T0 + 7200)
            assert page["records"][0]["state"] == "pending"
            assert ids(listing(http, order_by="updated_at_asc")) == [job_id]

    def test_skew_applies_to_the_fraction_asked(self, clock: FakeClock) -> None:
        """executor_skew_fraction=0 skews nothing; 1 skews every job."""
        with serve(clock, executor_skew=60.0, executor_skew_fraction=0.0) as (sb, http):
            post(http, "exact")
            sb.configure(executor_skew_fraction=1.0)
            post(http, "skewed")
            created = [
                epoch(r["created_at"]) for r in listing(http, order_by="created_at_asc")["records"]
            ]
            assert created == [pytest.approx(T0 - 60.0), pytest.approx(T0)]


class TestReplicationLag:
    def test_a_new_job_is_404_and_unlisted_until_replicated(self, clock: FakeClock) -> None:
        """During the lag GET answers 404 and the listing leaves the job out; then both see it."""
        with serve(clock, replication_lag=1.5) as (sb, http):
            job_id = post(http, "lagging")
            assert http.get(f"/jobs/{job_id}").status_code == 404
            page = listing(http, order_by="updated_at_desc")
            assert (ids(page), page["total_records"]) == ([], 0)
            assert listing(http, state="pending")["total_records"] == 0
            clock.advance(1.0)
            assert http.get(f"/jobs/{job_id}").status_code == 404
            clock.advance(0.5)
            assert http.get(f"/jobs/{job_id}").json()["job_id"] == job_id
            page = listing(http)
            assert (ids(page), page["total_records"]) == ([job_id], 1)
            assert sb.stats.count("GET", "/jobs/{job_id}", 404) == 2
            assert sb.stats.jobs_created == 1
            assert [j["job_id"] for j in sb.jobs()] == [job_id]


class TestForeignJobs:
    def test_foreign_jobs_fill_the_listing_and_keep_updating(self, clock: FakeClock) -> None:
        """Other users' jobs are listed with their own source and tags, and keep moving."""
        with serve(clock, foreign_jobs=40, queue_latency=0, run_latency=0) as (sb, http):
            mine = post(http, "mine")
            clock.advance(0.5)
            before = {r["job_id"]: r for r in listing(http, order_by="created_at_desc")["records"]}
            assert len(before) == 41
            own_source = before[mine]["request_source"]
            foreign = {job_id: r for job_id, r in before.items() if job_id != mine}
            for record in foreign.values():
                assert record["request_source"]["user_id"] != own_source["user_id"]
                assert record["request_source"]["company_id"] == own_source["company_id"]
                assert "narrative-pandas" not in record["input"]["tags"]
                assert record["data_plane_id"] == DEFAULT_DATA_PLANE_ID
            assert (sb.stats.foreign_jobs, sb.stats.jobs_created) == (40, 1)
            clock.advance(2.0)
            after = {r["job_id"]: r for r in listing(http, order_by="updated_at_desc")["records"]}
            for job_id, record in foreign.items():
                assert epoch(after[job_id]["updated_at"]) > epoch(record["updated_at"])
                assert after[job_id]["state"] in ("pending", "running")
            top = ids(listing(http, order_by="updated_at_desc", per_page=40))
            assert mine not in top
            assert {r["state"] for r in after.values() if r["job_id"] != mine} == {
                "pending",
                "running",
            }

    def test_foreign_jobs_can_stand_still(self, clock: FakeClock) -> None:
        """foreign_update_interval=None: their updated_at never moves."""
        with serve(clock, foreign_jobs=5, foreign_update_interval=None) as (_, http):
            before = listing(http)["records"]
            clock.advance(100.0)
            after = listing(http)["records"]
            assert [r["updated_at"] for r in after] == [r["updated_at"] for r in before]
            assert {r["state"] for r in after} == {"pending"}

    def test_null_updated_at_sorts_first_descending(self, clock: FakeClock) -> None:
        """foreign_null_updated_at jobs show updated_at null, first in desc and last in asc."""
        with serve(clock, foreign_jobs=6, foreign_null_updated_at=2) as (_, http):
            clock.advance(3.0)
            desc = listing(http, order_by="updated_at_desc")["records"]
            assert [r["updated_at"] is None for r in desc] == [True, True] + [False] * 4
            asc = listing(http, order_by="updated_at_asc")["records"]
            assert [r["updated_at"] is None for r in asc] == [False] * 4 + [True, True]
            stamps = [epoch(r["updated_at"]) for r in desc[2:]]
            assert stamps == sorted(stamps, reverse=True)

    def test_configure_adds_and_removes_foreign_jobs(self, clock: FakeClock) -> None:
        """Raising foreign_jobs adds jobs; lowering it removes the newest."""
        with serve(clock) as (sb, http):
            assert listing(http)["total_records"] == 0
            sb.configure(foreign_jobs=30)
            assert listing(http)["total_records"] == 30
            oldest = ids(listing(http, order_by="created_at_asc", per_page=10))
            sb.configure(foreign_jobs=10)
            assert ids(listing(http, order_by="created_at_asc")) == oldest
            assert sb.stats.foreign_jobs == 30 and sb.stats.jobs_created == 0

    def test_add_jobs_are_newer_than_every_job(self, clock: FakeClock) -> None:
        """add_jobs(n) puts n other users' jobs in state at the head of created_at_desc."""
        with serve(clock, run_latency=5.0) as (sb, http):
            mine = [post(http, f"mine {i}") for i in range(3)]
            added = sb.add_jobs(25, state="completed")
            page = listing(http, order_by="created_at_desc")
            assert ids(page)[:25] == added[::-1]
            assert ids(page)[25:] == mine[::-1]
            assert page["total_records"] == 28
            assert {r["state"] for r in page["records"][:25]} == {"completed"}
            assert (sb.stats.jobs_created, sb.stats.foreign_jobs) == (3, 25)
            assert len(sb.jobs()) == 3 and len(sb.jobs(include_foreign=True)) == 28
            running = sb.add_jobs(2, state="running")
            assert listing(http, state="running")["total_records"] == 2
            assert http.get(f"/jobs/{running[0]}").json()["ended_at"] is None
        with pytest.raises(ValueError, match="state must be one of"):
            sb.add_jobs(1, state="done")


class TestListingOrders:
    def test_refused_orders_answer_400_with_a_json_error(self, clock: FakeClock) -> None:
        """An older API refuses updated_at_* with a 400 naming what it supports."""
        old_api = ("created_at_desc", "created_at_asc")
        with serve(clock, listing_orders=old_api) as (sb, http):
            job_id = post(http, "x")
            response = http.get("/jobs", params={"order_by": "updated_at_desc"})
            assert response.status_code == 400
            assert response.headers["content-type"] == "application/json"
            problem = response.json()
            assert problem["status"] == 400
            assert "updated_at_desc" in problem["detail"]
            assert "created_at_desc, created_at_asc" in problem["detail"]
            assert ids(listing(http, order_by="created_at_asc")) == [job_id]
            assert ids(listing(http)) == [job_id]
            assert sb.stats.count("GET", "/jobs", 400) == 1

    def test_a_listing_that_ignores_order_by(self, clock: FakeClock) -> None:
        """listing_ignores_order serves created_at_desc whatever order_by asks."""
        with serve(clock, listing_ignores_order=True) as (_, http):
            made = []
            for i in range(4):
                made.append(post(http, f"job {i}"))
                clock.advance(1.0)
            for order in ("updated_at_asc", "created_at_asc", "updated_at_desc"):
                assert ids(listing(http, order_by=order)) == made[::-1]

    @pytest.mark.parametrize(
        "knobs",
        [
            {"listing_orders": ()},
            {"listing_orders": ("newest_first",)},
            {"total_records_mode": "approximate"},
            {"listing_drip": 0},
            {"foreign_jobs": -1},
            {"foreign_null_updated_at": 3, "foreign_jobs": 2},
            {"foreign_update_interval": 0},
            {"replication_lag": -1},
            {"executor_skew": float("nan")},
            {"executor_skew_fraction": 1.5},
            {"cancel_rate": 2},
            {"post_garbage_after_create_rate": -0.1},
            {"listing_ignores_order": "yes"},
        ],
    )
    def test_invalid_deployment_knobs_are_refused(self, knobs: dict[str, Any]) -> None:
        """Each new knob is validated up front with a message naming it."""
        with pytest.raises(ValueError, match=next(iter(knobs))):
            SandboxConfig(**knobs)


class TestTotalRecords:
    def test_page_end_makes_every_page_look_like_the_last(self, clock: FakeClock) -> None:
        """total_records = offset + this page's length, so a client trusting it stops early."""
        with serve(clock, total_records_mode="page_end") as (_, http):
            for i in range(5):
                post(http, f"job {i}")
            first = listing(http, per_page=2)
            assert (first["total_records"], first["total_pages"], len(first["records"])) == (
                2,
                1,
                2,
            )
            second = listing(http, per_page=2, offset=2)
            assert (second["total_records"], second["total_pages"], second["current_page"]) == (
                4,
                2,
                2,
            )
            assert len(listing(http, per_page=2, offset=4)["records"]) == 1

    def test_missing_totals(self, clock: FakeClock) -> None:
        """total_records_mode="missing" answers just {"records": [...]}, as older servers do."""
        with serve(clock, total_records_mode="missing") as (_, http):
            job_id = post(http, "x")
            page = listing(http)
            assert set(page) == {"records"} and ids(page) == [job_id]


class TestGarbagePost:
    def test_the_job_is_created_and_the_answer_is_not_json(self, clock: FakeClock) -> None:
        """post_garbage_after_create_rate=1: 200, a body that is not JSON, and a billed job."""
        with serve(clock, post_garbage_after_create_rate=1.0) as (sb, http):
            response = http.post(RUN, json=body("garbage"))
            assert response.status_code == 200
            with pytest.raises(json.JSONDecodeError):
                json.loads(response.content)
            assert sb.stats.jobs_created == 1
            assert ids(listing(http)) == [sb.jobs()[0]["job_id"]]
            assert sb.stats.count("POST", RUN, 200) == 1


class TestListingDrip:
    def test_the_listing_body_trickles_in_small_chunks(self, clock: FakeClock) -> None:
        """listing_drip sends the body a few bytes at a time; it adds up to the same JSON."""
        with serve(clock) as (sb, http):
            post(http, "x")
            whole = http.get("/jobs").content
            sb.configure(listing_drip=400.0)  # 20 bytes every 50 ms
            with http.stream("GET", "/jobs") as response:
                assert response.status_code == 200
                chunks = list(response.iter_raw())
            assert b"".join(chunks) == whole
            assert max(len(c) for c in chunks) <= 20
            assert len(chunks) >= len(whole) // 20

    def test_a_slow_drip_sends_one_byte_at_a_time(self, clock: FakeClock) -> None:
        """At 5 bytes per second, each chunk is one byte: a per-byte read timeout never fires."""
        with serve(clock, listing_drip=5.0) as (_, http):
            with http.stream("GET", "/jobs") as response:
                assert response.status_code == 200
                first = []
                for chunk in response.iter_raw():
                    first.append(chunk)
                    if len(first) == 3:
                        break
            assert first == [b"{", b'"', b"c"]


class TestCancellation:
    def test_cancel_rate_jobs_go_pending_cancellation_then_cancelled(
        self, clock: FakeClock
    ) -> None:
        """cancel_rate=1: pending, then pending_cancellation, then cancelled with no result."""
        with serve(clock, cancel_rate=1.0, queue_latency=1.0, run_latency=5.0) as (sb, http):
            job_id = post(http, "doomed")
            states = []
            for _ in range(3):
                states.append(http.get(f"/jobs/{job_id}").json())
                clock.advance(1.0)
            assert [s["state"] for s in states] == ["pending", "pending_cancellation", "cancelled"]
            final = states[-1]
            assert final["result"] is None and final["ended_at"] is not None
            assert final["failures"][0]["message"]
            assert ids(listing(http, state="cancelled")) == [job_id]
            assert sb.stats.unfinished_jobs() == 0

    def test_cancel_job_from_a_test(self, clock: FakeClock) -> None:
        """sb.cancel_job moves a running job to pending_cancellation now, cancelled later."""
        with serve(clock, queue_latency=1.0, run_latency=10.0) as (sb, http):
            job_id = post(http, "running")
            other = post(http, "other")
            clock.advance(2.0)
            assert http.get(f"/jobs/{job_id}").json()["state"] == "running"
            assert sb.cancel_job(job_id) is True
            assert sb.cancel_job(job_id) is False
            job_now = http.get(f"/jobs/{job_id}").json()
            assert job_now["state"] == "pending_cancellation"
            assert epoch(job_now["updated_at"]) == pytest.approx(T0 + 2.0)
            assert ids(listing(http, order_by="updated_at_desc"))[0] == job_id
            clock.advance(1.0)
            assert http.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
            assert http.get(f"/jobs/{other}").json()["state"] == "running"
            clock.advance(10.0)
            assert http.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
            assert sb.cancel_job(other) is False
        with pytest.raises(KeyError, match="no job"):
            sb.cancel_job("not-a-job")


class TestOutage:
    def test_an_outage_answers_503_then_recovers(self, clock: FakeClock) -> None:
        """Every request is answered the status (nothing done) until the outage is over."""
        with serve(clock) as (sb, http):
            sb.outage(30.0)
            assert http.get("/jobs").status_code == 503
            response = http.post(RUN, json=body("during"))
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/json"
            assert response.json()["status"] == 503
            assert sb.stats.jobs_created == 0
            clock.advance(30.0)
            assert http.get("/jobs").status_code == 200
            post(http, "after")
            assert sb.stats.count(status=503) == 2 and sb.stats.jobs_created == 1

    def test_an_outage_with_status_none_resets_connections(self, clock: FakeClock) -> None:
        """status=None drops each connection without an answer, then the service comes back."""
        with serve(clock) as (sb, http):
            sb.outage(5.0, status=None)
            for _ in range(2):
                with pytest.raises(httpx.TransportError):
                    http.get("/jobs")
            with pytest.raises(httpx.TransportError):
                http.post(RUN, json=body("during"))
            assert sb.stats.count(status=0) == 3 and sb.stats.jobs_created == 0
            clock.advance(5.0)
            assert http.get("/jobs").status_code == 200

    async def test_a_reset_over_the_in_process_transport(self, clock: FakeClock) -> None:
        """Without a socket the client gets the error of a server hanging up."""
        sb = Sandbox(clock=clock)
        sb.outage(1.0, status=None)
        async with connect(sb) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/jobs")
            clock.advance(1.0)
            assert (await client.get("/jobs")).status_code == 200

    @pytest.mark.parametrize(("seconds", "status"), [(-1, 503), (1, 200), (1, "503")])
    def test_invalid_outages_are_refused(self, seconds: Any, status: Any) -> None:
        """outage() checks its arguments."""
        with pytest.raises(ValueError):
            Sandbox().outage(seconds, status)
