"""The client's rules hold on both transport paths, on real sockets.

The default client speaks HTTP/1.1 itself (``_wire.WireExchange``); a user's
``transport=`` or ``http_client=`` goes through httpx (``HttpxExchange``). Everything above the
exchange is one code path, and these tests check that it behaves the same over each: retries,
``Retry-After``, error bodies, encodings, timeouts and the key kept out of every text.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from narrative_pandas._client import Client
from narrative_pandas._clock import FakeClock
from narrative_pandas._exceptions import (
    APIStatusError,
    APITimeoutError,
    APIUnknownOutcomeError,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from narrative_pandas._transport import HttpxExchange, MaskedHeaders
from narrative_pandas._wire import WireExchange

KEY = "sk-live-SECRET-transport-5e1d"
PATHS = ("wire", "httpx-transport", "httpx-client")
Scripted = tuple[int, dict[str, str], bytes]


def job(job_id: str = "job-1", state: str = "completed") -> dict[str, Any]:
    return {
        "id": job_id,
        "type": "model_inference",
        "state": state,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z",
    }


def as_json(value: Any, status: int = 200, **headers: str) -> Scripted:
    return status, {"content-type": "application/json", **headers}, json.dumps(value).encode()


class ScriptedServer:
    """A uvicorn server on 127.0.0.1 that answers each request with the next scripted answer."""

    def __init__(self) -> None:
        self.script: list[Scripted] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def app(self) -> Starlette:
        async def answer(request: Request) -> Response:
            await request.body()
            self.seen.append((request.method, request.url.path, dict(request.headers)))
            status, headers, body = self.script.pop(0) if self.script else as_json(job())
            return Response(body, status_code=status, headers=headers)

        return Starlette(
            routes=[Route("/{path:path}", answer, methods=["GET", "POST"])],
        )

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(self.app(), log_level="warning", lifespan="off"))
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


@contextlib.asynccontextmanager
async def client_on(path: str, base: str, **kwargs: Any) -> AsyncIterator[Client]:
    """A client of ``base`` over one transport path; closed (and its httpx client) after."""
    http: httpx.AsyncClient | None = None
    if path == "httpx-transport":
        kwargs["transport"] = httpx.AsyncHTTPTransport()
    elif path == "httpx-client":
        http = httpx.AsyncClient(timeout=kwargs.get("timeout", 30.0))
        kwargs["http_client"] = http
    client = Client(KEY, base, data_plane_id="dp-1", **kwargs)
    try:
        yield client
    finally:
        await client.aclose()
        if http is not None:
            await http.aclose()


@pytest.fixture
def server() -> Iterator[tuple[ScriptedServer, str]]:
    scripted = ScriptedServer()
    with scripted.serve() as base:
        yield scripted, base


def body() -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "text": "hi"}]}


@pytest.mark.parametrize("path", PATHS)
class TestBothPaths:
    """One code path above the transport: the same behaviour over the wire and over httpx."""

    async def test_the_path_is_the_one_asked_for(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """The default client uses its own wire; transport= and http_client= use httpx."""
        _, base = server
        async with client_on(path, base) as client:
            kind = WireExchange if path == "wire" else HttpxExchange
            assert type(client._exchange) is kind
            got = await client.get_job("job-1")
        assert (got.job_id, got.state) == ("job-1", "completed")

    async def test_headers_and_body_as_sent(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """A POST carries the key, JSON content type, our user agent and the exact body."""
        scripted, base = server
        scripted.script = [as_json({"job_id": "job-9"})]
        async with client_on(path, base) as client:
            created = await client.run_model_inference(body())
        assert created.job_id == "job-9"
        method, route, headers = scripted.seen[0]
        assert (method, route) == ("POST", "/model-inference/run")
        assert headers["authorization"] == f"Bearer {KEY}"
        assert headers["content-type"] == "application/json"
        assert headers["accept"] == "application/json"
        assert headers["user-agent"].startswith("narrative-pandas")

    async def test_429_retry_after_then_success(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """A 429 with Retry-After: 3 holds every request for exactly 3 s, then the POST repeats."""
        scripted, base = server
        scripted.script = [
            as_json({"title": "Too Many Requests"}, 429, **{"retry-after": "3"}),
            as_json({"job_id": "job-2"}),
        ]
        clock = FakeClock()
        async with client_on(path, base, clock=clock) as client:
            created = await client.run_model_inference(body())
            assert client.rate_limited_until == pytest.approx(3.0)
        assert created.job_id == "job-2"
        assert clock.sleeps == [pytest.approx(3.0)]
        assert (client.stats.requests, client.stats.retries, client.stats.rate_limited) == (
            2,
            1,
            1,
        )

    async def test_429_after_the_retries_names_the_wait(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """Out of retries, a 429 raises RateLimitError with the server's Retry-After."""
        scripted, base = server
        scripted.script = [as_json({"detail": "slow down"}, 429, **{"retry-after": "7"})] * 2
        async with client_on(path, base, clock=FakeClock(), max_retries=1) as client:
            with pytest.raises(RateLimitError) as info:
                await client.get_job("job-1")
        assert info.value.retry_after == pytest.approx(7.0)
        assert "slow down" in str(info.value)
        assert client.stats.requests == 2

    async def test_500_on_a_post_is_an_unknown_outcome_without_retry(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """A 500 answer to a POST may hide a created job: no second POST, reconcile instead."""
        scripted, base = server
        scripted.script = [as_json({"title": "Internal"}, 500)]
        async with client_on(path, base, clock=FakeClock()) as client:
            with pytest.raises(APIUnknownOutcomeError):
                await client.run_model_inference(body())
        assert [m for m, _, _ in scripted.seen] == ["POST"]

    async def test_problem_body_fields(self, path: str, server: tuple[ScriptedServer, str]) -> None:
        """An RFC 7807 body gives the exception its title, detail and log id."""
        scripted, base = server
        problem = {"title": "Not Found", "detail": "No job nope", "logId": "log-7"}
        scripted.script = [as_json(problem, 404)]
        async with client_on(path, base, clock=FakeClock()) as client:
            with pytest.raises(NotFoundError) as info:
                await client.get_job("nope")
        exc = info.value
        assert (exc.status_code, exc.title, exc.detail, exc.log_id) == (
            404,
            "Not Found",
            "No job nope",
            "log-7",
        )
        assert (exc.method, exc.path) == ("GET", "/jobs/nope")

    async def test_html_gateway_page(self, path: str, server: tuple[ScriptedServer, str]) -> None:
        """A proxy's HTML 502 page is named by its title, after the GET's retries."""
        scripted, base = server
        page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
        scripted.script = [(502, {"content-type": "text/html"}, page)] * 2
        async with client_on(path, base, clock=FakeClock(), max_retries=1) as client:
            with pytest.raises(ServerError) as info:
                await client.get_job("job-1")
        assert "HTML page from a proxy or gateway (502 Bad Gateway)" in str(info.value)

    async def test_key_echoed_in_an_error_body_is_masked(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """A gateway that echoes the Authorization header never gets the key into the error."""
        scripted, base = server
        echoed = {"title": "Bad key", "detail": f"Bearer {KEY} is not valid"}
        scripted.script = [as_json(echoed, 401)]
        async with client_on(path, base, clock=FakeClock()) as client:
            with pytest.raises(APIStatusError) as info:
                await client.get_job("job-1")
        exc = info.value
        for text in (str(exc), repr(exc), json.dumps(exc.body), repr(client)):
            assert KEY not in text
        assert "Bearer *** is not valid" in str(exc)

    async def test_gzip_answer_is_decoded(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """A gzip-encoded JSON answer is read like a plain one."""
        scripted, base = server
        packed = gzip.compress(json.dumps(job("job-z", "running")).encode())
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        scripted.script = [(200, headers, packed)]
        async with client_on(path, base) as client:
            got = await client.get_job("job-z")
        assert (got.job_id, got.state) == ("job-z", "running")

    async def test_declared_charset_is_honoured(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """JSON in latin-1 (declared) is decoded by its charset, not as UTF-8."""
        scripted, base = server
        text = json.dumps({**job("job-é"), "id": "job-é"}, ensure_ascii=False)
        headers = {"content-type": "application/json; charset=latin-1"}
        scripted.script = [(200, headers, text.encode("latin-1"))]
        async with client_on(path, base) as client:
            got = await client.get_job("job-é")
        assert got.job_id == "job-é"

    async def test_garbage_200_to_a_post_is_unknown(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """A 200 whose body is not JSON may still mean a created job: unknown, not an error."""
        scripted, base = server
        scripted.script = [(200, {"content-type": "text/plain"}, b"ok!")]
        async with client_on(path, base, clock=FakeClock()) as client:
            with pytest.raises(APIUnknownOutcomeError, match="not JSON"):
                await client.run_model_inference(body())
        assert len(scripted.seen) == 1

    async def test_listing_query_parameters(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        """A listing page sends only the parameters given, and its records get job ids."""
        scripted, base = server
        scripted.script = [as_json({"records": [job("a"), job("b")]})]
        async with client_on(path, base) as client:
            page = await client.list_jobs_raw(type="model_inference", per_page=2)
        assert [r["job_id"] for r in page["records"]] == ["a", "b"]
        assert scripted.seen[0][1] == "/jobs"


@contextlib.asynccontextmanager
async def hanging_server() -> AsyncIterator[str]:
    """A socket server that reads a request and never answers."""
    release = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
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


@pytest.mark.parametrize("path", PATHS)
class TestTimeoutsOnBothPaths:
    """A server that never answers: POSTs are unknown outcomes, reads time out after retries."""

    async def test_post_without_answer_is_unknown(self, path: str) -> None:
        """One POST, no answer in time: unknown outcome, no second POST, no key in the text."""
        async with (
            hanging_server() as base,
            client_on(path, base, clock=FakeClock(), timeout=0.2) as client,
        ):
            with pytest.raises(APIUnknownOutcomeError) as info:
                await client.run_model_inference(body())
        assert client.stats.requests == 1
        assert KEY not in str(info.value)

    async def test_get_without_answer_times_out(self, path: str) -> None:
        """A read with no answer is retried, then raises APITimeoutError."""
        async with (
            hanging_server() as base,
            client_on(path, base, clock=FakeClock(), timeout=0.2, max_retries=1) as client,
        ):
            with pytest.raises(APITimeoutError) as info:
                await client.get_job("job-1")
        assert client.stats.requests == 2
        assert KEY not in str(info.value)


class TestMaskedHeaders:
    """The request headers never show the key when printed."""

    def test_repr_masks_authorization(self) -> None:
        """repr and str of the headers hide the Authorization value."""
        headers = MaskedHeaders({"Accept": "application/json", "Authorization": f"Bearer {KEY}"})
        assert KEY not in repr(headers)
        assert KEY not in str(headers)
        assert "[secure]" in repr(headers)
        assert headers["Authorization"] == f"Bearer {KEY}"  # the value itself is intact
