"""Running the sandbox: ``Sandbox`` serves the app over HTTP/1.1 (``_http11``) on loopback in a
background thread (or in-process through an ASGI transport), and ``use_sandbox`` makes one
process-wide sandbox the library's default target.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

import httpx

from ._app import create_app
from ._core import FailRule, SandboxCore, SystemWallClock, WallClock
from ._http11 import HTTPServer
from ._knobs import SandboxConfig
from ._records import JOB_STATES
from ._store import SandboxStats

__all__ = ["Sandbox", "use_sandbox"]

logger = logging.getLogger("narrative_pandas")

TRANSPORT_BASE_URL = "http://sandbox.localhost"
"""The base URL to pair with ``Sandbox.transport()`` when no server is running."""


def new_api_key() -> str:
    """A fresh sandbox key, shaped like ``sk-sandbox-...``."""
    return "sk-sandbox-" + secrets.token_urlsafe(24)


class Sandbox:
    """A local emulator of the Narrative REST API, with knobs for every fault a client meets.

    Parameters
    ----------
    api_key : str, optional
        The key clients must send as ``Authorization: Bearer <key>``; generated when omitted.
    host, port : str, int
        Where ``start()`` listens; port 0 picks a free port.
    clock : object with ``now() -> float`` (epoch seconds), optional
        Drives job lifecycles, rate limits and TTLs; pass a ``FakeClock`` to move time by hand.
    **knobs
        Any field of :class:`SandboxConfig` (latencies, failure and error rates, limits, ...).

    Examples
    --------
    >>> with Sandbox(run_latency=0.1) as sandbox:           # doctest: +SKIP
    ...     httpx.get(f"{sandbox.base_url}/jobs",
    ...               headers={"Authorization": f"Bearer {sandbox.api_key}"}).status_code
    200
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: WallClock | None = None,
        **knobs: Any,
    ) -> None:
        self.api_key = api_key or new_api_key()
        self.host = host
        self.port = port
        self._core = SandboxCore(
            SandboxConfig().with_knobs(knobs), [self.api_key], clock or SystemWallClock()
        )
        self.app = create_app(self._core)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._bound_port: int | None = None
        self._error: BaseException | None = None

    # --- state -----------------------------------------------------------------------------
    @property
    def config(self) -> SandboxConfig:
        """The knobs in force."""
        return self._core.config

    @property
    def stats(self) -> SandboxStats:
        """Request and job counters (thread-safe)."""
        return self._core.stats

    @property
    def data_plane_id(self) -> str:
        """The default data plane (the first of ``config.data_plane_ids``)."""
        return self._core.config.data_plane_ids[0]

    @property
    def running(self) -> bool:
        """True while the HTTP server is serving."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` while serving, else the URL to use with ``transport()``."""
        if self._bound_port is None:
            return TRANSPORT_BASE_URL
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._bound_port}"

    def configure(self, **knobs: Any) -> SandboxConfig:
        """Change knobs while running, e.g. ``sandbox.configure(failure_rate=0.5)``."""
        return self._core.configure(knobs)

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        *,
        path: str | None = None,
        method: str | None = None,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (matching ``path``/``method`` if given) with ``status``.

        ``path`` is a route template (``"/jobs/{job_id}"``) or a concrete path; ``retry_after``
        adds a ``Retry-After`` header (whole seconds). Nothing else happens for those requests.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        self._core.add_rule(
            FailRule(n, status, path, method.upper() if method else None, retry_after, detail)
        )

    def add_api_key(self, key: str | None = None) -> str:
        """Accept one more key (rate limits count per key); returns it."""
        key = key or new_api_key()
        self._core.add_key(key)
        return key

    def jobs(self, *, include_foreign: bool = False) -> list[dict[str, Any]]:
        """Every live (not expired) job of the sandbox's keys as the API shows it now, oldest
        first, including jobs still hidden by ``replication_lag``; ``include_foreign`` adds
        other users' jobs (``foreign_jobs``, ``add_jobs``)."""
        now = self._core.clock.now()
        self._core.store.expire(now, self._core.config.ttl)
        return self._core.store.all_jobs(now, foreign=include_foreign)

    def cancel_job(self, job_id: str) -> bool:
        """Cancel a job as its owner would in the UI: ``pending_cancellation`` now, then
        ``cancelled`` after one queue latency.

        Returns False when the job has already ended or is being cancelled; raises KeyError for
        an unknown (or expired) job id.
        """
        return self._core.cancel_job(job_id)

    def outage(self, seconds: float, status: int | None = 503) -> None:
        """From now on, for ``seconds`` of the sandbox's clock, answer every request ``status``
        (nothing is done), or with ``status=None`` reset each connection without answering."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"seconds must be a number >= 0, not {seconds!r}")
        if status is not None and not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError(f"status must be an HTTP error code (400-599) or None, not {status!r}")
        self._core.start_outage(float(seconds), status)

    def add_jobs(self, n: int, *, state: str = "completed") -> list[str]:
        """Create ``n`` other users' jobs in the default data plane now, newer than every
        existing job, staying in ``state`` (e.g. 2,500 newer jobs before a resume).

        They are not counted in ``stats.jobs_created`` (see ``stats.foreign_jobs``). Returns
        their ids.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, not {n!r}")
        if state not in JOB_STATES:
            raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, not {state!r}")
        return self._core.add_jobs(n, state)

    def job_timelines(self) -> list[tuple[float, float, float]]:
        """When each live job was created, started and ended (seconds on the sandbox's clock),
        oldest first: the service's own pace, which benchmarks compare a client against."""
        return self._core.store.timelines()

    def reset(self) -> None:
        """Forget all jobs, counters and pending ``fail_next`` rules; knobs stay."""
        self._core.reset()

    def transport(self) -> httpx.ASGITransport:
        """An in-process transport onto this sandbox (no socket; same jobs and counters).

        Use it with any base URL, e.g. ``httpx.AsyncClient(transport=sandbox.transport(),
        base_url=sandbox.base_url)``.
        """
        return httpx.ASGITransport(app=self.app)

    # --- serving ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Sandbox:
        """Serve on ``host:port`` in a background thread; returns once the port answers."""
        if self.running:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only then.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        sock.setblocking(False)
        self._socket = sock
        self._bound_port = int(sock.getsockname()[1])
        server = HTTPServer(self.app, connections=self._core.connections)
        self._server = server
        self._error = None
        self._thread = threading.Thread(
            target=self._serve, args=(server, sock), name="narrative-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if self._error is not None or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the sandbox server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox server did not start in time")
            time.sleep(0.005)
        with socket.create_connection((self.host, self._bound_port), timeout=timeout):
            pass
        return self

    def _serve(self, server: HTTPServer, sock: socket.socket) -> None:
        try:
            _run_server(server.serve(sock))
        except BaseException as exc:  # reported by start()
            self._error = exc

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (jobs and counters are kept; ``start()`` serves them again)."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        self._bound_port = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Sandbox:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:  # never the key
        where = self.base_url if self.running else "not serving"
        return f"Sandbox({where}, data_plane_id={self.data_plane_id!r})"


def _run_server(serving: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop where it is installed (a dependency off Windows): about a
    fifth less CPU per request than asyncio's loop. ``NARRATIVE_PANDAS_LOOP=asyncio`` keeps
    asyncio's."""
    if os.environ.get("NARRATIVE_PANDAS_LOOP", "auto").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(serving)
            return
    asyncio.run(serving)


_current: Sandbox | None = None
_current_lock = threading.Lock()
_warned = False
_atexit_registered = False

_SYNTHETIC_WARNING = (
    "narrative_pandas is using the local sandbox at %s: outputs are SYNTHETIC (generated from "
    "the output schema, or by the responder you gave it; never by a model). Call "
    "narrative_pandas.configure(...) to use the real service."
)


def _stop_current() -> None:
    global _current
    with _current_lock:
        sandbox, _current = _current, None
    if sandbox is not None:
        sandbox.stop()


def use_sandbox(**knobs: Any) -> Sandbox:
    """Start a process-wide sandbox and make it the library's default target.

    Called again with knobs, it restarts the sandbox with them; without knobs it returns the
    running one. ``narrative_pandas.configure(...)`` switches back to the real service. Logs a
    warning (once) that outputs are synthetic; prints nothing.

    Examples
    --------
    >>> import narrative_pandas as npd                      # doctest: +SKIP
    >>> sandbox = npd.use_sandbox(run_latency=0.5)
    """
    global _current, _warned, _atexit_registered
    from .._config import set_sandbox_target

    with _current_lock:
        sandbox = _current
        if sandbox is not None and (knobs or not sandbox.running):
            sandbox.stop()
            sandbox = None
        if sandbox is None:
            sandbox = Sandbox(**knobs).start()
            _current = sandbox
        if not _atexit_registered:
            atexit.register(_stop_current)
            _atexit_registered = True
        first = not _warned
        _warned = True
    set_sandbox_target(sandbox.api_key, sandbox.base_url, sandbox.data_plane_id)
    if first:
        logger.warning(_SYNTHETIC_WARNING, sandbox.base_url)
    return sandbox


def current_sandbox() -> Sandbox | None:
    """The sandbox ``use_sandbox`` started, if any."""
    return _current
