"""Progress as text on stderr: a live line in a terminal, plain lines in logs and files.

In a terminal (the stream is a TTY) one line is rewritten in place with ``\\r``; it always fits
the terminal's width: the fields that matter least are dropped first (cached, pending, running,
tokens...), rate and ETA stay longest, and when the run ends the line is replaced by a one-line
summary, so exactly one line is left behind (plus one line per variant of a comparison and one
per distinct error reason).

Anywhere else (stderr redirected to a file, a pipe, a CI log) there is no ``\\r`` and no ANSI:
one plain line when the run starts, at most one every ``every`` seconds while it runs (default
10, or ``NARRATIVE_PANDAS_PROGRESS_EVERY``), and the summary at the end. The pace is read from the
snapshots' elapsed time, so it follows the tracker's clock (a ``FakeClock`` in tests).
``progress=False`` silences both.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TextIO

from ._exceptions import ConfigurationError
from ._progress import (
    DEFAULT_TITLE,
    ProgressSnapshot,
    format_count,
    format_duration,
    format_rate,
)

__all__ = ["DEFAULT_EVERY_S", "EVERY_ENV", "TextSink", "plain_every"]

DEFAULT_EVERY_S = 10.0
"""Seconds between two plain progress lines when stderr is not a terminal."""
EVERY_ENV = "NARRATIVE_PANDAS_PROGRESS_EVERY"
CORE_PRIORITY = 8
"""Fields at or above this priority (rate, ETA) are the last to leave a narrow live line."""


def plain_every() -> float:
    """Seconds between plain lines: ``NARRATIVE_PANDAS_PROGRESS_EVERY`` if set, else 10."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(
            f"{EVERY_ENV}={raw!r} is not a number of seconds; set it to a positive number "
            f"such as 30, or unset it for the default ({DEFAULT_EVERY_S:g} s)"
        )
    return value


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


class TextSink:
    """Progress of one run as text on a stream (``sys.stderr`` by default).

    ``live=None`` decides by the stream: a live ``\\r`` line on a TTY, plain lines otherwise.
    ``width`` fixes the live line's width (default: the terminal's, minus one column);
    ``every`` the seconds between plain lines (default :func:`plain_every`).
    """

    BAR_CELLS = 20

    def __init__(
        self,
        total: int,
        *,
        title: str | None = None,
        stream: TextIO | None = None,
        width: int | None = None,
        live: bool | None = None,
        every: float | None = None,
    ) -> None:
        self.total = total
        self.title = title or DEFAULT_TITLE
        self._stream = stream
        self._width = width
        self._live = live
        self.every = plain_every() if every is None else every
        self._last_len = 0
        self._last_plain: float | None = None

    @property
    def stream(self) -> TextIO:
        """Where the text goes (``sys.stderr`` at write time unless a stream was given)."""
        return self._stream if self._stream is not None else sys.stderr

    @property
    def live(self) -> bool:
        """True when the line is rewritten in place (the stream is a terminal)."""
        return self._live if self._live is not None else _is_tty(self.stream)

    def width(self) -> int:
        """Columns available for the live line: the terminal of the stream, not of stdout."""
        if self._width is not None:
            return self._width
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = shutil.get_terminal_size((100, 20)).columns
        return max(20, columns - 1)

    # -- text -----------------------------------------------------------------------------

    def _bar(self, s: ProgressSnapshot, cells: int) -> str:
        filled = min(cells, int(s.fraction * cells))
        return "▕" + "█" * filled + "░" * (cells - filled) + "▏ "

    def _head(self, s: ProgressSnapshot, *, bar_cells: int, title: bool = True) -> str:
        digits = len(str(s.total))
        pct = int(s.fraction * 100)
        bar = self._bar(s, bar_cells) if bar_cells else ""
        name = f"{self.title}  " if title else ""
        return f"{name}{s.ended:>{digits}}/{s.total} {bar}{pct:>3}%"

    @staticmethod
    def _fields(s: ProgressSnapshot) -> list[tuple[int, str]]:
        """(priority, text) in display order; a lower priority is dropped first."""
        fields = [(0, f"{s.samples} samples/row")] if s.samples > 1 else []
        fields += [
            (3, f"pending {s.pending}"),
            (4, f"running {s.running}"),
            (7, f"failed {s.failed}"),
            (2, f"cached {s.cached}"),
        ]
        if s.stopped:
            fields.append((1, f"stopped {s.stopped}"))
        fields.append((5, f"{format_count(s.tokens)} tokens"))
        if s.all_from_cache:
            fields.append((8, "from cache"))
        elif s.rows_per_second is not None:
            fields.append((8, format_rate(s.rows_per_second)))
        if s.eta is not None:
            fields.append((9, f"ETA {format_duration(s.eta)}"))
        return fields

    def line(self, s: ProgressSnapshot, width: int | None = None) -> str:
        """The live line for ``s``; with ``width``, the most informative version that fits.

        Rate and ETA are kept longest (the bar shrinks, then goes, then the title, before they
        do); the other fields are then added by importance while they fit.
        """
        fields = self._fields(s)
        join = " · ".join
        full = join([self._head(s, bar_cells=self.BAR_CELLS), *(t for _, t in fields)])
        if width is None or len(full) <= width:
            return full
        core = [f for f in fields if f[0] >= CORE_PRIORITY]
        heads = [
            self._head(s, bar_cells=self.BAR_CELLS),
            self._head(s, bar_cells=10),
            self._head(s, bar_cells=0),
            self._head(s, bar_cells=0, title=False).lstrip(),
        ]
        for head in heads:
            if len(join([head, *(t for _, t in core)])) <= width:
                break
        else:
            head, core = heads[-1], []
            if len(head) > width:
                return head[: width - 1] + "…"
        kept = set(core)

        def shown(extra: tuple[int, str] | None = None) -> str:
            parts = [text for f in fields if f in kept or f == extra for _, text in [f]]
            return join([head, *parts])

        for field in sorted(fields, key=lambda f: -f[0]):
            if field not in kept and len(shown(field)) <= width:
                kept.add(field)
        return shown()

    def plain_line(self, s: ProgressSnapshot) -> str:
        """One log line for ``s``: no bar, no control characters."""
        head = f"{self.title}  {s.ended}/{s.total} {int(s.fraction * 100)}%"
        parts = [head, *(t for _, t in self._fields(s))]
        parts.append(f"{format_duration(s.elapsed)} elapsed")
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
        parts = [head]
        if s.samples > 1:
            parts.append(f"{s.samples} samples/row")
        parts += [f"{s.completed} completed", f"{s.failed} failed"]
        if s.cached:
            parts.append(f"{s.cached} cached")
        if s.stopped:
            parts.append(f"{s.stopped} stopped")
        parts.append(f"{format_count(s.tokens)} tokens")
        return " · ".join(parts)

    @staticmethod
    def variant_lines(s: ProgressSnapshot) -> list[str]:
        """A ``compare`` run's counts, one line per variant (none for other runs)."""
        if not s.variants:
            return []
        width = max(len(v.name) for v in s.variants)
        digits = len(str(max(v.total for v in s.variants)))
        lines = []
        for v in s.variants:
            parts = [
                f"  {v.name:<{width}}  {v.ended:>{digits}}/{v.total}",
                f"{v.completed} completed",
                f"{v.failed} failed",
                f"{v.cached} cached",
            ]
            if v.stopped:
                parts.append(f"{v.stopped} stopped")
            if v.in_flight + v.queued:
                parts.append(f"{v.in_flight + v.queued} not finished")
            parts.append(f"{format_count(v.tokens)} tokens")
            lines.append(" · ".join(parts))
        return lines

    @staticmethod
    def reason_lines(s: ProgressSnapshot) -> list[str]:
        """One line per distinct reason rows have no answer: ``"  1,893 x not submitted"``."""
        if s.status == "error":
            return [f"  error: {message}" for message in s.errors]
        lines = [f"  {line}" for line in s.errors]
        if s.other_errors:
            lines.append(f"  ... and {s.other_errors} more rows with other errors")
        return lines

    # -- sink -----------------------------------------------------------------------------

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Rewrite the live line, or write a plain line if ``every`` seconds have passed."""
        if self.live:
            self._write_live(self.line(snapshot, self.width()))
            return
        last = self._last_plain
        if last is None or snapshot.elapsed - last >= self.every:
            self._last_plain = snapshot.elapsed
            self.stream.write(self.plain_line(snapshot) + "\n")
            self.stream.flush()

    def close(self, snapshot: ProgressSnapshot) -> None:
        """Leave the summary line (the live line is replaced by it) and the error reasons."""
        summary = self.summary(snapshot)
        lines = [*self.variant_lines(snapshot), *self.reason_lines(snapshot)]
        if self.live:  # the summary is final: if it wraps, no later frame leaves it stale
            if self._last_len > len(summary):  # blank the live line without trailing spaces
                self.stream.write("\r" + " " * self._last_len)
            self.stream.write("\r")
            self._last_len = 0
        self.stream.write("\n".join([summary, *lines]) + "\n")
        self.stream.flush()

    def _write_live(self, text: str) -> None:
        pad = " " * max(0, self._last_len - len(text))  # blank what a longer line left
        self.stream.write("\r" + text + pad)
        self._last_len = len(text)
        self.stream.flush()
