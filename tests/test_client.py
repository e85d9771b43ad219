"""Tests of narrative_pandas._client: request shape, error mapping, retries, polling, secrecy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from narrative_pandas._client import (
    MAX_RETRY_AFTER,
    Client,
    ClientStats,
    backoff_delay,
    parse_retry_after,
)
from narrative_pandas._clock import FakeClock
from narrative_pandas._config import ApiKey, configure
from narrative_pandas._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    APIUnknownOutcomeError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    JobTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from narrative_pandas._models import (
    InferenceConfig,
    InferenceMessage,
    Job,
    ModelInferenceRunRequest,
)
from narrative_pandas._wire import WireReadTimeout

KEY = "sk-live-SECRET-7f3a9c21d4"
BASE = "https://api.test.narrative.io"
PLANE = "fef9904e-d263-4930-85f7-1e28cce40f89"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["label"],
    "additionalProperties": False,
}

Handler = Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts without environment settings, configure() defaults or a sandbox."""
    for name in ("NARRATIVE_API_KEY", "NARRATIVE_BASE_URL", "NARRATIVE_DATA_PLANE_ID"):
        monkeypatch.delenv(name, raising=False)
    configure()
    yield
    configure()


def job_json(job_id: str = "job-1", state: str = "pending", **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "data_plane_id": PLANE,
        "type": "model_inference",
        "state": state,
        "result": None,
        "failures": [],
        "created_at": "2026-01-29T11:19:13.400498",
        **extra,
    }


def problem(status: int, title: str, detail: str, log_id: str = "abc") -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": "/x",
        "logId": log_id,
    }


def full_request() -> ModelInferenceRunRequest:
    return ModelInferenceRunRequest(
        data_plane_id=PLANE,
        model="anthropic.claude-haiku-4.5",
        messages=[
            InferenceMessage(role="system", text="You label reviews."),
            InferenceMessage(role="user", text="Great phone!"),
        ],
        inference_config=InferenceConfig(
            output_format_schema=SCHEMA,
            max_tokens=100,
            temperature=0.0,
            top_p=0.9,
            stop_sequences=["END"],
        ),
        tags=["reviews", "batch-1"],
    )


def minimal_request() -> ModelInferenceRunRequest:
    return ModelInferenceRunRequest(
        data_plane_id=PLANE,
        model="anthropic.claude-haiku-4.5",
        messages=[InferenceMessage(role="user", text="Hi")],
        inference_config=InferenceConfig(output_format_schema=SCHEMA),
    )


class Recorder:
    """A MockTransport handler that answers from a script and records every request."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[], Any]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.default: httpx.Response | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            if self.default is None:
                raise AssertionError(f"unexpected request {request.method} {request.url}")
            return self.default
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        raise AssertionError("bad script")

    @property
    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def make_client(handler: Handler, **kwargs: Any) -> Client:
    kwargs.setdefault("clock", FakeClock())
    kwargs.setdefault("rng", random.Random(0))
    return Client(KEY, BASE, data_plane_id=PLANE, transport=httpx.MockTransport(handler), **kwargs)


def assert_keyless(exc: BaseException) -> None:
    """The key appears nowhere in an exception or the exceptions chained behind it."""
    seen: BaseException | None = exc
    while seen is not None:
        assert KEY not in str(seen)
        assert KEY not in repr(seen)
        assert all(KEY not in str(arg) for arg in seen.args)
        seen = seen.__cause__ or seen.__context__


@contextlib.asynccontextmanager
async def raises(exc_type: type[BaseException]) -> AsyncIterator[pytest.ExceptionInfo[Any]]:
    """pytest.raises that also checks the key is absent from what was raised."""
    with pytest.raises(exc_type) as info:
        yield info
    assert_keyless(info.value)


def connect_error(exc_type: type[httpx.TransportError], message: str = "boom") -> Exception:
    return exc_type(message, request=httpx.Request("GET", BASE))


def mapped(exc_type: type[httpx.TransportError], cause: BaseException) -> Exception:
    """An httpx error raised from an aiohttp one, the way httpx_aiohttp maps them."""
    exc = exc_type(str(cause))
    exc.__cause__ = cause
    return exc


class TestRequestShape:
    """What goes on the wire for each endpoint."""

    async def test_full_body_exact_json_and_headers(self) -> None:
        """Every field of the run request arrives exactly, with Bearer and Content-Type headers."""
        rec = Recorder(httpx.Response(200, json={"job_id": "job-42"}))
        async with make_client(rec) as client:
            job = await client.run_model_inference(full_request())
        (request,) = rec.requests
        assert request.method == "POST"
        assert str(request.url) == f"{BASE}/model-inference/run"
        assert json.loads(request.content) == {
            "data_plane_id": PLANE,
            "model": "anthropic.claude-haiku-4.5",
            "messages": [
                {"role": "system", "text": "You label reviews."},
                {"role": "user", "text": "Great phone!"},
            ],
            "inference_config": {
                "output_format_schema": SCHEMA,
                "max_tokens": 100,
                "temperature": 0.0,
                "top_p": 0.9,
                "stop_sequences": ["END"],
            },
            "tags": ["reviews", "batch-1"],
        }
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("narrative-pandas")
        assert job.job_id == "job-42"
        assert job.state == "pending"
        assert job.data_plane_id == PLANE
        assert job.type == "model_inference"

    async def test_none_fields_absent(self) -> None:
        """Optional fields left unset are not sent at all (no nulls)."""
        rec = Recorder(httpx.Response(200, json={"job_id": "j"}))
        async with make_client(rec) as client:
            await client.run_model_inference(minimal_request())
        assert json.loads(rec.requests[0].content) == {
            "data_plane_id": PLANE,
            "model": "anthropic.claude-haiku-4.5",
            "messages": [{"role": "user", "text": "Hi"}],
            "inference_config": {"output_format_schema": SCHEMA},
        }

    async def test_mapping_request_sent_as_given_with_default_plane(self) -> None:
        """A mapping keeps unknown message shapes, drops None values and gets the client's plane."""
        rec = Recorder(httpx.Response(200, json={"job_id": "j"}))
        body = {
            "model": "anthropic.claude-haiku-4.5",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "inference_config": {"output_format_schema": SCHEMA, "temperature": None},
            "tags": None,
        }
        async with make_client(rec) as client:
            job = await client.run_model_inference(body)
        assert json.loads(rec.requests[0].content) == {
            "model": "anthropic.claude-haiku-4.5",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "inference_config": {"output_format_schema": SCHEMA},
            "data_plane_id": PLANE,
        }
        assert job.data_plane_id == PLANE

    async def test_get_job_parsed_and_no_content_type(self) -> None:
        """GET /jobs/{id} sends the key but no body header, and parses the job leniently."""
        rec = Recorder(httpx.Response(200, json=job_json("j 1", "running", executor="x")))
        async with make_client(rec) as client:
            job = await client.get_job("j 1")
        request = rec.requests[0]
        assert request.url.raw_path == b"/jobs/j%201"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert "content-type" not in request.headers
        assert job.job_id == "j 1"
        assert job.state == "running"
        assert job.created_at is not None and job.created_at.tzinfo is not None
        assert client.stats.by_route == {("GET", "/jobs/{id}"): 1}

    async def test_post_without_job_id_is_unknown_outcome(self) -> None:
        """A 200 without a job_id cannot be trusted: the job may exist."""
        rec = Recorder(httpx.Response(200, json={}))
        async with make_client(rec) as client, raises(APIUnknownOutcomeError):
            await client.run_model_inference(minimal_request())

    async def test_answers_in_another_charset_are_still_read(self) -> None:
        """The fast parser reads UTF-8; an answer declared in another charset is decoded by it."""
        body = json.dumps(job_json("j-é", "running"), ensure_ascii=False).encode("latin-1")
        rec = Recorder(
            httpx.Response(
                200, content=body, headers={"content-type": "application/json; charset=latin-1"}
            )
        )
        async with make_client(rec) as client:
            job = await client.get_job("j-é")
        assert job.job_id == "j-é"

    async def test_a_body_that_is_not_json_is_an_api_error(self) -> None:
        """A read answered 200 with garbage is repeated, then raised as an APIError."""
        rec = Recorder(*[httpx.Response(200, content=b"<html>maintenance</html>")] * 3)
        async with make_client(rec, max_retries=2) as client, raises(APIError) as info:
            await client.get_job("j1")
        assert str(info.value) == "GET /jobs/j1 answered 200 with a body that is not JSON."
        assert len(rec.requests) == 3


class TestErrorMapping:
    """Error answers become the right exception with every field of the body."""

    @pytest.mark.parametrize(
        ("status", "cls"),
        [
            (400, BadRequestError),
            (401, AuthenticationError),
            (403, PermissionDeniedError),
            (404, NotFoundError),
            (409, APIStatusError),
            (429, RateLimitError),
            (500, ServerError),
            (503, ServerError),
        ],
    )
    async def test_status_classes(self, status: int, cls: type[APIStatusError]) -> None:
        """Each status maps to its class, with title, detail, log_id, method and path."""
        body = problem(status, "Something", "went wrong", log_id="log-9")
        rec = Recorder(httpx.Response(status, json=body))
        async with make_client(rec, max_retries=0) as client, raises(cls) as info:
            await client.get_job("abc")
        exc = info.value
        assert type(exc) is cls
        assert exc.status_code == status
        assert exc.title == "Something"
        assert exc.detail == "went wrong"
        assert exc.log_id == "log-9"
        assert exc.method == "GET"
        assert exc.path == "/jobs/abc"
        assert exc.body == body

    async def test_rfc7807_message(self) -> None:
        """The message names status, method, path, title, detail and logId."""
        rec = Recorder(httpx.Response(429, json=problem(429, "Slow down", "Too many jobs")))
        client = make_client(rec, max_retries=0)
        async with client, raises(RateLimitError) as info:
            await client.run_model_inference(minimal_request())
        assert str(info.value) == (
            "429 Too Many Requests on POST /model-inference/run: Slow down: Too many jobs "
            "(logId abc)"
        )
        assert info.value.retry_after is None

    async def test_error_description_shape(self) -> None:
        """``{"error", "error_description"}`` fills title and detail."""
        body = {"error": "invalid_token", "error_description": "The key was revoked"}
        rec = Recorder(httpx.Response(401, json=body))
        async with make_client(rec) as client, raises(AuthenticationError) as info:
            await client.list_jobs()
        exc = info.value
        assert (exc.title, exc.detail, exc.log_id) == ("invalid_token", "The key was revoked", None)
        assert (exc.method, exc.path, exc.body) == ("GET", "/jobs", body)
        assert str(exc).startswith(
            "401 Unauthorized on GET /jobs: invalid_token: The key was revoked. Check the API key"
        )

    async def test_plain_text_body(self) -> None:
        """A non-JSON error page becomes the detail."""
        rec = Recorder(httpx.Response(404, text="no such thing"))
        async with make_client(rec) as client, raises(NotFoundError) as info:
            await client.get_job("x")
        assert info.value.detail == "no such thing"
        assert info.value.title is None
        assert str(info.value) == "404 Not Found on GET /jobs/x: no such thing"

    async def test_key_echoed_by_server_is_scrubbed(self) -> None:
        """Even a server that echoes the key does not get it into the exception."""
        body = problem(400, "Bad header", f"Authorization: Bearer {KEY}")
        rec = Recorder(httpx.Response(400, json=body))
        async with make_client(rec) as client, raises(BadRequestError) as info:
            await client.get_job("x")
        assert info.value.detail == "Authorization: Bearer ***"
        assert KEY not in json.dumps(info.value.body)

    async def test_connection_and_timeout_errors(self) -> None:
        """httpx connection errors become APIConnectionError, timeouts APITimeoutError."""
        rec = Recorder(connect_error(httpx.ConnectError), connect_error(httpx.ReadTimeout))
        async with make_client(rec, max_retries=0) as client:
            async with raises(APIConnectionError) as info:
                await client.get_job("a")
            assert type(info.value) is APIConnectionError
            assert "GET /jobs/a" in str(info.value)
            async with raises(APITimeoutError) as tinfo:
                await client.get_job("b")
            assert (tinfo.value.method, tinfo.value.path) == ("GET", "/jobs/b")
            assert isinstance(tinfo.value.__cause__, httpx.ReadTimeout)


class TestRetryPolicy:
    """Which failures are retried, how long the client waits, and how often."""

    @pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
    async def test_get_retries_status(self, status: int) -> None:
        """A read is repeated after 429 and 5xx answers."""
        rec = Recorder(httpx.Response(status), httpx.Response(200, json=job_json()))
        async with make_client(rec) as client:
            job = await client.get_job("job-1")
        assert job.job_id == "job-1"
        assert len(rec.requests) == 2
        assert client.stats.retries == 1
        assert client.stats.requests == 2

    @pytest.mark.parametrize("status", [429, 502, 503])
    async def test_post_retries_when_job_surely_not_created(self, status: int) -> None:
        """A POST is repeated only after 429, 502 and 503."""
        rec = Recorder(httpx.Response(status), httpx.Response(200, json={"job_id": "j"}))
        async with make_client(rec) as client:
            job = await client.run_model_inference(minimal_request())
        assert job.job_id == "j"
        assert len(rec.requests) == 2
        assert rec.requests[0].content == rec.requests[1].content

    @pytest.mark.parametrize("status", [500, 504])
    async def test_post_unknown_outcome_on_500_504(self, status: int) -> None:
        """A POST answered 500/504 may have created the job: no retry, unknown outcome."""
        rec = Recorder(httpx.Response(status, json=problem(status, "Oops", "later")))
        async with make_client(rec) as client, raises(APIUnknownOutcomeError) as info:
            await client.run_model_inference(minimal_request())
        assert len(rec.requests) == 1
        assert isinstance(info.value.__cause__, ServerError)
        assert info.value.__cause__.status_code == status
        assert (info.value.method, info.value.path) == ("POST", "/model-inference/run")

    @pytest.mark.parametrize(
        "exc_type",
        [httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.RemoteProtocolError],
    )
    async def test_post_unknown_outcome_after_sending(
        self, exc_type: type[httpx.TransportError]
    ) -> None:
        """A timeout or broken connection after sending a POST is an unknown outcome."""
        rec = Recorder(connect_error(exc_type))
        async with make_client(rec) as client, raises(APIUnknownOutcomeError) as info:
            await client.run_model_inference(minimal_request())
        assert len(rec.requests) == 1
        assert isinstance(info.value.__cause__, exc_type)

    @pytest.mark.parametrize(
        "exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout]
    )
    async def test_post_retries_connection_failures_before_sending(
        self, exc_type: type[httpx.TransportError]
    ) -> None:
        """A POST whose connection failed before sending is repeated."""
        rec = Recorder(connect_error(exc_type), httpx.Response(200, json={"job_id": "j"}))
        async with make_client(rec) as client:
            job = await client.run_model_inference(minimal_request())
        assert job.job_id == "j"
        assert len(rec.requests) == 2

    @pytest.mark.parametrize("method", ["GET", "POST"])
    @pytest.mark.parametrize("status", [400, 401, 403, 404])
    async def test_other_4xx_never_retried(self, method: str, status: int) -> None:
        """400/401/403/404 are raised at once, for reads and submits alike."""
        rec = Recorder(httpx.Response(status, json=problem(status, "No", "nope")))
        async with make_client(rec) as client, raises(APIStatusError) as info:
            if method == "GET":
                await client.get_job("j")
            else:
                await client.run_model_inference(minimal_request())
        assert info.value.status_code == status
        assert len(rec.requests) == 1
        assert client.stats.retries == 0

    @pytest.mark.parametrize(
        "exc_type", [httpx.ConnectError, httpx.ReadTimeout, httpx.ReadError, httpx.PoolTimeout]
    )
    async def test_get_retries_network_errors(self, exc_type: type[httpx.TransportError]) -> None:
        """A read survives connection errors and timeouts."""
        rec = Recorder(connect_error(exc_type), httpx.Response(200, json=job_json()))
        async with make_client(rec) as client:
            assert (await client.get_job("job-1")).job_id == "job-1"
        assert len(rec.requests) == 2

    @pytest.mark.parametrize(
        ("exc_type", "expected"),
        [(httpx.ConnectError, APIConnectionError), (httpx.ReadTimeout, APITimeoutError)],
    )
    async def test_retry_count_bounded(
        self, exc_type: type[httpx.TransportError], expected: type[APIConnectionError]
    ) -> None:
        """After max_retries retries the last error is raised."""
        rec = Recorder()
        rec.answers = [connect_error(exc_type) for _ in range(10)]
        async with make_client(rec, max_retries=3) as client, raises(expected) as info:
            await client.get_job("j")
        assert type(info.value) is expected
        assert len(rec.requests) == 4
        assert client.stats.requests == 4
        assert client.stats.retries == 3

    async def test_server_errors_exhausted(self) -> None:
        """Persistent 503s end in a ServerError after 1 + max_retries requests."""
        rec = Recorder()
        rec.default = httpx.Response(503, json=problem(503, "Unavailable", "try later"))
        async with make_client(rec, max_retries=2) as client, raises(ServerError) as info:
            await client.run_model_inference(minimal_request())
        assert info.value.status_code == 503
        assert len(rec.requests) == 3

    async def test_rate_limit_exhausted(self) -> None:
        """Persistent 429s end in a RateLimitError carrying the server's Retry-After."""
        rec = Recorder()
        rec.default = httpx.Response(429, headers={"Retry-After": "2"})
        clock = FakeClock()
        client = make_client(rec, max_retries=5, clock=clock)
        async with client, raises(RateLimitError) as info:
            await client.list_jobs()
        assert info.value.retry_after == 2.0
        assert len(rec.requests) == 6
        assert client.stats.rate_limited == 6
        assert clock.sleeps == [2.0] * 5

    async def test_retry_after_seconds(self) -> None:
        """Retry-After in seconds is waited exactly."""
        clock = FakeClock()
        rec = Recorder(
            httpx.Response(503, headers={"Retry-After": "7"}),
            httpx.Response(200, json=job_json()),
        )
        async with make_client(rec, clock=clock) as client:
            await client.get_job("job-1")
        assert clock.sleeps == [7.0]

    async def test_retry_after_http_date(self) -> None:
        """Retry-After as an HTTP date is measured from the response's Date header."""
        clock = FakeClock()
        headers = {
            "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            "Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT",
        }
        rec = Recorder(httpx.Response(429, headers=headers), httpx.Response(200, json=job_json()))
        async with make_client(rec, clock=clock) as client:
            await client.get_job("job-1")
        assert clock.sleeps == [10.0]
        assert client.stats.rate_limited == 1

    async def test_exponential_backoff_with_seeded_jitter(self) -> None:
        """Without Retry-After the waits are 1 s x 2^n plus seeded jitter under 1 s."""
        clock = FakeClock()
        rec = Recorder(
            httpx.Response(500), httpx.Response(502), httpx.Response(504),
            httpx.Response(200, json=job_json()),
        )  # fmt: skip
        async with make_client(rec, clock=clock, rng=random.Random(7)) as client:
            await client.get_job("job-1")
        expected_rng = random.Random(7)
        assert clock.sleeps == [backoff_delay(n, expected_rng) for n in range(3)]
        for n, slept in enumerate(clock.sleeps):
            assert 2**n <= slept < 2**n + 1

    async def test_429_gate_delays_next_request(self) -> None:
        """After a 429 with Retry-After, the next request of the client waits for the gate."""
        clock = FakeClock()
        rec = Recorder(
            httpx.Response(429, headers={"Retry-After": "5"}),
            httpx.Response(200, json=job_json("b")),
        )
        async with make_client(rec, clock=clock, max_retries=0) as client:
            async with raises(RateLimitError):
                await client.get_job("a")
            assert client.rate_limited_until == 5.0
            await client.get_job("b")
        assert clock.sleeps == [5.0]

    async def test_429_without_retry_after_gates_with_backoff(self) -> None:
        """A 429 without Retry-After sets the gate from the backoff formula."""
        clock = FakeClock()
        rec = Recorder(httpx.Response(429))
        async with make_client(rec, clock=clock, max_retries=0, rng=random.Random(3)) as client:
            async with raises(RateLimitError):
                await client.get_job("a")
            assert client.rate_limited_until == backoff_delay(0, random.Random(3))

    async def test_hold_until_holds_requests_and_only_moves_later(self) -> None:
        """A rate limit met elsewhere (another Dask worker) holds this client's requests too."""
        clock = FakeClock()
        rec = Recorder(httpx.Response(200, json=job_json("a")))
        async with make_client(rec, clock=clock) as client:
            client.hold_until(4.0)
            client.hold_until(2.0)  # an older hold never shortens the gate
            assert client.rate_limited_until == 4.0
            await client.get_job("a")
        assert clock.sleeps == [4.0]
        assert len(rec.requests) == 1

    async def test_429_gate_holds_a_concurrent_request(self) -> None:
        """A 429 seen by one task holds back another task's request until the gate opens."""
        clock = ManualClock()
        seen: list[tuple[str, float]] = []
        answered_429 = False

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal answered_429
            seen.append((request.url.path, clock.time))
            if request.url.path == "/jobs/a" and not answered_429:
                answered_429 = True
                return httpx.Response(429, headers={"Retry-After": "7"})
            return httpx.Response(200, json=job_json(request.url.path.rsplit("/", 1)[1]))

        async with make_client(handler, clock=clock) as client:
            task_a = asyncio.create_task(client.get_job("a"))
            for _ in range(100):
                if client.rate_limited_until:
                    break
                await asyncio.sleep(0)
            assert client.rate_limited_until == 7.0
            task_b = asyncio.create_task(client.get_job("b"))
            for _ in range(50):
                await asyncio.sleep(0)
            assert seen == [("/jobs/a", 0.0)]  # b is held at the gate
            assert clock.sleeps == [7.0, 7.0]
            clock.time = 7.0
            job_a, job_b = await asyncio.gather(task_a, task_b)
        assert (job_a.job_id, job_b.job_id) == ("a", "b")
        assert sorted(seen[1:]) == [("/jobs/a", 7.0), ("/jobs/b", 7.0)]
        assert client.stats.rate_limited == 1

    @pytest.mark.parametrize(
        ("raised", "post_outcome"),
        [
            (aiohttp.ServerDisconnectedError(), APIUnknownOutcomeError),
            (aiohttp.SocketTimeoutError("slow"), APIUnknownOutcomeError),
            (aiohttp.ConnectionTimeoutError("no connect"), None),
            (
                mapped(httpx.ConnectTimeout, aiohttp.ServerDisconnectedError()),
                APIUnknownOutcomeError,
            ),
            (mapped(httpx.ConnectTimeout, aiohttp.ConnectionTimeoutError("x")), None),
            (mapped(httpx.ReadTimeout, aiohttp.SocketTimeoutError("x")), APIUnknownOutcomeError),
        ],
    )
    async def test_aiohttp_errors_judged_by_their_cause(
        self, raised: Exception, post_outcome: type[Exception] | None
    ) -> None:
        """aiohttp errors, raw or as httpx_aiohttp maps them, are judged by what really happened."""
        rec = Recorder(raised, httpx.Response(200, json=job_json()))
        async with make_client(rec) as client:
            assert (await client.get_job("job-1")).job_id == "job-1"
        rec = Recorder(raised, httpx.Response(200, json={"job_id": "j"}))
        client = make_client(rec)
        async with client:
            if post_outcome is None:
                assert (await client.run_model_inference(minimal_request())).job_id == "j"
                assert len(rec.requests) == 2
            else:
                async with raises(post_outcome):
                    await client.run_model_inference(minimal_request())
                assert len(rec.requests) == 1


class ManualClock:
    """A clock whose time only moves when the test sets it; sleepers wait for that."""

    def __init__(self) -> None:
        self.time = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        target = self.time + seconds
        while self.time < target:
            await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        target = self.time + timeout
        while self.time < target and not event.is_set():
            await asyncio.sleep(0)
        return event.is_set()


class TestRetryFunctions:
    """The pure pieces of the retry policy."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("3", 3.0),
            (" 0.5 ", 0.5),
            ("-4", 0.0),
            ("", None),
            (None, None),
            ("soon", None),
            ("nan", None),
            ("1e9", MAX_RETRY_AFTER),
            ("Thu, 01 Jan 1970 00:00:30 GMT", 20.0),
            ("Thu, 01 Jan 1970 00:00:05 GMT", 0.0),
        ],
    )
    def test_parse_retry_after(self, value: str | None, expected: float | None) -> None:
        """Seconds and HTTP dates are read, nonsense gives None, waits are clamped."""
        assert parse_retry_after(value, now=10.0) == expected

    def test_backoff_grows_and_caps(self) -> None:
        """The backoff doubles from 1 s, adds under 1 s of jitter and stops at 30 s."""
        rng = random.Random(1)
        delays = [backoff_delay(n, rng) for n in range(8)]
        for n in range(4):
            assert 2**n <= delays[n] < 2**n + 1
        assert delays[5:] == [30.0, 30.0, 30.0]


class TestConcurrency:
    """max_connections bounds the requests in flight."""

    async def test_max_connections_bounds_in_flight(self) -> None:
        """Ten concurrent reads never have more than three requests in flight."""
        in_flight = peak = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            for _ in range(5):
                await asyncio.sleep(0)
            in_flight -= 1
            return httpx.Response(200, json=job_json(request.url.path.rsplit("/", 1)[1]))

        async with make_client(handler, max_connections=3) as client:
            jobs = await asyncio.gather(*(client.get_job(f"j{i}") for i in range(10)))
        assert [j.job_id for j in jobs] == [f"j{i}" for i in range(10)]
        assert peak == 3
        assert client.stats.requests == 10


class TestWaitForJob:
    """Polling one job until it ends."""

    @pytest.mark.parametrize("final", ["completed", "failed", "cancelled"])
    async def test_returns_terminal_job(self, final: str) -> None:
        """Any terminal state is returned as the Job, not raised."""
        result = {"structured_output": {"label": "positive"}} if final == "completed" else None
        rec = Recorder(
            httpx.Response(200, json=job_json(state="pending")),
            httpx.Response(200, json=job_json(state="running")),
            httpx.Response(200, json=job_json(state=final, result=result)),
        )
        async with make_client(rec) as client:
            job = await client.wait_for_job("job-1")
        assert job.state == final
        assert len(rec.requests) == 3
        if final == "completed":
            assert job.result is not None
            assert job.result.structured_output == {"label": "positive"}

    async def test_unknown_state_polled_through(self) -> None:
        """An unknown state such as warming_up is not terminal; polling goes on."""
        rec = Recorder(
            httpx.Response(200, json=job_json(state="warming_up")),
            httpx.Response(200, json=job_json(state="warming_up")),
            httpx.Response(200, json=job_json(state="completed")),
        )
        async with make_client(rec) as client:
            job = await client.wait_for_job("job-1")
        assert job.state == "completed"
        assert len(rec.requests) == 3

    async def test_interval_grows_and_resets(self) -> None:
        """The wait grows x1.5 while the state stays, and starts over when it changes."""
        clock = FakeClock()
        states = ["pending", "pending", "pending", "running", "running", "completed"]
        rec = Recorder(*(httpx.Response(200, json=job_json(state=s)) for s in states))
        async with make_client(rec, clock=clock) as client:
            await client.wait_for_job("job-1", poll_interval=2.0)
        assert clock.sleeps == [2.0, 3.0, 4.5, 2.0, 3.0]

    async def test_interval_capped_at_30s(self) -> None:
        """The wait never grows past 30 s."""
        clock = FakeClock()
        rec = Recorder(*(httpx.Response(200, json=job_json(state="pending")) for _ in range(12)))
        rec.default = httpx.Response(200, json=job_json(state="completed"))
        async with make_client(rec, clock=clock) as client:
            await client.wait_for_job("job-1", poll_interval=10.0)
        assert clock.sleeps[:4] == [10.0, 15.0, 22.5, 30.0]
        assert set(clock.sleeps[3:]) == {30.0}

    async def test_timeout(self) -> None:
        """A job still running at the deadline raises JobTimeoutError naming the job."""
        clock = FakeClock()
        rec = Recorder()
        rec.default = httpx.Response(200, json=job_json("job-7", state="running"))
        async with make_client(rec, clock=clock) as client, raises(JobTimeoutError) as info:
            await client.wait_for_job("job-7", timeout=10.0)
        assert info.value.job_id == "job-7"
        assert isinstance(info.value, TimeoutError)
        assert clock.sleeps == [1.0, 1.5, 2.25, 3.375, 1.875]
        assert len(rec.requests) == 6

    async def test_not_found_propagates(self) -> None:
        """A job that vanished raises NotFoundError instead of polling forever."""
        rec = Recorder(httpx.Response(404, json=problem(404, "Not Found", "expired")))
        async with make_client(rec) as client, raises(NotFoundError):
            await client.wait_for_job("gone")


class TestListJobs:
    """GET /jobs: parameters and both answer shapes."""

    async def test_query_parameters_exact(self) -> None:
        """Every given parameter is sent as given."""
        rec = Recorder(httpx.Response(200, json={"records": []}))
        async with make_client(rec) as client:
            await client.list_jobs(
                type="model_inference",
                state="running",
                data_plane_id=PLANE,
                per_page=500,
                offset=1000,
                order_by="updated_at_desc",
            )
        assert dict(rec.requests[0].url.params) == {
            "type": "model_inference",
            "state": "running",
            "data_plane_id": PLANE,
            "per_page": "500",
            "offset": "1000",
            "order_by": "updated_at_desc",
        }
        assert client.stats.by_route == {("GET", "/jobs"): 1}

    async def test_none_parameters_not_sent(self) -> None:
        """Parameters left None are absent from the query."""
        rec = Recorder(httpx.Response(200, json={"records": []}))
        async with make_client(rec) as client:
            await client.list_jobs(per_page=0, order_by="created_at_asc")
        assert str(rec.requests[0].url) == f"{BASE}/jobs?per_page=0&order_by=created_at_asc"

    async def test_paged_shape(self) -> None:
        """The paged answer keeps its counters and parses each record."""
        body = {
            "current_page": 2,
            "total_records": 3,
            "total_pages": 2,
            "records": [job_json("a", "completed"), job_json("b", "failed")],
        }
        rec = Recorder(httpx.Response(200, json=body))
        async with make_client(rec) as client:
            page = await client.list_jobs()
        assert (page.current_page, page.total_records, page.total_pages) == (2, 3, 2)
        assert [(j.job_id, j.state) for j in page.records] == [("a", "completed"), ("b", "failed")]
        assert all(isinstance(j, Job) for j in page.records)

    async def test_old_records_shape(self) -> None:
        """The older ``{"records": [...]}`` answer parses with the counters None."""
        rec = Recorder(httpx.Response(200, json={"records": [job_json("a", "warming_up")]}))
        async with make_client(rec) as client:
            page = await client.list_jobs()
        assert page.current_page is None and page.total_pages is None
        assert [(j.job_id, j.state, j.is_terminal) for j in page.records] == [
            ("a", "warming_up", False)
        ]


class TestSecrecy:
    """The key shows up nowhere but the Authorization header."""

    async def test_repr_masks_key(self) -> None:
        """repr(client) shows the base URL and a masked key."""
        async with make_client(Recorder()) as client:
            text = repr(client)
        assert KEY not in text
        assert BASE in text
        assert "api_key='***'" in text

    async def test_logs_keyless(self, caplog: pytest.LogCaptureFixture) -> None:
        """Retries are logged, and no log record holds the key."""
        caplog.set_level(logging.DEBUG)
        rec = Recorder(
            httpx.Response(429, headers={"Retry-After": "1"}),
            httpx.Response(500),
            connect_error(httpx.ConnectError),
            httpx.Response(200, json=job_json()),
            connect_error(httpx.ReadTimeout),
        )
        async with make_client(rec) as client:
            await client.get_job("job-1")
            async with raises(APIUnknownOutcomeError):
                await client.run_model_inference(minimal_request())
        messages = [r.getMessage() for r in caplog.records]
        assert sum("Retrying GET /jobs/job-1" in m for m in messages) == 3
        assert all(KEY not in m for m in messages)
        assert KEY not in caplog.text


class TestSettings:
    """Key, base URL and data plane resolution as the client sees it."""

    async def test_missing_key_raises_at_init(self) -> None:
        """No key anywhere: ConfigurationError saying how to provide one."""
        with pytest.raises(ConfigurationError) as info:
            Client(base_url=BASE)
        assert "NARRATIVE_API_KEY" in str(info.value)
        assert "use_sandbox" in str(info.value)

    async def test_missing_key_with_http_client_raises_at_first_request(self) -> None:
        """With a caller's http_client the missing key is reported before anything is sent."""
        rec = Recorder()
        async with httpx.AsyncClient(transport=httpx.MockTransport(rec)) as http:
            client = Client(base_url=BASE, http_client=http)
            with pytest.raises(ConfigurationError, match="NARRATIVE_API_KEY"):
                await client.get_job("j")
        assert rec.requests == []

    async def test_plain_http_to_remote_host_refused(self) -> None:
        """http:// to a non-loopback host is refused; loopback is fine."""
        with pytest.raises(ConfigurationError, match="clear text"):
            Client(KEY, "http://api.example.com")
        async with Client(KEY, "http://127.0.0.1:8000") as client:
            assert client.settings.base_url == "http://127.0.0.1:8000"

    async def test_precedence_argument_configure_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Arguments beat configure(), which beats environment variables."""
        monkeypatch.setenv("NARRATIVE_API_KEY", "key-env")
        monkeypatch.setenv("NARRATIVE_BASE_URL", "https://env.example/")
        monkeypatch.setenv("NARRATIVE_DATA_PLANE_ID", "plane-env")
        async with Client() as client:
            assert client.settings.api_key == ApiKey("key-env")
            assert client.settings.base_url == "https://env.example"
            assert client.data_plane_id == "plane-env"
        configure(api_key="key-conf", base_url="https://conf.example", data_plane_id="plane-conf")
        async with Client() as client:
            assert client.settings.api_key == ApiKey("key-conf")
            assert client.settings.base_url == "https://conf.example"
            assert client.data_plane_id == "plane-conf"
        rec = Recorder(httpx.Response(200, json=job_json()))
        async with Client(
            "key-arg",
            "https://arg.example",
            data_plane_id="plane-arg",
            transport=httpx.MockTransport(rec),
        ) as client:
            assert client.data_plane_id == "plane-arg"
            await client.get_job("job-1")
        assert rec.requests[0].headers["authorization"] == "Bearer key-arg"
        assert str(rec.requests[0].url) == "https://arg.example/jobs/job-1"

    async def test_invalid_options(self) -> None:
        """Nonsense limits are refused up front."""
        options: list[dict[str, Any]] = [
            {"max_retries": -1},
            {"max_connections": 0},
            {"timeout": 0},
        ]
        for kwargs in options:
            with pytest.raises(ConfigurationError):
                Client(KEY, BASE, **kwargs)


class TestLifecycle:
    """Who closes which httpx client."""

    async def test_caller_http_client_left_open(self) -> None:
        """aclose leaves a caller's http_client open and usable."""
        rec = Recorder(httpx.Response(200, json=job_json()))
        async with httpx.AsyncClient(transport=httpx.MockTransport(rec)) as http:
            async with Client(KEY, BASE, http_client=http) as client:
                await client.get_job("job-1")
            assert not http.is_closed
        assert isinstance(client.stats, ClientStats)

    async def test_own_http_client_closed(self) -> None:
        """aclose closes the client's own httpx client."""
        client = make_client(Recorder())
        await client.aclose()
        assert client._http.is_closed


# --- the default transport (_wire) against real sockets on 127.0.0.1 -------------------------


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread on a free port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def api_app(seen: list[tuple[dict[str, str], Any]]) -> Starlette:
    """A minimal Narrative API: one job, one 404, and the submit endpoint."""

    async def get_job(request: Request) -> JSONResponse:
        seen.append((dict(request.headers), None))
        job_id = request.path_params["job_id"]
        if job_id == "missing":
            return JSONResponse(problem(404, "Not Found", "No job missing", "log-404"), 404)
        return JSONResponse(job_json(job_id, "completed"))

    async def run(request: Request) -> JSONResponse:
        seen.append((dict(request.headers), await request.json()))
        return JSONResponse({"job_id": "job-new"})

    return Starlette(
        routes=[
            Route("/jobs/{job_id}", get_job, methods=["GET"]),
            Route("/model-inference/run", run, methods=["POST"]),
        ]
    )


@contextlib.asynccontextmanager
async def raw_server(mode: str) -> AsyncIterator[str]:
    """A socket server that reads a request and then closes ("close") or never answers."""
    release = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            if mode != "close":
                await release.wait()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestDefaultTransport:
    """The default transport, on real sockets, maps answers and failures the same way."""

    async def test_get_post_and_404(self) -> None:
        """A GET, a POST and a 404 through the default wire behave as with any transport."""
        seen: list[tuple[dict[str, str], Any]] = []
        with serve_app(api_app(seen)) as base:
            async with Client(KEY, base, clock=FakeClock()) as client:
                assert type(client._exchange).__name__ == "WireExchange"
                job = await client.get_job("job-1")
                submitted = await client.run_model_inference(full_request())
                async with raises(NotFoundError) as info:
                    await client.get_job("missing")
        assert (job.job_id, job.state) == ("job-1", "completed")
        assert submitted.job_id == "job-new"
        exc = info.value
        assert (exc.status_code, exc.title, exc.detail, exc.log_id) == (
            404, "Not Found", "No job missing", "log-404"
        )  # fmt: skip
        assert (exc.method, exc.path) == ("GET", "/jobs/missing")
        headers, body = seen[1]
        assert headers["authorization"] == f"Bearer {KEY}"
        assert headers["content-type"] == "application/json"
        assert body == full_request().to_body()
        assert client.stats.requests == 3

    async def test_connection_refused_post_is_retried(self) -> None:
        """A refused connection means nothing was sent: the POST is retried, then raised."""
        clock = FakeClock()
        base = f"http://127.0.0.1:{free_port()}"
        client = Client(KEY, base, clock=clock, max_retries=2)
        async with client, raises(APIConnectionError) as info:
            await client.run_model_inference(minimal_request())
        assert type(info.value) is APIConnectionError  # not a timeout
        assert client.stats.requests == 3
        assert len(clock.sleeps) == 2

    async def test_disconnect_after_sending_post_is_unknown_outcome(self) -> None:
        """A server that drops the connection after reading the POST leaves the outcome unknown."""
        async with raw_server("close") as base:
            client = Client(KEY, base, clock=FakeClock())
            async with client, raises(APIUnknownOutcomeError):
                await client.run_model_inference(minimal_request())
        assert client.stats.requests == 1

    async def test_disconnect_on_get_is_retried(self) -> None:
        """A dropped connection on a read is retried and ends as APIConnectionError."""
        async with raw_server("close") as base:
            client = Client(KEY, base, clock=FakeClock(), max_retries=2)
            async with client, raises(APIConnectionError) as info:
                await client.get_job("j")
        assert type(info.value) is APIConnectionError
        assert client.stats.requests == 3

    async def test_read_timeout_post_is_unknown_outcome(self) -> None:
        """A POST that gets no answer in time may have created the job."""
        async with raw_server("hang") as base:
            # a long overall deadline, so the read timeout is what fires even on a busy machine
            client = Client(KEY, base, clock=FakeClock(), timeout=0.2, deadline=30)
            async with client, raises(APIUnknownOutcomeError) as info:
                await client.run_model_inference(minimal_request())
        cause = info.value.__cause__
        assert isinstance(cause, WireReadTimeout), repr(cause)
        assert client.stats.requests == 1

    async def test_read_timeout_get_is_api_timeout(self) -> None:
        """A read that gets no answer in time ends as APITimeoutError after its retries."""
        async with raw_server("hang") as base:
            client = Client(KEY, base, clock=FakeClock(), timeout=0.2, max_retries=1)
            async with client, raises(APITimeoutError):
                await client.get_job("j")
        assert client.stats.requests == 2
