"""The benchmark's sandbox process: the real sandbox app plus a few ``/_bench/*`` control routes.

``python -m narrative_pandas.sandbox`` has no way to read its counters from another process, to
swap knobs between scenarios, or to answer a fraction of requests 429 *with* ``Retry-After``
(its ``error_rate`` knob sends no ``Retry-After``). This launcher serves the same
``narrative_pandas.sandbox.Sandbox`` (its own HTTP/1.1 server, 127.0.0.1, its own process, so
client and server do not share a GIL) behind a thin ASGI wrapper that adds:

- ``POST /_bench/setup`` ``{"knobs": {...}, "inject_429": 0.2, "retry_after": 1, "log": true}``:
  ``sandbox.configure(**knobs)`` then ``sandbox.reset()`` (jobs, counters and rules forgotten);
- ``GET /_bench/stats``: the sandbox's own counters (``SandboxStats``) by route and status, its
  peaks, the server process's CPU seconds, (if logging) every request's arrival and answer
  times, and (with ``?timelines=1``) when each job was created and ended.

Injected 429s go through the sandbox's own ``fail_next(1, 429, retry_after=...)``, so the
sandbox's counters see them like any other answer. The control routes are not counted.

    python benchmarks/_server.py [--port 0]      # prints one JSON line with base_url, api_key, ...
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from narrative_pandas.sandbox import Sandbox

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES = (
    ("POST", "/model-inference/run"),
    ("GET", "/jobs/{job_id}"),
    ("GET", "/jobs"),
)
STATUSES = (200, 400, 401, 403, 404, 429, 500, 502, 503)


def _template(path: str) -> str:
    return "/jobs/{job_id}" if path.startswith("/jobs/") else path


class BenchApp:
    """Wraps the sandbox's ASGI app with control routes, 429 injection and a request log."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.inner: ASGIApp = sandbox.app
        self.inject_429 = 0.0
        self.retry_after = 1.0
        self.logging = False
        self.log: list[tuple[float, float, str, str, int, str | None]] = []
        self.rng = random.Random(7)
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_bench/"):
            await self._control(scope, receive, send)
            return
        if self.inject_429 and self.rng.random() < self.inject_429:
            self.sandbox.fail_next(
                1,
                429,
                path=path,
                method=scope["method"],
                retry_after=self.retry_after,
                detail="Rate limit exceeded (injected by the benchmark)",
            )
        if not self.logging:
            await self.inner(scope, receive, send)
            return
        arrived = time.monotonic()
        status = 0
        retry_after: str | None = None

        async def watch(message: Message) -> None:
            nonlocal status, retry_after
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == b"retry-after":
                        retry_after = value.decode("latin-1")
            await send(message)

        try:
            await self.inner(scope, receive, watch)
        finally:
            entry = (
                arrived,
                time.monotonic(),
                scope["method"],
                _template(path),
                status,
                retry_after,
            )
            self.log.append(entry)

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/_bench/setup" and scope["method"] == "POST":
            spec = json.loads(body or b"{}")
            self.sandbox.configure(**spec.get("knobs", {}))
            self.sandbox.reset()
            self.inject_429 = float(spec.get("inject_429", 0.0))
            self.retry_after = float(spec.get("retry_after", 1.0))
            self.logging = bool(spec.get("log", False))
            self.log = []
            self.rng = random.Random(int(spec.get("seed", 7)))
            answer: Any = {"ok": True}
        elif path == "/_bench/stats":
            query = scope.get("query_string", b"")
            answer = self.stats(with_log=b"log=1" in query, with_timelines=b"timelines=1" in query)
        else:
            answer = {"error": "unknown control route"}
        payload = json.dumps(answer).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def stats(self, *, with_log: bool, with_timelines: bool = False) -> dict[str, Any]:
        """The sandbox's counters (plus the server's CPU time) as plain JSON."""
        stats = self.sandbox.stats
        by_route: dict[str, dict[str, int]] = {}
        for method, route in ROUTES:
            total = stats.count(method=method, path=route)
            statuses = {str(s): stats.count(method=method, path=route, status=s) for s in STATUSES}
            statuses = {k: v for k, v in statuses.items() if v}
            other = total - sum(statuses.values())
            if other:
                statuses["other"] = other
            by_route[f"{method} {route}"] = {"total": total, **statuses}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        answer: dict[str, Any] = {
            "requests": stats.requests,
            "by_route": by_route,
            "jobs_created": stats.jobs_created,
            "duplicate_submissions": stats.duplicate_submissions,
            "peak_unfinished_jobs": stats.peak_unfinished_jobs,
            "peak_concurrent_requests": stats.peak_concurrent_requests,
            "server_cpu_s": usage.ru_utime + usage.ru_stime,
        }
        if with_log:
            answer["log"] = self.log
        if with_timelines:  # (created, ended) of each job, oldest first: the service's pace
            answer["timelines"] = [[c, e] for c, _, e in self.sandbox.job_timelines()]
        return answer


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve the sandbox for the benchmarks.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sandbox = Sandbox(host="127.0.0.1", port=args.port, queue_latency=0.0, run_latency=0.0)
    bench = BenchApp(sandbox)
    sandbox.app = bench  # type: ignore[assignment]  # start() serves whatever .app is
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    sandbox.start()
    print(
        json.dumps(
            {
                "base_url": sandbox.base_url,
                "api_key": sandbox.api_key,
                "data_plane_id": sandbox.data_plane_id,
            }
        ),
        flush=True,
    )
    while not stop.wait(0.2):
        pass
    sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
