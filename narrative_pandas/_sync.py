"""The one bridge between synchronous callers and the async engine.

Runs work on one background event loop per process (a daemon thread), so that

- ``infer`` blocks the caller without needing the caller's loop: it works the same in a script, in
  Jupyter (whose kernel already runs a loop) and inside any running loop;
- ``start`` returns at once while jobs move in the background, in a notebook or a script;
- every run shares one HTTP client per target (:func:`shared_client`), created on that loop.

The one exception is a user-supplied ``client=`` that already lives on the caller's running loop:
it can only be used there, so :func:`run_here` runs the coroutine on that loop, applying
nest-asyncio (only then, and only here) so a blocking call can wait inside a running loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._client import Client
    from ._config import Settings

__all__ = ["in_running_loop", "run_here", "runner_loop", "shared_client", "submit"]

T = TypeVar("T")
LOOP_ENV = "NARRATIVE_PANDAS_LOOP"

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_clients: dict[tuple[str, str, bool], Client] = {}


def runner_loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is not None and _thread is not None and _thread.is_alive():
            return _loop
        loop = _new_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=serve, name="narrative-pandas-loop", daemon=True)
        thread.start()
        ready.wait()
        _loop, _thread = loop, thread
        return loop


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it is a dependency off Windows), else asyncio's own loop.

    The background loop carries every request of every run; uvloop's cuts the library's CPU per
    row by about 5% (``benchmarks/run.py``, scenario d). ``NARRATIVE_PANDAS_LOOP=asyncio``
    keeps asyncio's loop.
    """
    if os.environ.get(LOOP_ENV, "auto").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the background loop; the future is safe to wait on from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, runner_loop())


def in_running_loop() -> bool:
    """True when the calling thread is inside a running event loop (e.g. a Jupyter cell)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_here(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on the calling thread's loop, even if that loop is running."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import nest_asyncio

    nest_asyncio.apply(loop)
    return loop.run_until_complete(coro)


def shared_client(settings: Settings) -> Client:
    """The HTTP client that every run against ``settings`` shares (call on the runner loop)."""
    from ._client import Client

    key = settings.api_key.reveal() if settings.api_key is not None else ""
    slot = (settings.base_url, key, settings.allow_insecure_http)
    client = _clients.get(slot)
    if client is None:
        client = Client(
            api_key=key or None,
            base_url=settings.base_url,
            data_plane_id=settings.data_plane_id,
            allow_insecure_http=settings.allow_insecure_http,
        )
        _clients[slot] = client
    return client


async def _close_clients() -> None:
    clients = list(_clients.values())
    _clients.clear()
    for client in clients:
        with contextlib.suppress(Exception):  # closing at exit must never raise
            await client.aclose()


@atexit.register
def _shutdown() -> None:
    loop = _loop
    if loop is None or not loop.is_running():
        return
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(_close_clients(), loop).result(timeout=2)
    loop.call_soon_threadsafe(loop.stop)
