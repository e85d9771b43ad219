"""The default transport's HTTP/1.1, against raw socket peers that misbehave.

``_wire.WireExchange`` writes requests and parses answers itself. These tests hold it to the
protocol where servers and proxies bend it: chunked bodies split at every byte, bodies that end
with the connection, 1xx answers, keep-alive connections the server drops, resets mid-answer,
garbage and oversize heads, slow drips, TLS. They count requests and connections, never time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas import _wire
from narrative_pandas._client import Client
from narrative_pandas._clock import FakeClock
from narrative_pandas._exceptions import (
    APIConnectionError,
    APITimeoutError,
    APIUnknownOutcomeError,
)
from narrative_pandas._transport import Answer, MaskedHeaders
from narrative_pandas._wire import (
    MAX_HEAD_BYTES,
    WireCertificateError,
    WireConnectError,
    WireDisconnected,
    WireExchange,
    WireProtocolError,
    WireReadTimeout,
    WireRequestError,
    _Connection,
)
from narrative_pandas.sandbox import Sandbox

KEY = "sk-live-SECRET-wire-77a0"
JOB = json.dumps(
    {
        "id": "job-1",
        "type": "model_inference",
        "state": "completed",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z",
    }
).encode()
Handler = Callable[["Peer", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


def ok(body: bytes = JOB, *extra: str) -> bytes:
    """A 200 answer framed by Content-Length, with ``extra`` header lines."""
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join([*head, *extra]) + "\r\n\r\n").encode() + body


def chunked(body: bytes, pieces: int = 3) -> bytes:
    """``body`` in ``pieces`` chunks, with a chunk extension and a trailer."""
    step = max(1, len(body) // pieces)
    out = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ]
    for i in range(0, len(body), step):
        part = body[i : i + step]
        out.append(f"{len(part):x};name=value\r\n".encode() + part + b"\r\n")
    out.append(b"0\r\nX-Trailer: done\r\n\r\n")
    return b"".join(out)


class Peer:
    """A raw ``asyncio.start_server`` peer: every connection runs ``handler``; it counts
    connections and the requests it read (method, target, headers, body)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.heads: list[bytes] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.release = asyncio.Event()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[str, str] | None:
        """Read one request (head and Content-Length body); None at the end of the stream."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        self.heads.append(head)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((method, target, headers, body))
        return method, target

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        self.connections += 1
        try:
            await self.handler(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.closed += 1
            writer.transport.abort()

    @contextlib.asynccontextmanager
    async def serve(self, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ssl_context)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            self.release.set()
            server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()


def answering(*answers: bytes, keep: bool = True) -> Handler:
    """A handler that answers each request on a connection with the next of ``answers``
    (the last one repeats); ``keep=False`` closes after the first answer."""

    async def handle(peer: Peer, reader: Any, writer: asyncio.StreamWriter, n: int) -> None:
        i = 0
        while await peer.read_request(reader) is not None:
            writer.write(answers[min(i, len(answers) - 1)])
            await writer.drain()
            i += 1
            if not keep:
                return

    return handle


@contextlib.asynccontextmanager
async def exchange_on(
    handler: Handler, *, max_connections: int = 4, timeout: float = 30.0
) -> AsyncIterator[tuple[Peer, WireExchange]]:
    peer = Peer(handler)
    async with peer.serve() as port:
        wire = WireExchange(
            f"http://127.0.0.1:{port}", max_connections=max_connections, timeout=timeout
        )
        try:
            yield peer, wire
        finally:
            await wire.aclose()


@contextlib.asynccontextmanager
async def client_on(handler: Handler, **kwargs: Any) -> AsyncIterator[tuple[Peer, Client]]:
    peer = Peer(handler)
    async with peer.serve() as port:
        client = Client(
            KEY, f"http://127.0.0.1:{port}", data_plane_id="dp-1", clock=FakeClock(), **kwargs
        )
        try:
            yield peer, client
        finally:
            await client.aclose()


def headers() -> MaskedHeaders:
    return MaskedHeaders({"Accept": "application/json", "Authorization": f"Bearer {KEY}"})


async def get(wire: WireExchange, path: str = "/jobs/job-1") -> Answer:
    return await wire.send("GET", path, None, None, headers())


async def post(wire: WireExchange, body: bytes = b'{"a": 1}') -> Answer:
    return await wire.send("POST", "/model-inference/run", None, body, headers())


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (bounded by loop turns, not by a clock)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


class FakeTransport(asyncio.Transport):
    """Records writes; lets a test feed a connection's parser exactly the bytes it chooses."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


def feed(pieces: list[bytes], *, eof: bool = False) -> tuple[asyncio.Future[Answer], _Connection]:
    """A connection given ``pieces`` one ``data_received`` at a time (then EOF if asked)."""
    conn = _Connection(asyncio.get_running_loop(), 30.0)
    conn.connection_made(FakeTransport())
    waiter = conn.send(b"GET / HTTP/1.1\r\n\r\n")
    for piece in pieces:
        conn.data_received(piece)
    if eof:
        conn.eof_received()
        conn.connection_lost(None)
    return waiter, conn


def result(waiter: asyncio.Future[Answer]) -> Answer:
    assert waiter.done(), "the answer was not complete"
    return waiter.result()


class TestFraming:
    """Bodies framed every way HTTP/1.1 allows come out whole, and only when whole."""

    async def test_content_length_split_at_every_byte(self) -> None:
        """A Content-Length answer split in two at any byte is the same answer, once."""
        raw = ok()
        for cut in range(1, len(raw)):
            waiter, conn = feed([raw[:cut]])
            assert not waiter.done()
            conn.data_received(raw[cut:])
            answer = result(waiter)
            assert (answer.status, answer.content) == (200, JOB)
            assert conn.alive

    async def test_chunked_split_at_every_byte(self) -> None:
        """Chunked with extensions and a trailer, split at every byte, gives the exact body."""
        raw = chunked(JOB, pieces=4)
        for cut in range(1, len(raw)):
            waiter, conn = feed([raw[:cut]])
            assert not waiter.done(), cut
            conn.data_received(raw[cut:])
            answer = result(waiter)
            assert answer.content == JOB
            assert answer.headers["content-type"] == "application/json"
            assert conn.alive

    async def test_chunked_one_byte_at_a_time(self) -> None:
        """Every byte in its own read still parses (and nothing completes early)."""
        raw = chunked(JOB, pieces=7)
        waiter, _ = feed([raw[i : i + 1] for i in range(len(raw) - 1)])
        assert not waiter.done()
        _.data_received(raw[-1:])
        assert result(waiter).content == JOB

    async def test_close_delimited_body(self) -> None:
        """No Content-Length and no chunking: the body is all bytes up to the close."""
        waiter, conn = feed([b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhel", b"lo"])
        assert not waiter.done()
        conn.eof_received()
        assert result(waiter).content == b"hello"
        assert not conn.alive

    async def test_reset_during_a_close_delimited_body_is_not_a_whole_body(self) -> None:
        """A close-delimited body cut by a reset is an error, never half a body as whole."""
        waiter, conn = feed([b"HTTP/1.1 200 OK\r\n\r\nhalf"])
        conn.connection_lost(ConnectionResetError("reset"))
        with pytest.raises(WireDisconnected) as info:
            result(waiter)
        assert info.value.answer_started

    async def test_interim_answers_are_skipped(self) -> None:
        """100 Continue and 103 Early Hints come before the real answer and are skipped."""
        raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok()
        waiter, _ = feed([raw])
        answer = result(waiter)
        assert (answer.status, answer.content) == (200, JOB)

    async def test_204_and_304_have_no_body(self) -> None:
        """204 and 304 end at their headers, whatever Content-Length says."""
        for status in (204, 304):
            raw = f"HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n".encode()
            waiter, conn = feed([raw])
            assert (result(waiter).status, result(waiter).content) == (status, b"")
            assert conn.alive

    async def test_repeated_headers_are_joined_and_lookups_ignore_case(self) -> None:
        """Repeated headers read as one comma-joined value; names match in any case."""
        waiter, _ = feed([ok(JOB, "Via: a", "via: b", "Retry-After: 3")])
        answer = result(waiter)
        assert answer.headers["via"] == "a, b"
        assert answer.headers.get("RETRY-AFTER") == "3"
        assert answer.headers.get("x-missing") is None

    async def test_connection_close_and_http10_are_not_reused(self) -> None:
        """``Connection: close`` and an HTTP/1.0 answer leave the connection unusable."""
        for raw in (ok(JOB, "Connection: close"), ok().replace(b"HTTP/1.1", b"HTTP/1.0", 1)):
            waiter, conn = feed([raw])
            assert result(waiter).content == JOB
            assert not conn.alive

    async def test_gzip_sent_unasked_is_decoded(self) -> None:
        """A server may gzip although we never ask: the body is decoded."""
        import gzip

        packed = gzip.compress(JOB)
        raw = ok(packed, "Content-Encoding: gzip")
        waiter, _ = feed([raw])
        assert result(waiter).content == JOB


class TestMalformed:
    """Anything that is not HTTP/1.1 raises a transport error and is never kept."""

    @pytest.mark.parametrize(
        "raw",
        [
            b"HTTP/1.1 OK 200\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nName : value\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nab",
        ],
    )
    async def test_malformed_answers_raise(self, raw: bytes) -> None:
        """Garbage status lines, headers, lengths, chunks or encodings: WireProtocolError."""
        waiter, conn = feed([raw])
        with pytest.raises(WireProtocolError):
            result(waiter)
        assert not conn.alive

    async def test_oversize_headers_raise_without_waiting_for_the_end(self) -> None:
        """Headers past the limit raise as soon as the limit is passed (no end needed)."""
        filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        waiter, conn = feed([b"HTTP/1.1 200 OK\r\n"] + [filler] * (MAX_HEAD_BYTES // 1000 + 1))
        with pytest.raises(WireProtocolError, match="larger than"):
            result(waiter)
        assert not conn.alive

    async def test_bytes_after_the_answer_spoil_the_connection(self) -> None:
        """Bytes past the end of an answer (or unasked) mean the connection is not reused."""
        waiter, conn = feed([ok() + b"HTTP/1.1 200 OK\r\n"])
        assert result(waiter).content == JOB
        assert not conn.alive
        _, idle = feed([ok()])
        idle.data_received(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        assert not idle.alive

    async def test_garbage_on_a_get_is_retried_then_raised(self) -> None:
        """A GET answered with garbage is retried (with a fresh connection) and then raised."""
        async with client_on(answering(b"garbage\r\n\r\n"), max_retries=2) as (peer, client):
            with pytest.raises(APIConnectionError) as info:
                await client.get_job("job-1")
        assert "not an HTTP/1.1 status line" in str(info.value)
        assert KEY not in str(info.value)
        assert (client.stats.requests, len(peer.requests), peer.connections) == (3, 3, 3)

    async def test_garbage_on_a_post_is_an_unknown_outcome(self) -> None:
        """A POST answered with garbage may have created the job: unknown, never re-sent."""
        async with client_on(answering(b"HTTP/1.1 2xx\r\n\r\n")) as (peer, client):
            with pytest.raises(APIUnknownOutcomeError):
                await client.run_model_inference({"model": "m", "messages": []})
        assert len(peer.requests) == 1


class TestKeepAlive:
    """Connections are reused while they can be, and never when they cannot."""

    async def test_sequential_requests_share_one_connection(self) -> None:
        """Ten requests one after another use one connection."""
        async with exchange_on(answering(ok())) as (peer, wire):
            for _ in range(10):
                assert (await get(wire)).status == 200
            assert wire.idle_connections == 1
        assert (len(peer.requests), peer.connections) == (10, 1)

    async def test_pool_never_exceeds_max_connections(self) -> None:
        """Twenty concurrent requests through a pool of 3 open at most 3 connections."""
        peer_gate = asyncio.Event()

        async def slow(peer: Peer, reader: Any, writer: asyncio.StreamWriter, n: int) -> None:
            while await peer.read_request(reader) is not None:
                if peer.connections >= 3:
                    peer_gate.set()
                await peer_gate.wait()
                writer.write(ok())
                await writer.drain()

        async with exchange_on(slow, max_connections=3) as (peer, wire):
            answers = await asyncio.gather(*(get(wire) for _ in range(20)))
        assert all(a.status == 200 for a in answers)
        assert (len(peer.requests), peer.connections) == (20, 3)

    async def test_a_post_skips_a_connection_idle_too_long(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A POST opens a fresh connection rather than one idle past POST_REUSE_IDLE_S."""
        monkeypatch.setattr(_wire, "POST_REUSE_IDLE_S", 0.0)
        async with exchange_on(answering(ok())) as (peer, wire):
            await get(wire)
            await post(wire)
            await get(wire)  # a GET still reuses the most recent one
        assert [m for m, *_ in peer.requests] == ["GET", "POST", "GET"]
        assert peer.connections == 2

    async def test_connection_close_answers_are_not_reused(self) -> None:
        """After an answer with ``Connection: close`` the next request opens a new connection."""
        handler = answering(ok(JOB, "Connection: close"), keep=False)
        async with exchange_on(handler) as (peer, wire):
            for _ in range(3):
                assert (await get(wire)).content == JOB
            assert wire.idle_connections == 0
        assert (len(peer.requests), peer.connections) == (3, 3)

    async def test_idle_connection_closed_by_the_server(self) -> None:
        """The server closes an idle kept-alive connection: the next POST still goes through."""

        async def one_then_close(peer: Peer, reader: Any, writer: Any, n: int) -> None:
            await peer.read_request(reader)
            writer.write(ok())
            await writer.drain()
            writer.close()  # an idle timeout on the server's side

        async with exchange_on(one_then_close) as (peer, wire):
            await get(wire)
            await until(lambda: peer.closed == 1)
            await until(lambda: not wire._idle[-1].alive)
            assert (await post(wire)).status == 200
            assert (await get(wire)).status == 200
        assert (len(peer.requests), peer.connections) == (3, 3)

    async def test_stale_connection_get_is_retried_once_on_a_fresh_one(self) -> None:
        """A reused connection dropped before any answer byte: the GET goes again, unseen."""

        async def drop_second(peer: Peer, reader: Any, writer: Any, n: int) -> None:
            while await peer.read_request(reader) is not None:
                if n == 1 and len(peer.requests) == 2:
                    return  # read the request, close without a byte
                writer.write(ok())
                await writer.drain()

        async with client_on(drop_second) as (peer, client):
            await client.get_job("job-1")
            assert (await client.get_job("job-1")).job_id == "job-1"
        assert client.stats.requests == 2  # the retry inside the wire is not a client retry
        assert client.stats.retries == 0
        assert (len(peer.requests), peer.connections) == (3, 2)

    async def test_stale_connection_post_is_an_unknown_outcome(self) -> None:
        """The same drop on a POST is not re-sent: the job may exist, so the client reconciles."""

        async def drop_second(peer: Peer, reader: Any, writer: Any, n: int) -> None:
            while await peer.read_request(reader) is not None:
                if len(peer.requests) == 2:
                    return
                writer.write(ok(b'{"job_id": "j"}'))
                await writer.drain()

        async with client_on(drop_second) as (peer, client):
            await client.run_model_inference({"model": "m", "messages": []})
            with pytest.raises(APIUnknownOutcomeError) as info:
                await client.run_model_inference({"model": "m", "messages": []})
        assert "closed the connection before answering" in str(info.value)
        assert [m for m, *_ in peer.requests] == ["POST", "POST"]

    async def test_reset_mid_body_on_a_get_is_retried(self) -> None:
        """A reset in the middle of a GET's body is retried by the client and then succeeds."""

        async def reset_first(peer: Peer, reader: Any, writer: Any, n: int) -> None:
            while await peer.read_request(reader) is not None:
                if n == 1:
                    writer.write(ok()[:-10])
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                writer.write(ok())
                await writer.drain()

        async with client_on(reset_first) as (peer, client):
            assert (await client.get_job("job-1")).job_id == "job-1"
        assert (client.stats.requests, client.stats.retries, peer.connections) == (2, 1, 2)


class TestDeadlines:
    """A server that stalls or drips cannot hold a request past its deadline."""

    async def test_slow_drip_is_cut_by_the_deadline_and_the_connection_closed(self) -> None:
        """Headers at once, then one byte per tick: the deadline ends it; nothing is pooled."""

        async def drip(peer: Peer, reader: Any, writer: asyncio.StreamWriter, n: int) -> None:
            while await peer.read_request(reader) is not None:
                body = b" " * 100_000
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
                for i in range(len(body)):
                    writer.write(body[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0.01)

        async with client_on(drip, timeout=5.0, deadline=0.3, max_retries=1) as (peer, client):
            with pytest.raises(APITimeoutError):
                await client.get_job("job-1")
            wire = client._exchange
            assert isinstance(wire, WireExchange)
            assert (wire.idle_connections, wire._open) == (0, 0)
            await until(lambda: peer.closed == 2)
        assert (client.stats.requests, peer.connections) == (2, 2)

    async def test_read_timeout_without_a_byte(self) -> None:
        """No byte of the answer for ``timeout`` s: WireReadTimeout, connection closed."""

        async def silent(peer: Peer, reader: Any, writer: Any, n: int) -> None:
            await peer.read_request(reader)
            await peer.release.wait()

        async with exchange_on(silent, timeout=0.2) as (_, wire):
            with pytest.raises(WireReadTimeout):
                await get(wire)
            assert (wire.idle_connections, wire._open) == (0, 0)

    async def test_one_read_timer_per_connection_still_times_each_request(self) -> None:
        """Requests on a kept-alive connection share one read timer (none is made and
        cancelled per request); a later request's silence still counts from its own send."""

        async def then_silent(peer: Peer, reader: Any, writer: Any, n: int) -> None:
            for _ in range(20):
                await peer.read_request(reader)
                writer.write(ok())
                await writer.drain()
            await peer.read_request(reader)
            await peer.release.wait()

        async with exchange_on(then_silent, max_connections=1, timeout=0.4) as (peer, wire):
            await get(wire)
            (conn,) = wire._idle
            timer = conn._timer
            assert timer is not None
            for _ in range(19):
                await get(wire)
            assert list(wire._idle) == [conn] and conn._timer is timer  # one timer throughout
            await asyncio.sleep(0.3)  # the timer was armed over 0.3 s ago: due in under 0.1 s
            loop = asyncio.get_running_loop()
            sent = loop.time()
            with pytest.raises(WireReadTimeout):
                await get(wire)
            assert loop.time() - sent >= 0.4 - 0.02  # 0.4 s from this send, not the first's
            assert peer.connections == 1 and (wire.idle_connections, wire._open) == (0, 0)

    async def test_cancelled_exchange_closes_its_connection(self) -> None:
        """A cancelled request (the caller's deadline) never leaves its connection pooled."""

        async def half(peer: Peer, reader: Any, writer: Any, n: int) -> None:
            await peer.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            await reader.read()  # until the client closes its end

        async with exchange_on(half) as (peer, wire):
            task = asyncio.create_task(get(wire))
            await until(lambda: len(peer.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (wire.idle_connections, wire._open) == (0, 0)
            await until(lambda: peer.closed == 1)


class TestRequests:
    """What goes on the wire: exact bytes, and nothing when a header is unsafe."""

    async def test_request_bytes_with_prefix_and_query(self) -> None:
        """Path prefix, query as yarl encoded it, Host, our headers, no Accept-Encoding."""
        peer = Peer(answering(ok()))
        async with peer.serve() as port:
            wire = WireExchange(f"http://127.0.0.1:{port}/api/v1/", max_connections=1, timeout=5)
            try:
                params = {"type": "model inference", "x": "a/b:c@d?e&f=g+h"}
                await wire.send("GET", "/jobs", params, None, headers())
                await wire.send(
                    "POST", "/model-inference/run", None, b'{"k": "\xc3\xa9"}', headers()
                )
            finally:
                await wire.aclose()
        assert peer.heads[0].decode() == (
            "GET /api/v1/jobs?type=model+inference&x=a/b:c@d?e%26f%3Dg%2Bh HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Accept: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\n\r\n"
        )
        assert peer.requests[1][2]["content-length"] == "11"
        assert peer.requests[1][3] == b'{"k": "\xc3\xa9"}'
        assert all(b"accept-encoding" not in head.lower() for head in peer.heads)

    async def test_a_line_break_in_a_header_sends_nothing(self) -> None:
        """A header value with a line break is refused before connecting, key not shown."""
        async with exchange_on(answering(ok())) as (peer, wire):
            bad = MaskedHeaders({"Authorization": f"Bearer {KEY}\r\nX-Injected: 1"})
            with pytest.raises(WireRequestError) as info:
                await wire.send("GET", "/jobs", None, None, bad)
        assert KEY not in str(info.value)
        assert peer.connections == 0

    async def test_connection_refused_is_surely_not_sent(self) -> None:
        """A refused connection raises WireConnectError, which says nothing was sent."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        wire = WireExchange(f"http://127.0.0.1:{port}", max_connections=1, timeout=5)
        with pytest.raises(WireConnectError) as info:
            await get(wire)
        assert info.value.surely_not_sent and info.value.retryable
        await wire.aclose()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
class TestTls:
    """https: TLS with SNI against a local server; an untrusted certificate is not retried."""

    async def test_https_round_trip_and_untrusted_certificate(self, tmp_path: Path) -> None:
        """With its certificate trusted the answer arrives; with the default store it fails."""
        cert, key = make_certificate(tmp_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        peer = Peer(answering(ok()))
        async with peer.serve(server_context) as port:
            base = f"https://localhost:{port}"
            wire = WireExchange(base, max_connections=2, timeout=5)
            wire._ssl = ssl.create_default_context(cafile=str(cert))
            try:
                for _ in range(3):
                    assert (await get(wire)).content == JOB
            finally:
                await wire.aclose()
            untrusted = WireExchange(base, max_connections=2, timeout=5)
            with pytest.raises(WireCertificateError) as info:
                await get(untrusted)
            await untrusted.aclose()
            assert not info.value.retryable and info.value.surely_not_sent
            async with Client(KEY, base, clock=FakeClock(), max_retries=3) as client:
                with pytest.raises(APIConnectionError, match="certificate"):
                    await client.get_job("job-1")
            assert client.stats.requests == 1
        assert (len(peer.requests), peer.connections) == (3, 1)


class Label(BaseModel):
    """The output of the end-to-end test."""

    label: str
    score: float


class TestResetMidAnswerEndToEnd:
    """Through a proxy that cuts the first POST's answer: reconciled, nothing paid twice."""

    def test_reset_mid_post_answer_reconciles_without_duplicates(self, sandbox: Sandbox) -> None:
        """The job is created, its answer is cut mid-body; infer finds it, 0 duplicates."""
        proxy = CuttingProxy(sandbox.base_url)
        with proxy.running() as base:
            out = pd.DataFrame({"text": [f"row {i}" for i in range(6)]}).narrative.infer(
                "Text: {text}",
                output=Label,
                progress=False,
                concurrency=2,
                api_key=sandbox.api_key,
                base_url=base,
                data_plane_id=sandbox.data_plane_id,
            )
        assert proxy.cut == 1
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 6
        assert sandbox.stats.duplicates == 0
        assert out.attrs["narrative"]["reconciled_jobs"] == 1


class CuttingProxy:
    """A TCP proxy in front of the sandbox that resets the connection in the middle of the
    first answer to a POST (after the job was created)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.cut = 0
        self.tasks: list[asyncio.Task[Any]] = []

    @contextlib.contextmanager
    def running(self) -> Any:
        import threading

        loop = asyncio.new_event_loop()
        ready: list[int] = []
        started = threading.Event()
        stop = asyncio.Event()

        async def main() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            ready.append(server.sockets[0].getsockname()[1])
            started.set()
            await stop.wait()
            server.close()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await server.wait_closed()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        started.wait(10)
        try:
            yield f"http://127.0.0.1:{ready[0]}"
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        peer = Peer(answering())
        try:
            while True:
                request = await peer.read_request(reader)
                if request is None:
                    return
                method, _ = request
                body = peer.requests[-1][3]
                up_writer.write(peer.heads[-1] + body)
                await up_writer.drain()
                head = await up_reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                answer = head + await up_reader.readexactly(length)
                if method == "POST" and self.cut == 0:
                    self.cut += 1
                    writer.write(answer[: len(head) + length // 2])
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.transport.abort()
            up_writer.transport.abort()


_ = npd  # the accessor is registered by importing the package
