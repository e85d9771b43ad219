"""Progress of a run: row counts per job phase, shown as a notebook widget or a text line.

The engine reports what happens to rows (``transition``, ``add_tokens``, ``error``) to one
:class:`ProgressTracker`. The tracker keeps the counts, hands every event to an optional user
callback, and refreshes its display sinks at a bounded rate, so 10,000 rows cost a few hundred
redraws, not 30,000. Displays are a Jupyter widget (:class:`WidgetSink`, ipywidgets imported only
when one is built), a single self-rewriting line on stderr (:class:`TextSink`), or nothing;
:func:`make_progress` picks one from the user's ``progress=`` argument.

Rows move through phases::

    queued -> pending -> running -> completed | failed
    queued -> cached                       (served from the cache, never submitted)
    any non-terminal phase -> failed       (skipped for a missing value, timed out)
    any non-terminal phase -> stopped      (the run was cancelled, interrupted or reached its
                                            token budget first: not a failure, nothing to fix)

Only counts, token totals, durations and error *messages* are ever rendered: never the repr of an
arbitrary object, so nothing secret (such as the API key) can reach a display.
"""

from __future__ import annotations

import html
import logging
import math
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TextIO, get_args, runtime_checkable

from ._clock import Clock, system_clock
from ._reasons import group_reasons, reason_key, summarise_reasons

__all__ = [
    "MAX_ERRORS",
    "PHASES",
    "TERMINAL_PHASES",
    "Phase",
    "ProgressEvent",
    "ProgressSink",
    "ProgressSnapshot",
    "ProgressTracker",
    "TextSink",
    "WidgetSink",
    "bar_style_for",
    "format_count",
    "format_duration",
    "format_rate",
    "in_jupyter_kernel",
    "make_progress",
]

logger = logging.getLogger("narrative_pandas")

Phase = Literal["queued", "pending", "running", "completed", "failed", "cached", "stopped"]
Status = Literal["running", "done", "interrupted", "cancelled", "error"]
FinalStatus = Literal["done", "interrupted", "cancelled", "error"]
EventKind = Literal["start", "transition", "tokens", "error", "finish"]

PHASES: tuple[Phase, ...] = get_args(Phase)
TERMINAL_PHASES: frozenset[Phase] = frozenset({"completed", "failed", "cached", "stopped"})
MAX_ERRORS = 5
"""How many distinct error messages a snapshot keeps (the first ones seen)."""
MAX_ERROR_CHARS = 500
"""Error messages are collapsed to one line and cut to this many characters."""
DEFAULT_TITLE = "narrative"


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ProgressSnapshot:
    """The state of a run at one moment: rows per phase, tokens, timing and first errors."""

    total: int
    queued: int
    pending: int
    running: int
    completed: int
    failed: int
    cached: int
    tokens: int
    elapsed: float
    rows_per_second: float | None
    eta: float | None
    errors: tuple[str, ...]
    status: Status
    stopped: int = 0

    @property
    def finished(self) -> int:
        """Rows in a terminal phase (completed + failed + cached + stopped)."""
        return self.completed + self.failed + self.cached + self.stopped

    @property
    def ended(self) -> int:
        """Rows the run saw through: a result or a failure (completed + failed + cached)."""
        return self.completed + self.failed + self.cached

    @property
    def succeeded(self) -> int:
        """Rows with a result (completed + cached)."""
        return self.completed + self.cached


@dataclass(frozen=True)
class ProgressEvent:
    """One thing that happened to a run, with the snapshot right after it."""

    kind: EventKind
    snapshot: ProgressSnapshot
    rows: int = 0
    old: Phase | None = None
    new: Phase | None = None
    message: str | None = None


@runtime_checkable
class ProgressSink(Protocol):
    """A display of progress. ``update`` is throttled by the tracker; ``close`` comes once."""

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Show ``snapshot`` (called at most once per ``min_interval`` of clock time)."""
        ...

    def close(self, snapshot: ProgressSnapshot) -> None:
        """Show the final ``snapshot``; called exactly once, at the end of the run."""
        ...


# --------------------------------------------------------------------------------------------
# Formatting helpers (pure)


def format_duration(seconds: float | None) -> str:
    """Short duration: ``4.2s``, ``42s``, ``2m23s``, ``1h05m``, ``2d03h``; ``?`` if unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def format_count(n: int | float) -> str:
    """Compact count: ``950``, ``12.3k``, ``4.5M``, ``1.2B``."""
    if n < 0:
        return "-" + format_count(-n)
    if n < 1000:
        return f"{int(n)}"
    for div, unit in ((1e3, "k"), (1e6, "M"), (1e9, "B")):
        value = n / div
        if round(value, 1) < 1000:
            return f"{value:.1f}{unit}"
    return f"{n / 1e12:.1f}T"


def format_rate(rows_per_second: float | None) -> str:
    """Rows per second: ``42 rows/s``, ``4.1 rows/s``, ``0.05 rows/s``; ``?`` if unknown."""
    if rows_per_second is None or not math.isfinite(rows_per_second):
        return "? rows/s"
    if rows_per_second >= 10:
        return f"{rows_per_second:.0f} rows/s"
    if rows_per_second >= 0.1:
        return f"{rows_per_second:.1f} rows/s"
    return f"{rows_per_second:.2f} rows/s"


def _normalize_message(message: object) -> str:
    text = " ".join(str(message).split()) or "(no message)"
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def bar_style_for(snapshot: ProgressSnapshot) -> Literal["", "success", "warning", "danger"]:
    """The widget bar colour for ``snapshot``.

    - ``""`` (neutral blue) while running;
    - ``"success"`` (green): done and every row has a result;
    - ``"warning"`` (amber): done, some rows failed or were stopped by the token budget, but at
      least one row has a result (completed or cached);
    - ``"danger"`` (red): done and every row failed, the run was interrupted or cancelled, or
      an error stopped it (e.g. the service refused its first request).
    """
    if snapshot.status == "running":
        return ""
    if snapshot.status in ("interrupted", "cancelled", "error"):
        return "danger"
    if snapshot.failed == 0 and snapshot.stopped == 0:
        return "success"
    if snapshot.succeeded == 0:
        return "danger"
    return "warning"


def status_text(snapshot: ProgressSnapshot) -> str:
    """One plain-text phrase for the run's state, starting with the state word."""
    s = snapshot
    if s.status == "running":
        return "running"
    took = format_duration(s.elapsed)
    if s.status == "done":
        text = f"done in {took}"
        if s.failed and s.failed == s.total:
            text += f" · all {s.failed} rows failed"
        elif s.failed:
            text += f" · {s.failed} of {s.total} rows failed"
    elif s.status == "error":
        text = f"error after {took}" + (
            f" · {s.failed} of {s.total} rows failed" if s.failed else ""
        )
    else:
        text = f"{s.status} at {s.ended}/{s.total} after {took}"
        if s.failed:
            text += f" · {s.failed} failed"
    if s.stopped:
        text += f" · {s.stopped} stopped"
    return text


# --------------------------------------------------------------------------------------------
# Tracker


def _callable_name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


class ProgressTracker:
    """Counts rows per phase for one run and feeds a user callback and display sinks.

    Parameters
    ----------
    total
        Number of rows in the run; all start ``queued``.
    sinks
        Displays. Their ``update`` is called at most once per ``min_interval`` seconds of clock
        time (plus once at ``start``), and ``close`` exactly once, at ``finish``.
    clock
        Time source (``FakeClock`` in tests).
    callback
        Receives **every** :class:`ProgressEvent`, unthrottled, synchronously, on the thread that
        reported it - keep it cheap. If it raises, the exception is logged once and the
        callback is disabled; the run goes on.
    min_interval
        Seconds of clock time between two sink updates.

    The tracker is thread-safe. Methods called after :meth:`finish` are ignored. Invalid
    transitions (unknown phase, counts going negative, ``old=None``) raise ``ValueError``:
    they are bugs in the caller.
    """

    def __init__(
        self,
        total: int,
        sinks: Sequence[ProgressSink] = (),
        *,
        clock: Clock | None = None,
        callback: Callable[[ProgressEvent], None] | None = None,
        min_interval: float = 0.2,
    ) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = total
        self.sinks: tuple[ProgressSink, ...] = tuple(sinks)
        self.callback = callback
        self.min_interval = min_interval
        self._clock: Clock = clock if clock is not None else system_clock
        self._lock = threading.RLock()
        self._counts: dict[Phase, int] = dict.fromkeys(PHASES, 0)
        self._counts["queued"] = total
        self._tokens = 0
        self._errors: dict[str, int] = {}  # reason (without job ids) -> rows
        self._run_error: str | None = None
        self._status: Status = "running"
        self._started_at: float | None = None
        self._elapsed_final: float | None = None
        self._last_render = -math.inf
        self._broken_sinks: set[int] = set()
        self.updates = 0
        """How many times sinks were updated (for tests and diagnostics)."""

    # -- reading ---------------------------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        """True once :meth:`finish` has been called."""
        return self._elapsed_final is not None

    def snapshot(self) -> ProgressSnapshot:
        """The current state."""
        with self._lock:
            return self._snapshot_at(self._clock.now())

    def _snapshot_at(self, now: float) -> ProgressSnapshot:
        c = self._counts
        if self._elapsed_final is not None:
            elapsed = self._elapsed_final
        elif self._started_at is not None:
            elapsed = max(0.0, now - self._started_at)
        else:
            elapsed = 0.0
        failed, stopped = c["failed"], c["stopped"]
        if self._run_error is not None:  # rows a run-level error left unsent did not "stop"
            failed, stopped = failed + stopped, 0
        done_here = c["completed"] + c["failed"]
        rate = done_here / elapsed if done_here > 0 and elapsed > 0 else None
        remaining = self.total - (done_here + c["cached"] + c["stopped"])
        eta = remaining / rate if rate is not None and self._status == "running" else None
        return ProgressSnapshot(
            total=self.total,
            queued=c["queued"],
            pending=c["pending"],
            running=c["running"],
            completed=c["completed"],
            failed=failed,
            cached=c["cached"],
            tokens=self._tokens,
            elapsed=elapsed,
            rows_per_second=rate,
            eta=eta,
            errors=self._error_lines(),
            status=self._status,
            stopped=stopped,
        )

    # -- reporting -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the clock and show the sinks (idempotent)."""
        with self._lock:
            if self._started_at is not None or self.is_finished:
                return
            self._started_at = self._clock.now()
            self._emit("start", force=True)

    def transition(self, rows: int, old: Phase | None, new: Phase) -> None:
        """Move ``rows`` rows from phase ``old`` to phase ``new``."""
        if old is None:
            raise ValueError("transition() needs the old phase (all rows start 'queued')")
        if old not in self._counts or new not in self._counts:
            raise ValueError(f"unknown phase in transition {old!r} -> {new!r}")
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        with self._lock:
            if self.is_finished:
                logger.debug("progress: transition after finish ignored")
                return
            if self._counts[old] < rows:
                raise ValueError(
                    f"cannot move {rows} rows out of {old!r}: only {self._counts[old]} there"
                )
            if rows == 0 or old == new:
                return
            self._counts[old] -= rows
            self._counts[new] += rows
            self._emit("transition", rows=rows, old=old, new=new)

    def add_tokens(self, n: int) -> None:
        """Add ``n`` tokens to the run's total."""
        if n < 0:
            raise ValueError(f"tokens must be >= 0, got {n}")
        with self._lock:
            if self.is_finished or n == 0:
                return
            self._tokens += n
            self._emit("tokens")

    def error(self, message: str, rows: int = 1) -> None:
        """Record an error message for ``rows`` rows; the first few distinct reasons are kept.

        Identical reasons are counted once (job ids taken out): snapshots list them as
        ``"1,893 x not submitted (cancelled)"``, most rows first. Counts are not changed: the
        rows still need a ``transition(..., "failed")``.
        """
        text = _normalize_message(message)
        reason = reason_key(text)
        with self._lock:
            if self.is_finished:
                return
            if reason in self._errors:
                self._errors[reason] += rows
            elif len(self._errors) < MAX_ERRORS:
                self._errors[reason] = rows
            self._emit("error", rows=rows, message=text)

    def _error_lines(self) -> tuple[str, ...]:
        if self._run_error is not None:
            return (self._run_error,)
        return tuple(summarise_reasons([g], limit=1) for g in group_reasons(self._errors.items()))

    def tick(self) -> None:
        """Refresh the sinks if ``min_interval`` has passed (elapsed time and ETA move on).

        Call it from a loop that waits (e.g. each poll round) so the display stays current
        when no row changes phase for a while.
        """
        with self._lock:
            if self._started_at is None or self.is_finished:
                return
            now = self._clock.now()
            if now - self._last_render >= self.min_interval:
                self._render(self._snapshot_at(now), now)

    def finish(self, status: FinalStatus = "done", error: str | None = None) -> None:
        """End the run: freeze the clock, close every sink once (idempotent).

        ``error`` (with status "error") is the run-level error that stopped it: it replaces the
        rows' reasons in the list (they are its consequences), and rows it left unsent count as
        failed, not stopped.
        """
        with self._lock:
            if self.is_finished:
                return
            if error is not None:
                self._run_error = _normalize_message(error)
            now = self._clock.now()
            if self._started_at is None:
                self._started_at = now
            self._status = status
            self._elapsed_final = max(0.0, now - self._started_at)
            snap = self._snapshot_at(now)
            self._call_back("finish", snap)
            for i, sink in enumerate(self.sinks):
                if i in self._broken_sinks:
                    continue
                try:
                    sink.close(snap)
                except Exception:
                    logger.warning(
                        "progress display %s failed to close", type(sink).__name__, exc_info=True
                    )

    # -- internals -------------------------------------------------------------------------

    def _emit(
        self,
        kind: EventKind,
        *,
        rows: int = 0,
        old: Phase | None = None,
        new: Phase | None = None,
        message: str | None = None,
        force: bool = False,
    ) -> None:
        now = self._clock.now()
        due = bool(self.sinks) and (force or now - self._last_render >= self.min_interval)
        if self.callback is None and not due:
            return  # nothing to do: skip building a snapshot
        snap = self._snapshot_at(now)
        self._call_back(kind, snap, rows=rows, old=old, new=new, message=message)
        if due:
            self._render(snap, now)

    def _call_back(
        self,
        kind: EventKind,
        snap: ProgressSnapshot,
        *,
        rows: int = 0,
        old: Phase | None = None,
        new: Phase | None = None,
        message: str | None = None,
    ) -> None:
        callback = self.callback
        if callback is None:
            return
        try:
            callback(ProgressEvent(kind, snap, rows=rows, old=old, new=new, message=message))
        except Exception:
            self.callback = None
            logger.warning(
                "progress callback %s raised; it is disabled for the rest of this run",
                _callable_name(callback),
                exc_info=True,
            )

    def _render(self, snap: ProgressSnapshot, now: float) -> None:
        self._last_render = now
        self.updates += 1
        for i, sink in enumerate(self.sinks):
            if i in self._broken_sinks:
                continue
            try:
                sink.update(snap)
            except Exception:
                self._broken_sinks.add(i)
                logger.warning(
                    "progress display %s failed; it is disabled for the rest of this run",
                    type(sink).__name__,
                    exc_info=True,
                )


# --------------------------------------------------------------------------------------------
# Text sink


class TextSink:
    """One line on a text stream (stderr by default), rewritten in place with ``\\r``.

    The line is cut to the terminal width (``shutil.get_terminal_size``) so it never wraps;
    the final summary ends with ``\\n`` and is followed by one line per distinct error.
    """

    BAR_CELLS = 20

    def __init__(
        self,
        total: int,
        *,
        title: str | None = None,
        stream: TextIO | None = None,
        width: int | None = None,
    ) -> None:
        self.total = total
        self.title = title or DEFAULT_TITLE
        self._stream = stream
        self._width = width
        self._last_len = 0

    @property
    def stream(self) -> TextIO:
        """Where the line goes (``sys.stderr`` at write time unless a stream was given)."""
        return self._stream if self._stream is not None else sys.stderr

    def width(self) -> int:
        """Columns available for the live line."""
        if self._width is not None:
            return self._width
        return max(20, shutil.get_terminal_size((100, 20)).columns - 1)

    def line(self, s: ProgressSnapshot) -> str:
        """The live line for ``s`` (not truncated)."""
        total = s.total
        frac = s.ended / total if total else 1.0
        filled = min(self.BAR_CELLS, int(frac * self.BAR_CELLS))
        bar = "█" * filled + "░" * (self.BAR_CELLS - filled)
        pct = int(frac * 100) if total else 100
        digits = len(str(total))
        parts = [
            f"{self.title}  {s.ended:>{digits}}/{total} ▕{bar}▏ {pct:>3}%",
            f"pending {s.pending}",
            f"running {s.running}",
            f"failed {s.failed}",
            f"cached {s.cached}",
        ]
        if s.stopped:
            parts.append(f"stopped {s.stopped}")
        parts.append(f"{format_count(s.tokens)} tokens")
        if s.rows_per_second is not None:
            parts.append(format_rate(s.rows_per_second))
        if s.eta is not None:
            parts.append(f"ETA {format_duration(s.eta)}")
        return " · ".join(parts)

    def summary(self, s: ProgressSnapshot) -> str:
        """The final line for ``s``."""
        took = format_duration(s.elapsed)
        if s.status == "done":
            head = f"{self.title}  {s.ended}/{s.total} done in {took}"
        elif s.status == "error":
            head = f"{self.title}  error after {took}"
        else:
            head = f"{self.title}  {s.status} at {s.ended}/{s.total} after {took}"
        parts = [head, f"{s.completed} completed", f"{s.failed} failed"]
        if s.cached:
            parts.append(f"{s.cached} cached")
        if s.stopped:
            parts.append(f"{s.stopped} stopped")
        parts.append(f"{format_count(s.tokens)} tokens")
        return " · ".join(parts)

    def _write_live(self, text: str) -> None:
        pad = " " * max(0, self._last_len - len(text))  # blank what a longer line left
        self.stream.write("\r" + text + pad)
        self._last_len = len(text)
        self.stream.flush()

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Rewrite the live line."""
        text = self.line(snapshot)
        width = self.width()
        if len(text) > width:
            text = text[: width - 1] + "…"
        self._write_live(text)

    def close(self, snapshot: ProgressSnapshot) -> None:
        """Replace the live line by the summary and end it with a newline."""
        summary = self.summary(snapshot)
        if self._last_len > len(summary):  # blank the live line without trailing spaces
            self.stream.write("\r" + " " * self._last_len)
        self.stream.write("\r" + summary + "\n")
        self._last_len = 0
        width = self.width()
        for message in snapshot.errors:
            text = f"  error: {message}"
            if len(text) > width:
                text = text[: width - 1] + "…"
            self.stream.write(text + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------------------------
# Widget sink


def _span(key: str, label: str, value: str) -> str:
    return (
        f'<span class="narrative-count narrative-count-{key}">'
        f"{html.escape(label)} <b>{html.escape(value)}</b></span>"
    )


class WidgetSink:
    """A Jupyter widget: bar, live counts, first errors, state word and an optional Cancel button.

    Stable CSS classes (for browser tests and styling): the outer ``VBox`` has
    ``narrative-progress``; children ``narrative-progress-bar`` (``IntProgress``, value = rows
    completed, failed or cached, max = total), ``narrative-progress-counts``,
    ``narrative-progress-errors``, ``narrative-progress-status`` (``HTML``) and
    ``narrative-progress-cancel`` (``Button``, only when ``on_cancel`` is given). Inside the HTML,
    each count is a ``span.narrative-count.narrative-count-<name>`` (``stopped`` only once a row
    was stopped) and the state word a
    ``span.narrative-state.narrative-state-<status>``. The bar colour follows
    :func:`bar_style_for`. The widget is displayed on the first ``update`` (or at ``close``).
    """

    def __init__(
        self,
        total: int,
        *,
        title: str | None = None,
        on_cancel: Callable[[], None] | None = None,
        display: Callable[[Any], None] | None = None,
    ) -> None:
        import ipywidgets as widgets

        self.total = total
        self.title = title or DEFAULT_TITLE
        self._on_cancel = on_cancel
        self._display = display
        self._shown = False
        self._cancel_requested = False

        self.bar = widgets.IntProgress(
            value=0,
            min=0,
            max=max(total, 1),
            description=self.title,
            bar_style="",
            style={"description_width": "initial"},
            layout=widgets.Layout(width="60%"),
        )
        self.bar.add_class("narrative-progress-bar")
        self.status = widgets.HTML(value=self._status_html("running", "running"))
        self.status.add_class("narrative-progress-status")
        self.counts = widgets.HTML(value="")
        self.counts.add_class("narrative-progress-counts")
        self.errors = widgets.HTML(value="", layout=widgets.Layout(display="none"))
        self.errors.add_class("narrative-progress-errors")
        self.cancel_button: Any = None
        self._blocked = False
        top = [self.bar, self.status]
        if on_cancel is not None:
            self.cancel_button = widgets.Button(
                description="Cancel", icon="stop", tooltip="Cancel the remaining rows"
            )
            self.cancel_button.add_class("narrative-progress-cancel")
            self.cancel_button.on_click(self._clicked)
            top.append(self.cancel_button)
        header = widgets.HBox(top, layout=widgets.Layout(align_items="center"))
        self.widget = widgets.VBox([header, self.counts, self.errors])
        self.widget.add_class("narrative-progress")

    # -- rendering ---------------------------------------------------------------------------

    @staticmethod
    def _status_html(status: str, text: str) -> str:
        word, _, rest = text.partition(" ")
        rest_html = f" {html.escape(rest)}" if rest else ""
        return (
            f'<span class="narrative-state narrative-state-{html.escape(status)}">'
            f"<b>{html.escape(word)}</b></span>{rest_html}"
        )

    @staticmethod
    def counts_html(s: ProgressSnapshot) -> str:
        """The counts line for ``s``, as HTML."""
        parts = [
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
            _span("rate", "rows/s", format_rate(s.rows_per_second).removesuffix(" rows/s")),
        ]
        if s.status == "running":
            parts.append(_span("eta", "ETA", format_duration(s.eta)))
        return " · ".join(parts)

    @staticmethod
    def errors_html(s: ProgressSnapshot) -> str:
        """The first distinct error messages, HTML-escaped, or ``""`` if there are none."""
        if not s.errors:
            return ""
        items = "".join(f"<li><code>{html.escape(m)}</code></li>" for m in s.errors)
        label = "Error" if s.status == "error" else "Rows without an answer (rows x reason)"
        return f"<div>{label}:</div><ul>{items}</ul>"

    def _show(self) -> None:
        if self._shown:
            return
        self._shown = True
        if self._display is not None:
            self._display(self.widget)
        else:
            from IPython.display import display

            show: Callable[[Any], None] = display
            show(self.widget)

    def _render(self, s: ProgressSnapshot) -> None:
        self.bar.value = min(s.ended, self.bar.max) if s.total else 0
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
        """Final state: bar colour by outcome, status sentence, Cancel disabled."""
        self._render(snapshot)
        if snapshot.total == 0:
            self.bar.value = self.bar.max
        self.bar.bar_style = bar_style_for(snapshot)
        if self.cancel_button is not None:
            self.cancel_button.disabled = True
        self._show()

    def set_blocking(self, blocking: bool) -> None:
        """While a cell blocks in ``result()``, the kernel cannot see clicks: say how to stop.

        A Jupyter kernel handles widget messages only while its loop is free (between cells, or
        while a cell awaits), so during a blocking wait the button points at Interrupt instead.
        """
        button = self.cancel_button
        if button is None or self._cancel_requested:
            return
        if blocking and not button.disabled:
            button.disabled = True
            button.description = "Interrupt the kernel to stop"
            button.tooltip = (
                "This cell is waiting for the run, so the kernel cannot take a click. Interrupt "
                "the kernel (■) to stop it cleanly; use `await run` to keep Cancel clickable."
            )
            self._blocked = True
        elif not blocking and self._blocked:
            self._blocked = False
            if not self._finished_shown():
                button.disabled = False
                button.description = "Cancel"
                button.tooltip = "Cancel the remaining rows"

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


# --------------------------------------------------------------------------------------------
# Selection


def in_jupyter_kernel() -> bool:
    """True inside an IPython kernel (Jupyter, VS Code, Colab), False in scripts and terminals."""
    if "IPython" not in sys.modules:
        return False  # nothing has started IPython: certainly not a kernel
    try:
        from IPython import get_ipython
    except Exception:  # pragma: no cover - a broken IPython install
        return False
    shell = get_ipython()
    if shell is None:
        return False
    return (
        getattr(shell, "kernel", None) is not None or type(shell).__name__ == "ZMQInteractiveShell"
    )


def _stderr_is_tty() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except Exception:
        return False


def _display_sink(
    total: int, *, in_kernel: bool, title: str | None, on_cancel: Callable[[], None] | None
) -> ProgressSink:
    if in_kernel:
        try:
            return WidgetSink(total, title=title, on_cancel=on_cancel)
        except Exception:
            logger.warning(
                "could not build the progress widget; showing a text line instead", exc_info=True
            )
    return TextSink(total, title=title)


def make_progress(
    progress: bool | Callable[[ProgressEvent], None] | ProgressSink | None,
    total: int,
    *,
    clock: Clock | None = None,
    on_cancel: Callable[[], None] | None = None,
    title: str | None = None,
) -> ProgressTracker:
    """Build the tracker for a run from the user's ``progress=`` argument.

    - ``None`` (auto): the widget in a Jupyter kernel, else a text line if stderr is a terminal,
      else nothing.
    - ``True``: the widget in a kernel, else a text line on stderr (even if not a terminal).
    - ``False``: nothing.
    - a :class:`ProgressSink` (an object with ``update`` and ``close``): used as the display.
    - any other callable: called with every :class:`ProgressEvent`; nothing is displayed.

    ``on_cancel`` adds a Cancel button to the widget; ``title`` labels the bar and the line.
    """
    sinks: list[ProgressSink] = []
    callback: Callable[[ProgressEvent], None] | None = None
    if progress is None:
        if in_jupyter_kernel():
            sinks.append(_display_sink(total, in_kernel=True, title=title, on_cancel=on_cancel))
        elif _stderr_is_tty():
            sinks.append(TextSink(total, title=title))
    elif progress is True:
        sinks.append(
            _display_sink(total, in_kernel=in_jupyter_kernel(), title=title, on_cancel=on_cancel)
        )
    elif progress is False:
        pass
    elif isinstance(progress, ProgressSink):
        sinks.append(progress)
    elif callable(progress):
        callback = progress
    else:
        raise TypeError(
            "progress must be None, True, False, a callable taking a ProgressEvent, or a "
            f"ProgressSink; got {type(progress).__name__}"
        )
    return ProgressTracker(total, sinks, clock=clock, callback=callback)
