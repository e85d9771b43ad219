"""The Run object: a run of inference jobs working in the background, watched, stopped, resumed.

``df.narrative.start(...)`` returns a :class:`Run` at once; ``infer`` is ``start(...).result()``,
so there is one code path. The engine runs on the process's background loop (see ``_sync``), the
progress display is created on the caller's thread (so it lands in the caller's notebook cell) and
updated from the loop, and every result is cached and every job journaled as it happens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import _sync
from ._cached_answers import CachedAnswers, cached_columns, read_cached
from ._client import run_requests
from ._engine import Engine, EngineReport, StopReason
from ._exceptions import (
    AuthenticationError,
    RowsFailedError,
    RowsFailedWarning,
    RowsStoppedWarning,
)
from ._frame import RowOutcome, build_frame, build_frame_from_columns, row_status
from ._gc_pause import run_without_cyclic_gc
from ._progress import ProgressTracker, make_progress
from ._reasons import group_reasons, summarise_reasons
from ._tracebacks import user_stacklevel
from ._variant_progress import SKIPPED_KEY

if TYPE_CHECKING:
    from ._cache import Cache, CachedResult
    from ._client import Client
    from ._config import Settings
    from ._fold import Folding
    from ._plan import RunPlan

__all__ = ["Run"]

logger = logging.getLogger("narrative_pandas")

#: How long ``result()`` waits for a stopping run to journal what is on the wire.
STOP_WAIT_S = 15.0

#: How long the end of a run waits for its queued cache writes to reach the file.
END_FLUSH_S = 10.0


def new_run_id() -> str:
    """A short, unique, sortable-enough id for a run."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


class Run:
    """A run of inference jobs in the background.

    Use ``result()`` (blocking) or ``await run`` for the frame ``infer`` would return; ``done()``,
    ``status()``, ``report`` and ``partial()`` to watch it; ``cancel()`` to stop submitting.
    Cancelling leaves submitted jobs running on the service (there is no cancel endpoint, so they
    are billed); they stay journaled, and a later run or :func:`narrative_pandas.attach` collects
    them instead of submitting again.

    Examples
    --------
    >>> run = df.narrative.start("Review: {review}", output=Sentiment)  # doctest: +SKIP
    >>> run.status()                                                    # doctest: +SKIP
    {'total': 300, 'queued': 120, 'pending': 60, 'running': 20, 'completed': 100, ...}
    >>> out = run.result()                                              # doctest: +SKIP
    """

    def __init__(
        self,
        plan: RunPlan,
        *,
        settings: Settings,
        cache: Cache | None,
        client: Client | None = None,
        progress: Any = None,
        run_id: str | None = None,
        on_finish: Callable[[Run, pd.DataFrame], pd.DataFrame] | None = None,
        folding: Folding | None = None,
    ) -> None:
        self.id = run_id or new_run_id()
        self._plan = plan
        self._settings = settings
        self._cache = cache
        self._client = client
        self._on_finish = on_finish
        self._folding = folding  # samples/compare: every frame handed out is folded
        self._engine: Engine | None = None
        self._answers: CachedAnswers | None = None  # set when every request was cached
        self._cached_report: EngineReport | None = None
        self._started = time.monotonic()
        self._elapsed: float | None = None
        self._http: dict[str, int] = {}
        self._stop_reason: StopReason | None = None
        self._frame: pd.DataFrame | None = None
        self._plain_frame: pd.DataFrame | None = None  # before on_finish (e.g. compare's fold)
        self._run_error: Exception | None = None
        rows = len(plan.row_keys)
        self._tracker: ProgressTracker = make_progress(
            progress,
            rows,
            on_cancel=self.cancel,
            title="narrative",
            variants=folding.breakdown(plan.row_keys) if folding is not None else None,
            samples=folding.samples if folding is not None else 1,
        )
        self._future: concurrent.futures.Future[None] | asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def _launch(self) -> Run:
        """Show progress on the caller's thread, then schedule the engine in the background."""
        self._tracker.start()
        if self._plan.skipped:
            self._tracker.transition(len(self._plan.skipped), "queued", "failed", key=SKIPPED_KEY)
            for reason, rows in Counter(self._plan.skipped.values()).items():
                self._tracker.error(reason, rows=rows)
        if self._client is not None and _sync.in_running_loop():
            self._future = asyncio.ensure_future(self._drive())
        else:
            self._future = _sync.submit(self._drive())
        return self

    async def _drive(self) -> None:
        sent: Counter[tuple[str, str]] = Counter()
        run_requests.set(sent)  # this task's context: every request of this run is counted
        run_error: Exception | None = None
        report: EngineReport | None = None
        try:
            # _gc_pause: the cyclic GC took a sixth of a run's CPU; cached re-runs build lists too
            async with run_without_cyclic_gc():
                answers, hits = await self._read_cache()
                if answers is not None:  # every request answered: no engine, no client, no request
                    report = self._serve_all_cached(answers)
                    return
                engine = Engine(
                    self._client or _sync.shared_client(self._settings),
                    self._plan.requests,
                    self._plan.spec,
                    cache=self._cache,
                    options=self._plan.options,
                    tracker=self._tracker,
                    run_id=self.id,
                    cached=hits,
                )
                self._engine = engine
                report = engine.report
                if self._stop_reason is not None:
                    engine.stop(self._stop_reason)
                await engine.run()
        except AuthenticationError as exc:
            _name_key_source(exc, self._settings.key_source)
            run_error = exc
            raise
        except Exception as exc:  # e.g. the service refused the run (400/403/404 on its start)
            run_error = exc
            raise
        finally:
            self._elapsed = time.monotonic() - self._started
            self._http = {
                "total": sum(sent.values()),
                "post": sent[("POST", "/model-inference/run")],
                "get_job": sent[("GET", "/jobs/{id}")],
                "list_jobs": sent[("GET", "/jobs")],
            }
            if report is None:  # the cache could not be read: the run never started
                report = self._cached_report = EngineReport(
                    unique_requests=len(self._plan.requests), status="error"
                )
            status = report.status
            if run_error is not None:
                self._run_error = run_error
                self._tracker.finish("error", error=f"{type(run_error).__name__}: {run_error}")
            else:
                finish_status = status if status in ("interrupted", "cancelled") else "done"
                self._tracker.finish(finish_status)  # type: ignore[arg-type]
            if self._cache is not None and self._cache.persistent:
                await self._record_end(self._cache, status, report)

    async def _read_cache(self) -> tuple[CachedAnswers | None, dict[str, CachedResult] | None]:
        """Every request's cached answer (the all-hit path), else the hits for the engine.

        ``(None, None)`` lets the engine look for itself (no cache, ``refresh=True``)."""
        cache = self._cache
        requests = self._plan.requests
        if cache is None or self._plan.options.refresh or not requests:
            return None, None
        keys = self._plan.request_keys
        if cache.persistent:  # a file may wait for its lock: never on the loop
            return await asyncio.to_thread(read_cached, cache, keys)
        return read_cached(cache, keys)

    def _serve_all_cached(self, answers: CachedAnswers) -> EngineReport:
        """Finish the run from ``answers`` at once (what the engine would do, without a row
        object or a progress event per row)."""
        self._answers = answers
        served = len(self._plan.row_keys) - len(self._plan.skipped)
        self._tracker.transition(served, "queued", "cached")
        report = EngineReport(unique_requests=len(self._plan.requests), cached=served)
        report.status = self._stop_reason or "done"
        self._cached_report = report
        return report

    async def _record_end(self, cache: Cache, status: str, report: EngineReport) -> None:
        """Put the run's end in its record and wait until the run's writes are in the file.

        Off the loop (the file may be locked by another process): results then are on disk
        when ``result()`` returns. A lock that outlasts the wait only delays them (the writer
        keeps them queued and retries); it never fails the run.
        """

        def record() -> None:
            with contextlib.suppress(KeyError):  # a run with no record (e.g. a Dask partition)
                cache.update_run(
                    self.id,
                    status=status,
                    jobs_submitted=report.submitted,
                    cached_rows=report.cached,
                )
            cache.flush(END_FLUSH_S)
            cache.checkpoint()

        try:
            await asyncio.to_thread(record)
        except Exception as exc:  # the record is a convenience; never lose results over it
            logger.warning("could not record the end of run %s in %s: %s", self.id, cache, exc)

    # ------------------------------------------------------------------ watching

    def done(self) -> bool:
        """True once every row has an outcome (or the run stopped).

        Examples
        --------
        >>> run.done()                                                       # doctest: +SKIP
        False
        """
        return self._future is not None and self._future.done()

    def status(self) -> dict[str, Any]:
        """Live counts: total, queued, pending, running, completed, failed, cached, stopped
        (rows a cancel, an interrupt or the token budget stopped), tokens.

        They agree with the report and the frame: ``completed + cached`` rows have
        ``narrative_status == "completed"`` (the report's ``completed_rows``), ``stopped`` is the
        report's ``stopped_rows``, and ``failed`` its ``failed_rows`` (failed, invalid, timed
        out and skipped rows). A comparison adds ``variants``: the same counts per variant,
        ``{variant: {total, queued, ..., stopped, tokens}}``.

        Examples
        --------
        >>> run.status()["completed"], run.status()["total"]                 # doctest: +SKIP
        (120, 300)
        """
        snap = self._tracker.snapshot()
        status: dict[str, Any] = {
            "total": snap.total,
            "queued": snap.queued,
            "pending": snap.pending,
            "running": snap.running,
            "completed": snap.completed,
            "failed": snap.failed,
            "cached": snap.cached,
            "stopped": snap.stopped,
            "tokens": snap.tokens,
            "elapsed": snap.elapsed,
            "status": snap.status,
        }
        if snap.variants:  # a comparison: the same counts per variant
            status["variants"] = {
                v.name: {k: n for k, n in asdict(v).items() if k != "name"} for v in snap.variants
            }
        return status

    @property
    def report(self) -> dict[str, Any]:
        """What the run did so far: rows, jobs, cache, tokens, HTTP requests, elapsed.

        Rows are counted by ``narrative_status``: ``completed_rows``, ``stopped_rows`` (a cancel,
        an interrupt or the token budget; a re-run finishes them) and ``failed_rows`` (failed,
        invalid, timed out and skipped: ``invalid_rows``, ``timed_out_rows`` and
        ``skipped_rows`` are among them). Stopped and failed rows never overlap.

        Examples
        --------
        >>> run.report["jobs_submitted"], run.report["http_requests"]       # doctest: +SKIP
        (300, {'total': 331, 'post': 300, 'get_job': 2, 'list_jobs': 29})
        """
        if self._engine is not None:
            engine_report = self._engine.report
        elif self._cached_report is not None:
            engine_report = self._cached_report
        else:
            engine_report = EngineReport(unique_requests=len(self._plan.requests))
        plan = self._plan
        if self._answers is not None:  # every request cached: only skipped rows lack an answer
            completed, stopped, failed = (
                len(plan.row_keys) - len(plan.skipped),
                0,
                len(plan.skipped),
            )
        else:
            statuses = Counter(row_status(o) for o in self._row_outcomes(pending_text=None) if o)
            completed = statuses["completed"]
            stopped = statuses["stopped"]
            failed = sum(statuses.values()) - completed - stopped - statuses[None]
        elapsed = self._elapsed if self._elapsed is not None else time.monotonic() - self._started
        return {
            "run_id": self.id,
            "status": engine_report.status if self.done() else "running",
            "rows": len(plan.row_keys),
            "unique_requests": len(plan.requests),
            "deduplicated_rows": plan.deduplicated,
            "skipped_rows": len(plan.skipped),
            "cached_rows": engine_report.cached,
            "resumed_rows": engine_report.resumed,
            "shared_rows": engine_report.shared,
            "reconciled_jobs": engine_report.reconciled,
            "jobs_submitted": engine_report.submitted,
            "not_submitted_rows": engine_report.not_submitted,
            "completed_rows": completed,
            "failed_rows": failed,
            "stopped_rows": stopped,
            "invalid_rows": engine_report.invalid,
            "timed_out_rows": engine_report.timed_out,
            "prompt_tokens": engine_report.prompt_tokens,
            "completion_tokens": engine_report.completion_tokens,
            "total_tokens": engine_report.total_tokens,
            "tokens_estimated": engine_report.tokens_estimated,
            "polls": engine_report.polls,
            "listing_sweeps": engine_report.listing_sweeps,
            "listing_mode": engine_report.listing_mode,
            "not_found_decisions": dict(engine_report.not_found_decisions),
            "http_requests": dict(self._http)
            or {"total": 0, "post": 0, "get_job": 0, "list_jobs": 0},
            "elapsed_s": round(elapsed, 3),
            "model": plan.model,
        }

    def _row_outcomes(self, pending_text: str | None) -> list[RowOutcome | None]:
        live = self._engine.outcomes if self._engine is not None else {}
        pending = RowOutcome(error=pending_text, status="pending") if pending_text else None
        unsent = None
        if self._run_error is not None and self._stop_reason is None:
            # The engine winds down as if cancelled; these rows were stopped by the error.
            error = self._run_error
            unsent = RowOutcome(error=f"not submitted: {type(error).__name__}", status="failed")
        out: list[RowOutcome | None] = []
        for position, key in enumerate(self._plan.row_keys):
            if key is None:
                out.append(RowOutcome(error=self._plan.skipped[position], status="skipped"))
                continue
            outcome = live.get(key, pending)
            if unsent is not None and outcome is not None and outcome.status == "cancelled":
                outcome = unsent if outcome.job_id is None else replace(outcome, status="failed")
            out.append(outcome)
        return out

    def partial(self) -> pd.DataFrame:
        """The frame so far: finished rows filled, the rest NA with ``narrative_error``
        "pending".

        A ``samples=k`` or ``compare`` run gives the shape its result will have (majority
        answers and agreement; variants side by side): a row with a job still in flight has NA
        answers there and its agreement is NA.

        Examples
        --------
        >>> run.partial()["narrative_error"].value_counts()                 # doctest: +SKIP
        pending    180
        """
        if self._answers is not None:  # every row came from the cache: nothing is pending
            frame = self._build(None)
        else:
            outcomes = [
                o or RowOutcome(error="pending", status="pending")
                for o in self._row_outcomes("pending")
            ]
            frame = self._build(outcomes)
        return frame if self._folding is None else self._folding.fold(frame)

    def _build(self, outcomes: list[RowOutcome] | None) -> pd.DataFrame:
        """The frame of ``outcomes`` (one per row), or of the cached answers when None."""
        plan = self._plan
        if outcomes is None:
            assert self._answers is not None
            columns = cached_columns(self._answers, plan.row_keys, plan.skipped)
            frame = build_frame_from_columns(
                plan.df, columns, plan.spec, prefix=plan.prefix, flatten=plan.flatten
            )
        else:
            frame = build_frame(
                plan.df, outcomes, plan.spec, prefix=plan.prefix, flatten=plan.flatten
            )
        frame.attrs["narrative"] = self.report
        return frame

    # ------------------------------------------------------------------ stopping

    def cancel(self) -> None:
        """Stop submitting. Submitted jobs stay journaled (and billed); see the class doc.

        Examples
        --------
        >>> run.cancel()                                                     # doctest: +SKIP
        >>> run.result()["narrative_status"].value_counts()["stopped"]     # doctest: +SKIP
        180
        """
        self._stop("cancelled")

    def _stop(self, reason: StopReason) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._engine is not None:
            self._engine.stop(reason)

    # ------------------------------------------------------------------ results

    def result(self, timeout: float | None = None) -> pd.DataFrame:
        """Block until the run ends and return the frame ``infer`` would return.

        Ctrl-C (a kernel interrupt) stops submitting, keeps every finished result in the cache and
        every submitted job in the journal, then raises ``KeyboardInterrupt`` — or returns the
        partial frame if the run was started with ``on_interrupt="return"``.

        In Jupyter, a cell blocked here cannot take a click on the widget's Cancel button (the
        kernel handles widget messages only while its loop is free): interrupt the kernel
        instead, or ``await run``, which leaves Cancel clickable.

        Examples
        --------
        >>> out = run.result()                                               # doctest: +SKIP
        """
        future = self._future
        assert future is not None, "the run was never started"
        try:
            if isinstance(future, concurrent.futures.Future):
                self._hint_blocking(True)
                deadline = None if timeout is None else time.monotonic() + timeout
                while True:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    wait = 0.2 if remaining is None else min(0.2, remaining)
                    try:
                        future.result(timeout=wait)
                        break
                    except concurrent.futures.TimeoutError:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise TimeoutError(
                                f"run {self.id} is still going after {timeout}s; call result() "
                                "again, or cancel() it"
                            ) from None
            else:
                _sync.run_here(_await_future(future))
        except KeyboardInterrupt:
            self._hint_blocking(False)
            self._stop("interrupted")
            self._wait_quietly(future)
            if self._plan.on_interrupt == "return":
                return self._final_frame(warn=True)
            raise
        finally:
            self._hint_blocking(False)
        return self._final_frame(warn=True)

    def _hint_blocking(self, blocking: bool) -> None:
        """Tell a notebook widget that this thread is blocked (see WidgetSink.set_blocking)."""
        if not _sync.in_running_loop():
            return  # only a kernel's cell (inside its loop) stops widget clicks by blocking
        for sink in self._tracker.sinks:
            hint = getattr(sink, "set_blocking", None)
            if hint is not None:
                hint(blocking)

    def _wait_quietly(self, future: Any) -> None:
        try:
            if isinstance(future, concurrent.futures.Future):
                future.result(timeout=STOP_WAIT_S)
            else:
                _sync.run_here(asyncio.wait_for(_await_future(future), STOP_WAIT_S))
        except BaseException:  # the run's own error is reported by result(); here we only wait
            logger.debug("run %s ended with an error while stopping", self.id, exc_info=True)

    def __await__(self) -> Generator[Any, None, pd.DataFrame]:
        return self._result_async().__await__()

    async def _result_async(self) -> pd.DataFrame:
        future = self._future
        assert future is not None, "the run was never started"
        try:
            if isinstance(future, concurrent.futures.Future):
                await asyncio.shield(asyncio.wrap_future(future))
            else:
                await asyncio.shield(future)
        except asyncio.CancelledError:
            self._stop("interrupted")
            raise
        return self._final_frame(warn=True)

    def _final_frame(self, *, warn: bool) -> pd.DataFrame:
        future = self._future
        if future is not None and future.done():
            exc = future.exception()
            if exc is not None:
                raise exc
        if self._frame is None:
            reason = self._stop_reason or "cancelled"
            outcomes = (
                None
                if self._answers is not None
                else [
                    o or RowOutcome(error=f"not submitted ({reason})", status=reason)
                    for o in self._row_outcomes(None)
                ]
            )
            frame = self._build(outcomes)
            self._plain_frame = frame
            if self._folding is not None:
                frame = self._folding.fold(frame)
            if self._on_finish is not None:
                frame = self._on_finish(self, frame)
            self._frame = frame
        frame = self._frame
        if warn:
            self._warn_or_raise(frame)
        shallow: pd.DataFrame = frame.copy(deep=False)
        return shallow

    def _warn_or_raise(self, frame: pd.DataFrame) -> None:
        """One warning for failed rows, one for stopped rows; ``errors="raise"`` raises instead
        of warning about failures (stopped rows are not failures: they only warn)."""
        prefix = self._plan.prefix
        # A comparison folds each variant into its own columns: count by the run's own rows.
        rows = frame if prefix + "narrative_status" in frame.columns else self._plain_frame
        assert rows is not None
        status = rows[prefix + "narrative_status"].astype(object)
        errors = rows[prefix + "narrative_error"]
        failed = errors[status.isin(("failed", "invalid", "timed_out")).to_numpy()]
        stopped = errors[(status == "stopped").to_numpy()]
        stopped_text = _stopped_message(len(stopped), len(rows), stopped) if len(stopped) else ""
        if len(failed) and self._plan.errors == "raise":
            summary = summarise_reasons(group_reasons(failed.dropna()))
            message = (
                f"{len(failed):,} of {len(rows):,} rows failed ({summary}). The whole frame, "
                "completed rows included, is in this error's .result (except RowsFailedError "
                f"as err: out = err.result): see its '{prefix}narrative_error' column, and re-run "
                "only the rows without an answer with only_failed=err.result."
            )
            if stopped_text:
                message += " Also: " + stopped_text
            raise RowsFailedError(message, result=frame, failed=len(failed))
        level = user_stacklevel()
        if len(failed):
            summary = summarise_reasons(group_reasons(failed.dropna()))
            warnings.warn(
                f"{len(failed):,} of {len(rows):,} rows failed ({summary}). See the "
                f"'{prefix}narrative_error' column; re-run only the rows without an answer "
                "with only_failed=<this result>.",
                RowsFailedWarning,
                stacklevel=level,
            )
        if stopped_text:
            warnings.warn(stopped_text, RowsStoppedWarning, stacklevel=level)

    def __repr__(self) -> str:
        snap = self._tracker.snapshot()
        state = "done" if self.done() else "running"
        return (
            f"<Run {self.id} {state}: {snap.finished}/{snap.total} rows finished, "
            f"{snap.failed} failed, {snap.cached} cached>"
        )


def _stopped_message(count: int, total: int, reasons: pd.Series) -> str:
    """The RowsStoppedWarning text: how many, why (grouped), and that a re-run finishes them."""
    groups = group_reasons(reasons.dropna())
    budget = any("max_total_tokens" in reason for reason, _ in groups)
    advice = (
        "Running the same call again collects the jobs already submitted (without paying for "
        "them again) and submits the rest"
    )
    if budget:
        advice += ", with a larger max_total_tokens for the rows the token budget stopped"
    return (
        f"{count:,} of {total:,} rows were stopped before they had an answer "
        f"({summarise_reasons(groups)}). {advice}."
    )


def _name_key_source(exc: AuthenticationError, source: str) -> None:
    """Say where the refused key came from (never the key), once."""
    note = f"The key sent came from {source}: check or replace it there."
    if note in exc.message:
        return
    generic = "Check the API key (NARRATIVE_API_KEY or api_key=...)."  # _client's generic hint
    if generic in exc.message:
        exc.message = exc.message.replace(generic, note)
    else:
        exc.message += f" {note}"
    exc.args = (exc.message,)


async def _await_future(future: asyncio.Future[None]) -> None:
    await future
