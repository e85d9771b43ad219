"""The live progress widget of a run in Jupyter, replaced by a static summary when it ends.

ipywidgets is imported by this module only, and this module only when a widget is built.
"""

from __future__ import annotations

import contextvars
import html
import logging
from collections.abc import Callable
from typing import Any

from ._progress import (
    DEFAULT_TITLE,
    ProgressSnapshot,
    bar_style_for,
    format_count,
    format_duration,
    format_rate,
    status_text,
)
from ._summary_html import summary_bundle, variants_html

__all__ = ["CANCEL_LABEL", "INTERRUPT_LABEL", "WidgetSink"]

logger = logging.getLogger("narrative_pandas")

CANCEL_LABEL = "Cancel"
CANCEL_TIP = "Cancel the remaining rows (finished results are kept)"
INTERRUPT_LABEL = "Interrupt to stop"
INTERRUPT_TIP = (
    "This cell is waiting for the run, so the kernel cannot take a click. Interrupt the kernel "
    "(■) to stop it cleanly; use `await run` to keep Cancel clickable."
)


def _span(key: str, label: str, value: str) -> str:
    return (
        f'<span class="narrative-count narrative-count-{key}">'
        f"{html.escape(label)} <b>{html.escape(value)}</b></span>"
    )


def _nowrap(inner: str) -> str:
    return f'<span style="white-space: nowrap">{inner}</span>'


class WidgetSink:
    """A Jupyter widget: bar, ``n/total`` and percent, live counts, errors and a Cancel button.

    Stable CSS classes (for browser tests and styling): the outer ``VBox`` has
    ``narrative-progress``; children ``narrative-progress-bar`` (``IntProgress``, value = rows
    completed, failed or cached, max = total), ``narrative-progress-fraction`` (``n/total · p%``),
    ``narrative-progress-status``, ``narrative-progress-counts``, ``narrative-progress-errors``
    (``HTML``) and ``narrative-progress-cancel`` (``Button``, only with ``on_cancel``); a
    ``compare`` run also has ``narrative-progress-variants`` (``HTML``, after the header: a
    ``table.narrative-variants`` with one ``tr.narrative-variant[data-variant=<name>]`` per
    variant and a ``tr.narrative-variant-total``, each count a
    ``td.narrative-vcount.narrative-vcount-<name>``), added at the first snapshot that has
    variants, so a single run's widget is unchanged. Inside
    the HTML each count is a ``span.narrative-count.narrative-count-<name>`` and the state word a
    ``span.narrative-state.narrative-state-<status>``. The bar colour follows
    :func:`~narrative_pandas._progress.bar_style_for`.

    The widget is displayed at the first ``update`` with a display id. At ``close`` it takes its
    final state, then the output is replaced by the static summary of
    :mod:`narrative_pandas._summary_html` (``div.narrative-summary``) and the widget models are
    closed, so a saved notebook or an HTML export shows the summary, not a dead widget.
    ``display`` (for tests) is called with the widget and may return a handle with
    ``update(bundle, raw=True)``; without a handle the widget stays as it is.
    """

    def __init__(
        self,
        total: int,
        *,
        title: str | None = None,
        on_cancel: Callable[[], None] | None = None,
        display: Callable[[Any], Any] | None = None,
    ) -> None:
        import ipywidgets as widgets

        self.total = total
        self.title = title or DEFAULT_TITLE
        self._on_cancel = on_cancel
        self._display = display
        self._handle: Any = None
        self._shown = False
        self._cancel_requested = False
        self._blocked = False
        self.final_bundle: dict[str, str] | None = None
        """The summary that replaced the widget (``None`` while the run is live)."""

        self.bar = widgets.IntProgress(
            value=0,
            min=0,
            max=max(total, 1),
            description=self.title,
            bar_style="",
            style={"description_width": "initial"},
            layout=widgets.Layout(flex="1 1 auto", width="auto", min_width="160px"),
        )
        self.bar.add_class("narrative-progress-bar")
        self.fraction = widgets.HTML(value=self._fraction_html(0, total))
        self.fraction.add_class("narrative-progress-fraction")
        self.status = widgets.HTML(value=self._status_html("running", "running"))
        self.status.add_class("narrative-progress-status")
        self.counts = widgets.HTML(value="")
        self.counts.add_class("narrative-progress-counts")
        self.errors = widgets.HTML(value="", layout=widgets.Layout(display="none"))
        self.errors.add_class("narrative-progress-errors")
        self.variants: Any = None  # a comparison's table of counts per variant (see _render)
        self.cancel_button: Any = None
        top: list[Any] = [self.bar, self.fraction, self.status]
        if on_cancel is not None:
            self.cancel_button = widgets.Button(
                description=CANCEL_LABEL,
                icon="stop",
                tooltip=CANCEL_TIP,
                layout=widgets.Layout(width="auto", flex="0 0 auto", margin="0 0 0 8px"),
            )
            self.cancel_button.add_class("narrative-progress-cancel")
            self.cancel_button.on_click(self._clicked)
            top.append(self.cancel_button)
        self.header = widgets.HBox(
            top, layout=widgets.Layout(align_items="center", flex_flow="row nowrap")
        )
        self.widget = widgets.VBox([self.header, self.counts, self.errors])
        self.widget.add_class("narrative-progress")

    # -- rendering ---------------------------------------------------------------------------

    @staticmethod
    def _fraction_html(ended: int, total: int) -> str:
        pct = int(ended / total * 100) if total else 100
        return _nowrap(f"{ended}/{total} · {pct}%")

    @staticmethod
    def _status_html(status: str, text: str) -> str:
        word, _, rest = text.partition(" ")
        rest_html = f" {html.escape(rest)}" if rest else ""
        return _nowrap(
            f'<span class="narrative-state narrative-state-{html.escape(status)}">'
            f"<b>{html.escape(word)}</b></span>{rest_html}"
        )

    @staticmethod
    def counts_html(s: ProgressSnapshot) -> str:
        """The counts line for ``s``, as HTML."""
        parts = [_span("samples", "samples per row", str(s.samples))] if s.samples > 1 else []
        parts += [
            _span("queued", "queued", str(s.queued)),
            _span("pending", "pending", str(s.pending)),
            _span("running", "running", str(s.running)),
            _span("completed", "completed", str(s.completed)),
            _span("failed", "failed", str(s.failed)),
            _span("cached", "cached", str(s.cached)),
        ]
        if s.stopped:
            parts.append(_span("stopped", "stopped", str(s.stopped)))
        parts += [
            _span("tokens", "tokens", format_count(s.tokens)),
            _span("elapsed", "elapsed", format_duration(s.elapsed)),
        ]
        if s.all_from_cache:
            parts.append('<span class="narrative-count narrative-count-rate">from cache</span>')
        else:
            rate = format_rate(s.rows_per_second).split()[0]
            parts.append(_span("rate", "rows/s", rate))
        if s.status == "running":
            parts.append(_span("eta", "ETA", format_duration(s.eta)))
        return " · ".join(_nowrap(p) for p in parts)

    @staticmethod
    def errors_html(s: ProgressSnapshot) -> str:
        """The first distinct reasons rows have no answer, counted, escaped; ``""`` if none."""
        if not s.reasons:
            return ""
        items = "".join(f"<li>{n:,} x <code>{html.escape(m)}</code></li>" for m, n in s.reasons)
        if s.other_errors:
            items += f"<li>{s.other_errors} more rows with other errors</li>"
        label = "Error" if s.status == "error" else "Rows without an answer (rows x reason)"
        return f"<div>{label}:</div><ul>{items}</ul>"

    def _show(self) -> None:
        if self._shown:
            return
        self._shown = True
        if self._display is not None:
            self._handle = self._display(self.widget)
        else:
            from IPython.display import display

            show: Callable[..., Any] = display
            self._handle = show(self.widget, display_id=True)

    def _render_variants(self, s: ProgressSnapshot) -> None:
        """The per-variant table of a comparison (its widget is added the first time)."""
        table = variants_html(s, live=s.status == "running")
        if self.variants is None:
            if not table:
                return
            import ipywidgets as widgets

            self.variants = widgets.HTML(value=table)
            self.variants.add_class("narrative-progress-variants")
            self.widget.children = (self.header, self.variants, *self.widget.children[1:])
        elif table != self.variants.value:
            self.variants.value = table

    def _render(self, s: ProgressSnapshot) -> None:
        self._render_variants(s)
        self.bar.value = min(s.ended, self.bar.max) if s.total else 0
        self.fraction.value = self._fraction_html(s.ended, s.total)
        self.counts.value = self.counts_html(s)
        errors = self.errors_html(s)
        if errors != self.errors.value:
            self.errors.value = errors
            self.errors.layout.display = "" if errors else "none"
        if s.status == "running":
            text = "cancelling…" if self._cancel_requested else "running"
        else:
            text = status_text(s)
        self.status.value = self._status_html(s.status, text)

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Show the widget (first time) and refresh it."""
        self._render(snapshot)
        self._show()

    def close(self, snapshot: ProgressSnapshot) -> None:
        """Final state: bar colour by outcome, no button; then the static summary replaces it."""
        self._render(snapshot)
        if snapshot.total == 0:
            self.bar.value = self.bar.max
        self.bar.bar_style = bar_style_for(snapshot)
        if self.cancel_button is not None:
            self.cancel_button.disabled = True
            self.cancel_button.layout.display = "none"
        self._show()
        update = getattr(self._handle, "update", None)
        if update is None:
            return  # nowhere to put the summary: the widget stays, in its final state
        bundle = summary_bundle(snapshot, self.title)
        # An empty context: ipykernel then tags the message with the cell executing now (its
        # global parent), not the cell that started the run, whose context the engine's task
        # inherited. Frontends update by display id either way, but nbclient (and so papermill
        # and nbconvert --execute) only records messages of the cell it is running.
        contextvars.Context().run(update, bundle, raw=True)
        self.final_bundle = bundle
        parts = (self.widget, self.header, *self.header.children, self.counts, self.errors)
        for w in (*parts, *([self.variants] if self.variants is not None else [])):
            w.close()  # the output no longer shows them: free the models in kernel and page

    def set_blocking(self, blocking: bool) -> None:
        """While a cell blocks in ``result()``, the kernel cannot see clicks: say how to stop.

        A Jupyter kernel handles widget messages only while its loop is free (between cells, or
        while a cell awaits), so during a blocking wait the button points at Interrupt instead
        (a short label; the tooltip explains).
        """
        button = self.cancel_button
        if button is None or self._cancel_requested or self.final_bundle is not None:
            return
        if blocking and not button.disabled:
            button.disabled = True
            button.description = INTERRUPT_LABEL
            button.icon = ""
            button.tooltip = INTERRUPT_TIP
            self._blocked = True
        elif not blocking and self._blocked:
            self._blocked = False
            if not self._finished_shown():
                button.disabled = False
                button.description = CANCEL_LABEL
                button.icon = "stop"
                button.tooltip = CANCEL_TIP

    def _finished_shown(self) -> bool:
        return bool(self.bar.bar_style) or self.bar.value >= self.bar.max > 0

    def _clicked(self, _button: object) -> None:
        if self._cancel_requested or self._on_cancel is None:
            return
        self._cancel_requested = True
        if self.cancel_button is not None:
            self.cancel_button.disabled = True
            self.cancel_button.description = "Cancelled"
        self.status.value = self._status_html("running", "cancelling…")
        try:
            self._on_cancel()
        except Exception:
            logger.warning("cancelling the run failed", exc_info=True)
