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
from narrative_pandas._progress import (
    MAX_ERRORS,
    ProgressEvent,
    ProgressSnapshot,
    ProgressTracker,
    TextSink,
    WidgetSink,
    bar_style_for,
    format_count,
    format_duration,
    format_rate,
    in_jupyter_kernel,
    make_progress,
)


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
        """Every event's snapshot has exact counts, rate and ETA from the fake clock."""
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
        assert s.rows_per_second == pytest.approx(1.5)
        assert s.eta == pytest.approx(5 / 1.5)

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
        assert s.rows_per_second == pytest.approx(5 / 4.0)
        assert s.eta == pytest.approx(3 / 1.25)

        t.transition(2, "queued", "failed")  # e.g. skipped by the token budget
        t.transition(1, "running", "completed")
        clock.advance(1.0)
        t.finish()
        e = events[-1]
        assert e.kind == "finish"
        s = e.snapshot
        assert counts(s) == (0, 0, 0, 4, 4, 2)
        assert (s.finished, s.status, s.elapsed, s.tokens) == (10, "done", 5.0, 1300)
        assert s.rows_per_second == pytest.approx(8 / 5.0)
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
        t = self.stopped_run(TextSink(30, stream=stream, width=200), "interrupted")
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
        sink = TextSink(1000, stream=stream, width=200)
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
        t = ProgressTracker(10, [TextSink(10, stream=stream, width=60)], clock=clock)
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
        assert lines[1] == "  error: 1 x timed out after 600s"

    def test_truncated_to_width_and_padded(self) -> None:
        """The live line never exceeds the width, and a shorter line blanks the longer one."""
        stream = io.StringIO()
        t = ProgressTracker(10, [TextSink(10, stream=stream, width=40)], clock=FakeClock())
        t.start()
        piece = stream.getvalue().split("\r")[-1]
        assert len(piece) == 40 and piece.endswith("…")

        stream = io.StringIO()
        sink = TextSink(10, stream=stream, width=400, title="a much longer title than usual")
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
        sink = TextSink(1, width=100)
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

    def test_none_non_tty_is_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """progress=None with stderr not a terminal and no kernel shows nothing."""
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        t = make_progress(None, 2)
        assert t.sinks == () and t.callback is None

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
