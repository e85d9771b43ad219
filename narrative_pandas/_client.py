"""The async HTTP client of the Narrative REST API: submit jobs, read them, list them.

Everything that talks to the network goes through :class:`Client`, so the rules that keep a run
safe and cheap live in one place: the retry policy (named constants and small pure functions
below), the mapping of error answers onto the exception tree, one client-wide 429 gate, a bound on
concurrent connections, and the rule that a POST is only repeated when the job was surely not
created (there is no idempotency key). All waiting goes through the :mod:`._clock` seam.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import importlib.metadata
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pydantic_core
from pydantic import BaseModel, ValidationError

from ._clock import Clock, system_clock
from ._config import ApiKey, Settings, resolve_settings
from ._deadlines import Deadlines
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    APIUnknownOutcomeError,
    ConfigurationError,
    JobTimeoutError,
)
from ._http_errors import make_status_error, mask_secret
from ._listing_json import brief_page
from ._models import Job, JobsPage, ModelInferenceRunRequest
from ._request_slots import RequestSlots
from ._transport import (
    Answer,
    EncodedBody,
    Exchange,
    HttpxExchange,
    MaskedHeaders,
)
from ._wire import WireError, WireExchange

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_TIMEOUT",
    "Client",
    "ClientStats",
    "backoff_delay",
    "make_status_error",
    "parse_retry_after",
]

logger = logging.getLogger("narrative_pandas")

try:
    USER_AGENT = f"narrative-pandas/{importlib.metadata.version('narrative-pandas')}"
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    USER_AGENT = "narrative-pandas"

ROUTE_RUN = "/model-inference/run"
ROUTE_JOB = "/jobs/{id}"
ROUTE_JOBS = "/jobs"

# --- retry policy ---------------------------------------------------------------------------

DEFAULT_TIMEOUT = 30.0
"""Seconds for connecting, reading and writing one request."""
DEADLINE_FACTOR = 2.0
"""One request's overall deadline (connect + whole body) is this many times ``timeout``."""
DEFAULT_MAX_RETRIES = 5
"""Retries after the first attempt (the reference advises about 5)."""
INITIAL_RETRY_DELAY = 1.0
"""Backoff before retry n is ``INITIAL_RETRY_DELAY * 2**n`` plus jitter ..."""
MAX_RETRY_JITTER = 1.0
"""... plus up to this many seconds of random jitter ..."""
MAX_RETRY_DELAY = 30.0
"""... capped at this many seconds."""
MAX_RETRY_AFTER = 600.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

RETRYABLE_GET_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})
"""Statuses after which a read is repeated."""
RETRYABLE_POST_STATUSES: frozenset[int] = frozenset({429, 502, 503})
"""Statuses after which the job was surely not created, so a POST may be repeated."""

# --- polling --------------------------------------------------------------------------------

DEFAULT_POLL_INTERVAL = 1.0
"""First wait between two polls of one job, in seconds."""
POLL_BACKOFF_FACTOR = 1.5
"""The wait grows by this factor while a job's state does not change ..."""
MAX_POLL_INTERVAL = 30.0
"""... up to this many seconds."""

_MISSING = object()
_M = TypeVar("_M", bound=BaseModel)


def backoff_delay(retry: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (0-based) when the server named no wait."""
    base = INITIAL_RETRY_DELAY * 2.0 ** min(retry, 32)
    return min(MAX_RETRY_DELAY, base + rng.uniform(0.0, MAX_RETRY_JITTER))


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta seconds or an HTTP date.

    ``now`` is the current time as epoch seconds (the response's ``Date`` header, ideally), used
    for the date form. Returns None when the value is absent or unreadable.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _response_time(answer: Answer) -> float:
    """The server's idea of now (its ``Date`` header), else the local wall clock."""
    date = answer.headers.get("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
    return time.time()


# --- transport errors -----------------------------------------------------------------------


def _aiohttp_cause(exc: BaseException) -> BaseException | None:
    """The aiohttp exception behind an error of a user's httpx-over-aiohttp transport, if any.

    httpx_aiohttp maps ``ClientConnectionError`` (including "server disconnected" after the
    request was written) onto ``httpx.ConnectTimeout``, so its httpx class alone is not trusted.
    aiohttp is looked up, never imported: the default transport does not use it.
    """
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, aiohttp.ClientError):
            found: BaseException = seen
            return found
        seen = seen.__cause__
    return None


def _is_transport_error(exc: BaseException) -> bool:
    """An error of the wire, of httpx, a deadline, or aiohttp's raised raw by a user's transport."""
    if isinstance(exc, (WireError, httpx.RequestError, asyncio.TimeoutError)):
        return True
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


def surely_not_sent(exc: BaseException) -> bool:
    """True when a transport error happened before the request reached the server."""
    if isinstance(exc, WireError):
        return exc.surely_not_sent
    cause = _aiohttp_cause(exc)
    if cause is not None:
        aiohttp = sys.modules["aiohttp"]
        return isinstance(cause, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, WireError):
        return exc.is_timeout
    cause = _aiohttp_cause(exc)
    if cause is not None:
        return isinstance(cause, asyncio.TimeoutError)
    return isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError))


def _is_retryable_transport_error(exc: BaseException) -> bool:
    """Connection failures and timeouts are worth another try; a malformed request is not."""
    if isinstance(exc, WireError):
        return exc.retryable
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return False
    cause = _aiohttp_cause(exc)
    if cause is not None:
        aiohttp = sys.modules["aiohttp"]
        return isinstance(cause, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))
    return isinstance(exc, (httpx.TransportError, asyncio.TimeoutError))


# --- the client -----------------------------------------------------------------------------


#: Requests sent on behalf of the current run (set by the run; tasks it spawns share the counter),
#: so runs that share one client still report their own HTTP requests.
run_requests: contextvars.ContextVar[Counter[tuple[str, str]] | None] = contextvars.ContextVar(
    "narrative_pandas_run_requests", default=None
)


@dataclass
class ClientStats:
    """What a client sent: requests (retries included), per route, retries and 429s received."""

    requests: int = 0
    by_route: Counter[tuple[str, str]] = field(default_factory=Counter)
    retries: int = 0
    rate_limited: int = 0


class Client:
    """Async client of the Narrative REST API (its own HTTP/1.1 client by default, or httpx).

    Parameters
    ----------
    api_key, base_url, data_plane_id
        Connection settings; missing ones come from the environment, then ``configure()``.
    timeout
        Seconds for connecting, reading and writing one request.
    deadline
        Seconds one request may take in all, connect to last byte (default twice ``timeout``):
        a server trickling bytes cannot hold a request longer than this.
    max_retries
        Retries after the first attempt for retryable failures.
    max_connections
        Most requests in flight at once (also the connection pool size).
    transport
        An httpx transport instead of the default (``_wire``'s HTTP/1.1 client): requests
        then go through httpx (tests pass ``httpx.MockTransport``).
    http_client
        Replaces the whole httpx client; it is not closed by :meth:`aclose`.
    clock
        Where time is read and waits happen (tests pass ``FakeClock``).
    allow_insecure_http
        Allow plain ``http://`` to a host that is not loopback.
    rng
        Source of retry jitter (seed it for reproducible waits).

    Examples
    --------
    >>> async with Client() as client:  # doctest: +SKIP
    ...     job = await client.run_model_inference(request)
    ...     job = await client.wait_for_job(job.job_id)
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        data_plane_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        allow_insecure_http: bool | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}.")
        if deadline is not None and not deadline > 0:
            raise ConfigurationError(f"deadline must be > 0 seconds, got {deadline!r}.")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {max_retries!r}.")
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be >= 1, got {max_connections!r}.")
        self.settings: Settings = resolve_settings(
            api_key, base_url, data_plane_id, allow_insecure_http=allow_insecure_http
        )
        if http_client is None:
            self.settings.require_key()
        self.stats = ClientStats()
        self.max_retries = max_retries
        self.max_connections = max_connections
        self._clock: Clock = clock if clock is not None else system_clock
        self._rng = rng if rng is not None else random.Random()
        self._rate_limited_until = 0.0
        self._slots = RequestSlots(max_connections)  # reads before writes (_request_slots)
        #: Overall deadline of one exchange (connect + whole body): a server that trickles
        #: bytes cannot hold a request longer than this (a read timeout restarts per byte).
        self._deadline = deadline if deadline is not None else DEADLINE_FACTOR * timeout
        self._deadlines = Deadlines(self._deadline)  # one timer for all requests, not one each
        base_url = self.settings.base_url
        self._exchange: Exchange
        if http_client is None and transport is None:
            self._exchange = WireExchange(
                base_url, max_connections=max_connections, timeout=timeout
            )
        else:
            httpx_exchange = HttpxExchange(
                base_url, timeout=timeout, transport=transport, http_client=http_client
            )
            self._http = httpx_exchange.http
            self._exchange = httpx_exchange

    # --- lifecycle ---

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections this client opened (not a caller's ``http_client``)."""
        await self._exchange.aclose()

    def __repr__(self) -> str:
        key = "'***'" if self.settings.api_key is not None else "None"
        return (
            f"Client(base_url={self.settings.base_url!r}, api_key={key}, "
            f"data_plane_id={self.settings.data_plane_id!r})"
        )

    @property
    def data_plane_id(self) -> str | None:
        """The default data plane of this client's settings."""
        return self.settings.data_plane_id

    @property
    def rate_limited_until(self) -> float:
        """Clock time before which no request is sent after a 429 (0 if none)."""
        return self._rate_limited_until

    def hold_until(self, when: float) -> None:
        """Send no request before clock time ``when``, as after a 429 this client saw itself.

        For a rate limit met elsewhere under the same key (another process of a Dask cluster):
        the gate only ever moves later, and waiting requests wake when it opens.
        """
        self._rate_limited_until = max(self._rate_limited_until, float(when))

    # --- endpoints ---

    async def run_model_inference(
        self, request: ModelInferenceRunRequest | Mapping[str, Any] | EncodedBody
    ) -> Job:
        """Submit one inference job (``POST /model-inference/run``); the job is ``pending``.

        A mapping is sent as given (``None`` values at its top level and in
        ``inference_config`` left out), so shapes the model does not know still pass; a missing
        ``data_plane_id`` is taken from the settings. An :class:`EncodedBody` (what a run sends,
        see ``_body``) is sent as its bytes.

        Raises APIUnknownOutcomeError when the job may or may not have been created (500/504,
        a timeout or a broken connection after sending): reconcile through :meth:`list_jobs`.

        Examples
        --------
        >>> async with Client() as client:                                   # doctest: +SKIP
        ...     job = await client.run_model_inference({
        ...         "model": "anthropic.claude-haiku-4.5",
        ...         "messages": [{"role": "user", "text": "Say hi"}],
        ...         "inference_config": {"output_format_schema": {
        ...             "type": "object", "properties": {"greeting": {"type": "string"}}}},
        ...     })
        >>> job.state                                                        # doctest: +SKIP
        'pending'
        """
        if isinstance(request, EncodedBody):  # a run's request, encoded once (``_body``)
            data_plane_id = request.data_plane_id
            job_id = await self.create_job(request)
        else:
            body = _request_body(request)
            if not body.get("data_plane_id"):
                body["data_plane_id"] = self.settings.require_data_plane()
            data_plane_id = body["data_plane_id"]
            data = await self._request("POST", ROUTE_RUN, ROUTE_RUN, json_body=body)
            job_id = _created_job_id(data)
        # Validated, not model_construct(): that calls inspect.signature() on the default
        # factory of ``failures`` each time (a class and ~25 objects of cyclic garbage per POST).
        return Job(
            job_id=job_id,
            state="pending",
            data_plane_id=data_plane_id,
            type="model_inference",
        )

    async def create_job(self, body: EncodedBody) -> str:
        """:meth:`run_model_inference` of an encoded body, answering only the new job's id
        (what a run needs: no :class:`Job` object per POST). Raises as it does."""
        data = await self._request("POST", ROUTE_RUN, ROUTE_RUN, content=body.content)
        return _created_job_id(data)

    async def get_job(self, job_id: str) -> Job:
        """One job (``GET /jobs/{job_id}``); NotFoundError when it is unknown or expired.

        Examples
        --------
        >>> job = await client.get_job(job.job_id)                           # doctest: +SKIP
        >>> job.state, job.is_terminal                                       # doctest: +SKIP
        ('running', False)
        """
        if not job_id:
            raise ValueError("job_id must be a non-empty string.")
        path = f"/jobs/{quote(str(job_id), safe='')}"
        data = await self._request("GET", ROUTE_JOB, path)
        if isinstance(data, Mapping) and "job_id" not in data:
            data = {**data, "job_id": data.get("id") or job_id}
        return self._parse(Job, data, "GET", path)

    async def list_jobs(
        self,
        *,
        type: str | None = None,
        state: str | None = None,
        data_plane_id: str | None = None,
        per_page: int | None = None,
        offset: int | None = None,
        order_by: str | None = None,
    ) -> JobsPage:
        """One page of ``GET /jobs``; only the parameters given are sent.

        Examples
        --------
        >>> page = await client.list_jobs(type="model_inference",            # doctest: +SKIP
        ...                               order_by="updated_at_desc", per_page=500)
        >>> [job.state for job in page.records][:3]                          # doctest: +SKIP
        ['completed', 'running', 'pending']
        """
        data = await self.list_jobs_raw(
            type=type,
            state=state,
            data_plane_id=data_plane_id,
            per_page=per_page,
            offset=offset,
            order_by=order_by,
        )
        return self._parse(JobsPage, data, "GET", ROUTE_JOBS)

    async def list_jobs_raw(
        self,
        *,
        type: str | None = None,
        state: str | None = None,
        data_plane_id: str | None = None,
        per_page: int | None = None,
        offset: int | None = None,
        order_by: str | None = None,
        brief: bool = False,
    ) -> dict[str, Any]:
        """:meth:`list_jobs` as JSON (``records`` always a list of dicts with ``job_id``).

        For pollers that look at a few records of a large page: validating every record into a
        :class:`Job` costs more than the request itself. ``brief``: each record keeps only the
        fields polling reads (:data:`~._listing_json.BRIEF_FIELDS`; not its ``input``).
        """
        given = {
            "type": type,
            "state": state,
            "data_plane_id": data_plane_id,
            "per_page": per_page,
            "offset": offset,
            "order_by": order_by,
        }
        params = {name: str(value) for name, value in given.items() if value is not None}
        decode = brief_page if brief else None
        data = await self._request("GET", ROUTE_JOBS, ROUTE_JOBS, params=params, decode=decode)
        if isinstance(data, list):
            data = {"records": data}
        records = data.get("records") if isinstance(data, Mapping) else None
        if not isinstance(records, list):
            if isinstance(data, Mapping) and records is None:
                records = []
            else:
                raise APIError(
                    f"GET {ROUTE_JOBS} answered with an unexpected shape (no records list).",
                    method="GET",
                    path=ROUTE_JOBS,
                )
        return {**data, "records": [_with_job_id(r) for r in records]}

    async def wait_for_job(
        self, job_id: str, *, timeout: float | None = None, poll_interval: float | None = None
    ) -> Job:
        """Poll a job until it is completed, failed or cancelled, and return it.

        The wait starts at ``poll_interval`` (default 1 s) and grows x1.5 up to 30 s while the
        state stays the same; it starts over when the state changes. Unknown states are polled
        through. Raises JobTimeoutError when ``timeout`` seconds pass first.

        Examples
        --------
        >>> job = await client.wait_for_job(job.job_id, timeout=300)         # doctest: +SKIP
        >>> job.result.structured_output                                     # doctest: +SKIP
        {'greeting': 'Hi!'}
        """
        first = DEFAULT_POLL_INTERVAL if poll_interval is None else poll_interval
        if first < 0:
            raise ValueError(f"poll_interval must be >= 0, got {poll_interval!r}.")
        ceiling = max(MAX_POLL_INTERVAL, first)
        deadline = None if timeout is None else self._clock.now() + timeout
        interval = first
        last_state: str | None = None
        while True:
            job = await self.get_job(job_id)
            if job.is_terminal:
                return job
            if last_state is not None:
                same = job.state == last_state
                interval = min(ceiling, interval * POLL_BACKOFF_FACTOR) if same else first
            last_state = job.state
            wait = interval
            if deadline is not None:
                remaining = deadline - self._clock.now()
                if remaining <= 0:
                    raise JobTimeoutError(
                        f"Job {job_id} did not finish within {timeout:g} s (last state "
                        f"{job.state!r}). It may still run and be billed; wait again with "
                        "wait_for_job or look it up with get_job.",
                        job_id=job_id,
                    )
                wait = min(wait, remaining)
            await self._clock.sleep(wait)

    # --- the request loop ---

    async def _request(
        self,
        method: str,
        route: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = _MISSING,
        content: bytes | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """Send one API request with the retry policy, and return its JSON answer.

        ``decode`` reads a successful answer's bytes first (``ValueError``: read as any JSON).

        The key stays inside the masked :class:`ApiKey` here: the headers are built per attempt
        into :class:`MaskedHeaders` (masked repr), and the frames below us are dropped from any
        transport error, so tracebacks rendered with their locals never show it.
        """
        key = self.settings.require_key()
        if json_body is not _MISSING:
            content = json.dumps(json_body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        is_post = method == "POST"
        retry = 0
        while True:
            try:
                async with self._slots.hold(read=not is_post):
                    await self._wait_for_gate()
                    self.stats.requests += 1
                    self.stats.by_route[(method, route)] += 1
                    per_run = run_requests.get()
                    if per_run is not None:
                        per_run[(method, route)] += 1
                    exchange = self._exchange.send(
                        method, path, params, content, _headers(key, content is not None)
                    )
                    with self._deadlines.bound():
                        answer = await exchange
            except Exception as exc:
                if not _is_transport_error(exc):
                    raise
                _drop_transport_frames(exc)
                conn_error = self._transport_error(exc, method, path, key)
                if is_post and not surely_not_sent(exc):
                    raise APIUnknownOutcomeError(
                        f"{method} {path} got no answer ({_describe(exc, key)}); the job may "
                        "or may not have been created. Reconcile through GET /jobs before "
                        "resubmitting.",
                        method=method,
                        path=path,
                    ) from exc
                if retry >= self.max_retries or not _is_retryable_transport_error(exc):
                    raise conn_error from exc
                delay = backoff_delay(retry, self._rng)
                reason = type(exc).__name__
                gated = False
            else:
                if answer.is_success:
                    try:
                        return self._json(answer, method, path, decode)
                    except APIError as garbage:
                        if is_post:  # the job may well exist: never a plain error for a POST
                            raise APIUnknownOutcomeError(
                                f"{garbage.message} The job may or may not have been created; "
                                "reconcile through GET /jobs before resubmitting.",
                                method=method,
                                path=path,
                            ) from garbage
                        if retry >= self.max_retries:
                            raise
                    delay = backoff_delay(retry, self._rng)
                    reason = f"{answer.status} with a body that is not JSON"
                    gated = False
                else:
                    delay, reason, gated = self._after_error_status(
                        answer, method, path, key, retry
                    )
            retry += 1
            self.stats.retries += 1
            logger.info(
                "Retrying %s %s in %.2f s after %s (retry %d of %d)",
                method,
                path,
                delay,
                reason,
                retry,
                self.max_retries,
            )
            if not gated:  # after a 429 the client-wide gate does the waiting
                await self._clock.sleep(delay)

    def _after_error_status(
        self, answer: Answer, method: str, path: str, key: ApiKey, retry: int
    ) -> tuple[float, str, bool]:
        """Raise the error an answer means, or say how long to wait before repeating it."""
        status = answer.status
        retry_after = parse_retry_after(
            answer.headers.get("retry-after"), now=_response_time(answer)
        )
        status_error = make_status_error(
            answer.to_httpx(), method=method, path=path, retry_after=retry_after, secret=key
        )
        delay = retry_after if retry_after is not None else backoff_delay(retry, self._rng)
        if status == 429:
            self.stats.rate_limited += 1
            self._rate_limited_until = max(self._rate_limited_until, self._clock.now() + delay)
        is_post = method == "POST"
        if is_post and status >= 500 and status not in RETRYABLE_POST_STATUSES:
            raise APIUnknownOutcomeError(
                f"{status_error.message} — the job may or may not have been created; "
                "reconcile through GET /jobs before resubmitting.",
                method=method,
                path=path,
            ) from status_error
        retryable = RETRYABLE_POST_STATUSES if is_post else RETRYABLE_GET_STATUSES
        if retry >= self.max_retries or status not in retryable:
            raise status_error
        return delay, f"{status} {httpx.codes.get_reason_phrase(status)}", status == 429

    async def _wait_for_gate(self) -> None:
        """Wait until the client-wide 429 gate is open (it may move while waiting)."""
        while True:
            remaining = self._rate_limited_until - self._clock.now()
            if remaining <= 0:
                return
            await self._clock.sleep(remaining)

    def _transport_error(
        self, exc: BaseException, method: str, path: str, key: ApiKey
    ) -> APIConnectionError:
        what = _describe(exc, key)
        if _is_timeout(exc):
            return APITimeoutError(
                f"{method} {path} timed out ({what}). The service may be slow or unreachable; "
                "try again, or raise timeout=.",
                method=method,
                path=path,
            )
        return APIConnectionError(
            f"{method} {path} failed: could not talk to {self.settings.base_url} ({what}). "
            "Check the network and base_url.",
            method=method,
            path=path,
        )

    def _json(
        self,
        answer: Answer,
        method: str,
        path: str,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """The answer's JSON: pydantic-core's parser reads UTF-8 bytes (a listing page in less
        than half the time of ``json``); the text decoded by its declared charset otherwise."""
        if decode is not None:
            try:
                return decode(answer.content)
            except ValueError:
                pass
        try:
            return pydantic_core.from_json(answer.content)
        except ValueError:
            pass
        try:
            return json.loads(answer.to_httpx().text)
        except (ValueError, UnicodeDecodeError, LookupError) as exc:
            raise APIError(
                f"{method} {path} answered {answer.status} with a body that is not JSON.",
                method=method,
                path=path,
            ) from exc

    def _parse(self, model: type[_M], data: Any, method: str, path: str) -> _M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise APIError(
                f"{method} {path} answered with an unexpected shape: "
                f"{exc.error_count()} validation error(s), first: {exc.errors()[0]['msg']}.",
                method=method,
                path=path,
            ) from exc


def _request_body(request: ModelInferenceRunRequest | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(request, ModelInferenceRunRequest):
        return request.to_body()
    if not isinstance(request, Mapping):
        raise TypeError(
            "request must be a ModelInferenceRunRequest or a mapping, "
            f"not {type(request).__name__}."
        )
    body = {k: v for k, v in request.items() if v is not None}
    config = body.get("inference_config")
    if isinstance(config, Mapping):
        body["inference_config"] = {k: v for k, v in config.items() if v is not None}
    return body


def _created_job_id(data: Any) -> str:
    """The job id of a POST's answer; an answer without one leaves the outcome unknown."""
    job_id = (data.get("job_id") or data.get("id")) if isinstance(data, Mapping) else None
    if not job_id:
        raise APIUnknownOutcomeError(
            f"POST {ROUTE_RUN} answered without a job_id; the job may or may not have been "
            "created. Reconcile through GET /jobs before resubmitting.",
            method="POST",
            path=ROUTE_RUN,
        )
    return str(job_id)


def _with_job_id(record: Any) -> Any:
    """The record with ``job_id`` (set in place: the dict was just parsed and is ours)."""
    if isinstance(record, dict) and "job_id" not in record and "id" in record:
        record["job_id"] = record["id"]
    elif isinstance(record, Mapping) and "job_id" not in record and "id" in record:
        return {**record, "job_id": record["id"]}
    return record


def _describe(exc: BaseException, key: ApiKey) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError) and not text:
        return f"{name}: no complete answer within the request's deadline"
    return mask_secret(f"{name}: {text}" if text else name, key) or name


_BASE_HEADERS = {"Accept": "application/json", "User-Agent": USER_AGENT}
_BODY_HEADERS = {**_BASE_HEADERS, "Content-Type": "application/json"}


def _headers(key: ApiKey | None, has_body: bool) -> MaskedHeaders:
    """The request headers; the key is revealed only into :class:`MaskedHeaders` (masked
    repr), built per attempt and never kept."""
    if key is None:
        raise ConfigurationError("No Narrative API key.")
    headers = MaskedHeaders(_BODY_HEADERS if has_body else _BASE_HEADERS)
    headers["Authorization"] = "Bearer " + key.reveal()
    return headers


def _drop_transport_frames(exc: BaseException) -> None:
    """Forget the frames of the HTTP stack below us (their locals hold the raw headers), so a
    traceback rendered with locals cannot show the key; the exceptions' messages stay."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__
