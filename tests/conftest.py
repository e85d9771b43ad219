"""Shared fixtures: isolated settings and cache per test, a sandbox server on 127.0.0.1, and a
Jupyter kernelspec running this interpreter."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import narrative_pandas as npd
from narrative_pandas import _cache
from narrative_pandas.sandbox import Sandbox
from narrative_pandas.sandbox._knobs import SandboxConfig

ENV_VARS = ("NARRATIVE_API_KEY", "NARRATIVE_BASE_URL", "NARRATIVE_DATA_PLANE_ID")

#: Test files that read the same notebook passes (``test_notebooks.execute_twice`` runs each
#: notebook once a session): on pytest-xdist they must share a worker, or each worker pays again.
SHARED_NOTEBOOK_PASSES = frozenset(
    {"test_notebooks.py", "test_labelling_notebook.py", "test_dask.py"}
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``pytest -n 2 --dist loadfile``: each file whole on one worker (its module fixtures, a
    Dask cluster or a JupyterLab server, start once), and the files that share notebook passes
    together on one worker."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesSharingNotebookPasses(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "notebook-passes" if Path(path).name in SHARED_NOTEBOOK_PASSES else path

    return FilesSharingNotebookPasses(config, log)


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no environment settings, no configure() and an empty default cache."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    npd.configure()
    monkeypatch.setattr(_cache, "_default", None)
    yield
    npd.configure()


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[Sandbox]:
    """One sandbox server for the session; tests get it reset through ``sandbox``."""
    with Sandbox(queue_latency=0.02, run_latency=0.05) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Iterator[Sandbox]:
    """The session's sandbox with fresh jobs, counters and default knobs."""
    sandbox_server.configure(**DEFAULT_KNOBS)
    sandbox_server.reset()
    yield sandbox_server
    sandbox_server.configure(**DEFAULT_KNOBS)
    sandbox_server.reset()


#: Every knob back to its default before and after each test (with the session's fast
#: latencies), so no knob a test set (foreign jobs, skew, lag...) leaks into the next test on
#: the same worker, whatever order pytest-xdist gives the files.
DEFAULT_KNOBS: dict[str, Any] = {
    **{
        field.name: getattr(SandboxConfig(), field.name)
        for field in dataclasses.fields(SandboxConfig)
    },
    "queue_latency": 0.02,
    "run_latency": 0.05,
}


@pytest.fixture
def target(sandbox: Sandbox) -> dict[str, str]:
    """Connection arguments for infer()/start() pointing at the sandbox."""
    return {
        "api_key": sandbox.api_key,
        "base_url": sandbox.base_url,
        "data_plane_id": sandbox.data_plane_id,
    }


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir whose ``python3`` kernelspec runs this test run's own interpreter.

    Put first on ``JUPYTER_PATH`` by the notebook tests (``test_notebooks.execute_twice``).
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (narrative-pandas tests)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return root


@pytest.fixture
def make_sandbox() -> Iterator[Any]:
    """A private sandbox with the given knobs (fault knobs must not leak to other tests)."""
    started: list[Sandbox] = []

    def make(**knobs: Any) -> Sandbox:
        knobs.setdefault("queue_latency", 0.05)
        knobs.setdefault("run_latency", 0.3)
        sb = Sandbox(**knobs).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()
