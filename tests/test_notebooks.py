"""The shipped notebooks: each runs top to bottom twice in one kernel, checked from outside.

The notebooks are handouts and carry no assertions. These tests execute every
``notebooks/*.ipynb`` with nbclient, twice in the same kernel (a second "Run All" must work),
then read the executed cells' outputs, and for some notebooks run one extra probe cell in that
kernel that prints the values to check as JSON. The committed files carry no outputs.
"""

from __future__ import annotations

import copy
import html
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(path.name for path in NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 180
KERNEL_NAME = "python3"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PROBE_MARK = "NOTEBOOK-PROBE "

EXTRAS = {"quickstart.ipynb": (), "labelling.ipynb": ("plot",), "scale_out_dask.ipynb": ("dask",)}
"""The extras each notebook needs, which its first cell must name."""

PROBES = {
    "quickstart.ipynb": """
import json
print("NOTEBOOK-PROBE " + json.dumps({
    "rows": len(out),
    "first_columns": list(out.columns[:2]),
    "errors": int(out["narrative_error"].notna().sum()),
    "sentiments": out["sentiment"].astype(str).tolist(),
    "scores_in_range": bool(out["score"].between(-1, 1).all()),
    "flaky_failed": int(flaky["narrative_error"].notna().sum()),
    "flaky_consistent": bool((flaky["narrative_error"].notna() == flaky["sentiment"].isna()).all()),
    "async_report": [int(report["cached_rows"]), int(report["jobs_submitted"])],
    "start_jobs": int(final.attrs["narrative"]["jobs_submitted"]),
    "start_same": final["sentiment"].tolist() == out["sentiment"].tolist(),
}))
""",
    "scale_out_dask.ipynb": """
import json
print("NOTEBOOK-PROBE " + json.dumps({
    "rows": len(labels),
    "errors": int(labels["narrative_error"].notna().sum()),
    "peak_unfinished_jobs": sandbox.stats.peak_unfinished_jobs,
    "second_jobs": int(second["jobs_submitted"]),
    "second_cached": int(second["cached_rows"]),
}))
""",
}
"""Per notebook: code run in its kernel after the two passes, printing values to check."""

PENDING: dict[str, str] = {}
"""Notebooks another change is still turning into a handout: their handout checks xfail."""


@dataclass
class Executed:
    """A notebook after the first and the second pass in one kernel, and its probe's values."""

    first: nbformat.NotebookNode
    second: nbformat.NotebookNode
    probe: dict[str, Any]


def kernel_env() -> dict[str, str]:
    """The kernel's environment: ours without Narrative settings (the notebooks need none)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}


def read(name: str, as_version: Any = 4) -> nbformat.NotebookNode:
    """Notebook ``name`` from notebooks/."""
    nb: nbformat.NotebookNode = nbformat.read(  # type: ignore[no-untyped-call]
        NOTEBOOKS_DIR / name, as_version=as_version
    )
    return nb


def has_asserts(name: str) -> bool:
    """True if a code cell of the committed notebook has an assert statement."""
    return any(
        re.search(r"^\s*assert\b", cell.source, re.MULTILINE)
        for cell in read(name).cells
        if cell.cell_type == "code"
    )


_RUNS: dict[str, Executed] = {}
"""Each notebook's two passes, run once per test session for every module that reads them."""


def execute_twice(name: str, jupyter_path: Path) -> Executed:
    """Notebook ``name`` run top to bottom twice in one fresh kernel (cwd = notebooks/).

    Run once per session: ``test_labelling_notebook`` and ``test_dask`` read the same passes.
    """
    if name not in _RUNS:
        _RUNS[name] = _execute_twice(name, jupyter_path)
    return _RUNS[name]


def _execute_twice(name: str, jupyter_path: Path) -> Executed:
    nb = read(name)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
        allow_errors=False,
    )
    passes: list[nbformat.NotebookNode] = []
    probe: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        # JUPYTER_PATH comes first in the kernelspec search, so "python3" is our interpreter.
        mp.setenv("JUPYTER_PATH", str(jupyter_path))
        assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
        with client.setup_kernel(env=kernel_env()):
            for _ in range(2):
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                passes.append(copy.deepcopy(nb))
            if name in PROBES:
                cell = nbformat.v4.new_code_cell(PROBES[name])  # type: ignore[no-untyped-call]
                nb.cells.append(cell)
                client.execute_cell(cell, len(nb.cells) - 1)
                text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
                probe = json.loads(text.split(PROBE_MARK, 1)[1])
    return Executed(passes[0], passes[1], probe)


class Runs(Mapping[str, Executed]):
    """Every notebook's two passes, each executed when a test first asks for it."""

    def __init__(self, jupyter_path: Path) -> None:
        self.jupyter_path = jupyter_path
        # its own asserts do not hold on a second pass yet
        self.names = [n for n in NOTEBOOKS if not (n in PENDING and has_asserts(n))]

    def __getitem__(self, name: str) -> Executed:
        if name not in self.names:
            raise KeyError(name)
        return execute_twice(name, self.jupyter_path)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@pytest.fixture(scope="module")
def executed(jupyter_path: Path) -> Mapping[str, Executed]:
    """Every notebook, executed twice once for all tests of the session."""
    return Runs(jupyter_path)


def run_of(executed: Mapping[str, Executed], name: str) -> Executed:
    """The executed notebook ``name``, or an xfail if it is still pending."""
    if name not in executed:
        pytest.xfail(PENDING[name])
    return executed[name]


def stream_text(nb: nbformat.NotebookNode, stream: str) -> str:
    return "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == stream
    )


def outputs(nb: nbformat.NotebookNode) -> Iterator[Any]:
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.outputs


def visible(html_text: str) -> str:
    """The text of an HTML fragment, tags removed and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_text))


def summaries(cell: Any) -> list[str]:
    """The visible text of each static progress summary among a cell's outputs."""
    return [
        visible(o["data"]["text/html"])
        for o in cell.outputs
        if o.output_type == "display_data"
        and "narrative-summary" in o.get("data", {}).get("text/html", "")
    ]


def cell_with(nb: nbformat.NotebookNode, source_start: str) -> Any:
    """The one code cell whose source starts with ``source_start``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    assert len(cells) == 1, source_start
    return cells[0]


class TestEveryNotebookRunsTwice:
    """Each notebook runs top to bottom twice in one kernel, with no error or widget left."""

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_both_passes_run_without_errors(
        self, executed: Mapping[str, Executed], name: str
    ) -> None:
        """Every code cell ran in both passes, and none produced an error output."""
        run = run_of(executed, name)
        for nb in (run.first, run.second):
            code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
            assert code_cells
            assert all(cell.execution_count is not None for cell in code_cells)
            assert [o for o in outputs(nb) if o.output_type == "error"] == []
        first_counts = [c.execution_count for c in run.first.cells if c.cell_type == "code"]
        second_counts = [c.execution_count for c in run.second.cells if c.cell_type == "code"]
        assert min(second_counts) > max(first_counts)  # the same kernel, counting on

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_no_widget_left_in_the_saved_outputs(
        self, executed: Mapping[str, Executed], name: str
    ) -> None:
        """No output is a widget view without a static fallback, or a bare widget repr (VBox(...)),
        once runs ended (a review widget stays live, with an HTML line beside it)."""
        run = run_of(executed, name)
        for nb in (run.first, run.second):
            for output in outputs(nb):
                data = output.get("data", {})
                assert WIDGET_VIEW not in data or "text/html" in data
                assert not re.match(r"\s*[HV]Box\(", data.get("text/plain", ""))

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_no_unexpected_warnings(self, executed: Mapping[str, Executed], name: str) -> None:
        """No deprecation or future warnings leak into the notebook's output."""
        run = run_of(executed, name)
        stderr = stream_text(run.first, "stderr") + stream_text(run.second, "stderr")
        for category in ("DeprecationWarning", "FutureWarning", "SettingWithCopyWarning"):
            assert category not in stderr


class TestQuickstart:
    """What the quickstart shows, read from its executed cells and its kernel."""

    def test_results(self, executed: Mapping[str, Executed]) -> None:
        """Six rows with the expected labels; the flaky run's failures are the rows without one."""
        probe = executed["quickstart.ipynb"].probe
        assert probe["rows"] == 6 and probe["first_columns"] == ["product", "review"]
        assert probe["errors"] == 0 and probe["scores_in_range"]
        assert probe["sentiments"] == [
            "positive",
            "negative",
            "mixed",
            "positive",
            "negative",
            "positive",
        ]
        assert 0 < probe["flaky_failed"] < 6 and probe["flaky_consistent"]
        assert probe["async_report"] == [6, 0]  # every row from the cache
        assert probe["start_jobs"] == 5  # 6 rows, 5 distinct requests
        assert probe["start_same"]

    def test_finished_run_leaves_a_static_summary_with_its_counts(
        self, executed: Mapping[str, Executed]
    ) -> None:
        """The infer cell holds one text/html summary with the final counts (no widget)."""
        run = executed["quickstart.ipynb"]
        (first,) = summaries(cell_with(run.first, "out = df.narrative.infer("))
        assert "6/6 · 100%" in first
        assert "done in" in first
        assert "completed 6 · failed 0 · cached 0" in first
        (second,) = summaries(cell_with(run.second, "out = df.narrative.infer("))
        assert "completed 0 · failed 0 · cached 6" in second and "from cache" in second

    def test_every_run_cell_has_its_summary(self, executed: Mapping[str, Executed]) -> None:
        """infer, the flaky infer, ainfer and start each end as one summary, in both passes."""
        starts = (
            "out = df.narrative.infer(",
            "sandbox.configure(failure_rate=0.5)",
            "out_async = await",
            "run = df.narrative.start(",
        )
        run = executed["quickstart.ipynb"]
        for nb in (run.first, run.second):
            for start in starts:
                assert len(summaries(cell_with(nb, start))) == 1, start

    def test_failed_rows_in_the_summary(self, executed: Mapping[str, Executed]) -> None:
        """The flaky run's summary counts its failed rows and says why they failed."""
        run = executed["quickstart.ipynb"]
        (text,) = summaries(cell_with(run.second, "sandbox.configure(failure_rate=0.5)"))
        failed = executed["quickstart.ipynb"].probe["flaky_failed"]
        assert f"failed {failed}" in text and f"{failed} of 6 rows failed" in text
        assert "Why rows have no result:" in text

    def test_nbconvert_html_and_markdown_show_the_counts(
        self, executed: Mapping[str, Executed], tmp_path: Path
    ) -> None:
        """An HTML export contains the final counts; a Markdown export has no widget repr."""
        from nbconvert import HTMLExporter, MarkdownExporter

        nb = executed["quickstart.ipynb"].first
        page, _ = HTMLExporter().from_notebook_node(nb)
        assert "completed 6 · failed 0 · cached 0" in visible(page)
        markdown, _ = MarkdownExporter().from_notebook_node(nb)
        assert "VBox(" not in markdown and "HBox(" not in markdown
        assert "6/6 done in" in markdown or "completed <b>6</b>" in markdown

    def test_shows_the_template_error(self, executed: Mapping[str, Executed]) -> None:
        """The bad placeholder is reported as a TemplateError naming the right column."""
        stdout = stream_text(executed["quickstart.ipynb"].first, "stdout")
        assert "TemplateError:" in stdout
        assert "'review'" in stdout


class TestScaleOutDask:
    """What the Dask notebook shows, read from its kernel."""

    def test_results_and_shared_cache(self, executed: Mapping[str, Executed]) -> None:
        """300 labelled rows, the cluster-wide limit held, the second shared run sent nothing."""
        probe = executed["scale_out_dask.ipynb"].probe
        assert probe["rows"] == 300 and probe["errors"] == 0
        assert 0 < probe["peak_unfinished_jobs"] <= 32
        assert (probe["second_jobs"], probe["second_cached"]) == (0, 300)

    def test_key_not_in_the_task_graph(self, executed: Mapping[str, Executed]) -> None:
        """The printed check says the key is not visible in the graph, in both passes."""
        run = executed["scale_out_dask.ipynb"]
        for nb in (run.first, run.second):
            assert "key visible in the task graph: False" in stream_text(nb, "stdout")


class TestScaleOutDaskProgress:
    """The Dask notebook shows the cluster's rows whichever call computes the frame."""

    def test_rows_progress_however_computed(self, executed: dict[str, Executed]) -> None:
        """out.narrative.compute(), persist() + progress() and dask.compute(out) each end as
        one summary of all 300 rows in their cell, in both passes."""
        run = executed["scale_out_dask.ipynb"]
        for nb in (run.first, run.second):
            for start in (
                "labels = out.narrative.compute()",
                "running = ddf.narrative.infer(",
                "# Dask's own call",
            ):
                (text,) = summaries(cell_with(nb, start))
                assert "300/300 · 100%" in text and "done in" in text, (start, text)
            stdout = stream_text(nb, "stdout")
            assert "rows followed: 300" in stdout
            assert "rows computed with dask.compute: 300" in stdout


class TestLabelling:
    """What the labelling notebook shows (its own checks belong with its re-runnable version)."""

    def test_draws_plots(self, executed: Mapping[str, Executed]) -> None:
        """The summary cells render matplotlib figures as PNG images."""
        run = run_of(executed, "labelling.ipynb")
        images = [
            o
            for o in outputs(run.first)
            if o.output_type in ("display_data", "execute_result")
            and "image/png" in o.get("data", {})
        ]
        assert len(images) >= 2


class TestNotebooksAreHandouts:
    """The committed notebooks: valid, without outputs or asserts, saying what they need."""

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
    def test_no_assert_statements(self, name: str) -> None:
        """A handout carries no test assertions: the tests check it from outside."""
        if name in PENDING and has_asserts(name):
            pytest.xfail(PENDING[name])
        assert not has_asserts(name)

    @pytest.mark.parametrize("name", NOTEBOOKS)
    def test_says_which_extras_it_needs(self, name: str) -> None:
        """The first cell has a "Needs:" line naming the install and each extra needed."""
        first = read(name).cells[0].source
        needs = [line for line in first.splitlines() if line.startswith("**Needs:**")]
        if not needs and name in PENDING:
            pytest.xfail(PENDING[name])
        assert len(needs) == 1, first
        assert "pip install" in needs[0]
        for extra in EXTRAS[name]:
            assert f"[{extra}]" in needs[0]

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
