"""Listing sweeps: the state of many outstanding jobs from few ``GET /jobs`` pages.

Two ways to read the listing, because neither of its promises can be trusted everywhere:

- **by update** (``order_by=updated_at_desc``): pages go down only to the newest update the
  previous sweep saw. Cheapest when our jobs dominate the listing: a sweep reads what changed
  and nothing else. An update that shows up late (replica lag) is caught by the *deep* sweep
  made at most every :data:`DEEP_EVERY_S`, which reads down to where the previous deep sweep
  began less a margin (:class:`UpdateWindow`). It relies on ``updated_at`` following real time
  across executors; the margin is *learned* (the largest miss seen: a job whose update the
  sweeps did not show although it happened, found later by identity), so clock skew of a few
  seconds costs a slightly deeper read, not a lost job.
- **by creation** (``order_by=created_at_desc``): pages go down until every job asked for has
  been found by its id, only as deep as our jobs can be (the ``created_at`` of our oldest
  outstanding job, when known) and only while another page is cheaper than fetching the rest one
  by one. Its cost does not depend on how many other jobs the company updates, nor on clocks.

A sweeper starts by update and moves to creation, once and saying so in the log, when the
listing refuses or ignores ``updated_at_desc``, when executors' clocks disagree by more than
:data:`MAX_LEARNED_MARGIN_S`, or when updates of other clients' older jobs (which reading by
creation skips) dominate what it reads. If even the creation order is refused it drops
``order_by`` (the documented default is by creation), and after that the run polls job by job.
Totals (``total_records``) are never trusted against a full page. Whatever a sweep misses, the
engine's observation bound (``_observation.py``) fetches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ._exceptions import APIStatusError, AuthenticationError, PermissionDeniedError
from ._models import parse_timestamp

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["ListingMode", "ListingSweeper", "SweepResult", "is_last_page"]

logger = logging.getLogger("narrative_pandas")

ListingMode = Literal["updated", "created", "default-order", "off"]

#: Largest page the service serves.
MAX_PER_PAGE = 500
#: Smallest page asked for.
MIN_PER_PAGE = 50
#: Pages one sweep may read before the rest are left to per-job GETs.
MAX_SWEEP_PAGES = 8
#: Server-time slack when deciding that a page is older than the previous sweep (by update).
WATERMARK_MARGIN_S = 0.5
#: A learned clock disagreement above this makes reading by update too deep: read by creation.
MAX_LEARNED_MARGIN_S = 10.0
#: Sweeps by update in which other jobs filled most of two or more pages before reading by
#: creation instead ...
FOREIGN_SWEEPS_TO_SWITCH = 1
#: ... "most" being this share of the records read.
FOREIGN_SHARE = 0.75
#: Records beyond the expected count asked for in a sweep by update (updates keep coming).
PAGE_HEADROOM = 30
#: ... and this multiple of the updates expected (they come in bursts).
PAGE_SLACK = 1.5
#: Longest time between two deep sweeps by update (see :class:`UpdateWindow`).
DEEP_EVERY_S = 0.5
#: Called with each wanted job's record as soon as its page is read, and whether the record is
#: older than a sweep by update promises to read (its change, if new, is one the order hid).
Found = Callable[[str, Mapping[str, Any], bool], None]
#: Statuses meaning "this order_by is not supported here".
REFUSED_ORDER_STATUSES = frozenset({400, 422})


@dataclass
class SweepResult:
    """What one sweep learned: the records of wanted jobs it found, by id.

    ``complete`` is True when the sweep can vouch for every wanted job it did *not* return:
    by update, nothing changed for them since the last complete sweep; by creation, only when
    every wanted job was found (the others must be fetched). ``failed``: no page was read.
    """

    records: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    complete: bool = False
    pages: int = 0
    failed: bool = False


def is_last_page(
    count: int, total_records: Any, consumed: int, per_page: int, largest: int
) -> bool:
    """True when a listing page was the last.

    A full page is never the end, whatever ``total_records`` says (servers have been seen to
    claim that every page is the last). A page shorter than one this server has already served
    is the end. A page as long as the longest served so far but shorter than asked may be the
    server's cap on ``per_page``: then the totals decide, and without totals one more page is read.
    """
    if count == 0:
        return True
    if count >= per_page:
        return False
    if count < largest:
        return True
    if isinstance(total_records, int) and not isinstance(total_records, bool):
        return consumed >= total_records
    return False


class UpdateWindow:
    """How deep a sweep by update reads, and how large a page it asks for.

    Each sweep reads down to the newest update the sweeps have seen (the watermark): what
    changed since, and nothing else, so a poll at high concurrency reads tens of records
    instead of every update of the last half second (at C=500 that re-read was 400 records, 20
    ms, every poll). An update whose stamp is older than the watermark when it shows up (replica
    lag, executors' clocks) is caught by a *deep* sweep: at most every :data:`DEEP_EVERY_S`, one
    reads down to the watermark the previous deep sweep began with, less ``depth``. That keeps
    the promise of reading every sweep down to the watermark less ``depth``: an update that shows
    up less than ``depth`` late is read by the first deep sweep after it shows up, however far
    apart deep sweeps are.
    """

    def __init__(self) -> None:
        self._deep_at: float | None = None  # monotonic time the last deep sweep began
        self._deep_mark: float | None = None  # the watermark it began with (server seconds)
        self._rate: float | None = None  # updates per server second, from the last sweeps
        self._last_at: float | None = None
        self._pending: tuple[float, float | None] | None = None  # a deep sweep under way

    def stop_line(self, watermark: float | None, depth: float) -> tuple[float | None, bool]:
        """Where this sweep may stop (server seconds; None: read everything) and whether it
        is a deep one. Called as a sweep begins; a deep one counts once it is :meth:`covered`
        (one that failed half-way is made again by the next sweep)."""
        now = time.monotonic()
        deep = self._deep_at is None or now - self._deep_at >= DEEP_EVERY_S
        self._pending = (now, watermark) if deep else None
        if watermark is None:
            return None, True
        if deep:
            return (watermark if self._deep_mark is None else self._deep_mark) - depth, True
        return watermark, False

    def covered(self, newest: float | None) -> None:
        """The sweep just made read down to its stop line, or found every job it looked for."""
        if self._pending is None:
            return
        began, watermark = self._pending
        self._pending = None
        self._deep_at = began
        # A first sweep read everything: the next deep one need only reach below what it saw.
        self._deep_mark = watermark if watermark is not None else newest

    def page_size(self, stop: float | None, watermark: float | None, wanted: int) -> int:
        """Records to ask for: the updates expected above ``stop``, with headroom, so one
        request usually covers a sweep (sequential pages would delay every completion)."""
        now = time.monotonic()
        if stop is None or watermark is None or self._rate is None or self._last_at is None:
            expected = wanted
        else:
            span = (watermark - stop) + (now - self._last_at)
            expected = int(self._rate * span * PAGE_SLACK) + PAGE_HEADROOM
        self._last_at = now
        return min(MAX_PER_PAGE, max(MIN_PER_PAGE, expected))

    def learned(self, stop: float | None, newest: float | None, above: int) -> None:
        """A sweep read ``above`` records down to ``stop``, the newest stamped ``newest``."""
        if stop is None or newest is None or newest - stop <= 0.01:
            return
        sample = above / (newest - stop)
        self._rate = sample if self._rate is None else (self._rate + sample) / 2


class ListingSweeper:
    """Reads the job listing for a run's outstanding jobs; learns how far it can be trusted."""

    def __init__(self, client: Client, *, data_plane_id: str | None) -> None:
        self._client = client
        self._plane = data_plane_id
        self.mode: ListingMode = "updated"
        #: Learned disagreement between executors' clocks (seconds), from jobs sweeps missed.
        self.margin = 0.0
        self.sweeps = 0
        self._watermark: datetime | None = None
        self._largest_page = 0
        self._foreign_sweeps = 0
        self._created_per_page = MIN_PER_PAGE
        self.window = UpdateWindow()
        self._said: set[str] = set()
        self._creation_refused = False

    @property
    def usable(self) -> bool:
        return self.mode != "off"

    @property
    def watermark(self) -> datetime | None:
        """The newest update a sweep by update has seen (server time)."""
        return self._watermark

    # ------------------------------------------------------------------ learning

    def note_missed_update(self, updated_at: datetime | None) -> None:
        """A job changed without a sweep by update showing it: learn the disorder it implies."""
        if self.mode != "updated" or updated_at is None or self._watermark is None:
            return
        miss = (self._watermark - updated_at).total_seconds()
        if miss <= 0:
            return
        self.margin = max(self.margin, miss + WATERMARK_MARGIN_S)
        if self.margin > MAX_LEARNED_MARGIN_S:
            self._switch(
                "created",
                f"executors' clocks disagree by about {miss:.0f} s; reading the job listing by "
                "creation (order_by=created_at_desc) instead of by update",
            )
        else:
            self._say_once(
                "margin",
                f"job updates arrive out of order in the listing by up to {miss:.1f} s "
                "(executor clocks disagree); sweeps now read that much deeper",
            )

    def give_up(self, why: str) -> None:
        """Stop using the listing for this run (the engine fetches jobs one by one)."""
        self._switch("off", why)

    def _switch(self, mode: ListingMode, why: str) -> None:
        if self.mode == mode:
            return
        self.mode = mode
        self._watermark = None
        self.window = UpdateWindow()
        self._say_once(f"mode-{mode}", why)

    def _say_once(self, topic: str, message: str) -> None:
        if topic not in self._said:
            self._said.add(topic)
            logger.warning(message)

    # ------------------------------------------------------------------ sweeping

    async def sweep(
        self,
        wanted: Collection[str],
        *,
        ours: Collection[str],
        oldest_created: datetime | None = None,
        found: Found | None = None,
    ) -> SweepResult:
        """One sweep for the ``wanted`` job ids (``ours``: every job id of this run).

        ``found(job_id, record, beyond)`` is called for each wanted job as soon as its page is read
        (a completion on page 1 frees its slot before page 2 is asked for); the records are in
        the result too. Authentication and permission errors are raised; other failures give
        an empty, ``failed`` result (the engine's observation bound covers the jobs meanwhile).
        """
        if self.mode == "off" or not wanted:
            return SweepResult(failed=self.mode == "off")
        self.sweeps += 1
        try:
            if self.mode == "updated":
                return await self._by_update(wanted, ours, found, oldest_created)
            order = "created_at_desc" if self.mode == "created" else None
            return await self._by_creation(wanted, oldest_created, order=order, found=found)
        except (AuthenticationError, PermissionDeniedError):
            raise
        except APIStatusError as exc:
            if exc.status_code in REFUSED_ORDER_STATUSES:
                self._refused(exc)
            else:
                logger.info("job listing failed (%s); will try again", exc)
            return SweepResult(failed=True)
        except Exception as exc:  # any other failure of a read: the next poll tries again
            logger.info("job listing failed (%s); will try again", exc)
            return SweepResult(failed=True)

    async def verify(
        self, wanted: Collection[str], *, oldest_created: datetime | None = None
    ) -> SweepResult:
        """Look for ``wanted`` jobs by identity (a sweep by creation), whatever the mode.

        Used while reading by update, for jobs the sweeps have not shown for too long: what it
        finds changed is what the order by update hid.
        """
        if self.mode == "off" or not wanted:
            return SweepResult(failed=True)
        order = None if self._creation_refused else "created_at_desc"
        try:
            return await self._by_creation(wanted, oldest_created, order=order)
        except (AuthenticationError, PermissionDeniedError):
            raise
        except APIStatusError as exc:
            if exc.status_code in REFUSED_ORDER_STATUSES:
                self._creation_refused = True
            logger.info("job listing failed (%s); will try again", exc)
            return SweepResult(failed=True)
        except Exception as exc:
            logger.info("job listing failed (%s); will try again", exc)
            return SweepResult(failed=True)

    def _refused(self, exc: APIStatusError) -> None:
        if self.mode == "updated":
            self._switch(
                "created",
                f"the job listing refused order_by=updated_at_desc ({exc.status_code}); reading "
                "it by creation (created_at_desc), only as deep as this run's jobs",
            )
        elif self.mode == "created":
            self._switch(
                "default-order",
                f"the job listing refused order_by=created_at_desc ({exc.status_code}); reading "
                "it in its default order",
            )
        else:
            self._switch(
                "off",
                f"the job listing refused every query ({exc.status_code}); polling job by job",
            )

    async def _page(self, order: str | None, per_page: int, offset: int) -> dict[str, Any]:
        return await self._client.list_jobs_raw(
            type="model_inference",
            data_plane_id=self._plane,
            order_by=order,
            per_page=per_page,
            offset=offset,
            brief=True,
        )

    async def _by_update(
        self,
        wanted: Collection[str],
        ours: Collection[str],
        found: Found | None,
        oldest_created: datetime | None = None,
    ) -> SweepResult:
        result = SweepResult()
        unseen = set(wanted)
        newest: datetime | None = None
        mark = None if self._watermark is None else self._watermark.timestamp()
        stop_below, _ = self.window.stop_line(mark, self._depth())
        # Below this line a record's news is a miss: no sweep by update promises to read it.
        promised = None if mark is None else mark - self._depth()
        per_page = self.window.page_size(stop_below, mark, len(wanted))
        consumed = 0
        # Ids of jobs not (yet) known as ours: judged when the sweep ends, since a POST of this
        # run may answer after its job was already listed (then it was ours all along).
        strangers: list[tuple[str, Any]] = []
        depth: int | None = None
        for _ in range(MAX_SWEEP_PAGES):
            listing = await self._page("updated_at_desc", per_page, consumed)
            result.pages += 1
            records = listing["records"]
            consumed += len(records)
            self._largest_page = max(self._largest_page, len(records))
            lowest: float | None = None
            for index, record in enumerate(records):
                job_id = record.get("job_id")
                stamp = parse_timestamp(record.get("updated_at"))
                seconds = None if stamp is None else stamp.timestamp()
                if job_id in unseen:
                    unseen.discard(job_id)
                    result.records[job_id] = record
                    if found is not None:
                        beyond = promised is not None and seconds is not None and seconds < promised
                        found(job_id, record, beyond)
                elif job_id not in ours:
                    strangers.append((job_id, record.get("created_at")))
                # A job without a stamp (another client's, often) says nothing about the order.
                if stamp is None or seconds is None:
                    continue
                if depth is None and stop_below is not None and seconds < stop_below:
                    depth = consumed - len(records) + index
                if lowest is not None and seconds > lowest + 0.001:
                    self._switch(
                        "created",
                        "the job listing is not ordered by updated_at (the server ignores "
                        "order_by=updated_at_desc); reading it by creation instead",
                    )
                    return result
                lowest = seconds
                if newest is None or stamp > newest:
                    newest = stamp
            last = is_last_page(
                len(records), listing.get("total_records"), consumed, per_page, self._largest_page
            )
            if last or not unseen:
                result.complete = True
                break
            if stop_below is not None and lowest is not None and lowest < stop_below:
                result.complete = True
                break
        if newest is not None and (self._watermark is None or newest > self._watermark):
            self._watermark = newest
        newest_s = None if newest is None else newest.timestamp()
        if result.complete:
            self.window.covered(newest_s)
        self.window.learned(stop_below, newest_s, consumed if depth is None else depth)
        # The first sweep reads history (it has no line to stop at): not a sign of who updates.
        if strangers and stop_below is not None:
            self._note_foreign(
                result.pages, _older_strangers(strangers, ours, oldest_created), consumed
            )
        elif not strangers:
            self._foreign_sweeps = 0
        return result

    def _depth(self) -> float:
        return WATERMARK_MARGIN_S + self.margin

    def _note_foreign(self, pages: int, foreign: int, consumed: int) -> None:
        """``foreign``: records of other jobs older than ours, which reading by creation skips
        (other jobs made alongside ours, as another Dask worker's, are read either way)."""
        if pages >= 2 and consumed and foreign / consumed >= FOREIGN_SHARE:
            self._foreign_sweeps += 1
        else:
            self._foreign_sweeps = 0
        if self._foreign_sweeps >= FOREIGN_SWEEPS_TO_SWITCH:
            self._switch(
                "created",
                f"other jobs fill {foreign / consumed:.0%} of the job listing's recent updates; "
                "reading it by creation instead, only as deep as this run's jobs",
            )

    async def _by_creation(
        self,
        wanted: Collection[str],
        oldest_created: datetime | None,
        *,
        order: str | None,
        found: Found | None = None,
    ) -> SweepResult:
        """Page down by creation until every wanted job is found, or deeper is not worth it."""
        result = SweepResult()
        unseen = set(wanted)
        per_page = max(self._created_per_page, min(MAX_PER_PAGE, 2 * len(wanted)))
        per_page = min(MAX_PER_PAGE, max(MIN_PER_PAGE, per_page))
        floor = None if oldest_created is None else oldest_created.timestamp() - self._depth()
        consumed = deepest = 0
        while result.pages < MAX_SWEEP_PAGES:
            listing = await self._page(order, per_page, consumed)
            result.pages += 1
            records = listing["records"]
            self._largest_page = max(self._largest_page, len(records))
            oldest: float | None = None
            for index, record in enumerate(records):
                job_id = record.get("job_id")
                if job_id in unseen:
                    unseen.discard(job_id)
                    result.records[job_id] = record
                    deepest = consumed + index + 1
                    if found is not None:
                        found(job_id, record, False)
                stamp = parse_timestamp(record.get("created_at"))
                if stamp is not None:
                    seconds = stamp.timestamp()
                    oldest = seconds if oldest is None else min(oldest, seconds)
            consumed += len(records)
            if not unseen or is_last_page(
                len(records), listing.get("total_records"), consumed, per_page, self._largest_page
            ):
                break
            # Below the creation of our oldest outstanding job there is nothing of ours ...
            if floor is not None and oldest is not None and oldest < floor:
                break
            # ... and one more page is only worth it if it may answer for more jobs than GETs.
            if len(unseen) <= result.pages:
                break
        if unseen and result.pages >= MAX_SWEEP_PAGES:
            # Every page read, jobs still unseen, their line not reached: other jobs made just
            # before ours (and stamps behind) lie between. Larger pages next time, or each
            # sweep would read the same pages again and give up at the same place.
            self._created_per_page = min(MAX_PER_PAGE, 2 * per_page)
        elif deepest:
            self._created_per_page = min(MAX_PER_PAGE, max(MIN_PER_PAGE, deepest + deepest // 4))
        result.complete = not unseen
        return result


def _older_strangers(
    strangers: Collection[tuple[str, Any]], ours: Collection[str], oldest: datetime | None
) -> int:
    """Other jobs' records (not ours after all) created before our oldest outstanding job, or
    of unknown age: what a sweep by creation would not read."""
    count = 0
    for job_id, created in strangers:
        if job_id in ours:
            continue
        stamp = None if oldest is None else parse_timestamp(created)
        if oldest is None or stamp is None or stamp < oldest:
            count += 1
    return count
