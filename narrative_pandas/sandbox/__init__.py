"""A local emulator of the Narrative REST API, for trying the library offline and for tests.

It follows the contract in ``narrative-api.md`` (paths, bodies, job states, status codes, error
bodies) and answers inference jobs with synthetic outputs that follow the request's schema.

Three ways to run it::

    with Sandbox(run_latency=0.2) as sandbox:       # HTTP on 127.0.0.1, background thread
        ...sandbox.base_url, sandbox.api_key, sandbox.data_plane_id...
    httpx.AsyncClient(transport=Sandbox().transport(), base_url="http://sandbox.localhost")
    python -m narrative_pandas.sandbox --port 8765 --latency 0.5-2

``use_sandbox()`` makes a process-wide sandbox the library's default target.
"""

from __future__ import annotations

from ._app import create_app
from ._core import SystemWallClock, WallClock
from ._knobs import DEFAULT_DATA_PLANE_ID, Latency, Responder, SandboxConfig
from ._server import TRANSPORT_BASE_URL, Sandbox, current_sandbox, use_sandbox
from ._store import SandboxStats

__all__ = [
    "DEFAULT_DATA_PLANE_ID",
    "TRANSPORT_BASE_URL",
    "Latency",
    "Responder",
    "Sandbox",
    "SandboxConfig",
    "SandboxStats",
    "SystemWallClock",
    "WallClock",
    "create_app",
    "current_sandbox",
    "use_sandbox",
]
