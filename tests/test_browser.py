"""The progress widget in a real browser: JupyterLab on 127.0.0.1, driven by headless Chromium.

Unit tests check the widget's Python side; only a browser shows that what a user sees works: the
widget appears in the cell that started the run, its counts and ``n/total · p%`` move while the
kernel is idle, nothing in it is cut or wraps with the cell 800 and 1,000 px wide, a click on
Cancel (a comm message from the page to the kernel) stops a slow run and leaves the partial frame,
every finished run's widget is replaced by the static HTML summary (green, red), and the saved
notebook, reloaded, shows those summaries and no "Error displaying widget". The notebook is
``tests/browser_notebooks/run_and_cancel.ipynb``.

Set-up follows ``docs/browser-testing.md``: Debian's ``/usr/bin/chromium`` (never ``playwright
install``), all Jupyter state in the test's temp folder, a kernelspec running this interpreter,
and cells run only once the kernel is connected and idle (the status icon says "idle" too early).

The cells are run one at a time through JupyterLab's ``notebook:run-cell`` command, not "Run All":
the kernel handles a widget click only between cells, so the Cancel click must come while the
kernel is idle, and the cell that collects the cancelled run's frame must run after the click.
Two more tests: Cancel clicked while a cell *awaits* the run stops it (the kernel's loop is free);
while a cell *blocks* in ``run.result()`` the kernel cannot take clicks, so the widget says to
interrupt the kernel, and the interrupt stops the run with the partial frame. All tests share
one server, page and kernel (module fixture).

If the browser cannot start the test skips, unless ``NARRATIVE_BROWSER_REQUIRED=1`` (CI), where it
fails. A screenshot is saved in the test's temp folder at the end and on failure; its path is
printed (``pytest -s`` or the captured output of a failure shows it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
NOTEBOOK_SOURCE = Path(__file__).parent / "browser_notebooks" / "run_and_cancel.ipynb"
NOTEBOOK_NAME = "run_and_cancel.ipynb"
KERNEL_NAME = "narrative-browser-test"
SERVER_START_S = 60.0

#: Run 1: 40 rows on the fast sandbox; run 2: 30 rows on the slow one, 3 at a time.
RUN1_ROWS = 40
RUN2_ROWS = 30
RUN2_CONCURRENCY = 3

#: A slow run whose frame the cell awaits: the kernel's loop stays free, so Cancel is clickable.
BLOCKED_TIMEOUT_S = 10
AWAITED_CELL = f"""
import asyncio
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the cancelled rows warn; here they are the point
    run3 = reviews.iloc[200:230].narrative.start(
        REVIEW_PROMPT,
        output=ReviewLabel,
        system=REVIEW_SYSTEM,
        api_key=slow.api_key,
        base_url=slow.base_url,
        data_plane_id=slow.data_plane_id,
        concurrency={RUN2_CONCURRENCY},
        progress=True,
    )
    try:
        out3 = await asyncio.wait_for(run3, {BLOCKED_TIMEOUT_S})
    except asyncio.TimeoutError:
        print("BLOCKED_TIMEOUT", run3.status()["status"])
    else:
        print("BLOCKED_OK", int((out3["narrative_status"] == "stopped").sum()))
"""

#: A slow run whose result() blocks the cell: the widget points at Interrupt, which stops it.
BLOCKING_CELL = f"""
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    run4 = reviews.iloc[230:260].narrative.start(
        REVIEW_PROMPT,
        output=ReviewLabel,
        system=REVIEW_SYSTEM,
        api_key=slow.api_key,
        base_url=slow.base_url,
        data_plane_id=slow.data_plane_id,
        concurrency={RUN2_CONCURRENCY},
        progress=True,
        on_interrupt="return",
    )
    out4 = run4.result(timeout=60)
    status = out4["narrative_status"]
    # rows answered earlier (the cache is keyed by request, not by server) are completed
    print("INTERRUPTED_OK", int(status.isin(["stopped", "completed"]).sum()))
"""


def _unavailable(reason: str) -> None:
    """Skip (locally) or fail (CI, ``NARRATIVE_BROWSER_REQUIRED=1``) when the browser can't run."""
    if os.environ.get("NARRATIVE_BROWSER_REQUIRED") == "1":
        pytest.fail(f"browser test required (NARRATIVE_BROWSER_REQUIRED=1) but {reason}")
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# JupyterLab server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _jupyter_env(root: Path) -> dict[str, str]:
    """Environment with every Jupyter/IPython folder inside ``root``, nothing in the real home."""
    dirs = {
        "HOME": root / "home",
        "JUPYTER_CONFIG_DIR": root / "config",
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_RUNTIME_DIR": root / "runtime",
        "IPYTHONDIR": root / "ipython",
        "JUPYTERLAB_SETTINGS_DIR": root / "config" / "lab" / "user-settings",
        "JUPYTERLAB_WORKSPACES_DIR": root / "config" / "lab" / "workspaces",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}
    env.update({k: str(v) for k, v in dirs.items()})
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _write_kernelspec_and_settings(env: dict[str, str]) -> None:
    """A kernelspec running this interpreter; no virtualised cells; no news or update checks."""
    kernel_dir = Path(env["JUPYTER_DATA_DIR"]) / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (narrative-pandas browser test)",
        "language": "python",
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    settings = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab"
    files = {
        "notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }
    for name, value in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value), encoding="utf-8")


def _copy_notebook(folder: Path) -> Path:
    """The test notebook, pointed at the test's kernelspec."""
    nb = json.loads(NOTEBOOK_SOURCE.read_text(encoding="utf-8"))
    nb["metadata"]["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python (narrative-pandas browser test)",
        "language": "python",
    }
    target = folder / NOTEBOOK_NAME
    target.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return target


class LabServer:
    """``jupyter lab`` on 127.0.0.1 in a subprocess, with a random token; log in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.notebooks = root / "notebooks"
        self.notebooks.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "jupyter.log"
        self.env = _jupyter_env(root)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={self.token}",
            f"--ServerApp.root_dir={self.notebooks}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
        ]
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            cmd, env=self.env, cwd=self.notebooks, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(
                    f"{self.url}/api/status?token={self.token}", timeout=2
                ) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"jupyter lab did not answer in {SERVER_START_S}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Shut the server down through its API (which stops the kernel), then make sure."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            request = urllib.request.Request(
                f"{self.url}/api/shutdown",
                method="POST",
                headers={"Authorization": f"token {self.token}"},
            )
            with contextlib.suppress(urllib.error.URLError, OSError):
                urllib.request.urlopen(request, timeout=5).close()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 4000) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"


# --------------------------------------------------------------------------------------------
# Page helpers (JupyterLab's app is on window.jupyterapp thanks to expose_app_in_browser)

WAIT_FOR_NOTEBOOK_JS = """
async (path) => {
  const app = window.jupyterapp;
  await app.restored;
  const panel = app.shell.currentWidget;
  if (!panel || !panel.context || panel.context.path !== path) {
    throw new Error('the current widget is not ' + path);
  }
  await panel.context.ready;
  await panel.sessionContext.ready;
  return true;
}
"""

NOTEBOOK_IS_CURRENT_JS = """
(path) => {
  const app = window.jupyterapp;
  const panel = app && app.shell && app.shell.currentWidget;
  return !!(panel && panel.context && panel.context.path === path && panel.sessionContext);
}
"""

KERNEL_IDLE_JS = """
() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}
"""

#: Put ``data-test-tag="<tag>"`` on each code cell's node, from the cell's metadata tags.
TAG_CELLS_JS = """
() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const tags = [];
  panel.content.widgets.forEach((cell) => {
    const cellTags = cell.model.getMetadata('tags') || [];
    if (cellTags.length) {
      cell.node.dataset.testTag = cellTags[0];
      tags.push(cellTags[0]);
    }
  });
  return tags;
}
"""

RUN_CELL_JS = """
async (tag) => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  const index = panel.content.widgets.findIndex(
    (cell) => (cell.model.getMetadata('tags') || []).includes(tag));
  if (index < 0) { throw new Error('no cell tagged ' + tag); }
  panel.content.activeCellIndex = index;
  const ok = await app.commands.execute('notebook:run-cell');
  return ok === true;
}
"""

#: Send a cell to the kernel without waiting for it to finish.
START_CELL_JS = RUN_CELL_JS.replace("const ok = await", "const ok =").replace(
    "return ok === true;", "return true;"
)

ADD_CELL_JS = """
([tag, source]) => {
  const shared = window.jupyterapp.shell.currentWidget.content.model.sharedModel;
  shared.insertCell(shared.cells.length, {cell_type: 'code', source, metadata: {tags: [tag]}});
  return true;
}
"""

#: Every 40 ms, record run 1's completed count and bar width when either changed.
RECORD_RUN1_JS = """
() => {
  window.__narrativeSamples = [];
  window.__narrativeRecorder = setInterval(() => {
    const cell = document.querySelector('[data-test-tag="run1"]');
    const live = cell && cell.querySelector('.narrative-progress');
    const done = cell && cell.querySelector('.narrative-summary');
    const root = live || done;
    if (!root) { return; }
    const count = root.querySelector('.narrative-count-completed b');
    const bar = live ? root.querySelector('.narrative-progress-bar .progress-bar')
                     : root.querySelector('.narrative-summary-bar > div');
    const fraction = root.querySelector(
      live ? '.narrative-progress-fraction' : '.narrative-summary-fraction');
    const sample = [count ? count.textContent : '', bar ? bar.style.width : '',
                    fraction ? fraction.textContent.trim() : '', live ? 'widget' : 'summary'];
    const all = window.__narrativeSamples;
    const last = all[all.length - 1];
    if (!last || last.join('|') !== sample.join('|')) { all.push(sample); }
  }, 40);
  return true;
}
"""

STOP_RECORDING_JS = """
() => { clearInterval(window.__narrativeRecorder); return window.__narrativeSamples; }
"""

#: How many lines of text an element's content takes (distinct tops of its line boxes).
TEXT_LINES_JS = """
(el) => {
  const range = document.createRange();
  range.selectNodeContents(el);
  const tops = new Set(Array.from(range.getClientRects()).map((r) => Math.round(r.top / 6)));
  return tops.size;
}
"""

#: Whether an element's text is cut (wider than the box that shows it).
TRUNCATED_JS = "(el) => el.scrollWidth > el.clientWidth + 1"

SAVE_JS = """
async () => {
  const app = window.jupyterapp;
  await app.commands.execute('docmanager:save');
  const panel = app.shell.currentWidget;
  for (let i = 0; i < 100 && panel.context.model.dirty; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return !panel.context.model.dirty;
}
"""

CELL_WIDTH_JS = """
(tag) => document.querySelector(`[data-test-tag="${tag}"] .jp-OutputArea-output`).clientWidth
"""


def _percent(width: str) -> float | None:
    match = re.fullmatch(r"\s*([0-9.]+)%\s*", width)
    return float(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------
# The session: one server, one browser page, one kernel for the module


@contextlib.contextmanager
def _chromium() -> Iterator[Any]:
    """A headless Debian Chromium through Playwright, or skip/fail if it cannot start."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"the playwright package is not installed ({exc})")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
        except Exception as exc:
            _unavailable(f"Chromium did not start: {exc}")
        try:
            yield browser
        finally:
            browser.close()


class LabSession:
    """The test notebook open in JupyterLab with its kernel connected and idle."""

    def __init__(self, page: Any, server: LabServer, root: Path) -> None:
        self.page = page
        self.server = server
        self.root = root

    def cell(self, tag: str) -> Any:
        """The cell whose first metadata tag is ``tag``."""
        return self.page.locator(f'[data-test-tag="{tag}"]')

    def output(self, tag: str) -> Any:
        return self.cell(tag).locator(".jp-OutputArea-output")

    def run_cell(self, tag: str) -> None:
        """Run one cell and wait until the kernel has executed it; fail if it raised."""
        ok = self.page.evaluate(RUN_CELL_JS, tag)
        assert ok is True, f"cell {tag!r} failed: {self.output(tag).all_inner_texts()}"

    def start_cell(self, tag: str) -> None:
        """Send one cell to the kernel without waiting for it to finish."""
        self.page.evaluate(START_CELL_JS, tag)

    def add_cell(self, tag: str, source: str) -> None:
        """Append a code cell tagged ``tag``."""
        self.page.evaluate(ADD_CELL_JS, [tag, source])
        self.page.wait_for_function(f"({TAG_CELLS_JS.strip()})().includes({json.dumps(tag)})")

    def wait_idle(self) -> None:
        self.page.wait_for_function(KERNEL_IDLE_JS, timeout=30_000)

    def screenshot(self, name: str) -> Path:
        path = self.root / name
        with contextlib.suppress(Exception):
            self.page.screenshot(path=str(path))
        print(f"\nbrowser test screenshot: {path}")
        return path

    @contextlib.contextmanager
    def diagnostics(self, name: str) -> Iterator[None]:
        """On failure: a screenshot and the server's log tail."""
        try:
            yield
        except BaseException:
            self.screenshot(f"{name}-failure.png")
            print(f"jupyter log ({self.server.log_path}):\n{self.server.log_tail()}")
            raise


@contextlib.contextmanager
def open_lab(
    root: Path,
    notebook: str,
    copy_notebook: Callable[[Path], None],
    *,
    height: int,
    tags: list[str],
) -> Iterator[LabSession]:
    """JupyterLab on 127.0.0.1 with ``notebook`` open in Chromium and its kernel idle."""
    for module in ("jupyterlab", "ipywidgets", "jupyterlab_widgets", "ipykernel"):
        try:
            __import__(module)
        except ImportError as exc:
            _unavailable(f"{module} is not installed ({exc})")
    with _chromium() as browser:
        server = LabServer(root)
        _write_kernelspec_and_settings(server.env)
        copy_notebook(server.notebooks)
        context = browser.new_context(viewport={"width": 1400, "height": height})
        page = context.new_page()
        page.set_default_timeout(30_000)
        session = LabSession(page, server, root)
        try:
            with session.diagnostics(f"{root.name}-startup"):
                server.start()
                page.goto(f"{server.url}/lab/tree/{notebook}?token={server.token}")
                # The one trap: wait for the notebook's kernel itself, not the status icon.
                page.wait_for_function(NOTEBOOK_IS_CURRENT_JS, arg=notebook, timeout=60_000)
                assert page.evaluate(WAIT_FOR_NOTEBOOK_JS, notebook) is True
                page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)
                assert page.evaluate(TAG_CELLS_JS) == tags
            yield session
        finally:
            context.close()
            server.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    """JupyterLab with the test notebook open in Chromium and its kernel idle."""
    with open_lab(
        tmp_path_factory.mktemp("browser"),
        NOTEBOOK_NAME,
        _copy_notebook,
        height=1900,
        tags=["setup", "run1", "run2", "collect"],
    ) as session:
        yield session


# --------------------------------------------------------------------------------------------
# The tests


class TestNotebookWidgetInBrowser:
    """A run's widget in JupyterLab: it shows, moves, ends green, and Cancel stops a slow run."""

    def test_widget_moves_ends_green_and_cancel_click_stops_run(self, lab: LabSession) -> None:
        """Run 1 fills its bar and turns green; clicking Cancel on run 2 yields cancelled rows."""
        from playwright.sync_api import expect

        with lab.diagnostics("run-and-cancel"):
            lab.run_cell("setup")
            expect(lab.output("setup")).to_contain_text("SETUP_OK 300")

            # Run 1 returns at once; its widget moves while the kernel sits idle.
            lab.page.evaluate(RECORD_RUN1_JS)
            lab.run_cell("run1")
            widget1 = lab.cell("run1").locator(".narrative-progress")
            expect(widget1).to_be_visible(timeout=15_000)

            # Run 2 (slow) starts while run 1 is still going; both cells have returned.
            lab.run_cell("run2")
            widget2 = lab.cell("run2").locator(".narrative-progress")
            expect(widget2).to_be_visible(timeout=15_000)

            # When run 1 ends, its widget is replaced by the static summary: green, all done.
            summary1 = lab.cell("run1").locator(".narrative-summary")
            expect(summary1).to_be_visible(timeout=45_000)
            expect(summary1).to_have_class(re.compile(r"\bnarrative-summary-success\b"))
            expect(widget1).to_have_count(0)
            expect(summary1.locator(".narrative-count-completed b")).to_have_text(str(RUN1_ROWS))
            expect(summary1.locator(".narrative-count-failed b")).to_have_text("0")
            expect(summary1.locator(".narrative-state-done")).to_be_visible()
            expect(summary1.locator(".narrative-summary-fraction")).to_have_text(
                f"{RUN1_ROWS}/{RUN1_ROWS} · 100%"
            )
            expect(lab.output("run1").locator("button")).to_have_count(0)
            samples: list[list[str]] = lab.page.evaluate(STOP_RECORDING_JS)
            print(f"\nrun 1 as seen in the page (completed, bar, fraction, what): {samples}")
            self._assert_counts_moved(samples)
            self._assert_fraction_shown_mid_run(samples)

            # Run 2: exactly RUN2_CONCURRENCY jobs on the wire, the rest queued; still running.
            queued = str(RUN2_ROWS - RUN2_CONCURRENCY)
            expect(widget2.locator(".narrative-count-queued b")).to_have_text(queued)
            expect(widget2.locator(".narrative-state-running")).to_be_visible()
            expect(widget2.locator(".narrative-count-completed b")).to_have_text("0")

            expect(widget2.locator(".narrative-progress-fraction")).to_have_text(
                f"0/{RUN2_ROWS} · 0%"
            )

            # A click is a comm message: the kernel must be idle to handle it.
            lab.wait_idle()
            cancel = widget2.locator("button.narrative-progress-cancel")
            expect(cancel).to_be_enabled()
            self._assert_fits_at(lab, "run2", widget2, cell_width=800)
            self._assert_fits_at(lab, "run2", widget2, cell_width=1000, lines=True)
            lab.screenshot("narrative-browser-running-800px.png")
            cancel.click()

            # The kernel got the click: the run stops and its widget becomes the summary: red,
            # every row stopped (not failed: nothing went wrong with them), no button.
            summary2 = lab.cell("run2").locator(".narrative-summary")
            expect(summary2).to_be_visible()
            expect(summary2).to_have_class(re.compile(r"\bnarrative-summary-danger\b"))
            expect(summary2.locator(".narrative-state-cancelled")).to_be_visible()
            expect(widget2).to_have_count(0)
            expect(lab.output("run2").locator("button")).to_have_count(0)
            expect(summary2.locator(".narrative-count-stopped b")).to_have_text(str(RUN2_ROWS))
            expect(summary2.locator(".narrative-count-failed b")).to_have_text("0")
            expect(summary2.locator(".narrative-count-completed b")).to_have_text("0")
            # It reads "stopped", and lists each reason once, counted, without job ids.
            expect(summary2).to_contain_text(f"{RUN2_ROWS} stopped")
            reasons = summary2.locator(".narrative-summary-reasons")
            queued = RUN2_ROWS - RUN2_CONCURRENCY
            expect(reasons).to_contain_text(f"{queued} x not submitted (cancelled)")
            expect(reasons).to_contain_text(
                re.compile(r"\d x still (pending|running) when cancelled")
            )
            expect(reasons).not_to_contain_text(re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-"))
            expect(reasons).not_to_contain_text("failed")
            lines = summary2.locator(".narrative-summary-counts").evaluate(TEXT_LINES_JS)
            assert lines == 1, f"the summary's counts wrap to {lines} lines at 1000 px"

            # Only now collect: run2.result() returns the partial frame at once.
            lab.run_cell("collect")
            output = lab.output("collect")
            expect(output).to_contain_text(f"RUN1_OK {RUN1_ROWS} {RUN1_ROWS} 0")
            n = RUN2_CONCURRENCY
            expect(output).to_contain_text(f"CANCELLED_OK {RUN2_ROWS} {RUN2_ROWS} {n} {n}")
            lab.wait_idle()
            output.scroll_into_view_if_needed()
            lab.screenshot("narrative-browser.png")

    @staticmethod
    def _assert_fits_at(
        lab: LabSession, tag: str, widget: Any, *, cell_width: int, lines: bool = False
    ) -> None:
        """Resize the page so the cell is ``cell_width`` px wide; nothing in the widget is cut.

        With ``lines``, the header row, the state and the counts each also take one line.
        """
        width = lab.page.evaluate(CELL_WIDTH_JS, tag)
        size = lab.page.viewport_size
        assert size is not None
        lab.page.set_viewport_size({"width": size["width"] - width + cell_width, "height": 1900})
        lab.page.wait_for_function(f"({CELL_WIDTH_JS.strip()})({json.dumps(tag)}) <= {cell_width}")
        button = widget.locator("button.narrative-progress-cancel")
        assert button.evaluate(TRUNCATED_JS) is False, f"button label cut at {cell_width} px"
        for part in ("fraction", "status"):
            content = widget.locator(f".narrative-progress-{part} .widget-html-content")
            assert content.evaluate(TRUNCATED_JS) is False, f"{part} cut at {cell_width} px"
            if lines:
                assert content.evaluate(TEXT_LINES_JS) == 1, f"{part} wraps at {cell_width} px"
        if lines:
            counts = widget.locator(".narrative-progress-counts .widget-html-content")
            assert counts.evaluate(TEXT_LINES_JS) == 1, f"counts wrap at {cell_width} px"

    @staticmethod
    def _assert_fraction_shown_mid_run(samples: list[list[str]]) -> None:
        """While run 1 ran, the widget showed "n/40 · p%" with 0 < n < 40 and p = 100n/40."""
        mid = [
            (int(m.group(1)), int(m.group(2)))
            for *_, fraction, what in samples
            if what == "widget"
            for m in [re.fullmatch(rf"(\d+)/{RUN1_ROWS} · (\d+)%", fraction)]
            if m and 0 < int(m.group(1)) < RUN1_ROWS
        ]
        assert mid, f"no n/total mid-run: {samples}"
        assert all(p == n * 100 // RUN1_ROWS for n, p in mid), mid

    @staticmethod
    def _assert_counts_moved(samples: list[list[str]]) -> None:
        """Run 1's completed count and bar width rose step by step from below 40 to 40/100%."""
        counts = [int(c) for c, *_ in samples if c.strip().isdigit()]
        widths = [w for w in (_percent(w) for _, w, *_ in samples) if w is not None]
        assert counts, f"no counts were seen: {samples}"
        assert counts == sorted(counts), f"the completed count went down: {counts}"
        assert counts[-1] == RUN1_ROWS, counts
        between = sorted({c for c in counts if 0 < c < RUN1_ROWS})
        assert len(between) >= 2, f"too few intermediate counts seen live: {counts}"
        assert widths == sorted(widths), f"the bar shrank: {widths}"
        assert widths[-1] == pytest.approx(100.0), widths
        assert any(0 < w < 100 for w in widths), f"no intermediate bar width: {widths}"

    def test_cancel_click_stops_a_run_whose_result_is_being_awaited(self, lab: LabSession) -> None:
        """Clicking Cancel while a cell awaits the run returns the cancelled frame at once."""
        from playwright.sync_api import expect

        with lab.diagnostics("cancel-while-awaited"):
            lab.wait_idle()
            lab.run_cell("setup")
            lab.add_cell("awaited", AWAITED_CELL)
            lab.start_cell("awaited")
            widget = lab.cell("awaited").locator(".narrative-progress")
            queued = str(RUN2_ROWS - RUN2_CONCURRENCY)
            expect(widget.locator(".narrative-count-queued b")).to_have_text(queued)
            widget.locator("button.narrative-progress-cancel").click()
            result = (
                lab.cell("awaited")
                .locator(".jp-OutputArea-output")
                .filter(has_text=re.compile(r"BLOCKED_(OK|TIMEOUT)"))
            )
            expect(result).to_be_visible(timeout=BLOCKED_TIMEOUT_S * 1000 + 15_000)
            lab.wait_idle()
            expect(result).to_contain_text(f"BLOCKED_OK {RUN2_ROWS}", timeout=1_000)

    def test_interrupt_stops_a_run_whose_result_blocks_the_cell(self, lab: LabSession) -> None:
        """While result() blocks, the widget says to interrupt; the interrupt stops the run."""
        from playwright.sync_api import expect

        with lab.diagnostics("interrupt-while-blocked"):
            lab.wait_idle()
            lab.run_cell("setup")
            lab.add_cell("blocking", BLOCKING_CELL)
            lab.start_cell("blocking")
            widget = lab.cell("blocking").locator(".narrative-progress")
            button = widget.locator("button.narrative-progress-cancel")
            expect(button).to_have_text("Interrupt to stop")
            expect(button).to_have_attribute("title", re.compile("Interrupt the kernel"))
            expect(button).to_be_disabled()
            self._assert_fits_at(lab, "blocking", widget, cell_width=800)
            widget.scroll_into_view_if_needed()
            lab.screenshot("narrative-browser-blocked-800px.png")
            # some rows submitted (these rows hold a duplicate review, so count rows, not jobs)
            expect(widget.locator(".narrative-count-queued b")).not_to_have_text(str(RUN2_ROWS))
            lab.page.evaluate("window.jupyterapp.commands.execute('notebook:interrupt-kernel')")
            result = (
                lab.cell("blocking")
                .locator(".jp-OutputArea-output")
                .filter(has_text=re.compile(r"INTERRUPTED_OK"))
            )
            expect(result).to_contain_text(f"INTERRUPTED_OK {RUN2_ROWS}", timeout=30_000)
            summary = lab.cell("blocking").locator(".narrative-summary")
            expect(summary.locator(".narrative-summary-status")).to_contain_text("interrupted")
            expect(widget).to_have_count(0)
            lab.wait_idle()

    def test_reopened_notebook_shows_the_summaries(self, lab: LabSession) -> None:
        """Saved and reloaded, the notebook shows each run's summary and no widget error."""
        from playwright.sync_api import expect

        with lab.diagnostics("reopened"):
            lab.wait_idle()
            lab.page.set_viewport_size({"width": 1400, "height": 1900})
            lab.page.evaluate(SAVE_JS)
            saved = json.loads((lab.server.notebooks / NOTEBOOK_NAME).read_text(encoding="utf-8"))
            kinds = [set(o.get("data", {})) for c in saved["cells"] for o in c.get("outputs", [])]
            assert not [k for k in kinds if "application/vnd.jupyter.widget-view+json" in k]
            lab.page.reload()
            lab.page.wait_for_function(NOTEBOOK_IS_CURRENT_JS, arg=NOTEBOOK_NAME, timeout=60_000)
            assert lab.page.evaluate(WAIT_FOR_NOTEBOOK_JS, NOTEBOOK_NAME) is True
            assert lab.page.evaluate(TAG_CELLS_JS)[:4] == ["setup", "run1", "run2", "collect"]
            summary1 = lab.cell("run1").locator(".narrative-summary")
            expect(summary1).to_be_visible(timeout=60_000)
            expect(summary1.locator(".narrative-count-completed b")).to_have_text(str(RUN1_ROWS))
            summary2 = lab.cell("run2").locator(".narrative-summary")
            expect(summary2.locator(".narrative-state-cancelled")).to_be_visible()
            expect(lab.page.get_by_text("Error displaying widget")).to_have_count(0)
            expect(lab.page.locator(".narrative-progress")).to_have_count(0)
            summary1.scroll_into_view_if_needed()
            lab.screenshot("narrative-browser-reopened.png")
