"""Reconciliation: was a job created for a POST whose answer was lost?

The service has no idempotency key, so a POST that timed out, lost its connection after
sending, answered 5xx or answered 200 with a body we cannot read may or may not have created
(billed) a job. Only the job listing can tell: every job carries our per-request tag, and the
listing can be read newest-created first. "Not created" is concluded only when the listing was
read back past the request's first intent (by ``created_at``, less :data:`SKEW_MARGIN_S` for
clocks that disagree) or to its end, and no earlier than :data:`SETTLE_S` after the POST (a job
created moments ago may be missing from a replica). Anything less — an unreachable listing, a
listing longer than :data:`MAX_PAGES` — is "still unknown", never "not created".

Many rows reconciling at once share one walk of the listing (:class:`Reconciler` batches them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from ._exceptions import AuthenticationError, PermissionDeniedError
from ._models import Job, parse_timestamp

if TYPE_CHECKING:
    from ._client import Client

__all__ = [
    "MAX_PAGES",
    "SETTLE_S",
    "SKEW_MARGIN_S",
    "Reconciler",
    "Verdict",
    "Wanted",
    "content_key",
]

logger = logging.getLogger("narrative_pandas")

#: Read the listing this far (seconds) past the intent's time: executors' and our clocks differ.
SKEW_MARGIN_S = 120.0
#: "Not created" only from a listing read at least this long after the POST ended.
SETTLE_S = 3.0
#: Largest page the service serves.
PER_PAGE = 500
#: Pages one walk may read (100,000 jobs); beyond, the outcome stays unknown.
MAX_PAGES = 200


@dataclass(frozen=True)
class Wanted:
    """A request to look for: its tag, its model and messages, and its first intent's time
    (epoch seconds)."""

    tag: str
    content: str
    since: float


@dataclass(frozen=True)
class Verdict:
    """``found`` (``job``), ``absent`` (surely never created) or ``unknown`` (``reason``);
    ``fatal`` carries a run-level error (bad key, no permission)."""

    kind: Literal["found", "absent", "unknown", "fatal"]
    job: Job | None = None
    reason: str = ""
    error: BaseException | None = None


def content_key(request: Mapping[str, Any]) -> str:
    """Model and messages of a request or a recorded input, normalised, as one string."""
    messages = []
    for message in request.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        text = message.get("text")
        if text is None and isinstance(message.get("content"), list):
            text = "".join(
                block.get("text", "") for block in message["content"] if isinstance(block, Mapping)
            )
        messages.append((message.get("role"), text))
    return repr((request.get("model"), messages))


def _record_tags(record: Mapping[str, Any]) -> list[str] | None:
    """Tags recorded with a job (its ``input`` shape is not documented: look where they may be);
    None when the server records none."""
    source = record.get("input")
    if isinstance(source, Mapping):
        tags = source.get("tags")
        if tags is None and isinstance(source.get("request"), Mapping):
            tags = source["request"].get("tags")
        if isinstance(tags, list):
            return [t for t in tags if isinstance(t, str)]
    tags = record.get("tags")
    if isinstance(tags, list):
        return [t for t in tags if isinstance(t, str)]
    return None


class Reconciler:
    """Looks for the jobs of unknown POSTs; callers at the same time share one listing walk."""

    def __init__(self, client: Client, *, data_plane_id: str | None) -> None:
        self._client = client
        self._plane = data_plane_id
        self._pending: dict[str, list[tuple[Wanted, asyncio.Future[Verdict]]]] = {}
        self._walker: asyncio.Task[None] | None = None
        self.walks = 0

    async def find(self, wanted: Wanted) -> Verdict:
        """The verdict on one request (joins the next walk of the listing)."""
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(wanted.tag, []).append((wanted, future))
        if self._walker is None:
            self._walker = asyncio.create_task(self._walk_while_wanted())
        return await future

    async def close(self) -> None:
        """Stop a walk in progress (its callers are being cancelled too)."""
        task, self._walker = self._walker, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for waiters in self._pending.values():
            for _, future in waiters:
                future.cancel()
        self._pending.clear()

    async def _walk_while_wanted(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                try:
                    verdicts = await self._walk({tag: w[0][0] for tag, w in batch.items()})
                except Exception as exc:  # never leave a caller waiting on a dead walk
                    logger.warning("searching the job listing failed: %r", exc)
                    verdicts = {}
                    reason = f"the job listing could not be searched ({type(exc).__name__})"
                    default = Verdict("unknown", reason=reason)
                else:
                    default = Verdict("unknown", reason="the listing search was cut short")
                for tag, waiters in batch.items():
                    for _, future in waiters:
                        if not future.done():
                            future.set_result(verdicts.get(tag, default))
        finally:
            self._walker = None

    async def _walk(self, wanted: dict[str, Wanted]) -> dict[str, Verdict]:
        """One walk of the listing, newest created first, until every request is settled."""
        self.walks += 1
        by_content = {w.content: tag for tag, w in wanted.items()}
        # The oldest intent sets the depth; the margin absorbs clocks that disagree.
        horizon = min(w.since for w in wanted.values()) - SKEW_MARGIN_S
        found: dict[str, Job] = {}
        consumed = 0
        for _ in range(MAX_PAGES):
            try:
                listing = await self._client.list_jobs_raw(
                    type="model_inference",
                    data_plane_id=self._plane,
                    order_by="created_at_desc",
                    per_page=PER_PAGE,
                    offset=consumed,
                )
            except (AuthenticationError, PermissionDeniedError) as exc:
                return {tag: Verdict("fatal", error=exc) for tag in wanted}
            except Exception as exc:
                reason = f"the job listing could not be read ({exc})"
                logger.info("reconciling %d request(s): %s", len(wanted), reason)
                return self._settled(found, wanted, complete=False, reason=reason)
            records = listing["records"]
            if not records:  # the end of the listing: every job there is was seen
                return self._settled(found, wanted, complete=True)
            consumed += len(records)
            newest_on_page: float | None = None
            for record in records:
                if not isinstance(record, Mapping):
                    continue
                stamp = parse_timestamp(record.get("created_at"))
                if stamp is not None:
                    seconds = stamp.timestamp()
                    newest_on_page = (
                        seconds if newest_on_page is None else max(newest_on_page, seconds)
                    )
                    if seconds < horizon:  # an earlier run's job of the same request
                        continue
                self._match(record, wanted, by_content, found)
            if len(found) == len(wanted):
                return self._settled(found, wanted, complete=True)
            # A whole page created before the horizon: older jobs cannot be ours. (Judged by
            # the page's newest stamp, so a few skewed executors cannot end the walk early.)
            if newest_on_page is not None and newest_on_page < horizon:
                return self._settled(found, wanted, complete=True)
        reason = f"the listing is longer than {MAX_PAGES} pages back to the request's time"
        return self._settled(found, wanted, complete=False, reason=reason)

    @staticmethod
    def _match(
        record: Mapping[str, Any],
        wanted: dict[str, Wanted],
        by_content: dict[str, str],
        found: dict[str, Job],
    ) -> None:
        tags = _record_tags(record)
        if tags is None:  # a server that keeps no tags: the same model and messages
            matched = by_content.get(content_key(record["input"])) if record.get("input") else None
            hits = [matched] if matched is not None else []
        else:
            hits = [t for t in tags if t in wanted]
        for tag in hits:
            if tag in found:
                continue
            try:
                found[tag] = Job.model_validate(record)
            except ValidationError:
                logger.debug("skipping a job record of an unexpected shape")

    @staticmethod
    def _settled(
        found: dict[str, Job], wanted: dict[str, Wanted], *, complete: bool, reason: str = ""
    ) -> dict[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        for tag in wanted:
            job = found.get(tag)
            if job is not None:
                verdicts[tag] = Verdict("found", job=job)
            elif complete:
                verdicts[tag] = Verdict("absent")
            else:
                verdicts[tag] = Verdict("unknown", reason=reason)
        return verdicts
