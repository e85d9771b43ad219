"""The default transport: a small, strict HTTP/1.1 client on ``asyncio.Protocol``.

aiohttp's request/response machinery was the largest single cost of the client's CPU per row
(0.42 ms per POST here against 0.20 ms for a bare protocol). The API needs little of it: one
host, JSON bodies with a Content-Length, no cookies, redirects or proxies. So :class:`WireExchange`
writes each request's bytes itself and parses the answer in ``data_received``:

- a pool of keep-alive connections (at most ``max_connections``; idle ones expire after
  ``KEEPALIVE_EXPIRY_S``, and a POST only reuses one idle for under ``POST_REUSE_IDLE_S``, so a
  server closing an idle connection rarely races a POST); a connection the server closed,
  half-closed, or sent bytes on unasked is never reused;
- a reused connection that fails before any byte of the answer is retried once on a fresh one
  for a GET; for a POST it raises :class:`WireDisconnected` (the client then reconciles);
- answers framed by Content-Length, chunked transfer coding (extensions and trailers), or the
  end of the connection; 1xx answers skipped, 204/304 bodiless, ``Connection: close`` honoured,
  headers bounded in size; anything malformed raises :class:`WireProtocolError`.

Every failure is a :class:`WireError` whose class says what the client needs to know: whether
the request surely never left (``surely_not_sent``), whether it was a timeout, and whether a
retry can help. No message ever holds request bytes (the key travels in them).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import zlib
from collections.abc import Iterator, Mapping
from typing import cast
from urllib.parse import quote, quote_plus, urlencode, urlsplit

from ._transport import KEEPALIVE_EXPIRY_S, Answer, MaskedHeaders, _Urls

__all__ = [
    "MAX_HEAD_BYTES",
    "POST_REUSE_IDLE_S",
    "WireCertificateError",
    "WireConnectError",
    "WireConnectTimeout",
    "WireDisconnected",
    "WireError",
    "WireExchange",
    "WireProtocolError",
    "WireReadTimeout",
    "WireRequestError",
]

#: Largest status line + header block (or chunk trailer section) accepted, in bytes.
MAX_HEAD_BYTES = 64 * 1024
#: Longest chunk-size line (size and extensions) accepted, in bytes.
MAX_CHUNK_LINE = 4096
#: A POST reuses a connection only if it has been idle for less than this: an idle connection
#: the server is about to close would leave the POST's outcome unknown.
POST_REUSE_IDLE_S = 1.0
#: Methods retried once on a fresh connection when a reused one fails before any answer byte.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
#: Characters kept as they are in a request path (the rest is percent-encoded, as yarl does).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"

_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([1-9][0-9]{2})(?: ([^\r\n\x00]*))?")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEADER_LINE = re.compile(_TOKEN + r":[^\r\n\x00]*")
_HEADER_BLOCK = re.compile(rf"{_HEADER_LINE.pattern}(?:\r\n{_HEADER_LINE.pattern})*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_DIGITS = re.compile(r"[0-9]{1,18}")

# body framing of the answer being read
_HEAD, _LENGTH, _CHUNKED, _UNTIL_EOF = 0, 1, 2, 3


# --- errors ---------------------------------------------------------------------------------


class WireError(Exception):
    """A failure of the wire: the class says what the client may conclude from it."""

    #: True only when no byte of the request can have been written (connect, DNS, TLS).
    surely_not_sent = False
    is_timeout = False
    retryable = True


class WireConnectError(WireError):
    """No connection (refused, unreachable, DNS, TLS handshake): nothing was sent."""

    surely_not_sent = True


class WireConnectTimeout(WireConnectError):
    """Connecting took longer than the timeout: nothing was sent."""

    is_timeout = True


class WireCertificateError(WireConnectError):
    """The server's TLS certificate could not be verified: another try would fail the same."""

    retryable = False


class WireRequestError(WireError):
    """A request that cannot be sent as given (a line break in a header): nothing was sent."""

    surely_not_sent = True
    retryable = False


class WireDisconnected(WireError):
    """The connection closed or broke before the whole answer arrived."""

    def __init__(self, message: str, *, answer_started: bool = False) -> None:
        super().__init__(message)
        self.answer_started = answer_started


class WireReadTimeout(WireError):
    """No byte of the answer arrived for ``timeout`` seconds."""

    is_timeout = True


class WireProtocolError(WireError):
    """The answer broke HTTP/1.1 (status line, headers, framing, encoding)."""


# --- one connection -------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; reads one answer at a time into an :class:`Answer`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        #: False once the server closed, half-closed or misbehaved, or an exchange broke.
        self.reusable = True
        self.reused = False
        self.idle_since = 0.0
        #: Holds a slot of the pool for an exchange (not idle, not yet released).
        self.checked_out = True
        self._buf = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._got_bytes = False
        self._reset_answer()

    def _reset_answer(self) -> None:
        self._mode = _HEAD
        self._scanned = 0
        self._pos = 0
        self._remaining = 0
        self._status = 0
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._parts: list[bytes] = []

    # --- asyncio callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (a late 408, a pipelining server): never trust it again.
            self._close(abort=True)
            return
        self._got_bytes = True
        self._last_read = self.loop.time()
        self._buf += data
        try:
            answer = self._parse()
        except WireError as exc:
            self._fail(exc)
            return
        if answer is not None:
            self._finish(answer)

    def eof_received(self) -> bool:
        self.reusable = False
        self._on_end(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._on_end(exc)

    def _on_end(self, exc: Exception | None) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._mode == _UNTIL_EOF and exc is None:
            self._parts.append(bytes(self._buf[self._pos :]))
            try:
                answer = self._answer()
            except WireError as error:
                self._fail(error)
                return
            self._finish(answer)
            return
        if self._got_bytes:
            what = "the server closed the connection in the middle of the answer"
        else:
            what = "the server closed the connection before answering"
        if exc is not None:
            what += f" ({type(exc).__name__}: {exc})"
        self._fail(WireDisconnected(what, answer_started=self._got_bytes))

    # --- one exchange ---

    def send(self, data: bytes) -> asyncio.Future[Answer]:
        """Write one request; the future holds its whole answer."""
        assert self.transport is not None
        self._waiter = waiter = self.loop.create_future()
        self._got_bytes = False
        self._last_read = self.loop.time()
        self.transport.write(data)
        if self._timer is None:  # else the armed one re-arms itself from _last_read
            self._timer = self.loop.call_later(self.read_timeout, self._on_timer)
        return waiter

    def _on_timer(self) -> None:
        """The read timeout's check. One timer per connection outlives its exchanges (none is
        made and cancelled per request): it lapses when it finds no exchange under way."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        quiet = self.loop.time() - self._last_read
        if quiet < self.read_timeout:
            self._timer = self.loop.call_later(self.read_timeout - quiet, self._on_timer)
            return
        self._fail(WireReadTimeout(f"no byte of the answer for {self.read_timeout:g} s"))

    def _finish(self, answer: Answer) -> None:
        waiter = self._waiter
        self._waiter = None
        if self._pos < len(self._buf):  # bytes past the answer: not a server to keep talking to
            self.reusable = False
        self._buf.clear()
        self._reset_answer()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, exc: WireError) -> None:
        self._stop_timer()
        waiter = self._waiter
        self._waiter = None
        self._close(abort=True)
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self, *, abort: bool) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def close(self) -> None:
        """Close at once (an exchange broke or was cancelled, the pool is done with it)."""
        self._stop_timer()
        self._waiter = None
        self._close(abort=True)

    @property
    def alive(self) -> bool:
        return self.reusable and self.transport is not None and not self.transport.is_closing()

    # --- parsing ---

    def _parse(self) -> Answer | None:
        """Parse what has arrived; the whole answer once it is complete."""
        while True:
            mode = self._mode
            if mode == _HEAD:
                if not self._parse_head():
                    return None
                continue
            if mode == _LENGTH:
                end = self._pos + self._remaining
                if len(self._buf) < end:
                    return None
                self._parts.append(bytes(self._buf[self._pos : end]))
                self._pos = end
                return self._answer()
            if mode == _CHUNKED:
                return self._parse_chunks()
            return None  # _UNTIL_EOF: everything up to the end of the connection

    def _parse_head(self) -> bool:
        """Parse a status line and headers; skip 1xx answers; choose how the body is framed."""
        buf = self._buf
        end = _find_within(
            buf,
            b"\r\n\r\n",
            self._pos,
            MAX_HEAD_BYTES,
            f"answer headers larger than {MAX_HEAD_BYTES} bytes",
            scan_from=max(self._pos, self._scanned - 3),
        )
        if end < 0:
            self._scanned = len(buf)
            return False
        status_line, _, block = buf[self._pos : end].decode("latin-1").partition("\r\n")
        self._pos = self._scanned = end + 4
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise WireProtocolError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        minor, status = match.group(1), int(match.group(2))
        headers: dict[str, str] = {}
        if block:
            if _HEADER_BLOCK.fullmatch(block) is None:
                raise WireProtocolError(f"malformed header line: {_bad_line(block)[:80]!r}")
            for line in block.split("\r\n"):
                name, _, value = line.partition(":")
                name = name.lower()
                value = value.strip(" \t")
                if name in headers:
                    headers[name] += ", " + value
                else:
                    headers[name] = value
        if status < 200:
            if status == 101:
                raise WireProtocolError("the server switched protocols, which was not asked for")
            return True  # 100 Continue, 103 Early Hints...: the real answer follows
        self._status, self._reason, self._headers = status, match.group(3) or "", headers
        if minor == "0" or _has_token(headers.get("connection"), "close"):
            self.reusable = False
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in (204, 304):
            self._mode, self._remaining = _LENGTH, 0
        elif coding is not None:
            if coding.strip().lower() != "chunked":
                raise WireProtocolError(f"unsupported Transfer-Encoding {coding[:40]!r}")
            if length is not None:  # both framings given: read chunked, never reuse (RFC 9112)
                self.reusable = False
            self._mode = _CHUNKED
        elif length is not None:
            self._mode, self._remaining = _LENGTH, _content_length(length)
        else:
            self._mode = _UNTIL_EOF
            self.reusable = False
        return True

    def _parse_chunks(self) -> Answer | None:
        buf = self._buf
        while True:
            pos = self._pos
            if self._remaining < 0:  # the last chunk was read: the trailer section follows
                if len(buf) - pos >= 2 and buf[pos : pos + 2] == b"\r\n":
                    self._pos = pos + 2
                    return self._answer()
                end = _find_within(
                    buf, b"\r\n\r\n", pos, MAX_HEAD_BYTES, "chunked trailers too large"
                )
                if end < 0:
                    return None
                for line in buf[pos:end].decode("latin-1").split("\r\n"):
                    if _HEADER_LINE.fullmatch(line) is None:
                        raise WireProtocolError(f"malformed chunked trailer: {line[:80]!r}")
                self._pos = end + 4
                return self._answer()
            if self._remaining > 0:  # inside a chunk: its data, then CRLF
                end = pos + self._remaining
                if len(buf) < end + 2:
                    return None
                if buf[end : end + 2] != b"\r\n":
                    raise WireProtocolError("a chunk is not followed by CRLF")
                self._parts.append(bytes(buf[pos:end]))
                self._pos, self._remaining = end + 2, 0
                continue
            end = _find_within(buf, b"\r\n", pos, MAX_CHUNK_LINE, "chunk-size line too long")
            if end < 0:
                return None
            match = _CHUNK_SIZE.fullmatch(buf, pos, end)
            if match is None:
                line = buf[pos:end].decode("latin-1")
                raise WireProtocolError(f"malformed chunk-size line: {line[:80]!r}")
            size = int(match.group(1), 16)
            self._pos = end + 2
            self._remaining = size if size else -1

    def _answer(self) -> Answer:
        parts = self._parts
        content = parts[0] if len(parts) == 1 else b"".join(parts)
        headers = self._headers
        coding = headers.get("content-encoding")
        if coding is not None:
            content = _decode(content, coding)
        return Answer(self._status, _Headers(headers), content, self._reason)


def _find_within(
    buf: bytearray, sep: bytes, start: int, limit: int, too_long: str, scan_from: int = -1
) -> int:
    """Where ``sep`` is in ``buf`` after ``start`` (looked for from ``scan_from`` when given),
    or -1 while it may still arrive; WireProtocolError(``too_long``) once more than ``limit``
    bytes stand before it, or have arrived without it."""
    end = buf.find(sep, start if scan_from < 0 else scan_from)
    if (end if end >= 0 else len(buf)) - start > limit:
        raise WireProtocolError(too_long)
    return end


def _bad_line(block: str) -> str:
    """The first header line that is not ``name: value``."""
    return next((line for line in block.split("\r\n") if not _HEADER_LINE.fullmatch(line)), "")


def _has_token(value: str | None, token: str) -> bool:
    return value is not None and token in (part.strip().lower() for part in value.split(","))


def _content_length(value: str) -> int:
    """The length of ``Content-Length`` (repeated copies must agree)."""
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    values = {part.strip() for part in value.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise WireProtocolError(f"invalid Content-Length {value[:40]!r}")
    return int(values.pop())


def _decode(content: bytes, coding: str) -> bytes:
    """The body without its Content-Encoding (gzip or deflate, as a server may send unasked)."""
    for name in reversed([part.strip().lower() for part in coding.split(",")]):
        try:
            if name in ("gzip", "x-gzip"):
                content = zlib.decompress(content, 16 + zlib.MAX_WBITS)
            elif name == "deflate":
                try:
                    content = zlib.decompress(content)
                except zlib.error:  # raw deflate, without the zlib wrapper
                    content = zlib.decompress(content, -zlib.MAX_WBITS)
            elif name not in ("identity", ""):
                raise WireProtocolError(f"unsupported Content-Encoding {coding[:40]!r}")
        except zlib.error as exc:
            raise WireProtocolError(f"a {name} body that does not decode ({exc})") from None
    return content


class _Headers(Mapping[str, str]):
    """Answer headers: names lower-cased, repeated ones joined by ", ", any-case lookups."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"_Headers({self._items!r})"


# --- the pool and the exchange --------------------------------------------------------------


class WireExchange:
    """The default :class:`~narrative_pandas._transport.Exchange`: keep-alive HTTP/1.1 over a
    pool of at most ``max_connections`` connections to the one host of ``base_url``."""

    def __init__(self, base_url: str, *, max_connections: int, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = parts.scheme == "https"
        default_port = 443 if self._tls else 80
        self._host = _ascii_host(parts.hostname)
        self._port = parts.port or default_port
        shown = f"[{self._host}]" if ":" in self._host else self._host
        port = f":{self._port}" if self._port != default_port else ""
        self._host_line = f"Host: {shown}{port}\r\n"
        self._where = f"{shown}:{self._port}"
        self._target = _Urls(parts.path.rstrip("/"), _quote_path)
        self._max = max_connections
        self._timeout = timeout
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self.connections_opened = 0
        self.closed = False

    # --- requests ---

    def _request_bytes(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: MaskedHeaders,
    ) -> bytes:
        target = self._target(path)
        if params:
            target += "?" + urlencode(params, quote_via=quote_plus, safe="?/:@")
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_line]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        if head.count("\n") != len(lines) or head.count("\r") != len(lines):
            # Never name the header or show its value: it may be the key.
            raise WireRequestError(
                "a request header contains a line break; check the API key and headers for "
                "stray newlines"
            )
        data = head.encode("utf-8")
        return data + body if body else data

    async def send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: MaskedHeaders,
    ) -> Answer:
        data = self._request_bytes(method, path, params, body, headers)
        idempotent = method in _IDEMPOTENT
        conn = await self._checkout(POST_REUSE_IDLE_S if not idempotent else KEEPALIVE_EXPIRY_S)
        try:
            try:
                answer = await conn.send(data)
            except WireDisconnected as exc:
                # A kept-alive connection the server closed as we wrote: a GET goes again once
                # on a fresh connection; a POST may have arrived, so the client must reconcile.
                if not (conn.reused and idempotent and not exc.answer_started):
                    raise
                self._release(conn)
                conn = await self._checkout(0.0)
                answer = await conn.send(data)
        except BaseException:
            conn.close()  # never back into the pool mid-answer (errors, deadline, cancel)
            self._release(conn)
            raise
        self._release(conn)
        return answer

    # --- the pool ---

    async def _checkout(self, max_idle: float) -> _Connection:
        """A kept-alive connection idle for less than ``max_idle`` s, else a fresh one."""
        loop = asyncio.get_running_loop()
        idle = self._idle
        while True:
            if self.closed:
                raise RuntimeError("this client is closed; make a new one")
            now = loop.time()
            while idle:
                conn = idle[-1]  # the most recently used: the least likely to be closed
                if not conn.alive:
                    self._drop(idle.pop())
                elif now - conn.idle_since < max_idle:
                    idle.pop()
                    conn.reused = conn.checked_out = True
                    return conn
                else:
                    break
            if self._open < self._max:
                break
            if idle:  # make room: close the connection idle the longest
                self._drop(idle.popleft())
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake()
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if self._tls:
            context = self._ssl or self._make_ssl()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop, self._timeout),
                    self._host,
                    self._port,
                    ssl=context,
                    server_hostname=self._host if context is not None else None,
                ),
                self._timeout,
            )
        except asyncio.TimeoutError:
            raise WireConnectTimeout(
                f"connecting to {self._where} took longer than {self._timeout:g} s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise WireCertificateError(
                f"the TLS certificate of {self._where} could not be verified "
                f"({exc.verify_message or exc.reason})"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise WireConnectError(
                f"could not connect to {self._where} ({type(exc).__name__}: {exc})"
            ) from None
        self.connections_opened += 1
        return conn

    def _make_ssl(self) -> ssl.SSLContext:
        import httpx  # the same trust store as httpx's (certifi), made once per client

        self._ssl = httpx.create_ssl_context()
        return self._ssl

    def _release(self, conn: _Connection) -> None:
        """Back to the pool if it can carry another exchange; closed otherwise."""
        if not conn.checked_out:
            return
        conn.checked_out = False
        if conn.alive and not self.closed:
            conn.idle_since = conn.loop.time()  # not get_running_loop(): a getpid() each
            self._idle.append(conn)
            if self._reaper is None:
                self._schedule_reaper(KEEPALIVE_EXPIRY_S)
        else:  # idle connections keep their slot (counted in _open) until dropped
            conn.close()
            self._open -= 1
        self._wake()

    def _drop(self, conn: _Connection) -> None:
        """Close an idle connection and free its slot."""
        conn.close()
        self._open -= 1

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _schedule_reaper(self, delay: float) -> None:
        self._reaper = asyncio.get_running_loop().call_later(delay, self._reap)

    def _reap(self) -> None:
        """Close idle connections past ``KEEPALIVE_EXPIRY_S`` (or closed by the server)."""
        self._reaper = None
        idle = self._idle
        now = asyncio.get_running_loop().time()
        for conn in [c for c in idle if not c.alive or now - c.idle_since >= KEEPALIVE_EXPIRY_S]:
            idle.remove(conn)
            self._drop(conn)
        if idle:
            oldest = min(conn.idle_since for conn in idle)
            self._schedule_reaper(max(0.05, oldest + KEEPALIVE_EXPIRY_S - now))
        self._wake()

    @property
    def idle_connections(self) -> int:
        """Connections kept alive, waiting for the next request."""
        return len(self._idle)

    async def aclose(self) -> None:
        self.closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        while self._idle:
            self._drop(self._idle.pop())
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def _quote_path(path: str) -> str:
    """The request target of a path (percent-encoded as yarl did for the aiohttp path)."""
    return quote(path, safe=_PATH_SAFE)


def _ascii_host(host: str) -> str:
    """The host as sent in ``Host`` and SNI: IDNA for a name that is not ASCII."""
    if host.isascii():
        return host
    return host.encode("idna").decode("ascii")
