"""The final state of a run as static HTML, to replace the live widget in the notebook.

A widget is a live object of one kernel: a saved notebook reopened later, ``nbconvert``, GitHub's
renderer and VS Code cannot draw it ("Error displaying widget: model not found", or a ``VBox(...)``
repr). When a run ends, :class:`narrative_pandas._widget.WidgetSink` replaces its output with
:func:`summary_bundle`: this HTML (the bar drawn with inline CSS, counts by status, tokens,
elapsed time, rate, error reasons with their row counts; a comparison adds a table with one row
of counts per variant) plus the text summary as ``text/plain``.
Only inline styles are used (no ``<style>``, no script), and every piece of text is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from ._progress import (
    DEFAULT_TITLE,
    ProgressSnapshot,
    bar_style_for,
    format_count,
    format_duration,
    format_rate,
    status_text,
)
from ._textprogress import TextSink
from ._variant_progress import VariantCounts

__all__ = ["BAR_COLOURS", "summary_bundle", "summary_html", "summary_text", "variants_html"]

BAR_COLOURS = {
    "": "#2196f3",  # running: the widget's neutral blue
    "success": "#4caf50",
    "warning": "#ff9800",
    "danger": "#f44336",
}
"""The colours of ipywidgets' bar styles, so the summary looks like the bar it replaces."""

_FONT = "font-family: var(--jp-ui-font-family, system-ui, sans-serif); font-size: 13px"


def _count(key: str, label: str, value: str) -> str:
    return (
        f'<span class="narrative-count narrative-count-{key}">'
        f"{html.escape(label)} <b>{html.escape(value)}</b></span>"
    )


def _counts(s: ProgressSnapshot) -> str:
    parts = [
        _count("completed", "completed", str(s.completed)),
        _count("failed", "failed", str(s.failed)),
        _count("cached", "cached", str(s.cached)),
    ]
    if s.stopped:
        parts.append(_count("stopped", "stopped", str(s.stopped)))
    unfinished = s.queued + s.pending + s.running
    if unfinished:
        parts.append(_count("unfinished", "not finished", str(unfinished)))
    parts.append(_count("tokens", "tokens", format_count(s.tokens)))
    parts.append(_count("elapsed", "elapsed", format_duration(s.elapsed)))
    if s.all_from_cache:
        parts.append('<span class="narrative-count narrative-count-rate">from cache</span>')
    elif s.rows_per_second is not None:
        parts.append(_count("rate", "rows/s", format_rate(s.rows_per_second).split()[0]))
    return " · ".join(parts)


def _samples(s: ProgressSnapshot) -> str:
    """``samples per row 3`` for a ``samples=k`` run (the counts are of jobs); else nothing."""
    return _count("samples", "samples per row", str(s.samples)) + " · " if s.samples > 1 else ""


def _totals(s: ProgressSnapshot) -> VariantCounts:
    return VariantCounts(
        name="all",
        total=s.total,
        queued=s.queued,
        pending=s.pending,
        running=s.running,
        completed=s.completed,
        failed=s.failed,
        cached=s.cached,
        stopped=s.stopped,
        tokens=s.tokens,
    )


_VARIANT_COUNTS = (
    ("in-flight", "in flight"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("cached", "cached"),
    ("stopped", "stopped"),
)


def _variant_colour(s: ProgressSnapshot, v: VariantCounts) -> str:
    """A variant's bar colour: the run's rule (:func:`bar_style_for`) on the variant's rows."""
    if s.status != "done":
        return BAR_COLOURS[bar_style_for(s)]
    if v.failed == 0 and v.stopped == 0:
        return BAR_COLOURS["success"]
    return BAR_COLOURS["danger" if v.completed + v.cached == 0 else "warning"]


def _variant_row(v: VariantCounts, colour: str, shown: Sequence[str], *, total: bool) -> str:
    values = {
        "in-flight": v.in_flight,
        "completed": v.completed,
        "failed": v.failed,
        "cached": v.cached,
        "stopped": v.stopped,
    }
    pad = 'style="padding: 0 8px 0 0"'
    cells = [
        f'<td class="narrative-variant-name" {pad}><b>{html.escape(v.name)}</b></td>',
        f'<td {pad}><div style="width: 80px; height: 8px; background: #e0e0e0; '
        'border-radius: 2px; overflow: hidden">'
        f'<div style="width: {v.fraction * 100:.1f}%; height: 100%; background: {colour}">'
        "</div></div></td>",
        f'<td class="narrative-variant-fraction" {pad}>{v.ended}/{v.total}</td>',
    ]
    for key, label in _VARIANT_COUNTS:
        if key in shown:
            cells.append(
                f'<td class="narrative-vcount narrative-vcount-{key}" {pad}>'
                f"{label} <b>{values[key]}</b></td>"
            )
    cells.append(
        f'<td class="narrative-vcount narrative-vcount-tokens" {pad}>'
        f"tokens <b>{format_count(v.tokens)}</b></td>"
    )
    kind = "narrative-variant-total" if total else "narrative-variant"
    name = html.escape(v.name, quote=True)
    return f'<tr class="{kind}" data-variant="{name}">{"".join(cells)}</tr>'


def variants_html(s: ProgressSnapshot, *, live: bool = False) -> str:
    """A ``compare`` run's counts: one table row per variant, then one for all of them (``""``
    for other runs). ``live`` (the widget while it runs) adds the rows in flight; a stopped
    column appears once a row stopped."""
    if not s.variants:
        return ""
    shown = ["completed", "failed", "cached"]
    if live:
        shown.append("in-flight")
    if s.stopped:
        shown.append("stopped")
    rows = [_variant_row(v, _variant_colour(s, v), shown, total=False) for v in s.variants]
    rows.append(_variant_row(_totals(s), BAR_COLOURS[bar_style_for(s)], shown, total=True))
    return (
        '<table class="narrative-variants" style="border-collapse: collapse; margin: 2px 0; '
        f'white-space: nowrap">{"".join(rows)}</table>'
    )


def _reasons(s: ProgressSnapshot) -> str:
    if not s.reasons:
        return ""
    if s.status == "error":  # the run's own error: its rows' reasons are its consequences
        return (
            '<div class="narrative-summary-reasons" style="margin-top: 2px">Error: '
            f"<code>{html.escape(s.errors[0])}</code></div>"
        )
    items = "".join(
        f"<li>{n:,} x <code>{html.escape(message)}</code></li>" for message, n in s.reasons
    )
    if s.other_errors:
        items += f"<li>{s.other_errors} more rows with other errors</li>"
    return (
        '<div class="narrative-summary-reasons" style="margin-top: 2px">Why rows have no result:'
        f'<ul style="margin: 2px 0 0 0; padding-left: 20px">{items}</ul></div>'
    )


def summary_html(s: ProgressSnapshot, title: str | None = None) -> str:
    """The final state of a run as one self-contained HTML fragment."""
    title = title or DEFAULT_TITLE
    style = bar_style_for(s)
    colour = BAR_COLOURS[style]
    pct = int(s.fraction * 100)
    width = f"{s.fraction * 100:.1f}%"
    bar = (
        f'<div class="narrative-summary-bar" role="progressbar" aria-valuemin="0" '
        f'aria-valuemax="{s.total}" aria-valuenow="{s.ended}" '
        'style="flex: 1 1 auto; min-width: 120px; max-width: 480px; height: 14px; '
        'background: #e0e0e0; border-radius: 2px; overflow: hidden">'
        f'<div style="width: {width}; height: 100%; background: {colour}"></div></div>'
    )
    word, _, rest = status_text(s).partition(" ")
    state = (
        f'<span class="narrative-state narrative-state-{html.escape(s.status)}">'
        f"<b>{html.escape(word)}</b></span> {html.escape(rest)}"
    )
    return (
        f'<div class="narrative-summary narrative-summary-{style or "running"}" '
        f'style="{_FONT}; line-height: 1.6">'
        '<div style="display: flex; align-items: center; gap: 8px; white-space: nowrap">'
        f"<span>{html.escape(title)}</span>{bar}"
        f'<span class="narrative-summary-fraction">{s.ended}/{s.total} · {pct}%</span>'
        f'<span class="narrative-summary-status">{state}</span></div>'
        f"{variants_html(s)}"
        f'<div class="narrative-summary-counts">{_samples(s)}{_counts(s)}</div>'
        f"{_reasons(s)}</div>"
    )


def summary_text(s: ProgressSnapshot, title: str | None = None) -> str:
    """The final state as plain text: the summary line and one line per error reason."""
    sink = TextSink(s.total, title=title, live=False, every=1.0)
    return "\n".join([sink.summary(s), *sink.variant_lines(s), *sink.reason_lines(s)])


def summary_bundle(s: ProgressSnapshot, title: str | None = None) -> dict[str, str]:
    """The MIME bundle that replaces the widget: ``text/html`` and ``text/plain``."""
    return {"text/html": summary_html(s, title), "text/plain": summary_text(s, title)}
