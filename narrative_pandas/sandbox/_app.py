"""The sandbox's HTTP face: a Starlette app speaking the REST contract of ``narrative-api.md``.

Same paths, bodies, states, status codes and RFC 7807-like error bodies as the real service, plus
the faults a client must survive (rate limits, 5xx, lost POST answers, slow answers, failed jobs),
each behind a knob of :class:`SandboxConfig`. All state lives in one :class:`SandboxCore`, shared
by the uvicorn server and any in-process ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._models import request_fingerprint
from ._knobs import SandboxConfig, draw_latency
from ._outputs import (
    compile_schema,
    estimate_tokens,
    output_error,
    prompt_words,
    synthesize,
)
from ._store import JOB_STATES, ORDERS, JobStore, SandboxStats, route_template

__all__ = ["SandboxCore", "WallClock", "create_app"]

logger = logging.getLogger("narrative_pandas")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 100
_ROLES = ("system", "user", "assistant")
_OWNER_KEY = "narrative_sandbox.owner"


class WallClock(Protocol):
    """Where the sandbox reads the time: epoch seconds (``FakeClock`` fits, for tests)."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemWallClock:
    """Wall-clock time that never goes backwards (monotonic, anchored at the epoch once)."""

    def __init__(self) -> None:
        self._base = time.time() - time.monotonic()

    def now(self) -> float:
        return self._base + time.monotonic()

    def __repr__(self) -> str:
        return "SystemWallClock()"


@dataclass
class FailRule:
    """``fail_next``: answer the next ``remaining`` matching requests with ``status``."""

    remaining: int
    status: int
    path: str | None = None
    method: str | None = None
    retry_after: float | None = None
    detail: str | None = None

    def matches(self, method: str, template: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path in (template, path)
        )


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


class SandboxCore:
    """The shared, thread-safe state of one sandbox: knobs, keys, jobs, counters, fault rules."""

    def __init__(self, config: SandboxConfig, api_keys: Iterable[str], clock: WallClock) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {k: _key_id(k) for k in api_keys}
        self._rng = random.Random(config.seed)
        self._rules: list[FailRule] = []
        self._buckets: dict[str, list[float]] = {}
        self.stats = SandboxStats(self.unfinished_jobs)
        self.store = JobStore(self.stats)

    # --- knobs and rules -------------------------------------------------------------------
    def configure(self, knobs: Mapping[str, Any]) -> SandboxConfig:
        """Change knobs at runtime (validated as a whole before anything changes)."""
        with self._lock:
            self.config = self.config.with_knobs(knobs)
            if "seed" in knobs:
                self._rng = random.Random(self.config.seed)
            if "rate_limit_rps" in knobs:
                self._buckets.clear()
            return self.config

    def add_key(self, key: str) -> None:
        with self._lock:
            self._keys[key] = _key_id(key)

    def add_rule(self, rule: FailRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def take_rule(self, method: str, template: str, path: str) -> FailRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, template, path):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return rule
        return None

    def reset(self) -> None:
        """Forget jobs, counters, fault rules and rate-limit buckets."""
        with self._lock:
            self._rules.clear()
            self._buckets.clear()
            self._rng = random.Random(self.config.seed)
        self.store.clear()
        self.stats.reset()

    # --- draws -----------------------------------------------------------------------------
    def chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def pick(self, choices: tuple[int, ...]) -> int:
        with self._lock:
            return self._rng.choice(choices)

    def latency(self, latency: float | tuple[float, float]) -> float:
        if not isinstance(latency, tuple):
            return latency
        with self._lock:
            return draw_latency(latency, self._rng)

    # --- keys and limits -------------------------------------------------------------------
    def owner_of(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The key's id when the Authorization header carries a known Bearer key."""
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, key = value.decode("latin-1").strip().partition(" ")
                if scheme.lower() != "bearer":
                    return None
                return self._keys.get(key.strip())
        return None

    def take_token(self, owner: str, rps: float, now: float) -> float:
        """0 when the request may pass, else the seconds until the key's bucket refills."""
        with self._lock:
            bucket = self._buckets.get(owner)
            if bucket is None:
                bucket = self._buckets[owner] = [max(rps, 1.0), now]
            tokens = min(max(rps, 1.0), bucket[0] + (now - bucket[1]) * rps)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return 0.0
            bucket[0] = tokens
            return (1.0 - tokens) / rps

    def unfinished_jobs(self) -> int:
        return self.store.unfinished(self.clock.now())


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
    """An RFC 7807-like error answer with a fresh ``logId``."""
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
        media_type="application/problem+json",
    )


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")


class _BadRequest(Exception):
    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


# --- request validation ----------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _string_list(value: Any, field: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _BadRequest(f"{field} must be an array of strings")


def _message_text(message: Any, where: str) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise _BadRequest(f"{where} must be an object with 'role' and 'text' or 'content'")
    role = message.get("role")
    if "role" not in message:
        raise _BadRequest(f"{where}.role is required")
    if role not in _ROLES:
        raise _BadRequest(f"{where}.role must be one of 'system', 'user', 'assistant'")
    if "text" in message and message["text"] is not None:
        if not isinstance(message["text"], str):
            raise _BadRequest(f"{where}.text must be a string")
        return role, message["text"]
    content = message.get("content")
    if content is None:
        raise _BadRequest(f"{where} needs 'text' (a string) or 'content' (an array of blocks)")
    if isinstance(content, str):
        return role, content
    if not isinstance(content, list) or not content:
        raise _BadRequest(f"{where}.content must be a non-empty array of text blocks")
    parts = []
    for j, block in enumerate(content):
        spot = f"{where}.content[{j}]"
        if not isinstance(block, dict):
            raise _BadRequest(f"{spot} must be an object like {{'type': 'text', 'text': '...'}}")
        if block.get("type") != "text":
            raise _BadRequest(f"{spot}.type must be 'text'")
        if not isinstance(block.get("text"), str):
            raise _BadRequest(f"{spot}.text must be a string")
        parts.append(block["text"])
    return role, "\n".join(parts)


@dataclass
class _Parsed:
    body: dict[str, Any]
    normalised: dict[str, Any]
    texts: list[str]
    schema: dict[str, Any]
    validator: Draft202012Validator | None
    schema_problem: str | None


def parse_run_request(raw: bytes, config: SandboxConfig) -> _Parsed:
    """Validate a ``POST /model-inference/run`` body; raises _BadRequest naming the field."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("Request body must be a JSON object")
    for field in ("data_plane_id", "model"):
        if field not in body or body[field] is None:
            raise _BadRequest(f"{field} is required")
        if not isinstance(body[field], str) or not body[field].strip():
            raise _BadRequest(f"{field} must be a non-empty string")
    messages = body.get("messages")
    if "messages" not in body or messages is None:
        raise _BadRequest("messages is required")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages must be a non-empty array")
    normal = [_message_text(m, f"messages[{i}]") for i, m in enumerate(messages)]
    config_in = body.get("inference_config")
    if "inference_config" not in body or config_in is None:
        raise _BadRequest("inference_config is required")
    if not isinstance(config_in, dict):
        raise _BadRequest("inference_config must be an object")
    if "output_format_schema" not in config_in or config_in["output_format_schema"] is None:
        raise _BadRequest("inference_config.output_format_schema is required")
    schema = config_in["output_format_schema"]
    if not isinstance(schema, dict):
        raise _BadRequest("inference_config.output_format_schema must be a JSON Schema object")
    max_tokens = config_in.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _BadRequest("inference_config.max_tokens must be a positive integer")
    for field in ("temperature", "top_p"):
        value = config_in.get(field)
        if value is not None and not (_is_number(value) and 0 <= value <= 1):
            raise _BadRequest(f"inference_config.{field} must be a number between 0 and 1")
    if config_in.get("stop_sequences") is not None:
        _string_list(config_in["stop_sequences"], "inference_config.stop_sequences")
    if body.get("tags") is not None:
        _string_list(body["tags"], "tags")
    if body["data_plane_id"] not in config.data_plane_ids:
        raise _BadRequest(
            f"Data plane {body['data_plane_id']!r} was not found or this key may not use it",
            status=config.unknown_data_plane_status,
        )
    if body["model"] not in config.models:
        raise _BadRequest(
            f"model {body['model']!r} is not supported; supported models: "
            + ", ".join(sorted(config.models))
        )
    compiled = compile_schema(schema)
    validator: Draft202012Validator | None = None
    schema_problem: str | None = None
    if isinstance(compiled, str):
        schema_problem = (
            "inference_config.output_format_schema is not a valid JSON Schema "
            f"(Draft 2020-12): {compiled}"
        )
        if not config.invalid_schema_as_job_failure:
            raise _BadRequest(schema_problem)
    else:
        validator = compiled
    normalised = {
        "data_plane_id": body["data_plane_id"],
        "model": body["model"],
        "messages": [{"role": role, "text": text} for role, text in normal],
        "inference_config": config_in,
    }
    if body.get("tags") is not None:
        normalised["tags"] = body["tags"]
    return _Parsed(body, normalised, [t for _, t in normal], schema, validator, schema_problem)


# --- deciding a job's fate -------------------------------------------------------------------
def _unit(material: str) -> float:
    digest = hashlib.sha256(material.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _failure(message: str, **value: Any) -> list[dict[str, Any]]:
    return [{"message": message, "value": value}]


def _sample_of(request: dict[str, Any]) -> str:
    """A deliberate repeat of a request (``samples=k`` tags each ``npd-sample-<s>``) is its own
    job: not a duplicate submission, and drawn apart from the other samples."""
    tags = request.get("tags") or ()
    return "".join(f":{t}" for t in tags if isinstance(t, str) and t.startswith("npd-sample-"))


async def decide_outcome(
    parsed: _Parsed, config: SandboxConfig, fingerprint: str
) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
    """``(outcome, result, failures)`` for a valid request, decided up front."""
    seed_material = f"{config.seed}:{fingerprint}"
    model = parsed.normalised["model"]
    if parsed.schema_problem is not None:
        return "failed", None, _failure(parsed.schema_problem, reason="invalid_schema")
    if model in config.unavailable_models:
        message = f"Model {model} is not available in data plane {parsed.body['data_plane_id']}"
        return "failed", None, _failure(message, reason="model_not_available", model=model)
    if config.failure_rate and _unit(seed_material + ":failure") < config.failure_rate:
        message = "Model inference failed: the model provider returned an error (sandbox)"
        return "failed", None, _failure(message, reason="injected_failure")
    if config.responder is not None:
        try:
            answer = config.responder(copy.deepcopy(parsed.normalised))
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            return "failed", None, _failure(message, reason="responder_error")
        if config.validate_responder and parsed.validator is not None:
            problem_text = output_error(parsed.validator, answer)
            if problem_text is not None:
                message = f"Model output does not match output_format_schema: {problem_text}"
                return "failed", None, _failure(message, reason="invalid_output")
        output = answer
    else:
        words = prompt_words(t for m in parsed.normalised["messages"] for t in [m["text"]])
        output = synthesize(parsed.schema, seed_material, words=words, validator=parsed.validator)
    try:
        output_text = json.dumps(output, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        message = f"Model output is not JSON: {exc}"
        return "failed", None, _failure(message, reason="invalid_output")
    completion = estimate_tokens(output_text)
    prompt = estimate_tokens("".join(parsed.texts))
    max_tokens = parsed.normalised["inference_config"].get("max_tokens")
    if max_tokens is not None and completion > max_tokens:
        message = (
            f"Token limit exceeded: the answer needs {completion} tokens but max_tokens is "
            f"{max_tokens}"
        )
        return (
            "failed",
            None,
            _failure(
                message, reason="token_limit_exceeded", max_tokens=max_tokens, tokens=completion
            ),
        )
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return "completed", {"structured_output": output, "usage": usage}, []


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

        core.stats.request_started()
        try:
            config = core.config
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


def create_app(core: SandboxCore) -> Starlette:
    """The Starlette app of one sandbox."""

    async def run_inference(request: Request) -> Response:
        config = core.config
        path = request.url.path
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
        except _BadRequest as exc:
            return problem(exc.status, exc.detail, path)
        fingerprint = request_fingerprint(parsed.normalised) + _sample_of(parsed.normalised)
        outcome, result, failures = await decide_outcome(parsed, config, fingerprint)
        job_id = str(uuid.uuid4())
        core.store.create(
            job_id=job_id,
            data_plane_id=parsed.normalised["data_plane_id"],
            owner=owner,
            input=parsed.body,
            fingerprint=fingerprint,
            now=core.clock.now(),
            queue=core.latency(config.queue_latency),
            run=core.latency(config.run_latency),
            outcome=outcome,
            result=result,
            failures=failures,
        )
        if core.chance(config.post_500_after_create_rate):
            return problem(
                500, "Internal error while answering (sandbox: post_500_after_create)", path
            )
        return _json(b'{"job_id":"' + job_id.encode("ascii") + b'"}')

    async def get_job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        config = core.config
        fragment = core.store.get(job_id, core.clock.now(), config.ttl)
        if fragment is None:
            return problem(404, f"Job {job_id!r} was not found", request.url.path)
        return _json(fragment)

    async def list_jobs(request: Request) -> Response:
        config = core.config
        query = request.query_params
        path = request.url.path
        try:
            per_page = _int_param(query.get("per_page"), "per_page", DEFAULT_PER_PAGE, 1)
            offset = _int_param(query.get("offset"), "offset", 0, 0)
        except _BadRequest as exc:
            return problem(400, exc.detail, path)
        per_page = min(per_page, MAX_PER_PAGE)
        order_by = query.get("order_by") or "created_at_desc"
        if order_by not in ORDERS:
            return problem(400, f"order_by must be one of {', '.join(ORDERS)}", path)
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
        head = (
            f'{{"current_page":{offset // per_page + 1},"total_records":{total},'
            f'"total_pages":{math.ceil(total / per_page)},"records":['
        )
        return _json(head.encode("ascii") + b",".join(page) + b"]}")

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
        middleware=[Middleware(_FrontDoor, core=core)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


def _int_param(raw: str | None, name: str, default: int, minimum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer >= {minimum}") from None
    if value < minimum:
        raise _BadRequest(f"{name} must be an integer >= {minimum}")
    return value
