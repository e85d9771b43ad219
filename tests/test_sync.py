"""The background loop: uvloop's where installed, asyncio's when the environment asks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

SCRIPT = "import narrative_pandas._sync as s; print(type(s.runner_loop()).__module__)"


def loop_module(**env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_the_background_loop_is_uvloop_where_installed() -> None:
    assert loop_module(NARRATIVE_PANDAS_LOOP="auto").startswith("uvloop")


def test_narrative_pandas_loop_asyncio_keeps_asyncio() -> None:
    assert loop_module(NARRATIVE_PANDAS_LOOP="asyncio").startswith("asyncio.")
