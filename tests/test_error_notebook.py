"""One mistake per cell, in a real IPython kernel (nbclient): what a notebook user actually sees.

Each cell makes one of the mistakes a new user makes (no key; a missing column; a wrong schema
keyword; ``output_schema=``; a misspelled model; a wrong key answered 401 by the sandbox). For
each, the test reads the error output the kernel sent: the class, the message, and a traceback of
at most 12 lines, with the user's cell and no path inside narrative_pandas. The misspelled model's
warning must point at the cell and name the right id; ``%tb`` right after an error shows the full
traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

KERNEL_NAME = "python3"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
WRONG_KEY = "sk-wrong-notebook-key-0123456789"

SETUP = """\
import pandas as pd
from pydantic import BaseModel
import narrative_pandas as npd
from narrative_pandas.sandbox import Sandbox

class Label(BaseModel):
    label: str
    score: float

sb = Sandbox().start()
df = pd.DataFrame({"review": ["great", "awful", "fine"]})
place = dict(base_url=sb.base_url, data_plane_id=sb.data_plane_id)
stale_key = "sk-" + "wrong-notebook-key-0123456789"
"""

# (cell source, error class, text the message contains)
MISTAKES: list[tuple[str, str, str]] = [
    (
        'out = df.narrative.infer("Review: {review}", output=Label, progress=False, **place)',
        "ConfigurationError",
        "No Narrative API key. Call narrative_pandas.configure(",
    ),
    (
        "npd.configure(api_key=sb.api_key, **place)\n"
        'out = df.narrative.infer("Review: {reviw}", output=Label, progress=False)',
        "TemplateError",
        "reviw",
    ),
    (
        'schema = {"type": "object", "properties": {"label": {"type": "string"}},\n'
        '          "requird": ["label"]}\n'
        'out = df.narrative.infer("Review: {review}", output=schema, progress=False)',
        "SchemaError",
        'unknown keyword "requird"',
    ),
    (
        'out = df.narrative.infer("Review: {review}", output_schema=Label, progress=False)',
        "UnknownOptionError",
        "infer() got an unexpected keyword argument 'output_schema'. Did you mean output=?",
    ),
    (
        'out = df.narrative.infer("Review: {review}", output=Label, progress=False,\n'
        '                         model="anthropic.claude-haiku-4-5")',
        "BadRequestError",
        "400 Bad Request on POST /model-inference/run",
    ),
    (
        "npd.configure(api_key=stale_key, **place)\n"
        'out = df.narrative.infer("Review: {review}", output=Label, progress=False, cache=False)',
        "AuthenticationError",
        "The key sent came from narrative_pandas.configure(api_key=...)",
    ),
]


FULL_CELL = """\
%env NARRATIVE_PANDAS_FULL_TRACEBACK=1
out = df.narrative.infer("Review: {review}", output_schema=Label)"""


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> nbformat.NotebookNode:
    """The notebook of mistakes, run once in a fresh kernel of this interpreter."""
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
    cells = [nbformat.v4.new_code_cell(SETUP)]  # type: ignore[no-untyped-call]
    cells += [nbformat.v4.new_code_cell(src) for src, _, _ in MISTAKES]  # type: ignore[no-untyped-call]
    cells.append(nbformat.v4.new_code_cell("%tb"))  # type: ignore[no-untyped-call]
    cells.append(nbformat.v4.new_code_cell(FULL_CELL))  # type: ignore[no-untyped-call]
    cells.append(nbformat.v4.new_code_cell("sb.stop()"))  # type: ignore[no-untyped-call]
    nb = nbformat.v4.new_notebook(cells=cells)  # type: ignore[no-untyped-call]
    client = NotebookClient(
        nb, kernel_name=KERNEL_NAME, timeout=120, allow_errors=True, resources={}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
        client.execute(env=env)
    return nb


def error_of(cell: Any) -> dict[str, Any]:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert len(errors) == 1, cell.outputs
    return dict(errors[0])


def traceback_lines(error: dict[str, Any]) -> list[str]:
    return ANSI.sub("", "\n".join(error["traceback"])).splitlines()


def stderr_of(cell: Any) -> str:
    return "".join(
        o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"
    )


class TestMistakesInCells:
    def test_setup_runs(self, executed: nbformat.NotebookNode) -> None:
        """The first cell (imports, sandbox) runs without an error."""
        assert not [o for o in executed.cells[0].outputs if o.output_type == "error"]

    @pytest.mark.parametrize(("position", "mistake"), list(enumerate(MISTAKES, start=1)))
    def test_short_traceback_with_the_users_line(
        self, executed: nbformat.NotebookNode, position: int, mistake: tuple[str, str, str]
    ) -> None:
        """Class and message; at most 12 lines; the cell's line shown; no package path."""
        _source, ename, text = mistake
        error = error_of(executed.cells[position])
        assert error["ename"] == ename
        assert text in error["evalue"]
        lines = traceback_lines(error)
        assert len(lines) <= 12, "\n".join(lines)
        assert "\n".join(lines).startswith(f"{ename}: {error['evalue']}")
        assert f"Cell In[{position + 1}], line " in "\n".join(lines)
        assert any(line.startswith("----> out = df.narrative.infer(") for line in lines)
        package = str(Path(__file__).resolve().parent.parent / "narrative_pandas")
        assert package not in "\n".join(lines)
        assert "narrative_pandas/" not in "\n".join(lines)
        assert "%tb" in lines[-1]
        assert WRONG_KEY not in "\n".join(lines)

    def test_model_warning_points_at_the_cell(self, executed: nbformat.NotebookNode) -> None:
        """The misspelled model warns once, located in the cell, naming the right id."""
        stderr = stderr_of(executed.cells[5])
        warning = re.search(r"(\S+\.py):(\d+): UnknownModelWarning: (.*)", stderr)
        assert warning is not None, stderr
        filename, line, message = warning.groups()
        assert "ipykernel" in filename and "narrative_pandas" not in filename
        assert "pydantic" not in filename
        assert line == "1"
        assert "Did you mean 'anthropic.claude-haiku-4.5'?" in message
        assert stderr.count("UnknownModelWarning") == 1

    def test_percent_tb_gives_the_full_traceback(self, executed: nbformat.NotebookNode) -> None:
        """%tb after the last error shows every frame, the package's included."""
        cell = executed.cells[len(MISTAKES) + 1]
        full = [o for o in cell.outputs if o.output_type == "error"]
        assert full, cell.outputs
        text = ANSI.sub("", "\n".join(full[0]["traceback"]))
        assert "narrative_pandas" in text and "_run.py" in text
        assert len(text.splitlines()) > 12
        assert WRONG_KEY not in text

    def test_environment_switch_gives_full_tracebacks(
        self, executed: nbformat.NotebookNode
    ) -> None:
        """With NARRATIVE_PANDAS_FULL_TRACEBACK=1 every error shows all its frames."""
        error = error_of(executed.cells[len(MISTAKES) + 2])
        assert error["ename"] == "UnknownOptionError"
        text = "\n".join(traceback_lines(error))
        assert "_options.py" in text and len(text.splitlines()) > 12
