"""Live progress of a Dask run over the whole cluster's rows, however its graph is computed.

Each partition runs its own engine (on a worker, or in this process with the threads scheduler)
with its own :class:`ProgressTracker`. A :class:`PartitionRelay` is that tracker's display: at
its start, at most every 0.2 s after (the tracker's refresh interval), and once when the
partition ends, it publishes the partition's counts: as a Dask event (``Worker.log_event`` on
the run's topic) on a ``distributed`` cluster, or straight to this process's
:class:`RunMonitor` otherwise.

On the client, the run's :class:`RunMonitor` (made by ``ddf.narrative.infer`` and subscribed to
the topic) starts a *session* when the first partition reports, whatever started the computation
(``dask.compute(out)``, ``out.compute()``, ``out.persist()``, ``out.narrative.compute()``): it
counts the input's rows, sums the latest counts of every partition (partitions not started yet
count as queued) into ordinary trackers from :func:`make_progress` (the same widget and final
HTML in a notebook, the same text lines in a terminal, or the user's callable), and ends the
session when every partition has reported its end. :meth:`RunMonitor.follow` adds a display of
the current (or next, or last) session where the user waits (``out.narrative.progress()``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._progress import (
    PHASES,
    FinalStatus,
    Phase,
    ProgressSink,
    ProgressSnapshot,
    ProgressTracker,
    make_progress,
)

__all__ = [
    "ClusterCounts",
    "PartitionRelay",
    "RunMonitor",
    "check_destination",
    "monitor_for",
    "topic",
]

logger = logging.getLogger("narrative_pandas")

#: Seconds a caller waits, after its futures are done, for the partitions' last counts.
FINAL_WAIT_S = 5.0
#: Seconds between two refreshes of the client's displays while a session runs.
REFRESH_S = 0.2
#: Title of the bar and of the text line.
TITLE = "narrative (Dask)"

#: This process's monitors, by run token (the in-process relay delivers to them).
_monitors: dict[str, RunMonitor] = {}
_monitors_lock = threading.Lock()


def topic(token: str) -> str:
    """The Dask event topic of one run."""
    return f"narrative-pandas-progress-{token}"


def check_destination(progress: Any) -> None:
    """Raise TypeError for a ``progress=`` value :func:`make_progress` would not take."""
    if progress is None or isinstance(progress, bool) or callable(progress):
        return
    if isinstance(progress, ProgressSink):
        return
    raise TypeError(
        "progress must be None, True, False, a callable taking a ProgressEvent, or a "
        f"ProgressSink; got {type(progress).__name__}"
    )


def monitor_for(token: str) -> RunMonitor | None:
    """The monitor of run ``token`` in this process, if any."""
    with _monitors_lock:
        return _monitors.get(token)


# ---------------------------------------------------------------------------------- workers


class PartitionRelay:
    """A partition's progress display (a :class:`ProgressSink`): publishes its counts.

    As a sink it is called at most every ``min_interval`` of the partition's tracker (0.2 s),
    not at every row's event, so a partition builds no snapshot per row. Built on the task's
    thread, where ``get_worker()`` answers; called on the runner loop.
    """

    def __init__(self, token: str, partition: int | None) -> None:
        self._token = token
        self._worker: Any = _current_worker()
        self._partition: Any = partition if partition is not None else uuid.uuid4().hex[:8]
        self._attempt = uuid.uuid4().hex[:8]
        self._last: dict[str, Any] | None = None

    def update(self, snapshot: ProgressSnapshot) -> None:
        self._send(snapshot, final=False)

    def close(self, snapshot: ProgressSnapshot) -> None:
        self._send(snapshot, final=True)

    def _send(self, snap: ProgressSnapshot, *, final: bool) -> None:
        message: dict[str, Any] = {
            "partition": self._partition,
            "attempt": self._attempt,
            "final": final,
            "error": final and snap.status == "error",
            "total": snap.total,
            "tokens": snap.tokens,
            "reasons": [[text, int(rows)] for text, rows in snap.reasons],
            **{phase: int(getattr(snap, phase)) for phase in PHASES},
        }
        self._last = message
        self._publish(message)

    def failed(self, rows: int) -> None:
        """The partition raised before its engine ended: report its end, as an error."""
        if self._last is not None and self._last["final"]:
            return  # the engine ended (e.g. errors="raise"): its counts were published
        message = dict(self._last or {phase: 0 for phase in PHASES})
        message.update(
            partition=self._partition,
            attempt=self._attempt,
            final=True,
            error=True,
            total=int(message.get("total") or rows),
            tokens=int(message.get("tokens") or 0),
            reasons=list(message.get("reasons") or []),
        )
        if not self._last:
            message["queued"] = message["total"]
        self._publish(message)

    def _publish(self, message: Mapping[str, Any]) -> None:
        try:
            if self._worker is not None:
                self._worker.log_event(topic(self._token), dict(message))
            else:
                monitor = monitor_for(self._token)
                if monitor is not None:
                    monitor.receive(message)
        except Exception:  # progress is best effort; the run goes on
            logger.debug("could not publish progress", exc_info=True)


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


# ---------------------------------------------------------------------------------- client


class ClusterCounts:
    """One tracker driven by the partitions' latest counts (a display of a session)."""

    def __init__(self, tracker: ProgressTracker) -> None:
        self.tracker = tracker
        self._shown: dict[Phase, int] = {phase: 0 for phase in PHASES}
        self._shown["queued"] = tracker.total
        self._tokens = 0
        self._reasons: dict[str, int] = {}  # rows shown per reason

    def apply(self, latest: Mapping[Any, Mapping[str, Any]]) -> None:
        """Move the tracker's rows to where the partitions' latest counts say they are."""
        target: dict[Phase, int] = {phase: 0 for phase in PHASES}
        reported = 0
        tokens = 0
        reasons: dict[str, int] = {}
        for message in latest.values():
            reported += int(message["total"])
            tokens += int(message["tokens"])
            for phase in PHASES:
                target[phase] += int(message[phase])
            for text, rows in message.get("reasons") or ():
                reasons[text] = reasons.get(text, 0) + int(rows)
        for text, rows in reasons.items():  # the cluster's rows per reason, grouped as one run's
            shown = self._reasons.get(text, 0)
            if rows > shown:
                self.tracker.error(text, rows=rows - shown)
                self._reasons[text] = rows
        target["queued"] += max(0, self.tracker.total - reported)
        if sum(target.values()) != self.tracker.total:
            return  # partitions disagree with the rows counted up front: keep what is shown
        for old, new, rows in _moves(self._shown, target):
            self.tracker.transition(rows, old, new)
        self._shown = target
        if tokens > self._tokens:
            self.tracker.add_tokens(tokens - self._tokens)
            self._tokens = tokens


def _moves(
    before: Mapping[Phase, int], after: Mapping[Phase, int]
) -> list[tuple[Phase, Phase, int]]:
    """Transitions (old, new, rows) that turn ``before`` into ``after`` (same total)."""
    out_of = [[p, before[p] - after[p]] for p in PHASES if before[p] > after[p]]
    into = [[p, after[p] - before[p]] for p in PHASES if after[p] > before[p]]
    moves: list[tuple[Phase, Phase, int]] = []
    i = j = 0
    while i < len(out_of) and j < len(into):
        rows = min(int(out_of[i][1]), int(into[j][1]))
        moves.append((out_of[i][0], into[j][0], rows))  # type: ignore[arg-type]
        out_of[i][1] -= rows  # type: ignore[operator]
        into[j][1] -= rows  # type: ignore[operator]
        if out_of[i][1] == 0:
            i += 1
        if into[j][1] == 0:
            j += 1
    return moves


@dataclass
class _Session:
    """One computation of the run's graph, as the client sees it."""

    generation: int
    latest: dict[Any, Mapping[str, Any]] = field(default_factory=dict)
    views: list[ClusterCounts] = field(default_factory=list)
    total: int | None = None
    displayed: bool = False  # one of the views is the widget or the text line
    ended: threading.Event = field(default_factory=threading.Event)

    def final_partitions(self) -> int:
        return sum(1 for m in self.latest.values() if m.get("final"))

    def status(self) -> FinalStatus:
        return "error" if any(m.get("error") for m in self.latest.values()) else "done"


class RunMonitor:
    """The client's view of one Dask run: shows its rows whenever its graph is computed.

    ``progress`` is where a session goes unless a caller of :meth:`expect` says otherwise
    (``None``/``True``: the widget in a notebook, text on stderr elsewhere; ``False``: nowhere;
    a callable or a sink). ``count_rows`` counts the input's rows (the bar's total).
    """

    def __init__(
        self,
        token: str,
        partitions: int,
        count_rows: Callable[[], int],
        progress: Any = None,
    ) -> None:
        self.token = token
        self.partitions = partitions
        self.progress = progress
        self._count_rows = count_rows
        self._lock = threading.Condition()
        self._inbox: queue.SimpleQueue[Mapping[str, Any]] = queue.SimpleQueue()
        self._session: _Session | None = None
        self._pending: list[tuple[Any, threading.Event | None]] = []  # for the next session
        self._watchers: list[threading.Event] = []  # set when the running session ends
        self._expected: tuple[Any, int | None] | None = None
        self._last: _Session | None = None
        self._generation = 0
        self._client: Any = None

    # ------------------------------------------------------------------ wiring

    def register(self) -> None:
        with _monitors_lock:
            _monitors[self.token] = self

    def subscribe(self, client: Any) -> None:
        """Receive the run's Dask events from ``client`` (once)."""
        if self._client is not None:
            return
        client.subscribe_topic(topic(self.token), lambda event: self.receive(event[1]))
        self._client = client

    def close(self) -> None:
        """Stop receiving (the run is forgotten)."""
        with _monitors_lock:
            if _monitors.get(self.token) is self:
                del _monitors[self.token]
        client, self._client = self._client, None
        if client is not None:
            try:
                client.unsubscribe_topic(topic(self.token))
            except Exception:
                logger.debug("could not unsubscribe", exc_info=True)

    # ------------------------------------------------------------------ input

    def receive(self, message: Mapping[str, Any]) -> None:
        """A partition's counts (any thread); the first one starts a session."""
        self._inbox.put(message)
        with self._lock:
            if self._session is None:
                self._start_session()

    def expect(self, progress: Any, total: int | None) -> int:
        """The next session goes to ``progress`` (if not None) over ``total`` rows (if known).

        Returns the generation to pass to :meth:`wait_end`.
        """
        with self._lock:
            self._expected = (progress, total)
            return self._generation

    def started_since(self, generation: int) -> bool:
        """Whether a session began after :meth:`expect` returned ``generation``."""
        with self._lock:
            return self._generation > generation or self._session is not None

    def wait_end(self, generation: int, timeout: float = FINAL_WAIT_S) -> bool:
        """Wait until a session after ``generation`` has ended (the caller's work is done)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._generation <= generation or self._session is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def follow(self, progress: Any, futures: Sequence[Any]) -> None:
        """Show the run's rows to ``progress`` until its session ends (or show the last one).

        Joins the running session, else waits for the next one; when ``futures`` are done and
        no session runs, shows the last session's final counts.
        """
        done = threading.Event()
        with self._lock:
            if self._session is not None:
                self._add_view(self._session, progress, done)
            else:
                self._pending.append((progress, done))
        while not done.wait(REFRESH_S):
            if all(f.done() for f in futures):
                break
        # The work is done: its session ends soon, or has ended before we came (show that one).
        quiet_since = time.monotonic()
        while not done.wait(0.05):
            with self._lock:
                if self._session is not None:
                    quiet_since = time.monotonic()
                    continue
                quiet = time.monotonic() - quiet_since
                waiting = any(d is done for _, d in self._pending)
                if waiting and ((self._last is not None and quiet > 1.0) or quiet > FINAL_WAIT_S):
                    self._pending = [p for p in self._pending if p[1] is not done]
                    self._replay_last(progress)
                    return

    # ------------------------------------------------------------------ sessions

    def _start_session(self) -> None:
        self._session = _Session(generation=self._generation + 1)
        thread = threading.Thread(
            target=self._run_session,
            args=(self._session,),
            name=f"narrative-dask-progress-{self.token}",
            daemon=True,
        )
        thread.start()

    def _run_session(self, session: _Session) -> None:
        """Show one computation until every partition has reported its end."""
        with self._lock:
            destination, total = self._expected or (None, None)
            self._expected = None
        if destination is None:
            destination = self.progress
        try:
            session.total = total if total is not None else self._count_rows()
        except Exception:
            logger.warning("could not count the input's rows; no progress shown", exc_info=True)
        status: FinalStatus = "done"
        try:
            with self._lock:
                if session.total is not None:
                    self._add_view(session, destination, None)
                    pending, self._pending = self._pending, []
                    for waiting, done in pending:
                        self._add_view(session, waiting, done)
            while session.final_partitions() < self.partitions:
                self._drain(session)
                time.sleep(REFRESH_S)
                for view in list(session.views):
                    view.tracker.tick()
            status = session.status()
        except Exception:
            logger.warning("Dask progress display failed", exc_info=True)
            status = "error"
        finally:
            with self._lock:
                for view in session.views:
                    view.tracker.finish(status)
                session.ended.set()
                self._last = session
                self._session = None
                self._generation = session.generation
                watchers, self._watchers = self._watchers, []
                if session.total is None:  # nothing was shown: nobody waits for this session
                    watchers += [done for _, done in self._pending if done is not None]
                    self._pending = []
                for done in watchers:
                    done.set()
                if not self._inbox.empty():
                    self._start_session()  # the next computation already reports
                self._lock.notify_all()

    def _drain(self, session: _Session) -> None:
        received = False
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            session.latest[message["partition"]] = message  # a retry's attempt replaces
            received = True
        if received:
            with self._lock:
                for view in session.views:
                    view.apply(session.latest)

    def _add_view(self, session: _Session, progress: Any, done: threading.Event | None) -> None:
        """Show ``session`` to ``progress`` too (under the lock)."""
        if session.total is None:
            self._pending.append((progress, done))
            return
        if _is_display(progress) and session.displayed:
            if done is not None:  # already shown (a widget or a line): one display, not two
                self._watchers.append(done)
            return
        if progress is False:
            if done is not None:
                self._watchers.append(done)
            return
        tracker = make_progress(progress, session.total, title=TITLE)
        tracker.start()
        view = ClusterCounts(tracker)
        view.apply(session.latest)
        session.views.append(view)
        session.displayed = session.displayed or _is_display(progress)
        if done is not None:
            self._watchers.append(done)

    def _replay_last(self, progress: Any) -> None:
        """Show the last session's final counts (the run ended before anyone followed it)."""
        last = self._last
        if last is None or last.total is None:
            return
        tracker = make_progress(progress, last.total, title=TITLE)
        tracker.start()
        ClusterCounts(tracker).apply(last.latest)
        tracker.finish(last.status())


def _is_display(progress: Any) -> bool:
    return progress is None or progress is True
