"""One HTTP exchange, and nothing else: the small interface between the client's rules and the wire.

:class:`~narrative_pandas._client.Client` holds every rule (retries, the 429 gate, the mapping of
answers onto exceptions, key masking, deadlines); an :class:`Exchange` only sends one request and
reads its whole answer into an :class:`Answer`. Two exist:

- :class:`~narrative_pandas._wire.WireExchange`, the default: a small HTTP/1.1 client of our
  own on ``asyncio.Protocol`` (aiohttp's machinery, and httpx's objects before it, were the
  largest costs of the client's CPU per request).
- :class:`HttpxExchange`: a user's ``transport=`` (an httpx transport) or ``http_client=`` (a
  whole ``httpx.AsyncClient``) keep working through httpx, as before.

Both raise their own exceptions (``_wire.WireError`` or httpx's); the client classifies both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import httpx

__all__ = [
    "Answer",
    "EncodedBody",
    "Exchange",
    "HttpxExchange",
    "MaskedHeaders",
]

#: Seconds an idle keep-alive connection is kept (httpx's default, so both paths pool alike).
KEEPALIVE_EXPIRY_S = 5.0
#: Headers that describe the bytes on the wire, not the (already decoded) body we hold.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class EncodedBody:
    """The UTF-8 JSON of a ``POST /model-inference/run`` body, ready to send (``_body``)."""

    content: bytes
    data_plane_id: str


class MaskedHeaders(dict[str, str]):
    """Request headers whose repr never shows ``Authorization`` (it holds the key)."""

    def __repr__(self) -> str:
        shown = {k: ("[secure]" if k.lower() == "authorization" else v) for k, v in self.items()}
        return f"MaskedHeaders({shown!r})"

    __str__ = __repr__


@dataclass(slots=True)
class Answer:
    """A whole HTTP answer: status, headers (case-insensitive lookups), the decoded body."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    reason: str = ""
    response: httpx.Response | None = None

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def to_httpx(self) -> httpx.Response:
        """The answer as an ``httpx.Response`` (for the error path: charset, error bodies)."""
        if self.response is not None:
            return self.response
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _WIRE_HEADERS]
        extensions = {"reason_phrase": self.reason.encode("latin-1", "replace")}
        return httpx.Response(
            self.status, headers=headers, content=self.content, extensions=extensions
        )


_U = TypeVar("_U")


class _Urls(Generic[_U]):
    """The parsed URL of each path, parsed once (job paths are not kept: the memo stays small)."""

    def __init__(self, base_url: str, parse: Callable[[str], _U]) -> None:
        self._base_url = base_url
        self._parse = parse
        self._urls: dict[str, _U] = {}

    def __call__(self, path: str) -> _U:
        url = self._urls.get(path)
        if url is None:
            url = self._parse(self._base_url + path)
            if not path.startswith("/jobs/"):
                self._urls[path] = url
        return url


class Exchange(Protocol):
    """Sends one request and reads its whole answer; the caller bounds it with a deadline."""

    async def send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: MaskedHeaders,
    ) -> Answer: ...

    async def aclose(self) -> None: ...


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: the Narrative API is authenticated by header only."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class HttpxExchange:
    """Through httpx: a user's ``transport=``, or a user's whole ``http_client=`` as given.

    With a transport, the request goes straight to it: redirects, auth flows, cookies and event
    hooks are features this API does not use, and skipping ``AsyncClient.send`` saves a good
    part of the per-request CPU. A user's ``http_client`` is used as given (and not closed).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = _Urls(base_url, httpx.URL)
        self._timeout: dict[str, Any] = httpx.Timeout(timeout).as_dict()
        self._transport = transport if http_client is None else None
        self.owns_client = http_client is None
        if http_client is None:
            http_client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout))
            # The API sets no cookies, and httpx's per-response cookie extraction (a urllib
            # request object each time) is about a tenth of the client's CPU per request.
            http_client._cookies = _NoCookies()
        self.http = http_client

    async def send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: MaskedHeaders,
    ) -> Answer:
        url = self._url(path)
        if self._transport is None:
            response = await self.http.request(
                method, url, params=params or None, content=body, headers=_httpx_headers(headers)
            )
        else:
            request = httpx.Request(
                method,
                url.copy_merge_params(params) if params else url,
                headers=_httpx_headers(headers),
                content=body,
                extensions={"timeout": self._timeout},
            )
            response = await self._transport.handle_async_request(request)
            response.request = request
            try:
                await response.aread()
            finally:
                await response.aclose()
        return Answer(
            response.status_code,
            response.headers,
            response.content,
            response.reason_phrase,
            response,
        )

    async def aclose(self) -> None:
        if self.owns_client:
            await self.http.aclose()


def _httpx_headers(headers: MaskedHeaders) -> httpx.Headers:
    """httpx's headers (their repr masks ``Authorization`` too)."""
    return httpx.Headers(headers)
