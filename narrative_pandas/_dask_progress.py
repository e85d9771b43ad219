"""Live progress of a Dask run over the whole cluster's rows, shown where the user waits.

Each partition runs its own engine on a worker, with its own :class:`ProgressTracker`. A
:class:`PartitionRelay` is that tracker's callback: at most every ``PUBLISH_INTERVAL_S`` (and once
when the partition ends) it sends the partition's counts to the scheduler as a Dask event
(``Worker.log_event`` on the run's topic). On the client, :func:`follow` subscribes to the topic,
sums the latest counts of every partition (rows of partitions not started yet count as queued)
and drives one ordinary tracker from :func:`make_progress`: the same widget and final HTML in a
notebook, the same text lines in a terminal, or the user's callable, for the cluster as a whole.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._progress import PHASES, FinalStatus, Phase, ProgressEvent, ProgressTracker, make_progress

__all__ = ["PUBLISH_INTERVAL_S", "ClusterCounts", "PartitionRelay", "follow", "topic"]

logger = logging.getLogger("narrative_pandas")

#: Seconds between two publications of one partition's counts (its end is always published).
PUBLISH_INTERVAL_S = 0.25
#: Seconds the client waits after the last partition returned for its final counts to arrive.
FINAL_WAIT_S = 5.0
#: Seconds between two refreshes of the client's display while partitions run.
REFRESH_S = 0.2


def topic(token: str) -> str:
    """The Dask event topic of one run."""
    return f"narrative-pandas-progress-{token}"


class PartitionRelay:
    """A partition's progress callback (on the worker): the user's callable, then a publication.

    Built on the task's thread, where ``get_worker()`` answers; called on the runner loop.
    """

    def __init__(
        self, token: str, partition: int | None, user: Callable[[ProgressEvent], None] | None
    ) -> None:
        from distributed import get_worker

        self._worker: Any = get_worker()
        self._topic = topic(token)
        self._partition = partition if partition is not None else uuid.uuid4().hex[:8]
        self._attempt = uuid.uuid4().hex[:8]
        self._user = user
        self._last = -float("inf")

    def __call__(self, event: ProgressEvent) -> None:
        if self._user is not None:
            try:
                self._user(event)
            except Exception:
                logger.warning("progress callable raised; it is disabled", exc_info=True)
                self._user = None
        final = event.kind == "finish"
        now = time.monotonic()
        if not final and now - self._last < PUBLISH_INTERVAL_S:
            return
        self._last = now
        snap = event.snapshot
        message: dict[str, Any] = {
            "partition": self._partition,
            "attempt": self._attempt,
            "final": final,
            "total": snap.total,
            "tokens": snap.tokens,
            "errors": list(snap.errors),
            **{phase: int(getattr(snap, phase)) for phase in PHASES},
        }
        try:
            self._worker.log_event(self._topic, message)
        except Exception:  # progress is best effort; the run goes on
            logger.debug("could not publish progress", exc_info=True)


class ClusterCounts:
    """The latest counts of each partition, summed into one tracker's phases."""

    def __init__(self, tracker: ProgressTracker) -> None:
        self.tracker = tracker
        self.latest: dict[Any, Mapping[str, Any]] = {}
        self._shown: dict[Phase, int] = {phase: 0 for phase in PHASES}
        self._shown["queued"] = tracker.total
        self._tokens = 0
        self._errors: set[str] = set()

    def receive(self, message: Mapping[str, Any]) -> None:
        """Keep a partition's newest counts (a retried partition's attempt replaces the first)."""
        self.latest[message["partition"]] = message

    @property
    def final_rows(self) -> int:
        """Rows of the partitions whose engine has ended."""
        return sum(int(m["total"]) for m in self.latest.values() if m.get("final"))

    def apply(self) -> None:
        """Move the tracker's rows to where the partitions' latest counts say they are."""
        target: dict[Phase, int] = {phase: 0 for phase in PHASES}
        reported = 0
        tokens = 0
        for message in self.latest.values():
            reported += int(message["total"])
            tokens += int(message["tokens"])
            for phase in PHASES:
                target[phase] += int(message[phase])
            for text in message.get("errors") or ():
                if text not in self._errors:
                    self._errors.add(text)
                    self.tracker.error(text, rows=0)
        target["queued"] += max(0, self.tracker.total - reported)
        if sum(target.values()) != self.tracker.total:
            return  # partitions disagree with the lengths counted up front: keep what is shown
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


def follow(
    client: Any,
    token: str,
    futures: Sequence[Any],
    total: int,
    progress: Any,
    *,
    title: str | None = None,
) -> ProgressTracker:
    """Show the run ``token``'s progress over ``total`` rows until every future is done.

    Events logged before this call are read back from the scheduler, so following a persisted
    frame late shows what already happened. Returns the finished tracker; errors of the futures
    are left to the caller's ``gather``.
    """

    inbox: queue.SimpleQueue[Mapping[str, Any]] = queue.SimpleQueue()
    name = topic(token)
    client.subscribe_topic(name, lambda event: inbox.put(event[1]))
    tracker: ProgressTracker | None = None
    status: FinalStatus = "done"
    try:
        tracker = make_progress(progress, total, title=title)
        tracker.start()
        counts = ClusterCounts(tracker)
        for _, message in client.get_events(name):  # what happened before we subscribed
            counts.receive(message)
        counts.apply()
        while not all(f.done() for f in futures):
            time.sleep(REFRESH_S)
            _drain(inbox, counts)
            tracker.tick()
        failed = any(f.status == "error" for f in futures)
        deadline = time.monotonic() + FINAL_WAIT_S
        while not failed and counts.final_rows < total and time.monotonic() < deadline:
            time.sleep(0.05)  # the last partitions' final counts are still on their way
            _drain(inbox, counts)
        counts.apply()
        if failed:
            status = "cancelled"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception:
        status = "cancelled"
        raise
    finally:
        client.unsubscribe_topic(name)
        if tracker is not None:
            tracker.finish(status)
    return tracker


def _drain(inbox: queue.SimpleQueue[Mapping[str, Any]], counts: ClusterCounts) -> None:
    received = False
    while True:
        try:
            counts.receive(inbox.get_nowait())
        except queue.Empty:
            break
        received = True
    if received:
        counts.apply()
