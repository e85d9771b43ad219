"""The review widget in a real browser: JupyterLab on 127.0.0.1, driven by headless Chromium.

The notebook ``tests/browser_notebooks/review.ipynb`` compares two models on five rows (one row
fails, two rows disagree) with a disk cache. The test opens the review, picks a value for the
failed row by clicking its button, moves on with the keyboard, accepts the next row with a click,
and checks from the kernel that ``review.labels`` and ``review.apply()`` hold exactly those two
changes. Then it restarts the kernel, runs the notebook again, and finds both labels back (from the
cache file) with the widget resuming after them. Server, browser and helpers are those of
``tests/test_browser.py`` (imported); screenshots go to the test's temp folder, paths printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import KERNEL_NAME, LabSession, open_lab

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

NOTEBOOK_SOURCE = Path(__file__).parent / "browser_notebooks" / "review.ipynb"
NOTEBOOK_NAME = "review.ipynb"

RESTART_KERNEL_JS = """
async () => {
  const panel = window.jupyterapp.shell.currentWidget;
  await panel.sessionContext.session.kernel.restart();
  return true;
}
"""

#: What the check cell prints once the failed row (2) is labelled "neutral" by a click and the
#: first disagreeing row (3) is accepted (the majority of a 1-1 tie is the first model's).
EXPECTED_LABELS = "LABELS [(2, 'label', 'neutral', 'edited'), (3, 'label', 'positive', 'accepted')]"
EXPECTED_APPLIED = "REVIEWED [2, 3] ['positive', 'neutral', 'positive', 'positive', 'positive']"


def _copy_notebook(folder: Path) -> None:
    nb = json.loads(NOTEBOOK_SOURCE.read_text(encoding="utf-8"))
    nb["metadata"]["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python (narrative-pandas browser test)",
        "language": "python",
    }
    (folder / NOTEBOOK_NAME).write_text(json.dumps(nb, indent=1), encoding="utf-8")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    """JupyterLab with the review notebook open in Chromium and its kernel idle."""
    with open_lab(
        tmp_path_factory.mktemp("browser-review"),
        NOTEBOOK_NAME,
        _copy_notebook,
        height=1400,
        tags=["setup", "review", "check"],
    ) as session:
        yield session


class TestReviewWidgetInBrowser:
    """Click, type and restart: the reviewed labels are what the person did, and they persist."""

    def test_click_keyboard_and_restart(self, lab: LabSession) -> None:
        """Pick a value by click, move on by key, accept by click; labels survive a restart."""
        from playwright.sync_api import expect

        with lab.diagnostics("review"):
            lab.run_cell("setup")
            expect(lab.output("setup")).to_contain_text("SETUP_OK 5 1")
            lab.run_cell("review")
            widget = lab.cell("review").locator(".npd-review")
            expect(widget).to_be_visible(timeout=15_000)
            header = widget.locator(".widget-html").first
            expect(header).to_contain_text("Row 1 of 5")
            expect(header).to_contain_text("failed")
            expect(widget).to_contain_text("broken two")
            accept = widget.locator("button", has_text="Accept")
            expect(accept).to_be_disabled()  # a failed row has no answer to accept
            lab.wait_idle()

            # The failed row: click "neutral" among the enum's buttons (schema order).
            buttons = widget.locator(".npd-review-field-label button")
            expect(buttons).to_have_text(["positive", "negative", "neutral"])
            buttons.filter(has_text="neutral").click()
            expect(widget).to_contain_text("reviewed 1")
            expect(buttons.filter(has_text="neutral")).to_have_class(
                __import__("re").compile(r"mod-active")
            )

            # The keyboard moves on: "n" in the key box.
            keys = widget.locator(".npd-review-keys input")
            keys.click()
            lab.page.keyboard.press("n")
            expect(header).to_contain_text("Row 2 of 5")
            expect(widget).to_contain_text("split three")
            expect(keys).to_have_value("")

            # A disagreeing row: accept the answer shown, which moves on by itself.
            expect(accept).to_be_enabled()
            accept.click()
            expect(header).to_contain_text("Row 3 of 5")
            expect(header).to_contain_text("reviewed 2")
            lab.screenshot("narrative-review.png")

            lab.wait_idle()
            lab.run_cell("check")
            output = lab.output("check")
            expect(output).to_contain_text(EXPECTED_LABELS)
            expect(output).to_contain_text(EXPECTED_APPLIED)
            expect(output).to_contain_text("AT 5")

        with lab.diagnostics("review-after-restart"):
            assert lab.page.evaluate(RESTART_KERNEL_JS) is True
            lab.wait_idle()
            lab.run_cell("setup")
            expect(lab.output("setup")).to_contain_text("SETUP_OK 5 1")
            lab.run_cell("review")
            widget = lab.cell("review").locator(".npd-review")
            header = widget.locator(".widget-html").first
            expect(header).to_contain_text("Row 3 of 5")  # resumes after the reviewed rows
            expect(header).to_contain_text("reviewed 2")
            lab.wait_idle()
            lab.run_cell("check")
            output = lab.output("check")
            expect(output).to_contain_text(EXPECTED_LABELS)
            expect(output).to_contain_text(EXPECTED_APPLIED)
            lab.screenshot("narrative-review-after-restart.png")
