"""A small HTTP/1.1 server for the sandbox's ASGI app: one asyncio protocol per connection.

Why not uvicorn's: its pure-Python HTTP layer (h11) and two socket writes per answer cost
about as much CPU as the sandbox's own work per request, and a burst of hundreds of POSTs (a
wave of jobs ending together) queues on the server's single core. This one parses what loopback
clients send (a request line, headers, a ``Content-Length`` or chunked body; keep-alive and
pipelining), and writes an answer's head and body in one write. It is no general web server:
it serves 127.0.0.1 for tests, notebooks and benchmarks.

What the sandbox needs of a server is kept: each open connection's transport is registered by
peer address (``outage(status=None)`` resets the very connection a request came on), streamed
answers (``listing_drip``) go out chunked as they are produced, and a client that hangs up is
told to the app as ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast
from urllib.parse import unquote

__all__ = ["HTTPServer"]

logger = logging.getLogger("narrative_pandas")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

#: Largest request head (request line and headers) accepted.
MAX_HEAD_BYTES = 64 * 1024
#: Largest request body accepted.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Idle keep-alive connections are closed after this many seconds.
KEEP_ALIVE_S = 30.0
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_REASONS = {
    100: b"Continue", 200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 422: b"Unprocessable Content", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}  # fmt: skip


class _BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class _DateHeader:
    """The ``Date`` header line, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


class HTTPServer:
    """Serves ``app`` on a listening socket until :meth:`close` (``should_exit`` also works,
    as with uvicorn's server)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        connections: dict[tuple[Any, ...], asyncio.Transport] | None = None,
        keep_alive: float = KEEP_ALIVE_S,
    ) -> None:
        self.app = app
        self.connections = connections if connections is not None else {}
        self.keep_alive = keep_alive
        self.started = False
        self.should_exit = False
        self.date = _DateHeader()
        self._open: set[_Connection] = set()

    async def serve(self, sock: Any) -> None:
        """Accept connections on ``sock`` until asked to stop; then close every connection."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), sock=sock)
        self.started = True
        try:
            while not self.should_exit:
                await asyncio.sleep(0.05)
                self._close_idle(loop.time())
        finally:
            server.close()
            for connection in list(self._open):
                connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
            tasks = [c.task for c in self._open if c.task is not None and not c.task.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)
            for _ in range(100):  # until every connection saw itself closed
                if not self._open:
                    break
                for connection in list(self._open):
                    connection.close()
                await asyncio.sleep(0.01)

    def close(self) -> None:
        self.should_exit = True

    def _close_idle(self, now: float) -> None:
        for connection in list(self._open):
            if connection.task is None and now - connection.idle_since > self.keep_alive:
                connection.close()

    # --- for the connections ----------------------------------------------------------------
    def opened(self, connection: _Connection) -> None:
        self._open.add(connection)
        if connection.peer is not None:
            self.connections[connection.peer] = connection.transport

    def lost(self, connection: _Connection) -> None:
        self._open.discard(connection)
        if connection.peer is not None and self.connections.get(connection.peer) is (
            connection.transport
        ):
            del self.connections[connection.peer]


class _Connection(asyncio.Protocol):
    """One client connection: requests in order, one at a time (pipelined ones wait)."""

    __slots__ = (
        "_disconnect",
        "_loop",
        "buffer",
        "disconnected",
        "idle_since",
        "local",
        "peer",
        "server",
        "task",
        "transport",
    )  # fmt: skip

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer: tuple[Any, ...] | None = None
        self.local: tuple[Any, ...] | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.disconnected = False
        self._loop = asyncio.get_running_loop()
        self.idle_since = self._loop.time()
        self._disconnect: asyncio.Future[None] = self._loop.create_future()

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.peer = tuple(peer[:2]) if peer else None
        self.local = tuple(local[:2]) if local else None
        self.server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disconnected = True
        if not self._disconnect.done():
            self._disconnect.set_result(None)
        self.server.lost(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self._next_request()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def close(self) -> None:
        if not self.disconnected:
            self.transport.close()

    # --- requests ------------------------------------------------------------------------------
    def _next_request(self) -> None:
        """Start the app on the next complete request in the buffer, if there is one."""
        try:
            parsed = self._parse()
        except _BadRequest as exc:
            self._refuse(exc.status, str(exc))
            return
        if parsed is None:
            return
        scope, body, keep_alive = parsed
        self.task = self._loop.create_task(self._run(scope, body, keep_alive))

    def _parse(self) -> tuple[Scope, bytes, bool] | None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise _BadRequest(431, "request head too large")
            return None
        lines = bytes(buffer[:end]).split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise _BadRequest(400, "malformed request line") from None
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(400, f"unsupported protocol {version!r}")
        headers: list[tuple[bytes, bytes]] = []
        length = 0
        chunked = False
        keep_alive = version == "HTTP/1.1"
        expect_continue = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            name = name.lower()
            value = value.strip()
            headers.append((name, value))
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise _BadRequest(400, "malformed Content-Length") from None
                if length < 0 or length > MAX_BODY_BYTES:
                    raise _BadRequest(413, "request body too large")
            elif name == b"transfer-encoding":
                if value.lower() != b"chunked":
                    raise _BadRequest(501, "only chunked transfer coding is supported")
                chunked = True
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        start = end + 4
        if chunked:
            decoded = _dechunk(buffer, start)
            if decoded is None:
                if expect_continue and len(buffer) == start:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return None
            body, used = decoded
        else:
            if len(buffer) < start + length:
                if expect_continue and len(buffer) == start:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return None
            body = bytes(buffer[start : start + length])
            used = start + length
        del buffer[:used]
        path, _, query = target.partition("?")
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version[5:],
            "method": method,
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": self.peer,
            "server": self.local,
        }
        return scope, body, keep_alive

    async def _run(self, scope: Scope, body: bytes, keep_alive: bool) -> None:
        """Run the app on one request and write its answer; then the next request."""
        received = False
        started = False
        finished = False
        chunked = False
        close_after = not keep_alive
        head = b""
        transport = self.transport

        async def receive() -> Message:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.shield(self._disconnect)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal started, finished, chunked, close_after, head
            kind = message["type"]
            if kind == "http.response.start":
                if started:
                    raise RuntimeError("the answer was already started")
                started = True
                status = int(message["status"])
                lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
                has_length = False
                for name, value in message.get("headers", ()):
                    lowered = name.lower()
                    if lowered == b"content-length":
                        has_length = True
                    elif lowered == b"connection" and value.lower() == b"close":
                        close_after = True
                        continue
                    lines.append(name + b": " + value + b"\r\n")
                if not has_length:
                    chunked = True
                    lines.append(b"transfer-encoding: chunked\r\n")
                if close_after:
                    lines.append(b"connection: close\r\n")
                lines.append(self.server.date.line())
                lines.append(b"\r\n")
                head = b"".join(lines)
                return
            if kind != "http.response.body":
                return
            if not started or finished:
                raise RuntimeError("an answer's body came before its start or after its end")
            content = message.get("body", b"")
            more = message.get("more_body", False)
            if self.disconnected:
                return
            if chunked:
                out = head + (b"%x\r\n%s\r\n" % (len(content), content) if content else b"")
                if not more:
                    out += b"0\r\n\r\n"
            else:
                out = head + content
            head = b""
            if out:
                transport.write(out)
            if not more:
                finished = True

        try:
            await self.server.app(scope, receive, send)
        except asyncio.CancelledError:
            raise
        except Exception:
            if not started and not self.disconnected:
                logger.exception("narrative sandbox: the app failed on %s", scope["path"])
                transport.write(_plain(500, "Internal Server Error", close=True))
            self.close()
            return
        if not finished and not self.disconnected:
            if not started:
                transport.write(_plain(500, "the app sent no answer", close=True))
            self.close()
            return
        self.task = None
        self.idle_since = self._loop.time()
        if close_after:
            self.close()
        elif self.buffer and not self.disconnected:
            self._next_request()

    def _refuse(self, status: int, detail: str) -> None:
        self.transport.write(_plain(status, detail, close=True))
        self.close()


def _plain(status: int, detail: str, *, close: bool) -> bytes:
    body = detail.encode("utf-8")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"%s\r\n%s"
    ) % (
        status,
        _REASONS.get(status, b"Error"),
        len(body),
        b"connection: close\r\n" if close else b"",
        body,
    )


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``start``: ``(body, bytes used)``, or None while incomplete."""
    parts: list[bytes] = []
    at = start
    size_total = 0
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = bytes(buffer[at:line_end]).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadRequest(400, "malformed chunk size") from None
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", at - 2)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        size_total += size
        if size_total > MAX_BODY_BYTES:
            raise _BadRequest(413, "request body too large")
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2
