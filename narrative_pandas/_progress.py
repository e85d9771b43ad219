"""Progress of a run: row counts per job phase, handed to displays and to a user callback.

The engine reports what happens to rows (``transition``, ``add_tokens``, ``error``) to one
:class:`ProgressTracker`. The tracker keeps the counts, hands every event to an optional user
callback, and refreshes its display sinks at a bounded rate, so 10,000 rows cost a few hundred
redraws, not 30,000. :func:`make_progress` picks the display from the user's ``progress=``
argument: the notebook widget (``_widget.WidgetSink``, replaced by a static HTML summary from
``_summary_html`` when the run ends), a text line on stderr (``_textprogress.TextSink``: a live
line in a terminal, plain lines every few seconds otherwise), or nothing. This module imports
neither ipywidgets nor IPython: the display modules load when a display is built.

A tracker can also be fed from elsewhere: :meth:`ProgressTracker.replay` applies events reported
by another tracker (a Dask worker's run, say), so one display can show a whole cluster.

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

import logging
import math
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, get_args, runtime_checkable

from ._reasons import reason_key

if TYPE_CHECKING:  # not at import: a bare `import narrative_pandas` stays light
    from ._clock import Clock
    from ._variant_progress import VariantBreakdown, VariantCounts

__all__ = [
    "MAX_ERRORS",
    "PHASES",
    "TERMINAL_PHASES",
    "Phase",
    "ProgressEvent",
    "ProgressSink",
    "ProgressSnapshot",
    "ProgressTracker",
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
    """The reasons as lines, ``"1,893 x not submitted (cancelled)"`` (or the run's error)."""
    status: Status
    stopped: int = 0
    reasons: tuple[tuple[str, int], ...] = ()
    """Rows per reason (the first :data:`MAX_ERRORS` distinct ones, job ids taken out), most
    rows first; with a run-level error, that error alone."""
    other_errors: int = 0
    """Rows whose error message was not among the first :data:`MAX_ERRORS` distinct ones."""
    variants: tuple[VariantCounts, ...] = ()
    """In a ``compare`` run, the same counts per variant (name, total, queued ... stopped,
    tokens), in the variants' order; empty otherwise."""
    samples: int = 1
    """Jobs per row (``samples=k``): the counts are of jobs, ``total`` is rows x samples."""

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

    @property
    def fraction(self) -> float:
        """Share of rows the run saw through (``ended / total``; 1.0 for an empty run)."""
        return self.ended / self.total if self.total else 1.0

    @property
    def all_from_cache(self) -> bool:
        """Every row came from the cache (there is no rate to show: say so)."""
        return self.total > 0 and self.cached == self.total


@dataclass(frozen=True)
class ProgressEvent:
    """One thing that happened to a run, with the snapshot right after it."""

    kind: EventKind
    snapshot: ProgressSnapshot
    rows: int = 0
    old: Phase | None = None
    new: Phase | None = None
    message: str | None = None
    tokens: int = 0
    """For ``tokens`` events: how many tokens were added."""


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
    """One line without job ids (:func:`reason_key`), so the same reason groups across jobs."""
    text = reason_key(message)
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
    variants
        A ``compare`` run's breakdown by variant (rows per key and variant): the snapshots then
        carry one set of counts per variant, moved by the ``key=`` of each transition.
    samples
        Jobs per row, for the displays to say so (``samples=k``).

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
        variants: VariantBreakdown | None = None,
        samples: int = 1,
    ) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = total
        self.sinks: tuple[ProgressSink, ...] = tuple(sinks)
        self.callback = callback
        self.min_interval = min_interval
        self._variants = variants
        self.samples = samples
        if clock is None:
            from ._clock import system_clock  # asyncio stays unloaded by a bare import

            clock = system_clock
        self._clock: Clock = clock
        self._lock = threading.RLock()
        self._counts: dict[Phase, int] = dict.fromkeys(PHASES, 0)
        self._counts["queued"] = total
        self._tokens = 0
        self._errors: list[str] = []
        self._status: Status = "running"
        self._started_at: float | None = None
        self._submitted_at: float | None = None  # the rate counts from the first submission
        self._reasons: dict[str, int] = {}
        self._other_errors = 0
        self._run_error: str | None = None
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
        reasons = tuple(sorted(self._reasons.items(), key=lambda item: -item[1]))
        errors = tuple(f"{rows:,} x {reason}" for reason, rows in reasons)
        if self._run_error is not None:  # rows a run-level error left unsent did not "stop";
            failed, stopped = failed + stopped, 0  # the error replaces the rows' reasons
            reasons, errors = ((self._run_error, failed),), (self._run_error,)
        done_here = c["completed"] + c["failed"]  # cached rows say nothing about the pace
        end = now if self._elapsed_final is None else (self._started_at or 0.0) + elapsed
        since = end - self._submitted_at if self._submitted_at is not None else 0.0
        rate = done_here / since if done_here > 0 and since > 0 else None
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
            errors=errors,
            status=self._status,
            stopped=stopped,
            reasons=reasons,
            other_errors=self._other_errors,
            variants=(
                self._variants.counts(stopped_as_failed=self._run_error is not None)
                if self._variants is not None
                else ()
            ),
            samples=self.samples,
        )

    # -- reporting -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the clock and show the sinks (idempotent)."""
        with self._lock:
            if self._started_at is not None or self.is_finished:
                return
            self._started_at = self._clock.now()
            self._emit("start", force=True)

    def transition(
        self, rows: int, old: Phase | None, new: Phase, *, key: str | None = None
    ) -> None:
        """Move ``rows`` rows from phase ``old`` to phase ``new``; ``key`` (the request's) says
        which variant's rows they are in a ``compare`` run."""
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
            if self._submitted_at is None and new in ("pending", "running"):
                self._submitted_at = self._clock.now()
            self._counts[old] -= rows
            self._counts[new] += rows
            if self._variants is not None and key is not None:
                self._variants.move(key, rows, old, new)
            self._emit("transition", rows=rows, old=old, new=new)

    def add_tokens(self, n: int, *, key: str | None = None) -> None:
        """Add ``n`` tokens to the run's total (and to ``key``'s variants in a comparison)."""
        if n < 0:
            raise ValueError(f"tokens must be >= 0, got {n}")
        with self._lock:
            if self.is_finished or n == 0:
                return
            self._tokens += n
            if self._variants is not None and key is not None:
                self._variants.add_tokens(key, n)
            self._emit("tokens", tokens=n)

    def error(self, message: str, rows: int = 1) -> None:
        """Record an error message for ``rows`` rows; the first few distinct ones are kept.

        Counts are not changed: the rows still need a ``transition(..., "failed")``.
        """
        text = _normalize_message(message)
        with self._lock:
            if self.is_finished:
                return
            if text in self._reasons:
                self._reasons[text] += rows
            elif len(self._errors) < MAX_ERRORS:
                self._errors.append(text)
                self._reasons[text] = rows
            else:
                self._other_errors += rows
            self._emit("error", rows=rows, message=text)

    def replay(self, event: ProgressEvent) -> None:
        """Apply an event reported by another tracker (e.g. a Dask worker's) to this one.

        ``transition``, ``tokens`` and ``error`` events change the counts as they did there;
        ``start`` and ``finish`` are ignored (this tracker has its own start and end). Events of
        several trackers may be replayed in any interleaving, as long as each tracker's own
        events arrive in order.
        """
        if event.kind == "transition" and event.old is not None and event.new is not None:
            self.transition(event.rows, event.old, event.new)
        elif event.kind == "tokens":
            self.add_tokens(event.tokens)
        elif event.kind == "error" and event.message is not None:
            self.error(event.message, rows=event.rows)

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
        tokens: int = 0,
        force: bool = False,
    ) -> None:
        if self.callback is None and not self.sinks:
            return  # progress=False: nobody to tell (and no clock to read per row)
        now = self._clock.now()
        due = bool(self.sinks) and (force or now - self._last_render >= self.min_interval)
        if self.callback is None and not due:
            return  # nothing to do: skip building a snapshot
        snap = self._snapshot_at(now)
        self._call_back(kind, snap, rows=rows, old=old, new=new, message=message, tokens=tokens)
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
        tokens: int = 0,
    ) -> None:
        callback = self.callback
        if callback is None:
            return
        try:
            event = ProgressEvent(
                kind, snap, rows=rows, old=old, new=new, message=message, tokens=tokens
            )
            callback(event)
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


def _display_sink(
    total: int, *, in_kernel: bool, title: str | None, on_cancel: Callable[[], None] | None
) -> ProgressSink:
    from ._textprogress import TextSink

    if in_kernel:
        try:
            from ._widget import WidgetSink

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
    variants: VariantBreakdown | None = None,
    samples: int = 1,
) -> ProgressTracker:
    """Build the tracker for a run from the user's ``progress=`` argument.

    - ``None`` (auto) or ``True``: the widget in a Jupyter kernel (a static HTML summary once
      the run ends); elsewhere text on stderr: a live line in a terminal, or, when stderr is a
      file, a pipe or a CI log, one plain line at the start, at most one every
      ``NARRATIVE_PANDAS_PROGRESS_EVERY`` seconds (default 10) and one at the end.
    - ``False``: nothing.
    - a :class:`ProgressSink` (an object with ``update`` and ``close``): used as the display.
    - any other callable: called with every :class:`ProgressEvent`; nothing is displayed.

    ``on_cancel`` adds a Cancel button to the widget; ``title`` labels the bar and the line.
    ``variants`` (a ``compare`` run's breakdown) adds one row of counts per variant to every
    display and snapshot; ``samples`` says how many jobs each row is.
    """
    sinks: list[ProgressSink] = []
    callback: Callable[[ProgressEvent], None] | None = None
    if progress is None or progress is True:
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
    return ProgressTracker(
        total, sinks, clock=clock, callback=callback, variants=variants, samples=samples
    )
