"""Per-variant counts of a comparison's progress, on a fake clock (no server): the breakdown,
the tracker's snapshots, the live widget's table, the static summary and the text end line.

The same displays driven by real comparisons on the sandbox are in ``test_compare.py``."""

from __future__ import annotations

import re
from typing import Any

from narrative_pandas._clock import FakeClock
from narrative_pandas._progress import ProgressEvent, ProgressTracker
from narrative_pandas._summary_html import summary_html, summary_text
from narrative_pandas._textprogress import TextSink
from narrative_pandas._variant_progress import SKIPPED_KEY, VariantBreakdown
from narrative_pandas._widget import WidgetSink


def breakdown() -> VariantBreakdown:
    """Two variants of three rows: a1 a1 a2 | b1 <skipped> shared; "shared" is in both."""
    rows = [("a1", 0), ("a1", 0), ("shared", 0), ("b1", 1), (None, 1), ("shared", 1)]
    return VariantBreakdown(["a", "b"], rows)


def tracker(**kwargs: Any) -> tuple[ProgressTracker, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    t = ProgressTracker(
        6, clock=FakeClock(), callback=events.append, variants=breakdown(), **kwargs
    )
    return t, events


def cells(table: str, variant: str) -> dict[str, str]:
    """The counts shown in a variant's row of the variants table."""
    row = re.search(rf'data-variant="{variant}">(.*?)</tr>', table)
    assert row is not None, table
    return dict(re.findall(r"narrative-vcount-([a-z-]+)\"[^>]*>[^<]*<b>([^<]*)</b>", row[1]))


class TestBreakdown:
    """Rows move per variant by request key; a shared key splits, a skipped row has its own."""

    def test_counts_follow_keys(self) -> None:
        """Each transition moves the key's rows in its variant(s); totals stay consistent."""
        t, events = tracker()
        t.start()
        t.transition(1, "queued", "failed", key=SKIPPED_KEY)
        t.transition(2, "queued", "cached", key="a1")
        t.transition(2, "queued", "pending", key="shared")
        t.transition(1, "queued", "pending", key="b1")
        t.transition(2, "pending", "completed", key="shared")
        t.add_tokens(10, key="shared")
        t.add_tokens(5, key="b1")
        t.transition(1, "pending", "failed", key="b1")
        a, b = events[-1].snapshot.variants
        assert (a.name, a.total, a.cached, a.completed, a.failed, a.tokens) == ("a", 3, 2, 1, 0, 10)
        assert (b.name, b.total, b.cached, b.completed, b.failed, b.tokens) == ("b", 3, 0, 1, 2, 15)
        assert a.ended == 3 and b.fraction == 1.0
        for event in events:
            s = event.snapshot
            for phase in ("queued", "pending", "running", "completed", "failed", "cached"):
                assert sum(getattr(v, phase) for v in s.variants) == getattr(s, phase)

    def test_a_run_level_error_counts_stopped_rows_as_failed(self) -> None:
        """Rows a refused run never sent count as failed per variant, as in the totals."""
        t, events = tracker()
        t.start()
        t.transition(2, "queued", "stopped", key="a1")
        t.transition(2, "queued", "stopped", key="shared")
        t.finish("error", error="BadRequestError: no such model")
        a, b = events[-1].snapshot.variants
        assert (a.failed, a.stopped, b.failed, b.stopped) == (3, 0, 1, 0)
        assert events[-1].snapshot.failed == 4

    def test_without_a_breakdown_snapshots_have_no_variants(self) -> None:
        """A plain run's snapshots carry no variants, and a key changes nothing."""
        t = ProgressTracker(2, clock=FakeClock())
        t.transition(2, "queued", "completed", key="anything")
        assert t.snapshot().variants == () and t.snapshot().samples == 1

    def test_blocks_map_to_variants(self) -> None:
        """of_blocks: equal blocks of rows, each block one variant (samples share a variant)."""
        b = VariantBreakdown.of_blocks(["x", "y"], [0, 0, 1], ["k1", "k2", "k3", "k4", "k5", "k6"])
        assert [(v.name, v.total) for v in b.counts()] == [("x", 4), ("y", 2)]


class TestDisplays:
    """The widget adds the variants table only for a comparison; summary and text keep it."""

    def run(self, sink: Any) -> ProgressTracker:
        t = ProgressTracker(6, [sink], clock=FakeClock(), min_interval=0, variants=breakdown())
        t.start()
        t.transition(2, "queued", "cached", key="a1")
        t.transition(2, "queued", "running", key="shared")
        return t

    def test_live_widget_table(self) -> None:
        """While running: one row per variant and one for all, with the rows in flight."""
        sink = WidgetSink(6, display=lambda _w: None)
        self.run(sink)
        assert sink.widget.children[1] is sink.variants
        assert "narrative-progress-variants" in sink.variants._dom_classes
        table = sink.variants.value
        assert cells(table, "a") == {
            "completed": "0",
            "failed": "0",
            "cached": "2",
            "in-flight": "1",
            "tokens": "0",
        }
        assert cells(table, "b")["in-flight"] == "1"
        assert cells(table, "all") == {
            "completed": "0",
            "failed": "0",
            "cached": "2",
            "in-flight": "2",
            "tokens": "0",
        }

    def test_summary_and_text_after_the_run(self) -> None:
        """The static summary keeps the table (stopped column once rows stopped); the text
        end line has one line per variant."""
        sink = WidgetSink(6, display=lambda _w: None)
        t = self.run(sink)
        t.transition(2, "running", "completed", key="shared")
        t.transition(1, "queued", "stopped", key="b1")
        t.transition(1, "queued", "stopped", key=SKIPPED_KEY)
        t.finish("cancelled")
        s = t.snapshot()
        page = summary_html(s)
        assert cells(page, "b") == {
            "completed": "1",
            "failed": "0",
            "cached": "0",
            "stopped": "2",
            "tokens": "0",
        }
        assert 'data-variant="a"' in page and "in flight" not in page
        text = summary_text(s).splitlines()
        assert text[1] == "  a  3/3 · 1 completed · 0 failed · 2 cached · 0 tokens"
        assert text[2] == "  b  1/3 · 1 completed · 0 failed · 0 cached · 2 stopped · 0 tokens"
        assert TextSink.variant_lines(s) == text[1:3]

    def test_names_are_escaped(self) -> None:
        """A variant name cannot inject markup into the saved notebook."""
        b = VariantBreakdown(["<b>x</b>"], [("k", 0)])
        t = ProgressTracker(1, clock=FakeClock(), variants=b)
        t.transition(1, "queued", "completed", key="k")
        t.finish()
        page = summary_html(t.snapshot())
        assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page

    def test_samples_are_one_row_saying_samples_per_row(self) -> None:
        """samples=3 without variants: no table, a 'samples per row' count instead."""
        sink = WidgetSink(6, display=lambda _w: None)
        t = ProgressTracker(6, [sink], clock=FakeClock(), min_interval=0, samples=3)
        t.start()
        t.transition(6, "queued", "completed")
        t.finish()
        assert sink.variants is None and len(sink.widget.children) == 3
        assert "samples per row <b>3</b>" in sink.counts.value
        assert "samples per row <b>3</b>" in summary_html(t.snapshot())
        assert " · 3 samples/row · 6 completed" in summary_text(t.snapshot())
