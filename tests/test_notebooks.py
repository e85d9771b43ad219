"""The shipped notebooks run top to bottom in a real kernel, and are committed without outputs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("quickstart.ipynb", "labelling.ipynb")
CELL_TIMEOUT_S = 120
KERNEL_NAME = "python3"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir whose ``python3`` kernelspec runs this test run's own interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (narrative-pandas tests)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return root


def kernel_env() -> dict[str, str]:
    """The kernel's environment: ours without Narrative settings (the notebooks need none)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}


def read(name: str, as_version: Any = 4) -> nbformat.NotebookNode:
    """Notebook ``name`` from notebooks/."""
    nb: nbformat.NotebookNode = nbformat.read(  # type: ignore[no-untyped-call]
        NOTEBOOKS_DIR / name, as_version=as_version
    )
    return nb


def execute(name: str, jupyter_path: Path) -> nbformat.NotebookNode:
    """Run notebook ``name`` in a fresh kernel (cwd = notebooks/) and return it with outputs."""
    nb = read(name)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
        allow_errors=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        # JUPYTER_PATH comes first in the kernelspec search, so "python3" is our interpreter.
        mp.setenv("JUPYTER_PATH", str(jupyter_path))
        assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
        client.execute(env=kernel_env())
    return nb


def _stream_text(nb: nbformat.NotebookNode, stream: str) -> str:
    return "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == stream
    )


def _outputs(nb: nbformat.NotebookNode) -> Iterator[Any]:
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.outputs


@pytest.fixture(scope="module")
def executed(jupyter_path: Path) -> dict[str, nbformat.NotebookNode]:
    """Both notebooks, executed once for all tests of this module."""
    return {name: execute(name, jupyter_path) for name in NOTEBOOKS}


class TestNotebooksRun:
    """Each notebook runs without error and its last cells' assertions hold."""

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_runs_without_errors(
        self, executed: dict[str, nbformat.NotebookNode], name: str
    ) -> None:
        """Every code cell ran (an execution count each) and none produced an error output."""
        nb = executed[name]
        code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
        assert code_cells
        assert all(cell.execution_count is not None for cell in code_cells)
        assert [o for o in _outputs(nb) if o.output_type == "error"] == []

    @pytest.mark.parametrize("name", ["quickstart.ipynb"])  # labelling: test_labelling_notebook
    def test_ends_with_assertions_on_the_result(
        self, executed: dict[str, nbformat.NotebookNode], name: str
    ) -> None:
        """The last code cell checks the result with assert statements (and they passed)."""
        code_cells = [cell for cell in executed[name].cells if cell.cell_type == "code"]
        assert "assert " in code_cells[-1].source
        assert "assert len(" in "".join(cell.source for cell in code_cells[-2:])

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_no_unexpected_warnings(
        self, executed: dict[str, nbformat.NotebookNode], name: str
    ) -> None:
        """No deprecation or future warnings leak into the notebook's output."""
        stderr = _stream_text(executed[name], "stderr")
        for category in ("DeprecationWarning", "FutureWarning", "SettingWithCopyWarning"):
            assert category not in stderr

    def test_quickstart_shows_the_progress_widget(
        self, executed: dict[str, nbformat.NotebookNode]
    ) -> None:
        """In a kernel, infer displays the ipywidget (a widget view), not a text line."""
        views = [
            o
            for o in _outputs(executed["quickstart.ipynb"])
            if o.output_type == "display_data"
            and "application/vnd.jupyter.widget-view+json" in o.get("data", {})
        ]
        assert len(views) >= 4  # infer, flaky infer, ainfer (cached), start

    def test_quickstart_shows_the_template_error(
        self, executed: dict[str, nbformat.NotebookNode]
    ) -> None:
        """The bad placeholder is reported as a TemplateError naming the right column."""
        stdout = _stream_text(executed["quickstart.ipynb"], "stdout")
        assert "TemplateError:" in stdout
        assert "'review'" in stdout

    def test_labelling_draws_plots(self, executed: dict[str, nbformat.NotebookNode]) -> None:
        """The summary cells render matplotlib figures as PNG images."""
        images = [
            o
            for o in _outputs(executed["labelling.ipynb"])
            if o.output_type in ("display_data", "execute_result")
            and "image/png" in o.get("data", {})
        ]
        assert len(images) >= 2

    def test_labelling_warns_about_failed_rows(
        self, executed: dict[str, nbformat.NotebookNode]
    ) -> None:
        """The first run's failures are summarised by one RowsFailedWarning on stderr."""
        stderr = _stream_text(executed["labelling.ipynb"], "stderr")
        assert stderr.count("RowsFailedWarning") == 1


class TestNotebooksCommitted:
    """The committed notebooks are valid nbformat 4 and carry no outputs."""

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_valid_nbformat_4(self, name: str) -> None:
        """The file validates against the nbformat 4 schema."""
        nb = read(name, as_version=nbformat.NO_CONVERT)
        assert nb.nbformat == 4
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == KERNEL_NAME

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_saved_without_outputs(self, name: str) -> None:
        """No code cell has outputs or an execution count."""
        nb = read(name, as_version=nbformat.NO_CONVERT)
        code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
        assert code_cells
        assert [c.id for c in code_cells if c.outputs] == []
        assert [c.id for c in code_cells if c.execution_count is not None] == []

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_no_api_key_in_the_file(self, name: str) -> None:
        """Nothing that looks like a key (sandbox or real) is saved in the notebook."""
        text = (NOTEBOOKS_DIR / name).read_text(encoding="utf-8")
        assert "sk-" not in text


class TestWarningPointsAtTheUsersLine:
    """The failed-rows warning names the user's line (notebooks show it), not library code."""

    def test_accessor_and_run_result(self, sandbox: Any, target: dict[str, str]) -> None:
        """df.narrative.infer(...) and start(...).result() warn at this file's lines."""
        import pandas as pd

        sandbox.configure(failure_rate=1.0)
        df = pd.DataFrame({"a": ["x", "y"]})
        schema = {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}
        with pytest.warns(Warning) as caught:
            df.narrative.infer("{a}", output=schema, progress=False, **target)
            df.narrative.start("{a}", output=schema, progress=False, **target).result()
        assert [Path(w.filename).name for w in caught] == [Path(__file__).name] * 2
