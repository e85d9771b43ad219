"""The real ipywidget progress display and the progress callback, driven by runs on the sandbox.

Unlike ``test_progress.py`` (the state machine with a fake clock), these tests run ``infer``
against a sandbox on 127.0.0.1 and look at what a user would see at the end of the run: the
widget's children and their values, and the events a ``progress=callable`` received.
"""

from __future__ import annotations

import html
import re
import threading
from typing import Any, Literal

import ipywidgets as widgets
import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas._progress import ProgressEvent, format_count
from narrative_pandas._widget import WidgetSink
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):
    """A small output model: an enum and a number."""

    label: Literal["good", "bad"]
    confidence: float


PROMPT = "Review: {review}"


def reviews(n: int, *, duplicates: int = 0) -> pd.DataFrame:
    """``n`` distinct reviews, then ``duplicates`` repeats of the first ones."""
    texts = [f"review number {i}" for i in range(n)]
    texts += texts[:duplicates]
    frame: pd.DataFrame = pd.DataFrame({"review": texts})
    return frame


def count_html(sink: WidgetSink, name: str) -> str:
    """The value shown for count ``name`` in the widget's counts line."""
    match = re.search(rf'narrative-count-{name}">[^<]*<b>([^<]*)</b>', sink.counts.value)
    assert match is not None, f"no {name} count in {sink.counts.value!r}"
    return match.group(1)


def plain(html_text: str) -> str:
    """The text of an HTML fragment, tags removed and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_text))


def all_text(widget: Any) -> str:
    """Every string trait value of a widget tree (values, descriptions, tooltips)."""
    parts: list[str] = []
    for name in ("value", "description", "tooltip", "placeholder"):
        value = getattr(widget, name, None)
        if isinstance(value, str):
            parts.append(value)
    for child in getattr(widget, "children", ()):
        parts.append(all_text(child))
    return "\n".join(parts)


def widget_run(
    df: pd.DataFrame, target: dict[str, str], **options: Any
) -> tuple[pd.DataFrame, WidgetSink, list[Any]]:
    """Run ``infer`` with a real WidgetSink; return the result, the sink and what was shown."""
    shown: list[Any] = []
    sink = WidgetSink(len(df), display=shown.append)
    out = df.narrative.infer(PROMPT, output=Label, progress=sink, **target, **options)
    return out, sink, shown


class TestWidgetAfterARun:
    """After a run on the sandbox, the widget's children show the run's outcome."""

    def test_all_rows_succeed(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """Bar full and green, counts equal the report, status says done, no errors shown."""
        out, sink, shown = widget_run(reviews(12), target)
        report = out.attrs["narrative"]

        assert shown == [sink.widget]  # displayed exactly once, through the hook
        header, counts, errors = sink.widget.children
        bar, fraction, status = header.children
        assert plain(fraction.value) == "12/12 · 100%"
        assert isinstance(bar, widgets.IntProgress)
        assert (bar.value, bar.max, bar.bar_style) == (12, 12, "success")
        assert counts is sink.counts and errors is sink.errors and status is sink.status
        assert count_html(sink, "completed") == "12"
        assert count_html(sink, "failed") == "0"
        assert count_html(sink, "cached") == "0"
        assert count_html(sink, "queued") == "0"
        assert count_html(sink, "running") == "0"
        assert count_html(sink, "tokens") == format_count(report["total_tokens"])
        assert report["total_tokens"] > 0
        assert "narrative-state-done" in status.value
        assert plain(status.value).startswith("done in ")
        assert errors.value == "" and errors.layout.display == "none"

    def test_some_rows_fail(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A run with some failed rows ends amber, with the failed count and the error shown."""
        sandbox.configure(failure_rate=0.5)
        with pytest.warns(npd.RowsFailedWarning):
            out, sink, _ = widget_run(reviews(20), target)
        failed = int(out["narrative_error"].notna().sum())
        assert 0 < failed < 20  # seeded: the sandbox fails the same requests every time

        assert sink.bar.value == 20
        assert sink.bar.bar_style == "warning"
        assert count_html(sink, "failed") == str(failed)
        assert count_html(sink, "completed") == str(20 - failed)
        assert f"{failed} of 20 rows failed" in plain(sink.status.value)
        message = out["narrative_error"].dropna().iloc[0]
        assert message in plain(sink.errors.value)
        assert sink.errors.layout.display == ""

    def test_every_row_fails(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A run where every row failed ends red and says so."""
        sandbox.configure(failure_rate=1.0)
        with pytest.warns(npd.RowsFailedWarning):
            out, sink, _ = widget_run(reviews(8), target)
        assert out["narrative_error"].notna().all()
        assert sink.bar.bar_style == "danger"
        assert sink.bar.value == 8
        assert count_html(sink, "failed") == "8"
        assert "all 8 rows failed" in plain(sink.status.value)

    def test_cached_rows(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A second identical run is answered by the cache: the widget counts cached rows."""
        widget_run(reviews(6), target)
        out, sink, _ = widget_run(reviews(6), target)
        assert out.attrs["narrative"]["cached_rows"] == 6
        assert out.attrs["narrative"]["jobs_submitted"] == 0
        assert (sink.bar.value, sink.bar.bar_style) == (6, "success")
        assert count_html(sink, "cached") == "6"
        assert count_html(sink, "completed") == "0"

    def test_duplicate_rows_count_as_rows(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """Rows sharing one job each count: 10 rows, 7 jobs, the bar reaches 10."""
        out, sink, _ = widget_run(reviews(7, duplicates=3), target)
        assert out.attrs["narrative"]["jobs_submitted"] == 7
        assert sandbox.stats.jobs_created == 7
        assert (sink.bar.value, sink.bar.max) == (10, 10)
        assert count_html(sink, "completed") == "10"

    def test_never_shows_the_api_key(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """No text of the widget tree contains the API key, even when rows fail."""
        sandbox.configure(failure_rate=0.5)
        with pytest.warns(npd.RowsFailedWarning):
            _, sink, _ = widget_run(reviews(10), target)
        text = all_text(sink.widget)
        assert target["api_key"] not in text
        assert "sk-" not in text


class Handle:
    """Stands for IPython's DisplayHandle: keeps what replaced the widget's output."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, str]] = []

    def update(self, obj: dict[str, str], raw: bool = False) -> None:
        assert raw is True
        self.bundles.append(obj)


class TestSummaryAfterARun:
    """At the end of a real run the widget's output becomes the static summary."""

    def run(
        self, df: pd.DataFrame, target: dict[str, str]
    ) -> tuple[pd.DataFrame, WidgetSink, Handle]:
        handle = Handle()
        sink = WidgetSink(len(df), display=lambda _w: handle, on_cancel=lambda: None)
        out = df.narrative.infer(PROMPT, output=Label, progress=sink, **target)
        return out, sink, handle

    def test_summary_counts_equal_the_report(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """One replacement, whose HTML and text carry the report's counts and failure reasons."""
        sandbox.configure(failure_rate=0.5)
        with pytest.warns(npd.RowsFailedWarning):
            out, sink, handle = self.run(reviews(20), target)
        report = out.attrs["narrative"]
        failed = int(out["narrative_error"].notna().sum())
        assert len(handle.bundles) == 1
        page = plain(handle.bundles[0]["text/html"])
        assert "20/20 · 100%" in page
        assert f"completed {20 - failed}" in page and f"failed {failed}" in page
        assert f"tokens {format_count(report['total_tokens'])}" in page
        message = out["narrative_error"].dropna().iloc[0]
        assert message in page
        reasons = out["narrative_error"].value_counts()
        assert f"{reasons[message]} x {message}" in page
        text = handle.bundles[0]["text/plain"]
        assert f"{20 - failed} completed · {failed} failed" in text
        assert target["api_key"] not in page + text
        assert sink.widget.comm is None  # the widget models are closed

    def test_fully_cached_run_says_from_cache(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A second identical run shows "from cache" instead of a rate."""
        self.run(reviews(5), target)
        out, _, handle = self.run(reviews(5), target)
        assert out.attrs["narrative"]["cached_rows"] == 5
        page = plain(handle.bundles[0]["text/html"])
        assert "cached 5" in page and "from cache" in page and "rows/s" not in page


class TestProgressCallback:
    """``progress=callable`` receives every event; the final snapshot agrees with the report."""

    def collect(
        self, df: pd.DataFrame, target: dict[str, str], **options: Any
    ) -> tuple[pd.DataFrame, list[ProgressEvent]]:
        events: list[ProgressEvent] = []
        lock = threading.Lock()

        def on_event(event: ProgressEvent) -> None:
            with lock:
                events.append(event)

        out = df.narrative.infer(PROMPT, output=Label, progress=on_event, **target, **options)
        return out, events

    def test_final_snapshot_equals_the_report(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Completed, failed, cached, tokens and rows of the last event match the run report."""
        sandbox.configure(failure_rate=0.3)
        with pytest.warns(npd.RowsFailedWarning):
            out, events = self.collect(reviews(25, duplicates=5), target)
        report = out.attrs["narrative"]
        assert events[0].kind == "start"
        assert events[-1].kind == "finish"
        assert [e.kind for e in events].count("finish") == 1
        final = events[-1].snapshot
        assert final.status == "done"
        assert final.total == report["rows"] == 30
        assert final.completed == report["completed_rows"]
        assert final.failed == report["failed_rows"] > 0
        assert final.cached == report["cached_rows"] == 0
        assert final.tokens == report["total_tokens"]
        assert final.finished == 30
        assert (final.queued, final.pending, final.running) == (0, 0, 0)
        assert final.failed == int(out["narrative_error"].notna().sum())

    def test_every_snapshot_accounts_for_every_row(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """At every event the phase counts add up to the row count and never go backwards."""
        out, events = self.collect(reviews(15), target)
        finished_so_far = 0
        for event in events:
            s = event.snapshot
            assert s.queued + s.pending + s.running + s.finished == s.total == 15
            assert s.finished >= finished_so_far
            finished_so_far = s.finished
        completed_rows = sum(
            e.rows for e in events if e.kind == "transition" and e.new == "completed"
        )
        assert completed_rows == out.attrs["narrative"]["completed_rows"] == 15

    def test_cached_run(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A run answered from the cache reports its rows as cached, in events and report."""
        self.collect(reviews(9), target)
        out, events = self.collect(reviews(9), target)
        final = events[-1].snapshot
        assert final.cached == out.attrs["narrative"]["cached_rows"] == 9
        assert final.completed == 0
        assert final.tokens == out.attrs["narrative"]["total_tokens"] == 0
