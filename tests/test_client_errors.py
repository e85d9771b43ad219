"""Error answers from any gateway, garbage answers, stalls and the key in tracebacks."""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from narrative_pandas._client import Client
from narrative_pandas._clock import FakeClock
from narrative_pandas._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    APIUnknownOutcomeError,
)

KEY = "sk-LEAKCANARY-0123456789abcdef"
BASE = "https://api.test.narrative.io"
PLANE = "fef9904e-d263-4930-85f7-1e28cce40f89"
BODY = {
    "data_plane_id": PLANE,
    "model": "anthropic.claude-haiku-4.5",
    "messages": [{"role": "user", "text": "Hi"}],
    "inference_config": {"output_format_schema": {"type": "object"}},
}


def client_answering(*answers: httpx.Response, **kwargs: Any) -> tuple[Client, list[str]]:
    """A client whose transport answers from a script (the last answer repeats)."""
    seen: list[str] = []
    script = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return script.pop(0) if len(script) > 1 else script[0]

    kwargs.setdefault("max_retries", 0)
    client = Client(
        KEY,
        BASE,
        data_plane_id=PLANE,
        transport=httpx.MockTransport(handler),
        clock=FakeClock(),
        **kwargs,
    )
    return client, seen


async def error_of(response: httpx.Response) -> APIStatusError:
    client, _ = client_answering(response)
    async with client:
        with pytest.raises(APIStatusError) as info:
            await client.get_job("j1")
    return info.value


class TestGatewayBodies:
    """Every body shape a gateway sends gives a message with the status and what it said."""

    async def test_capitalised_title_and_detail(self) -> None:
        """Title/Detail as Narrative's own client reads them are shown, with the logId."""
        exc = await error_of(
            httpx.Response(
                400, json={"Title": "Invalid schema", "Detail": "no type", "LogId": "L1"}
            )
        )
        assert str(exc) == "400 Bad Request on GET /jobs/j1: Invalid schema: no type (logId L1)"
        assert (exc.title, exc.detail, exc.log_id) == ("Invalid schema", "no type", "L1")

    async def test_message_shape(self) -> None:
        """A body of just {"message"} is the detail."""
        exc = await error_of(httpx.Response(400, json={"message": "model is required"}))
        assert str(exc) == "400 Bad Request on GET /jobs/j1: model is required"

    async def test_nested_error_message(self) -> None:
        """{"error": {"code", "message"}} gives the code as title and the message as detail."""
        exc = await error_of(
            httpx.Response(429, json={"error": {"code": "rate_limited", "message": "slow down"}})
        )
        assert str(exc) == "429 Too Many Requests on GET /jobs/j1: rate_limited: slow down"

    async def test_error_and_description(self) -> None:
        """The OpenAPI file's {"error", "error_description"} shape is read."""
        exc = await error_of(
            httpx.Response(401, json={"error": "invalid_token", "error_description": "expired"})
        )
        assert str(exc).startswith("401 Unauthorized on GET /jobs/j1: invalid_token: expired.")
        assert "Check the API key" in str(exc)

    async def test_html_page_from_a_proxy(self) -> None:
        """A 502 HTML page is named as a gateway page with its title, not dumped."""
        page = (
            b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
            b"<body><h1>Bad Gateway</h1><p>nginx</p>" + b"x" * 5000 + b"</body></html>"
        )
        exc = await error_of(
            httpx.Response(502, content=page, headers={"content-type": "text/html"})
        )
        assert str(exc) == (
            "502 Bad Gateway on GET /jobs/j1: an HTML page from a proxy or gateway "
            "(502 Bad Gateway). The service or a gateway in front of it is unavailable; "
            "try again later."
        )

    async def test_empty_body(self) -> None:
        """A 504 with no body says so, with the status."""
        exc = await error_of(httpx.Response(504, content=b""))
        assert str(exc) == (
            "504 Gateway Timeout on GET /jobs/j1: empty body. The service or a gateway in "
            "front of it is unavailable; try again later."
        )

    async def test_plain_text_body_is_cut(self) -> None:
        """A long plain-text body is kept to 300 characters."""
        exc = await error_of(httpx.Response(500, content=b"boom " * 200))
        assert exc.detail is not None and len(exc.detail) == 300


class TestKeyFragments:
    """The key is masked before any text is cut, so no fragment of it survives."""

    async def test_key_echoed_across_the_cut(self) -> None:
        """A plain-text body echoing the key where the 300-character cut falls shows no part."""
        text = "x" * 285 + f" Bearer {KEY} rejected"
        exc = await error_of(httpx.Response(401, content=text.encode()))
        for rendered in (str(exc), repr(exc), str(exc.body), str(exc.detail)):
            assert "LEAKCANAR" not in rendered
            assert KEY[:8] not in rendered

    async def test_key_echoed_in_json_body(self) -> None:
        """A JSON body echoing the key is masked in the message and the kept body."""
        exc = await error_of(httpx.Response(403, json={"detail": f"key {KEY} has no rights"}))
        assert KEY not in str(exc) and KEY not in str(exc.body)
        assert "key *** has no rights" in str(exc)


def rendered_with_locals(exc: BaseException) -> str:
    return "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())


class TestTracebackLocals:
    """Tracebacks rendered with their frames' locals (Sentry, rich, IPython) hold no key."""

    async def test_status_error(self) -> None:
        """A 500 on a read, after retries, leaves no key in any frame's locals."""
        client, _ = client_answering(httpx.Response(500, json={"title": "oops"}), max_retries=1)
        async with client:
            with pytest.raises(APIStatusError) as info:
                await client.get_job("j1")
        text = rendered_with_locals(info.value)
        assert "_request" in text and "key = ApiKey('**********')" in text
        assert KEY not in text and "LEAKCANARY" not in text

    async def test_connection_error_through_aiohttp(self) -> None:
        """A refused connection on the real transport leaves no key in the chained frames."""
        with contextlib.closing(__import__("socket").socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        client = Client(KEY, f"http://127.0.0.1:{port}", clock=FakeClock(), max_retries=0)
        async with client:
            with pytest.raises(APIConnectionError) as info:
                await client.get_job("j1")
        text = rendered_with_locals(info.value)
        assert "_request" in text
        assert KEY not in text and "LEAKCANARY" not in text


@contextlib.asynccontextmanager
async def drip_server(body: bytes, *, every: float) -> AsyncIterator[str]:
    """An HTTP server that sends its headers at once and then one byte every ``every`` s."""
    tasks: list[asyncio.Task[Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = (
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode())
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(every)
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for task in tasks:
            task.cancel()
        server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


class TestDeadline:
    """A request has one deadline for connect and the whole body, however the bytes trickle."""

    async def test_dripping_read_times_out(self) -> None:
        """A listing trickling a byte every 50 ms (each within the read timeout) is cut off."""
        async with drip_server(b'{"records": []}' * 20, every=0.05) as base:
            client = Client(KEY, base, clock=FakeClock(), timeout=0.2, deadline=0.3, max_retries=1)
            async with client:
                with pytest.raises(APITimeoutError) as info:
                    await client.list_jobs_raw()
        assert client.stats.requests == 2
        assert "timed out" in str(info.value)

    async def test_dripping_post_is_an_unknown_outcome(self) -> None:
        """A POST cut by its deadline may have created its job: unknown, never retried."""
        async with drip_server(b'{"job_id": "abcdefghijklmnop"}', every=0.05) as base:
            client = Client(KEY, base, clock=FakeClock(), timeout=0.2, deadline=0.3)
            async with client:
                with pytest.raises(APIUnknownOutcomeError):
                    await client.run_model_inference(BODY)
        assert client.stats.requests == 1

    async def test_cancel_interrupts_a_request_in_flight(self) -> None:
        """Cancelling the task of a dripping request ends it at once, not at its deadline."""
        async with drip_server(b'{"records": []}' * 100, every=0.05) as base:
            client = Client(KEY, base, clock=FakeClock(), timeout=30, max_retries=0)
            async with client:
                task = asyncio.create_task(client.list_jobs_raw())
                await asyncio.sleep(0.2)
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=1.0)
        assert done == {task} and task.cancelled()


class TestGarbageAnswers:
    """A 200 whose body is not JSON: a POST's outcome is unknown, a read is repeated."""

    async def test_post_with_garbage_is_unknown_outcome(self) -> None:
        """A POST answered 200 with garbage raises APIUnknownOutcomeError and is not repeated."""
        client, seen = client_answering(httpx.Response(200, content=b"\x00not json"))
        async with client:
            with pytest.raises(APIUnknownOutcomeError) as info:
                await client.run_model_inference(BODY)
        assert seen == ["POST /model-inference/run"]
        assert "may or may not have been created" in str(info.value)

    async def test_read_with_garbage_is_repeated(self) -> None:
        """A GET answered 200 with garbage once is repeated and then succeeds."""
        client, seen = client_answering(
            httpx.Response(200, content=b"<html>"),
            httpx.Response(200, json={"job_id": "j1", "state": "running"}),
            max_retries=2,
        )
        async with client:
            job = await client.get_job("j1")
        assert job.state == "running" and len(seen) == 2

    async def test_garbage_read_after_retries_is_an_api_error(self) -> None:
        """Garbage every time ends in an APIError naming the request."""
        client, seen = client_answering(httpx.Response(200, content=b"<html>"), max_retries=1)
        async with client:
            with pytest.raises(APIError) as info:
                await client.list_jobs_raw()
        assert str(info.value) == "GET /jobs answered 200 with a body that is not JSON."
        assert len(seen) == 2
