"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: The output schema most tests send: a sentiment label and a confidence in [0, 1].
SENTIMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


def python_script(path: Path, code: str) -> Path:
    """Write a script file for a subprocess."""
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


#: Runs the script given after it as ``__main__``, with Ctrl-C raising KeyboardInterrupt as in a
#: terminal: a test runner started as a background job of a non-interactive shell (``cmd &``)
#: has SIGINT ignored, its children inherit that, and Python then installs no handler.
_CTRL_C_AS_IN_A_TERMINAL = (
    "import os, runpy, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0]))); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def spawn(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python script`` with the repo importable, capturing its output (Ctrl-C, i.e.
    SIGINT, raises KeyboardInterrupt in it whatever the test runner inherited)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_AS_IN_A_TERMINAL, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
