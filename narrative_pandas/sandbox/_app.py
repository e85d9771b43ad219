"""The sandbox's HTTP face: a Starlette app speaking the REST contract of ``narrative-api.md``.

Same paths, bodies, states, status codes and RFC 7807-like error bodies as the real service, plus
the faults a client must survive (rate limits, 5xx, lost POST answers, slow answers, failed jobs),
each behind a knob of :class:`SandboxConfig`. All state lives in one :class:`SandboxCore`, shared
by the HTTP server (``_http11``) and any in-process ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .._models import request_fingerprint
from ._core import SandboxCore, SystemWallClock, WallClock
from ._knobs import SandboxConfig
from ._requests import BadRequest, decide_outcome, parse_run_request, sample_of
from ._store import JOB_STATES, NewJob, route_template

__all__ = ["SandboxCore", "SystemWallClock", "WallClock", "create_app"]

logger = logging.getLogger("narrative_pandas")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 100
_OWNER_KEY = "narrative_sandbox.owner"
_GARBAGE = b"<html><body><h1>200 OK</h1>upstream closed the stream early</body></html>"
_DRIP_TICK = 0.05
"""Seconds between two chunks of a dripped listing when the rate allows more than one byte."""


# --- responses -------------------------------------------------------------------------------
def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def problem(
    status: int,
    detail: str,
    instance: str,
    *,
    headers: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Response:
    """An RFC 7807-like error answer with a fresh ``logId``, sent as ``application/json`` (what
    the service's OpenAPI description declares)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = {
        "type": "about:blank",
        "title": title or phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        "logId": uuid.uuid4().hex,
    }
    return Response(
        json.dumps(body).encode("utf-8"),
        status_code=status,
        headers=dict(headers) if headers else None,
        media_type="application/json",
    )


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")


# --- the app ---------------------------------------------------------------------------------
class _FrontDoor:
    """Pure ASGI middleware: counters, slow answers, injected faults, auth and rate limits."""

    def __init__(self, app: ASGIApp, core: SandboxCore) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        core = self.core
        method: str = scope["method"]
        path: str = scope["path"]
        template = route_template(path)
        counted = False

        async def send_counted(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                # Counted before the answer leaves, so a client that has it sees the counters.
                counted = True
                core.stats.request_answered(method, template, message["status"])
            await send(message)

        down, status = core.outage_status()
        if down and status is None:  # counted as status 0: nothing was answered
            core.stats.request_answered(method, template, 0)
            await _reset_connection(core, scope)
            return
        core.stats.request_started()
        try:
            config = core.config
            if down and status is not None:
                outage = problem(status, f"The service is down (sandbox: outage, {status})", path)
                await outage(scope, receive, send_counted)
                return
            delay = core.latency(config.response_delay)
            if delay > 0:
                await asyncio.sleep(delay)
            answer = self._gate(scope, config, method, template, path)
            if answer is not None:
                await answer(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            if not counted:  # the app raised; the error middleware answers 500
                core.stats.request_answered(method, template, 500)
            core.stats.request_finished()

    def _gate(
        self, scope: Scope, config: SandboxConfig, method: str, template: str, path: str
    ) -> Response | None:
        core = self.core
        rule = core.take_rule(method, template, path)
        if rule is not None:
            headers = {}
            if rule.retry_after is not None:
                headers["Retry-After"] = _retry_after(rule.retry_after)
            detail = rule.detail or f"Forced by the sandbox (fail_next, status {rule.status})"
            return problem(rule.status, detail, path, headers=headers)
        if config.error_rate and core.chance(config.error_rate):
            status = core.pick(config.error_statuses)
            return problem(status, "Injected by the sandbox (error_rate)", path)
        owner = core.owner_of(scope["headers"])
        if owner is None:
            return problem(
                401,
                "Missing or invalid API key: send 'Authorization: Bearer <API key>'",
                path,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if config.rate_limit_rps is not None:
            wait = core.take_token(owner, config.rate_limit_rps, core.clock.now())
            if wait > 0:
                return problem(
                    429,
                    f"Rate limit exceeded: at most {config.rate_limit_rps:g} requests per second",
                    path,
                    headers={"Retry-After": _retry_after(wait)},
                )
        scope[_OWNER_KEY] = owner
        return None


async def _reset_connection(core: SandboxCore, scope: Scope) -> None:
    """Drop the client's TCP connection with a reset, answering nothing.

    Over the in-process transport there is no connection: the client gets the error httpx
    raises when a server hangs up without answering.
    """
    client = scope.get("client")
    transport = core.connections.get(tuple(client)) if client else None
    if transport is None:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
    sock = transport.get_extra_info("socket")
    if sock is not None:  # linger 0: close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    for _ in range(3):  # let the server see the connection lost before the app returns
        await asyncio.sleep(0)


Handler = Callable[[Request], Awaitable[Response]]


class _HotRoutes:
    """Pure ASGI: the three routes every run hammers, dispatched without Starlette's router.

    Starlette's routing and exception layers cost about an eighth of the sandbox's CPU per
    request (a wave's burst of POSTs queues on it). Exactly ``POST /model-inference/run``,
    ``GET /jobs`` and ``GET /jobs/{job_id}`` are answered here by the same handlers; anything
    else (other methods, HEAD, trailing slashes, unknown paths) goes on to the router, which
    answers it as before. An exception still reaches Starlette's error middleware (500).
    """

    def __init__(self, app: ASGIApp, *, run: Handler, listing: Handler, job: Handler) -> None:
        self.app = app
        self.run = run
        self.listing = listing
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler: Handler | None = None
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if path == "/model-inference/run" and method == "POST":
                handler = self.run
            elif method == "GET" and path == "/jobs":
                handler = self.listing
            elif method == "GET" and len(path) > 6 and path[:6] == "/jobs/" and "/" not in path[6:]:
                scope["path_params"] = {"job_id": path[6:]}
                handler = self.job
        if handler is None:
            await self.app(scope, receive, send)
            return
        response = await handler(Request(scope, receive))
        await response(scope, receive, send)


def _dripped(body: bytes, rate: float) -> StreamingResponse:
    """``body`` sent at ``rate`` bytes per second (headers at once), as a stalling proxy does."""
    interval = max(1.0 / rate, _DRIP_TICK)
    size = max(1, int(rate * interval))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), size):
            await asyncio.sleep(interval)
            yield body[start : start + size]

    return StreamingResponse(chunks(), media_type="application/json")


def _listing_body(
    config: SandboxConfig, page: list[bytes], total: int, offset: int, per_page: int
) -> bytes:
    """The ``GET /jobs`` answer, with ``total_records`` as ``total_records_mode`` says."""
    records = b"[" + b",".join(page) + b"]"
    if config.total_records_mode == "missing":
        return b'{"records":' + records + b"}"
    if config.total_records_mode == "page_end":
        total = offset + len(page)
    head = (
        f'{{"current_page":{offset // per_page + 1},"total_records":{total},'
        f'"total_pages":{math.ceil(total / per_page)},"records":'
    )
    return head.encode("ascii") + records + b"}"


def create_app(core: SandboxCore) -> Starlette:
    """The Starlette app of one sandbox."""

    async def run_inference(request: Request) -> Response:
        config = core.config
        path = request.scope["path"]  # not request.url: it builds a whole URL
        owner: str = request.scope[_OWNER_KEY]
        now = core.clock.now()
        if config.max_unfinished_jobs is not None:
            count, first_end = core.store.unfinished_for(owner, now)
            if count >= config.max_unfinished_jobs:
                wait = (first_end - now) if first_end is not None else 1.0
                return problem(
                    429,
                    f"Too many unfinished jobs: at most {config.max_unfinished_jobs} at a time",
                    path,
                    headers={"Retry-After": _retry_after(wait)},
                )
        try:
            parsed = parse_run_request(await request.body(), config)
        except BadRequest as exc:
            return problem(exc.status, exc.detail, path)
        fingerprint = request_fingerprint(parsed.normalised) + sample_of(parsed.normalised)
        outcome, result, failures = await decide_outcome(parsed, config, fingerprint)
        job_id = str(uuid.uuid4())
        cancelled = core.chance(config.cancel_rate)
        queue = core.latency(config.queue_latency)
        job = NewJob(
            job_id=job_id,
            data_plane_id=parsed.normalised["data_plane_id"],
            owner=owner,
            input=parsed.body,
            fingerprint=fingerprint,
            queue=queue,
            run=core.latency(config.queue_latency if cancelled else config.run_latency),
            outcome=outcome,
            result=result,
            failures=failures,
            cancelled=cancelled,
            skew=core.skew_for(job_id),
            lag=config.replication_lag,
        )
        core.store.create(job, core.clock.now())
        if core.chance(config.post_500_after_create_rate):
            return problem(
                500, "Internal error while answering (sandbox: post_500_after_create)", path
            )
        if core.chance(config.post_garbage_after_create_rate):
            return Response(_GARBAGE, media_type="text/html")
        return _json(b'{"job_id":"' + job_id.encode("ascii") + b'"}')

    async def get_job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        config = core.config
        fragment = core.store.get(job_id, core.clock.now(), config.ttl)
        if fragment is None:
            return problem(404, f"Job {job_id!r} was not found", request.scope["path"])
        return _json(fragment)

    async def list_jobs(request: Request) -> Response:
        config = core.config
        query = request.query_params
        path = request.scope["path"]
        try:
            per_page = _int_param(query.get("per_page"), "per_page", DEFAULT_PER_PAGE, 1)
            offset = _int_param(query.get("offset"), "offset", 0, 0)
        except BadRequest as exc:
            return problem(400, exc.detail, path)
        per_page = min(per_page, MAX_PER_PAGE)
        requested = query.get("order_by") or None
        if requested is not None and requested not in config.listing_orders:
            return problem(
                400,
                f"order_by {requested!r} is not supported; supported values: "
                + ", ".join(config.listing_orders),
                path,
            )
        order_by = requested or "created_at_desc"
        if config.listing_ignores_order:
            order_by = "created_at_desc"
        state = query.get("state") or None
        if state is not None and state not in JOB_STATES:
            return problem(400, f"state must be one of {', '.join(JOB_STATES)}", path)
        total, page = core.store.listing(
            now=core.clock.now(),
            ttl=config.ttl,
            job_type=query.get("type") or None,
            state=state,
            data_plane_id=query.get("data_plane_id") or None,
            order_by=order_by,
            per_page=per_page,
            offset=offset,
        )
        content = _listing_body(config, page, total, offset, per_page)
        core.stats.listed(len(page))
        if config.listing_drip is not None:
            return _dripped(content, config.listing_drip)
        return _json(content)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return problem(exc.status_code, str(exc.detail), request.url.path, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        logger.exception("narrative sandbox: unexpected error on %s", request.url.path)
        return problem(500, f"Internal error: {type(exc).__name__}", request.url.path)

    return Starlette(
        routes=[
            Route("/model-inference/run", run_inference, methods=["POST"]),
            Route("/jobs", list_jobs, methods=["GET"]),
            Route("/jobs/{job_id}", get_job, methods=["GET"]),
        ],
        middleware=[
            Middleware(_FrontDoor, core=core),
            Middleware(_HotRoutes, run=run_inference, listing=list_jobs, job=get_job),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


def _int_param(raw: str | None, name: str, default: int, minimum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer >= {minimum}") from None
    if value < minimum:
        raise BadRequest(f"{name} must be an integer >= {minimum}")
    return value
