"""Tests for the progress layer: counts, throttling, widget, text line and selection."""

from __future__ import annotations

import io
import itertools
import logging
import re
import sys
from typing import Any

import pytest

from narrative_pandas import _progress
from narrative_pandas._clock import FakeClock
from narrative_pandas._exceptions import ConfigurationError
from narrative_pandas._progress import (
    MAX_ERRORS,
    ProgressEvent,
    ProgressSnapshot,
    ProgressTracker,
    bar_style_for,
    format_count,
    format_duration,
    format_rate,
    in_jupyter_kernel,
    make_progress,
)
from narrative_pandas._textprogress import TextSink
from narrative_pandas._widget import WidgetSink


class RecordingSink:
    """A sink that keeps every snapshot it is given."""

    def __init__(self) -> None:
        self.updates: list[ProgressSnapshot] = []
        self.closes: list[ProgressSnapshot] = []

    def update(self, snapshot: ProgressSnapshot) -> None:
        self.updates.append(snapshot)

    def close(self, snapshot: ProgressSnapshot) -> None:
        self.closes.append(snapshot)


def counts(s: ProgressSnapshot) -> tuple[int, int, int, int, int, int]:
    return (s.queued, s.pending, s.running, s.completed, s.failed, s.cached)


def text_of(html_value: str) -> str:
    """The visible text of an HTML widget value."""
    return re.sub(r"<[^>]+>", "", html_value)


def make_widget(total: int, **kwargs: Any) -> tuple[WidgetSink, list[Any]]:
    shown: list[Any] = []
    return WidgetSink(total, display=shown.append, **kwargs), shown


def scripted_run(
    tracker: ProgressTracker, clock: FakeClock, *, fail: int = 0, status: str = "done"
) -> None:
    """Ten rows: 2 cached, 8 submitted; ``fail`` of them fail, the rest complete."""
    tracker.start()
    tracker.transition(2, "queued", "cached")
    tracker.transition(8, "queued", "pending")
    clock.advance(1)
    tracker.transition(8, "pending", "running")
    clock.advance(1)
    ok = 8 - fail
    if ok:
        tracker.transition(ok, "running", "completed")
    tracker.add_tokens(100 * ok)
    for i in range(fail):
        tracker.error(f"row failed <{i}>")
        tracker.transition(1, "running", "failed")
    clock.advance(1)
    tracker.finish(status)  # type: ignore[arg-type]


class TestCounts:
    """Counts, tokens, errors and timing in snapshots after every event."""

    def test_scripted_sequence(self) -> None:
        """Every event's snapshot has exact counts, and rate and ETA from the first submission."""
        clock = FakeClock(start=100.0)
        events: list[ProgressEvent] = []
        t = ProgressTracker(10, clock=clock, callback=events.append)

        s = t.snapshot()
        assert counts(s) == (10, 0, 0, 0, 0, 0)
        assert (s.total, s.finished, s.tokens, s.elapsed, s.status) == (10, 0, 0, 0.0, "running")
        assert s.rows_per_second is None and s.eta is None and s.errors == ()

        t.start()
        assert events[-1].kind == "start"
        clock.advance(0.5)
        t.transition(2, "queued", "cached")
        s = events[-1].snapshot
        assert counts(s) == (8, 0, 0, 0, 0, 2)
        assert s.elapsed == 0.5
        assert s.rows_per_second is None and s.eta is None  # cached rows don't make a rate
        assert (events[-1].rows, events[-1].old, events[-1].new) == (2, "queued", "cached")

        t.transition(6, "queued", "pending")
        assert counts(events[-1].snapshot) == (2, 6, 0, 0, 0, 2)
        clock.advance(0.5)
        t.transition(3, "pending", "running")
        assert counts(events[-1].snapshot) == (2, 3, 3, 0, 0, 2)
        clock.advance(1.0)
        t.transition(3, "running", "completed")  # three rows sharing one job
        s = events[-1].snapshot
        assert counts(s) == (2, 3, 0, 3, 0, 2)
        assert s.finished == 5 and s.elapsed == 2.0
        assert s.rows_per_second == pytest.approx(3 / 1.5)  # since the first submission
        assert s.eta == pytest.approx(5 / 2.0)

        t.add_tokens(1234)
        e = events[-1]
        assert (e.kind, e.snapshot.tokens) == ("tokens", 1234)
        t.add_tokens(66)
        assert events[-1].snapshot.tokens == 1300

        t.error("model said no", rows=2)
        e = events[-1]
        assert (e.kind, e.rows, e.message) == ("error", 2, "model said no")
        assert counts(e.snapshot) == (2, 3, 0, 3, 0, 2)  # errors don't move rows
        assert e.snapshot.errors == ("2 x model said no",)
        t.transition(2, "pending", "failed")
        clock.advance(2.0)
        t.transition(1, "pending", "running")
        s = events[-1].snapshot
        assert counts(s) == (2, 0, 1, 3, 2, 2)
        assert s.rows_per_second == pytest.approx(5 / 3.5)
        assert s.eta == pytest.approx(3 / (5 / 3.5))

        t.transition(2, "queued", "failed")  # e.g. skipped by the token budget
        t.transition(1, "running", "completed")
        clock.advance(1.0)
        t.finish()
        e = events[-1]
        assert e.kind == "finish"
        s = e.snapshot
        assert counts(s) == (0, 0, 0, 4, 4, 2)
        assert (s.finished, s.status, s.elapsed, s.tokens) == (10, "done", 5.0, 1300)
        assert s.rows_per_second == pytest.approx(8 / 4.5)
        assert s.eta is None
        assert len(events) == 13

        clock.advance(10)
        assert t.snapshot().elapsed == 5.0  # frozen at finish

    def test_invalid_transitions_raise(self) -> None:
        """Counts never go negative; unknown phases and a missing old phase are refused."""
        t = ProgressTracker(3, clock=FakeClock())
        t.start()
        with pytest.raises(ValueError, match="only 0 there"):
            t.transition(1, "running", "completed")
        with pytest.raises(ValueError, match="only 3 there"):
            t.transition(4, "queued", "pending")
        with pytest.raises(ValueError, match="old phase"):
            t.transition(1, None, "pending")
        with pytest.raises(ValueError, match="unknown phase"):
            t.transition(1, "queued", "done")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            t.transition(-1, "queued", "pending")
        assert counts(t.snapshot()) == (3, 0, 0, 0, 0, 0)

    def test_finish_is_idempotent_and_later_events_ignored(self) -> None:
        """A second finish and events after finish change nothing; close happens once."""
        sink = RecordingSink()
        clock = FakeClock()
        t = ProgressTracker(2, [sink], clock=clock)
        t.start()
        t.transition(2, "queued", "pending")
        t.finish("interrupted")
        t.finish("done")
        t.transition(2, "pending", "completed")
        t.add_tokens(5)
        t.error("late")
        s = t.snapshot()
        assert s.status == "interrupted"
        assert counts(s) == (0, 2, 0, 0, 0, 0) and s.tokens == 0 and s.errors == ()
        assert len(sink.closes) == 1 and sink.closes[0].status == "interrupted"

    def test_finish_without_start(self) -> None:
        """Finishing a run that never started still closes the sinks with elapsed 0."""
        sink = RecordingSink()
        t = ProgressTracker(0, [sink], clock=FakeClock(5.0))
        t.finish()
        assert len(sink.closes) == 1
        assert sink.closes[0].elapsed == 0.0 and sink.closes[0].status == "done"


class TestStopped:
    """Rows a cancel, an interrupt or the token budget stopped are not failures."""

    def stopped_run(self, sink: Any, status: str, *, fail: int = 0) -> ProgressTracker:
        clock = FakeClock()
        t = ProgressTracker(30, [sink], clock=clock, min_interval=0)
        t.start()
        t.transition(30, "queued", "pending")
        t.transition(5, "pending", "completed")
        if fail:
            t.transition(fail, "pending", "failed")
        t.transition(25 - fail, "pending", "stopped")
        clock.advance(2)
        t.finish(status)  # type: ignore[arg-type]
        return t

    def test_a_cancelled_run_says_what_ended_and_what_was_stopped(self) -> None:
        sink, _ = make_widget(30)
        t = self.stopped_run(sink, "cancelled")
        s = t.snapshot()
        assert (s.completed, s.failed, s.stopped, s.ended, s.finished) == (5, 0, 25, 5, 30)
        assert text_of(sink.status.value) == "cancelled at 5/30 after 2.0s · 25 stopped"
        assert sink.bar.value == 5 and sink.bar.bar_style == "danger"
        live = text_of(sink.counts.value)
        assert "completed 5" in live and "failed 0" in live and "stopped 25" in live
        assert "narrative-count-stopped" in sink.counts.value

    def test_budget_stopped_rows_make_a_done_run_amber(self) -> None:
        sink, _ = make_widget(30)
        self.stopped_run(sink, "done", fail=2)
        assert text_of(sink.status.value) == "done in 2.0s · 2 of 30 rows failed · 23 stopped"
        assert sink.bar.bar_style == "warning"

    def test_the_stopped_count_appears_only_once_a_row_stopped(self) -> None:
        sink, _ = make_widget(3)
        t = ProgressTracker(3, [sink], clock=FakeClock(), min_interval=0)
        t.start()
        t.transition(3, "queued", "completed")
        t.finish("done")
        assert "narrative-count-stopped" not in sink.counts.value
        assert text_of(sink.status.value) == "done in 0.0s"

    def test_text_line_and_summary(self) -> None:
        stream = io.StringIO()
        t = self.stopped_run(TextSink(30, stream=stream, width=200, live=True), "interrupted")
        assert t.snapshot().stopped == 25
        summary = stream.getvalue().split("\r")[-1].split("\n")[0]
        assert summary == (
            "narrative  interrupted at 5/30 after 2.0s · 5 completed · 0 failed · 25 stopped · "
            "0 tokens"
        )


class TestErrors:
    """Distinct error messages are kept in order, deduplicated and capped."""

    def test_dedup_and_cap(self) -> None:
        """Repeats are counted once, most rows first; only MAX_ERRORS distinct reasons are kept."""
        t = ProgressTracker(20, clock=FakeClock())
        t.start()
        for msg in ["a", "b", "a", "c", "b", "d", "e", "f", "g", "a"]:
            t.error(msg)
        assert MAX_ERRORS == 5
        assert t.snapshot().errors == ("3 x a", "2 x b", "1 x c", "1 x d", "1 x e")

    def test_job_ids_grouped_away(self) -> None:
        """Reasons that differ only by a job id are one reason, counted by rows, id-free."""
        t = ProgressTracker(40, clock=FakeClock())
        t.start()
        for i in range(31):
            t.error(f"still running when cancelled (job 4b37e573-0000-4000-8000-{i:012d})")
        t.error("not submitted (cancelled)", rows=1893)
        assert t.snapshot().errors == (
            "1,893 x not submitted (cancelled)",
            "31 x still running when cancelled",
        )

    def test_messages_collapsed_and_cut(self) -> None:
        """Messages become one line, whitespace-collapsed, and very long ones are cut."""
        t = ProgressTracker(1, clock=FakeClock())
        t.error("line one\n   line two")
        t.error("x" * 2000)
        t.error("line one line two")
        errors = t.snapshot().errors
        assert errors[0] == "2 x line one line two"
        assert len(errors) == 2
        assert len(errors[1]) == len("1 x ") + _progress.MAX_ERROR_CHARS
        assert errors[1].endswith("…")


class TestThrottling:
    """Sink updates are bounded by clock time, not by the number of events."""

    def test_ten_thousand_rows(self) -> None:
        """30,000 transitions over 30 s of clock time give at most ~150 updates and one close."""
        clock = FakeClock()
        sink = RecordingSink()
        seen: list[ProgressEvent] = []
        t = ProgressTracker(10_000, [sink], clock=clock, callback=seen.append)
        t.start()
        for _ in range(10_000):
            for old, new in (
                ("queued", "pending"),
                ("pending", "running"),
                ("running", "completed"),
            ):
                clock.advance(0.001)
                t.transition(1, old, new)  # type: ignore[arg-type]
        t.finish()
        assert 100 <= len(sink.updates) <= 30.0 / 0.2 + 2
        assert t.updates == len(sink.updates)
        assert len(sink.closes) == 1
        assert sink.closes[0].completed == 10_000
        assert len(seen) == 1 + 30_000 + 1  # the callback sees every event
        times = [s.elapsed for s in sink.updates]
        assert all(b - a >= 0.2 - 1e-9 for a, b in itertools.pairwise(times))

    def test_tick_refreshes_when_idle(self) -> None:
        """tick() redraws once min_interval has passed, and not sooner."""
        clock = FakeClock()
        sink = RecordingSink()
        t = ProgressTracker(5, [sink], clock=clock)
        t.start()
        t.transition(5, "queued", "pending")  # within 0.2 s of start: not drawn
        assert [counts(s) for s in sink.updates] == [(5, 0, 0, 0, 0, 0)]
        t.tick()
        assert len(sink.updates) == 1
        clock.advance(0.3)
        t.tick()
        assert len(sink.updates) == 2
        assert counts(sink.updates[-1]) == (0, 5, 0, 0, 0, 0)
        assert sink.updates[-1].elapsed == pytest.approx(0.3)


class TestCallbacks:
    """User callbacks and broken sinks never break a run."""

    def test_raising_callback_logged_once_and_disabled(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A callback that raises is logged once, then no longer called; counting goes on."""
        calls: list[str] = []

        def bad(event: ProgressEvent) -> None:
            calls.append(event.kind)
            raise RuntimeError("user bug")

        sink = RecordingSink()
        t = ProgressTracker(3, [sink], clock=FakeClock(), callback=bad)
        with caplog.at_level(logging.WARNING, logger="narrative_pandas"):
            t.start()
            t.transition(3, "queued", "pending")
            t.transition(3, "pending", "completed")
            t.finish()
        assert calls == ["start"]
        records = [r for r in caplog.records if "callback" in r.getMessage()]
        assert len(records) == 1 and "bad" in records[0].getMessage()
        assert records[0].exc_info is not None
        assert sink.closes[0].completed == 3

    def test_raising_sink_disabled(self, caplog: pytest.LogCaptureFixture) -> None:
        """A display that raises is logged and skipped; the run and other sinks go on."""

        class Broken(RecordingSink):
            def update(self, snapshot: ProgressSnapshot) -> None:
                raise RuntimeError("display gone")

        broken, good = Broken(), RecordingSink()
        clock = FakeClock()
        t = ProgressTracker(2, [broken, good], clock=clock)
        with caplog.at_level(logging.WARNING, logger="narrative_pandas"):
            t.start()
            clock.advance(1)
            t.transition(2, "queued", "completed")
            t.finish()
        assert len(good.updates) == 2 and len(good.closes) == 1
        assert broken.closes == []
        assert sum("Broken" in r.getMessage() for r in caplog.records) == 1


class TestWidget:
    """The ipywidgets display: structure, values, colours, escaping and Cancel."""

    def test_structure_and_values(self) -> None:
        """After a scripted run the children show the counts, with stable classes."""
        clock = FakeClock()
        sink, shown = make_widget(10, title="labels", on_cancel=lambda: None)
        t = ProgressTracker(10, [sink], clock=clock, min_interval=0)
        t.start()
        assert shown == [sink.widget]  # displayed once, at start
        t.transition(2, "queued", "cached")
        t.transition(8, "queued", "pending")
        t.transition(3, "pending", "running")
        clock.advance(2)
        t.transition(2, "running", "completed")
        t.add_tokens(12_345)
        assert sink.bar.value == 4 and sink.bar.max == 10
        assert sink.bar.description == "labels"
        live = text_of(sink.counts.value)
        for part in (
            "queued 0",
            "pending 5",
            "running 1",
            "completed 2",
            "failed 0",
            "cached 2",
            "tokens 12.3k",
            "elapsed 2.0s",
            "rows/s 1.0",
            "ETA 6.0s",
        ):
            assert part in live
        assert 'class="narrative-count narrative-count-completed"' in sink.counts.value
        assert text_of(sink.status.value) == "running"
        assert sink.bar.bar_style == ""

        assert "narrative-progress" in sink.widget._dom_classes
        assert "narrative-progress-bar" in sink.bar._dom_classes
        assert "narrative-progress-counts" in sink.counts._dom_classes
        assert "narrative-progress-errors" in sink.errors._dom_classes
        assert "narrative-progress-status" in sink.status._dom_classes
        assert "narrative-progress-cancel" in sink.cancel_button._dom_classes
        assert sink.cancel_button.description == "Cancel"
        assert not sink.cancel_button.disabled

        t.transition(1, "running", "completed")
        t.transition(5, "pending", "completed")
        t.finish()
        assert shown == [sink.widget]
        assert sink.bar.value == 10 and sink.bar.bar_style == "success"
        assert sink.cancel_button.disabled
        assert text_of(sink.status.value) == "done in 2.0s"
        assert "narrative-state-done" in sink.status.value

    def test_no_cancel_button_without_on_cancel(self) -> None:
        """Without on_cancel there is no button anywhere in the widget."""
        import ipywidgets as widgets

        sink, _ = make_widget(3)
        assert sink.cancel_button is None

        def walk(w: Any) -> list[Any]:
            return [w, *(c for child in getattr(w, "children", ()) for c in walk(child))]

        assert not any(isinstance(w, widgets.Button) for w in walk(sink.widget))

    def test_cancel_click(self) -> None:
        """Clicking Cancel calls on_cancel once and disables the button."""
        cancelled: list[int] = []
        sink, _ = make_widget(4, on_cancel=lambda: cancelled.append(1))
        t = ProgressTracker(4, [sink], clock=FakeClock())
        t.start()
        sink.cancel_button.click()
        sink.cancel_button.click()
        assert cancelled == [1]
        assert sink.cancel_button.disabled
        assert text_of(sink.status.value) == "cancelling…"
        t.finish("cancelled")
        assert sink.bar.bar_style == "danger"
        assert text_of(sink.status.value) == "cancelled at 0/4 after 0.0s"

    @pytest.mark.parametrize(
        ("fail", "status", "style", "status_text"),
        [
            (0, "done", "success", "done in 3.0s"),
            (3, "done", "warning", "done in 3.0s · 3 of 10 rows failed"),
            (8, "done", "warning", "done in 3.0s · 8 of 10 rows failed"),  # 2 cached rows
            (2, "interrupted", "danger", "interrupted at 10/10 after 3.0s · 2 failed"),
            (0, "cancelled", "danger", "cancelled at 10/10 after 3.0s"),
        ],
    )
    def test_final_style(self, fail: int, status: str, style: str, status_text: str) -> None:
        """The bar ends green when all succeeded, amber/red with the count otherwise."""
        clock = FakeClock()
        sink, _ = make_widget(10)
        t = ProgressTracker(10, [sink], clock=clock)
        scripted_run(t, clock, fail=fail, status=status)
        assert sink.bar.bar_style == style
        assert text_of(sink.status.value) == status_text
        assert f"narrative-state-{status}" in sink.status.value
        assert f"failed {fail}" in text_of(sink.counts.value)

    def test_all_failed_is_red(self) -> None:
        """When no row has a result the bar ends red and says all rows failed."""
        clock = FakeClock()
        sink, _ = make_widget(4)
        t = ProgressTracker(4, [sink], clock=clock)
        t.start()
        t.error("bad key")
        t.transition(4, "queued", "failed")
        t.finish()
        assert sink.bar.bar_style == "danger"
        assert text_of(sink.status.value) == "done in 0.0s · all 4 rows failed"

    def test_errors_escaped(self) -> None:
        """Error messages are listed HTML-escaped, deduplicated, and hidden when there are none."""
        sink, _ = make_widget(3)
        t = ProgressTracker(3, [sink], clock=FakeClock(), min_interval=0)
        t.start()
        assert sink.errors.value == "" and sink.errors.layout.display == "none"
        t.error("<script>alert('x')</script> & more")
        t.error("<script>alert('x')</script> & more")
        t.error("max_tokens reached")
        value = sink.errors.value
        assert "<script>" not in value
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in value
        assert value.count("<li>") == 2 and "max_tokens reached" in value
        assert sink.errors.layout.display == ""

    def test_empty_run(self) -> None:
        """A run of zero rows ends with a full green bar."""
        sink, _ = make_widget(0)
        t = ProgressTracker(0, [sink], clock=FakeClock())
        t.start()
        t.finish()
        assert sink.bar.value == sink.bar.max == 1 and sink.bar.bar_style == "success"

    def test_bar_style_while_running(self) -> None:
        """The bar is neutral while running."""
        t = ProgressTracker(2, clock=FakeClock())
        t.transition(1, "queued", "failed")
        assert bar_style_for(t.snapshot()) == ""


class TestTextSink:
    """The plain-text line on a stream."""

    def test_updates_and_summary(self) -> None:
        """Live updates start with \\r and the summary ends with \\n, with exact wording."""
        stream = io.StringIO()
        clock = FakeClock()
        sink = TextSink(1000, stream=stream, width=200, live=True)
        t = ProgressTracker(1000, [sink], clock=clock, min_interval=0)
        t.start()
        t.transition(1000, "queued", "pending")
        clock.advance(100)
        t.transition(20, "pending", "running")
        t.transition(410, "pending", "completed")
        t.transition(2, "pending", "failed")
        t.add_tokens(12_300)
        out = stream.getvalue()
        assert out.startswith("\r") and "\n" not in out
        last = out.split("\r")[-1]
        assert last == (
            "narrative   412/1000 ▕████████░░░░░░░░░░░░▏  41% · pending 568 · running 20 · "
            "failed 2 · cached 0 · 12.3k tokens · 4.1 rows/s · ETA 2m23s"
        )
        clock.advance(82)
        t.transition(568, "pending", "completed")
        t.transition(1, "running", "failed")
        t.transition(19, "running", "completed")
        t.add_tokens(32_900)
        t.finish()
        out = stream.getvalue()
        assert out.endswith("\n") and out.count("\n") == 1
        assert out.split("\r")[-2].strip() == ""  # the live line is blanked first
        assert out.split("\r")[-1] == (
            "narrative  1000/1000 done in 3m02s · 997 completed · 3 failed · 45.2k tokens\n"
        )

    def test_interrupted_summary_and_errors(self) -> None:
        """An interrupted run says so and lists its distinct errors on their own lines."""
        stream = io.StringIO()
        clock = FakeClock()
        t = ProgressTracker(10, [TextSink(10, stream=stream, width=60, live=True)], clock=clock)
        t.start()
        t.transition(3, "queued", "cached")
        t.error("timed out after 600s")
        t.transition(1, "queued", "failed")
        clock.advance(70)
        t.finish("interrupted")
        lines = stream.getvalue().split("\r")[-1].split("\n")
        assert lines[0] == (
            "narrative  interrupted at 4/10 after 1m10s · 0 completed · 1 failed · "
            "3 cached · 0 tokens"
        )
        assert lines[1] == "  1 x timed out after 600s"

    def test_fitted_to_width_and_padded(self) -> None:
        """The live line never exceeds the width, and a shorter line blanks the longer one."""
        stream = io.StringIO()
        sink = TextSink(10, stream=stream, width=40, live=True)
        t = ProgressTracker(10, [sink], clock=FakeClock())
        t.start()
        piece = stream.getvalue().split("\r")[-1]
        assert piece == "narrative   0/10 ▕░░░░░░░░░░▏   0%"  # fields dropped, a shorter bar

        stream = io.StringIO()
        sink = TextSink(
            10, stream=stream, width=400, title="a much longer title than usual", live=True
        )
        sink.update(t.snapshot())
        first = stream.getvalue().split("\r")[-1]
        sink.title = "n"
        sink.update(t.snapshot())
        second = stream.getvalue().split("\r")[-1]
        assert len(second) == len(first)
        assert second.startswith("n  ") and second.endswith(" " * 27)

    def test_default_stream_is_stderr(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without stream= the line goes to sys.stderr as it is at write time."""
        fake = io.StringIO()
        monkeypatch.setattr(sys, "stderr", fake)
        sink = TextSink(1, width=100, live=True)
        t = ProgressTracker(1, [sink], clock=FakeClock())
        t.start()
        t.finish()
        assert fake.getvalue().startswith("\rnarrative  0/1")


class TestMakeProgress:
    """Choosing the display from the progress= argument."""

    def test_false_means_nothing(self) -> None:
        """progress=False gives a tracker without sinks or callback."""
        t = make_progress(False, 5)
        assert t.sinks == () and t.callback is None

    def test_callable_gets_every_event(self) -> None:
        """A plain callable receives every event and nothing is displayed."""
        events: list[ProgressEvent] = []
        clock = FakeClock()
        t = make_progress(events.append, 3, clock=clock)
        assert t.sinks == ()
        t.start()
        t.transition(3, "queued", "pending")
        t.add_tokens(7)
        t.error("x")
        t.transition(3, "pending", "completed")
        t.finish()
        assert [e.kind for e in events] == [
            "start",
            "transition",
            "tokens",
            "error",
            "transition",
            "finish",
        ]
        assert events[-1].snapshot.completed == 3

    def test_sink_instance_is_used_as_sink(self) -> None:
        """An object with update and close is used as a display, not a callback."""
        sink = RecordingSink()
        t = make_progress(sink, 2, clock=FakeClock())
        assert t.sinks == (sink,) and t.callback is None

    def test_true_outside_kernel_is_text(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """progress=True outside a kernel gives the text line, even if stderr is no terminal."""
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        t = make_progress(True, 2, title="job")
        assert len(t.sinks) == 1 and isinstance(t.sinks[0], TextSink)
        assert t.sinks[0].title == "job"

    def test_none_non_tty_is_plain_lines(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """progress=None with stderr not a terminal (a log, a file) gives plain lines."""
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        t = make_progress(None, 2)
        assert len(t.sinks) == 1 and isinstance(t.sinks[0], TextSink)
        assert t.sinks[0].live is False and t.sinks[0].every == 10.0

    def test_none_tty_is_text(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """progress=None with a terminal on stderr gives the text line."""

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        monkeypatch.setattr(sys, "stderr", Tty())
        t = make_progress(None, 2)
        assert len(t.sinks) == 1 and isinstance(t.sinks[0], TextSink)

    @pytest.mark.parametrize("progress", [None, True])
    def test_kernel_gives_widget(
        self, monkeypatch: pytest.MonkeyPatch, progress: bool | None
    ) -> None:
        """In a kernel, None and True give the widget, with Cancel when on_cancel is given."""
        monkeypatch.setattr(_progress, "in_jupyter_kernel", lambda: True)
        t = make_progress(progress, 2, on_cancel=lambda: None)
        assert len(t.sinks) == 1 and isinstance(t.sinks[0], WidgetSink)
        assert t.sinks[0].cancel_button is not None

    def test_bad_value(self) -> None:
        """Anything else is a TypeError naming the accepted values."""
        with pytest.raises(TypeError, match="progress must be"):
            make_progress("yes", 2)  # type: ignore[arg-type]


class TestKernelDetection:
    """Recognising an IPython kernel."""

    def test_not_in_kernel_here(self) -> None:
        """pytest is not a kernel."""
        assert in_jupyter_kernel() is False

    def test_zmq_shell(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A ZMQInteractiveShell or a shell with a kernel counts; a terminal shell does not."""
        import IPython

        class ZMQInteractiveShell:
            pass

        class TerminalInteractiveShell:
            kernel = None

        class OtherKernelShell:
            kernel = object()

        for shell, expected in [
            (ZMQInteractiveShell(), True),
            (OtherKernelShell(), True),
            (TerminalInteractiveShell(), False),
            (None, False),
        ]:
            monkeypatch.setattr(IPython, "get_ipython", lambda s=shell: s)
            assert in_jupyter_kernel() is expected


class TestFormat:
    """The small formatting helpers."""

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0.0s"),
            (4.24, "4.2s"),
            (9.96, "10s"),
            (59.4, "59s"),
            (59.6, "1m00s"),
            (143, "2m23s"),
            (182, "3m02s"),
            (3900, "1h05m"),
            (97200, "1d03h"),
            (None, "?"),
            (float("inf"), "?"),
            (-1, "?"),
        ],
    )
    def test_duration(self, seconds: float | None, text: str) -> None:
        """Durations are short and stable."""
        assert format_duration(seconds) == text

    @pytest.mark.parametrize(
        ("n", "text"),
        [
            (0, "0"),
            (999, "999"),
            (1000, "1.0k"),
            (12_345, "12.3k"),
            (45_200, "45.2k"),
            (999_960, "1.0M"),
            (4_500_000, "4.5M"),
            (1_200_000_000, "1.2B"),
        ],
    )
    def test_count(self, n: int, text: str) -> None:
        """Token counts use k/M/B with one decimal."""
        assert format_count(n) == text

    @pytest.mark.parametrize(
        ("rate", "text"),
        [(42.4, "42 rows/s"), (4.12, "4.1 rows/s"), (0.05, "0.05 rows/s"), (None, "? rows/s")],
    )
    def test_rate(self, rate: float | None, text: str) -> None:
        """Rates keep about two significant digits."""
        assert format_rate(rate) == text


class FakeHandle:
    """Stands for IPython's DisplayHandle: records what replaced the displayed widget."""

    def __init__(self) -> None:
        self.updates: list[tuple[dict[str, str], bool]] = []

    def update(self, obj: dict[str, str], raw: bool = False) -> None:
        self.updates.append((obj, raw))


def widget_with_handle(total: int, **kwargs: Any) -> tuple[WidgetSink, FakeHandle]:
    handle = FakeHandle()
    return WidgetSink(total, display=lambda _w: handle, **kwargs), handle


class TestReasons:
    """Errors are grouped by message with their row counts (what the summary lists)."""

    def test_rows_per_reason_and_the_rest(self) -> None:
        """Each of the first MAX_ERRORS messages counts its rows; later ones are summed."""
        t = ProgressTracker(40, clock=FakeClock())
        t.error("a", rows=3)
        t.error("b")
        t.error("a", rows=2)
        for m in "cdefg":
            t.error(m, rows=4)
        s = t.snapshot()
        assert s.reasons == (("a", 5), ("c", 4), ("d", 4), ("e", 4), ("b", 1))
        assert s.other_errors == 8

    def test_job_ids_do_not_split_a_reason(self) -> None:
        """The same message about different jobs is one reason (the job id is elided)."""
        t = ProgressTracker(3, clock=FakeClock())
        for job in ("9356e559-80da-43f7-8878-62b61630be57", "5ca917c7-1190-4bed-988d-40584aa4a189"):
            t.error(f"cancelled: job {job} was still running")
        assert t.snapshot().reasons == (("cancelled: was still running", 2),)


class TestRate:
    """rows/s and ETA count from the first submission and ignore cached rows."""

    def test_rate_ignores_time_before_the_first_submission(self) -> None:
        """Planning and cache lookups before the first job do not slow the rate down."""
        clock = FakeClock()
        t = ProgressTracker(100, clock=clock)
        t.start()
        clock.advance(30)  # a long cache lookup
        t.transition(50, "queued", "cached")
        t.transition(50, "queued", "pending")
        clock.advance(2)
        t.transition(10, "pending", "completed")
        s = t.snapshot()
        assert s.rows_per_second == pytest.approx(5.0)
        assert s.eta == pytest.approx(40 / 5.0)

    def test_fully_cached_run_says_from_cache(self) -> None:
        """A run served entirely from the cache shows "from cache", never "rows/s ?"."""
        sink, _ = make_widget(3)
        t = ProgressTracker(3, [sink], clock=FakeClock(), min_interval=0)
        t.start()
        t.transition(3, "queued", "cached")
        t.finish()
        assert t.snapshot().all_from_cache
        assert "from cache" in text_of(sink.counts.value)
        assert "?" not in text_of(sink.counts.value)


class TestReplay:
    """A tracker fed with another tracker's events shows the same counts (the Dask path)."""

    def test_two_workers_into_one_display(self) -> None:
        """Events of two trackers replayed into a third add up to both runs."""
        total = ProgressTracker(10, clock=FakeClock())
        workers = [ProgressTracker(n, clock=FakeClock(), callback=total.replay) for n in (4, 6)]
        for w, n in zip(workers, (4, 6), strict=True):
            w.start()
            w.transition(1, "queued", "cached")
            w.transition(n - 1, "queued", "pending")
            w.transition(n - 2, "pending", "completed")
            w.add_tokens(10 * n)
            w.error("boom", rows=1)
            w.transition(1, "pending", "failed")
            w.finish()
        s = total.snapshot()
        assert (s.cached, s.completed, s.failed, s.queued, s.tokens) == (2, 6, 2, 0, 100)
        assert s.reasons == (("boom", 2),)


class TestWidgetLayout:
    """The widget shows n/total and a percentage, and its button never truncates."""

    def test_fraction_beside_the_bar(self) -> None:
        """The header reads bar, "n/total · p%", state word and button, in that order."""
        sink, _ = make_widget(8, on_cancel=lambda: None)
        t = ProgressTracker(8, [sink], clock=FakeClock(), min_interval=0)
        t.start()
        assert text_of(sink.fraction.value) == "0/8 · 0%"
        t.transition(3, "queued", "cached")
        assert text_of(sink.fraction.value) == "3/8 · 37%"
        assert list(sink.header.children) == [
            sink.bar,
            sink.fraction,
            sink.status,
            sink.cancel_button,
        ]
        assert "narrative-progress-fraction" in sink.fraction._dom_classes

    def test_button_sizes_to_its_label_in_both_states(self) -> None:
        """The button is as wide as its short label (width auto), with the long text as tip."""
        sink, _ = make_widget(2, on_cancel=lambda: None)
        button = sink.cancel_button
        assert button.layout.width == "auto" and button.description == "Cancel"
        sink.set_blocking(True)
        assert button.description == "Interrupt to stop"
        assert "Interrupt the kernel" in button.tooltip
        sink.set_blocking(False)
        assert button.description == "Cancel" and not button.disabled

    def test_nothing_in_the_header_wraps(self) -> None:
        """The header is a single row (nowrap) and its texts are nowrap spans."""
        sink, _ = make_widget(2, on_cancel=lambda: None)
        assert sink.header.layout.flex_flow == "row nowrap"
        assert "white-space: nowrap" in sink.fraction.value
        assert "white-space: nowrap" in sink.status.value


class TestWidgetBecomesHTML:
    """When the run ends, the widget's output is replaced by the static HTML summary."""

    def test_summary_replaces_the_widget(self) -> None:
        """One display update with text/html and text/plain; the widget models are closed."""
        clock = FakeClock()
        sink, handle = widget_with_handle(10, on_cancel=lambda: None)
        t = ProgressTracker(10, [sink], clock=clock)
        scripted_run(t, clock, fail=3)
        assert len(handle.updates) == 1
        bundle, raw = handle.updates[0]
        assert raw is True and set(bundle) == {"text/html", "text/plain"}
        page = text_of(bundle["text/html"])
        assert "10/10 · 100%" in page
        assert "completed 5" in page and "failed 3" in page and "cached 2" in page
        assert "tokens 500" in page and "elapsed 3.0s" in page
        assert "done in 3.0s · 3 of 10 rows failed" in page
        assert "1 x <code>row failed &lt;0&gt;</code>" in bundle["text/html"]
        assert "#ff9800" in bundle["text/html"]  # amber: some rows failed
        assert bundle["text/plain"].splitlines()[0] == (
            "narrative  10/10 done in 3.0s · 5 completed · 3 failed · 2 cached · 500 tokens"
        )
        assert sink.widget.comm is None and sink.bar.comm is None  # closed
        assert sink.final_bundle == bundle
        assert sink.cancel_button.layout.display == "none"

    @pytest.mark.parametrize(
        ("fail", "status", "colour"),
        [(0, "done", "#4caf50"), (8, "done", "#ff9800"), (0, "cancelled", "#f44336")],
    )
    def test_summary_colour_is_the_bar_colour(self, fail: int, status: str, colour: str) -> None:
        """Green done, amber with failures, red cancelled: as the widget's bar."""
        clock = FakeClock()
        sink, handle = widget_with_handle(10)
        scripted_run(ProgressTracker(10, [sink], clock=clock), clock, fail=fail, status=status)
        assert f"background: {colour}" in handle.updates[0][0]["text/html"]

    def test_summary_escapes_messages(self) -> None:
        """An error message cannot inject markup into the saved notebook."""
        sink, handle = widget_with_handle(1)
        t = ProgressTracker(1, [sink], clock=FakeClock())
        t.start()
        t.error("<img src=x onerror=alert(1)>")
        t.transition(1, "queued", "failed")
        t.finish()
        page = handle.updates[0][0]["text/html"]
        assert "<img" not in page and "&lt;img src=x" in page


class TestPlainLines:
    """Text without a terminal: plain lines at most every `every` s, and one at the end."""

    def run(self, every: float | None = None, seconds: int = 35) -> str:
        stream = io.StringIO()  # not a TTY
        clock = FakeClock()
        sink = TextSink(100, stream=stream, every=every)
        t = ProgressTracker(100, [sink], clock=clock)
        t.start()
        t.transition(100, "queued", "pending")
        for _ in range(seconds):
            clock.advance(1)
            t.transition(2, "pending", "completed")
            t.tick()
        t.error("too long", rows=1)
        t.transition(1, "pending", "failed")
        t.finish()
        return stream.getvalue()

    def test_one_line_every_ten_seconds_and_a_summary(self) -> None:
        """35 s of work: the start line, lines at 10, 20 and 30 s, then the summary."""
        lines = self.run().splitlines()
        assert len(lines) == 6
        assert lines[0] == (
            "narrative  0/100 0% · pending 0 · running 0 · failed 0 · cached 0 · 0 tokens · "
            "0.0s elapsed"
        )
        assert lines[1].startswith("narrative  20/100 20% · pending 80 ")
        assert lines[1].endswith(" · 2.0 rows/s · ETA 40s · 10s elapsed")
        assert [line.split(" · ")[-1] for line in lines[1:4]] == [
            "10s elapsed",
            "20s elapsed",
            "30s elapsed",
        ]
        assert lines[4] == "narrative  71/100 done in 35s · 70 completed · 1 failed · 0 tokens"
        assert lines[5] == "  1 x too long"

    def test_no_carriage_return_or_escape(self) -> None:
        """Nothing a log viewer would garble: no \\r, no ANSI escape."""
        out = self.run()
        assert "\r" not in out and "\x1b" not in out

    def test_interval_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """NARRATIVE_PANDAS_PROGRESS_EVERY sets the seconds between lines."""
        monkeypatch.setenv("NARRATIVE_PANDAS_PROGRESS_EVERY", "5")
        assert len(self.run().splitlines()) == 1 + 7 + 2

    @pytest.mark.parametrize("value", ["soon", "0", "-3", "inf"])
    def test_bad_interval_is_a_clear_error(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        """A bad value names the variable and the fix, before anything runs."""
        monkeypatch.setenv("NARRATIVE_PANDAS_PROGRESS_EVERY", value)
        with pytest.raises(ConfigurationError, match=r"NARRATIVE_PANDAS_PROGRESS_EVERY.*positive"):
            make_progress(None, 3)


class TestLiveLineFits:
    """In a terminal the live line fits the width by dropping the least useful fields."""

    def snapshot(self) -> ProgressSnapshot:
        clock = FakeClock()
        t = ProgressTracker(1000, clock=clock)
        t.start()
        t.transition(1000, "queued", "pending")
        t.transition(20, "pending", "running")
        clock.advance(100)
        t.transition(410, "pending", "completed")
        t.transition(2, "pending", "failed")
        t.add_tokens(12_300)
        return t.snapshot()

    @pytest.mark.parametrize("width", [60, 79, 99, 119])
    def test_rate_and_eta_survive(self, width: int) -> None:
        """At 60 to 119 columns the line fits and still ends with rows/s and ETA."""
        line = TextSink(1000, live=True).line(self.snapshot(), width)
        assert len(line) <= width
        assert line.endswith("4.1 rows/s · ETA 2m23s")
        assert "412/1000" in line and "41%" in line

    def test_dropped_in_order(self) -> None:
        """cached goes first, then pending, then running; failed stays while it fits."""
        sink = TextSink(1000, live=True)
        full = sink.line(self.snapshot())
        assert "cached 0" in full
        line = sink.line(self.snapshot(), len(full) - 1)
        assert "cached" not in line and "pending 568" in line
        narrower = sink.line(self.snapshot(), len(line) - 1)
        assert "pending" not in narrower and "running 20" in narrower and "failed 2" in narrower

    def test_width_of_the_stream_not_stdout(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The width comes from the terminal the line is written to."""
        import os

        seen: list[int] = []

        def size(fd: int) -> os.terminal_size:
            seen.append(fd)
            return os.terminal_size((50, 24))

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

            def fileno(self) -> int:
                return 7

        monkeypatch.setattr(os, "get_terminal_size", size)
        assert TextSink(1, stream=Tty()).width() == 49 and seen == [7]
