"""The labelling notebook walks the whole loop, twice in one kernel; checked from outside.

The notebook is a handout (no asserts in it): this module runs it top to bottom two times in the
same kernel, as a class would (re-running every cell), and reads what the cells showed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from bs4 import BeautifulSoup
from test_notebooks import execute_twice, read

NAME = "labelling.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(jupyter_path: Path) -> list[nbformat.NotebookNode]:
    """The notebook after its first and its second pass in one kernel (run once a session)."""
    run = execute_twice(NAME, jupyter_path)
    return [run.first, run.second]


def _cell(nb: nbformat.NotebookNode, starts: str) -> Any:
    found = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts)]
    assert len(found) == 1, starts
    return found[0]


def _text(cell: Any) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def _html(cell: Any) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def _table(cell: Any) -> pd.DataFrame:
    """The DataFrame a cell displayed, read back from its HTML (header row, then body rows)."""
    soup = BeautifulSoup(_html(cell), "html.parser")
    table = soup.find("table")
    assert table is not None, "the cell shows no table"
    header = [th.get_text(strip=True) for th in table.find("thead").find_all("th")][1:]
    rows = [
        [td.get_text(strip=True) for td in tr.find_all("td")]
        for tr in table.find("tbody").find_all("tr")
    ]
    return pd.DataFrame(rows, columns=header)


class TestLabellingNotebook:
    """Each step of the loop shows what it should, on both passes."""

    def test_no_asserts_in_the_handout(self) -> None:
        """The committed notebook has no assert statements."""
        nb = read(NAME)
        assert not [c.id for c in nb.cells if c.cell_type == "code" and "assert" in c.source]

    @pytest.mark.parametrize("run", [0, 1])
    def test_every_cell_ran_without_error(self, runs: list[Any], run: int) -> None:
        """Every code cell has an execution count and no error output, both times."""
        cells = [c for c in runs[run].cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in cells)
        assert not [o for c in cells for o in c.outputs if o.output_type == "error"]

    def test_evaluate_table_and_confusion_heatmap(self, runs: list[Any]) -> None:
        """evaluate shows both fields' figures; confusion is a styled table in schema order."""
        table = _table(_cell(runs[0], "fixed.narrative.evaluate"))
        assert list(table["field"]) == ["sentiment", "score"]
        assert list(table["kind"]) == ["categorical", "numeric"]
        assert list(table["n"]) == ["300", "300"]
        assert 0.6 < float(table["accuracy"][0]) < 0.95
        assert float(table["pearson_r"][1]) > 0.6
        heat = _html(_cell(runs[0], "fixed.narrative.confusion"))
        assert "background-color: rgb(" in heat
        order = [heat.find(f">{label}<") for label in ("positive", "negative", "mixed", "neutral")]
        assert order == sorted(order) and order[0] > 0

    def test_compare_answers_all_and_models_disagree(self, runs: list[Any]) -> None:
        """Every row answered by both; the second pass is all cache; evaluate per variant."""
        counts = _text(_cell(runs[0], "import tempfile"))
        assert "'haiku': {'completed_rows': 300, 'failed_rows': 0" in counts
        assert "'sonnet': {'completed_rows': 300, 'failed_rows': 0" in counts
        again = _text(_cell(runs[1], "import tempfile"))
        assert "jobs submitted: 0 | from the cache: 600" in again
        disagreement = _text(_cell(runs[0], 'disagree = cmp["agreement[sentiment]"] < 1'))
        found = re.search(r"disagree on (\d+) of 300", disagreement)
        assert found and 5 <= int(found.group(1)) <= 60
        table = _table(_cell(runs[0], 'disagree = cmp["agreement[sentiment]"] < 1'))
        assert list(table["variant"]) == ["haiku", "sonnet"]
        assert list(table["field"]) == ["sentiment", "sentiment"]

    def test_review_widget_labels_and_better_figures(self, runs: list[Any]) -> None:
        """The review shows a widget; applying the reviewed labels raises the accuracy."""
        review_cell = _cell(runs[0], "rv = cmp.narrative.review")
        assert any(
            "application/vnd.jupyter.widget-view+json" in o.get("data", {})
            for o in review_cell.outputs
        )
        before = _table(_cell(runs[0], 'disagree = cmp["agreement[sentiment]"] < 1'))
        after = _table(_cell(runs[0], "reviewed = rv.apply(cmp)"))
        assert float(after["accuracy"][0]) > max(before["accuracy"].astype(float))
        disagree = _text(_cell(runs[0], 'disagree = cmp["agreement[sentiment]"] < 1'))
        count = re.search(r"disagree on (\d+) of 300", disagree)
        assert count is not None
        reviewed = _text(_cell(runs[0], "for index in cmp.index[disagree]"))
        assert f"<Review: 300 rows, {count.group(1)} reviewed" in reviewed

    def test_few_shot_turns_shown(self, runs: list[Any]) -> None:
        """preview shows three example pairs ahead of the row's own turn."""
        text = _text(_cell(runs[0], "labelled = rv.apply(fixed)"))
        assert text.count("--- assistant") == 3
        assert text.count("--- user") == 4
        assert text.index("--- system") < text.index("--- assistant")

    def test_second_pass_shows_the_same(self, runs: list[Any]) -> None:
        """The second pass (same kernel) shows the same figures and the same review."""
        for starts in (
            "fixed.narrative.evaluate",
            "reviewed = rv.apply(cmp)",
            "cmp.narrative.evaluate(rv)",
        ):
            assert _html(_cell(runs[0], starts)) == _html(_cell(runs[1], starts))
