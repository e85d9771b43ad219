"""The journal records what the engine decided about jobs that answered 404.

Replica lag (a new job answers 404 for a while) must not be paid twice; a job the service forgot
(retention) is resubmitted. Either way the decision is kept beside the request's key, readable
through ``cache.journal_decisions()`` after a restart, with at most a few rows per 404 streak.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import wait_until
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas._cache import JournalDecision, MemoryCache, SQLiteCache
from narrative_pandas._clock import FakeClock
from narrative_pandas._decision_log import DecisionRecorder
from narrative_pandas._exceptions import NotFoundError
from narrative_pandas._observation import LAG_BOUND_S, NOT_FOUND_MAX_RETRY_S
from narrative_pandas._poller import Poller
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):
    label: str
    score: float


PROMPT = "Text: {text}"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


def target(sb: Sandbox) -> dict[str, Any]:
    return {"api_key": sb.api_key, "base_url": sb.base_url, "data_plane_id": sb.data_plane_id}


def verdicts_by_key(decisions: list[JournalDecision]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for decision in decisions:
        out.setdefault(decision.key, []).append(decision.verdict)
    return out


class TestReplicaLag:
    """A new job that answers 404 is waited for; the journal says so, once per streak."""

    def test_lag_recorded_and_not_paid_twice(self, make_sandbox: Any, tmp_path: Path) -> None:
        """1 s of lag on 3 rows: 3 jobs, and per row 'replica lag' then 'found', read back
        from the file by a fresh cache object (a restart)."""
        sb = make_sandbox(replication_lag=1.0)
        path = tmp_path / "c.sqlite"
        out = frame(3).narrative.infer(
            PROMPT, output=Label, cache=str(path), progress=False, **target(sb)
        )
        assert out["narrative_error"].isna().all()
        assert sb.stats.jobs_created == 3 and sb.stats.duplicates == 0
        not_found = sb.stats.count(path="/jobs/{job_id}", status=404)
        assert not_found > 3  # retried more than once per job ...
        assert out.attrs["narrative"]["not_found_decisions"] == {
            "replica_lag": 3,
            "found_after_404": 3,
        }
        with SQLiteCache(path) as reopened:
            decisions = reopened.journal_decisions()
            assert reopened.journal_entries() == []  # every result cached, every job done
        assert len(decisions) == 6  # ... but two rows per job, not one per retry
        keys = frame(3).narrative.preview(PROMPT, output=Label, **target(sb))["request_key"]
        assert verdicts_by_key(decisions) == {
            key: ["replica_lag", "found_after_404"] for key in keys
        }
        job_ids = set(out["narrative_job_id"])
        assert {d.job_id for d in decisions} == job_ids
        assert all("replica lag" in d.detail for d in decisions if d.verdict == "replica_lag")
        found = [d for d in decisions if d.verdict == "found_after_404"]
        assert all(str(d).endswith("s: nothing resubmitted") for d in found)


class TestRetention:
    """A journaled job the service forgot is resubmitted once, and the journal says why."""

    def test_forgotten_jobs_resubmitted_and_explained(
        self, make_sandbox: Any, tmp_path: Path
    ) -> None:
        """Jobs journaled, then forgotten by the server: per row 'retention check', 'gone',
        'resubmitted as job X' where X is the row's job; one new job per row, none twice."""
        sb = make_sandbox(queue_latency=5.0)
        path = tmp_path / "c.sqlite"
        df = frame(3)
        run = df.narrative.start(
            PROMPT, output=Label, cache=str(path), progress=False, **target(sb)
        )
        wait_until(lambda: sb.stats.jobs_created == 3, what="3 submissions")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            run.result()
        old_jobs = {job["job_id"] for job in sb.jobs()}
        sb.reset()  # the service forgets every job (retention), and its counters
        sb.configure(queue_latency=0.02)
        out = df.narrative.infer(
            PROMPT, output=Label, cache=str(path), progress=False, **target(sb)
        )
        assert out["narrative_error"].isna().all()
        assert sb.stats.jobs_created == 3 and sb.stats.duplicates == 0
        assert out.attrs["narrative"]["not_found_decisions"] == {
            "retention_check": 3,
            "gone_after_retention": 3,
            "resubmitted": 3,
        }
        keys = list(df.narrative.preview(PROMPT, output=Label, **target(sb))["request_key"])
        with SQLiteCache(path) as reopened:
            decisions = reopened.journal_decisions(keys)
        assert verdicts_by_key(decisions) == {
            key: ["retention_check", "gone_after_retention", "resubmitted"] for key in keys
        }
        new_jobs = dict(zip(keys, out["narrative_job_id"], strict=True))
        for decision in decisions:
            if decision.verdict == "resubmitted":
                assert decision.job_id == new_jobs[decision.key]
                assert decision.detail.startswith(f"resubmitted as job {decision.job_id}")
            else:
                assert decision.job_id in old_jobs
        gone = [d for d in decisions if d.verdict == "gone_after_retention"]
        assert all(d.detail.startswith("gone after retention: 404 for") for d in gone)

    def test_resubmitted_job_under_replica_lag_is_waited_for(
        self, make_sandbox: Any, tmp_path: Path
    ) -> None:
        """After a resubmission the new job's own 404s are replica lag, not the old streak:
        still one new job per row, and its lag recorded after the resubmission."""
        sb = make_sandbox(queue_latency=5.0)
        path = tmp_path / "c.sqlite"
        df = frame(3)
        run = df.narrative.start(
            PROMPT, output=Label, cache=str(path), progress=False, **target(sb)
        )
        wait_until(lambda: sb.stats.jobs_created == 3, what="3 submissions")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            run.result()
        sb.reset()
        sb.configure(queue_latency=0.02, replication_lag=1.0)
        out = df.narrative.infer(
            PROMPT, output=Label, cache=str(path), progress=False, **target(sb)
        )
        assert out["narrative_error"].isna().all()
        assert sb.stats.jobs_created == 3 and sb.stats.duplicates == 0
        with SQLiteCache(path) as reopened:
            by_key = verdicts_by_key(reopened.journal_decisions())
        assert list(by_key.values()) == 3 * [
            [
                "retention_check",
                "gone_after_retention",
                "resubmitted",
                "replica_lag",
                "found_after_404",
            ]
        ]


@dataclass
class _Watched:
    state: str = "pending"
    submitted_at: float = 0.0
    confirmed_at: float = 0.0
    resumed: bool = False
    ever_seen: bool = False
    created_at: datetime | None = None
    not_found_since: float | None = None
    not_found_count: int = 0
    retry_get_at: float = 0.0
    fetched_at: float = 0.0


class _AlwaysNotFound:
    """A client whose every job answers 404 (a job the service never kept)."""

    def __init__(self) -> None:
        self.gets = 0

    async def get_job(self, job_id: str) -> Any:
        self.gets += 1
        raise NotFoundError("no such job", status_code=404)


class TestLagBoundExceeded:
    """A job never seen that answers 404 past the lag bound counts as gone, recorded once."""

    def test_two_decisions_for_many_retries(self) -> None:
        """Many 404s over LAG_BOUND_S make two decisions: 'replica lag', 'lag bound exceeded'."""
        clock = FakeClock()
        client = _AlwaysNotFound()
        decided: list[tuple[str, str, str]] = []
        vanished: list[str] = []
        poller = Poller(
            client,  # type: ignore[arg-type]
            clock,
            data_plane_id=None,
            observe=lambda job: None,
            vanished=vanished.append,
            fatal=lambda exc: None,
            decided=lambda job_id, verdict, detail: decided.append((job_id, verdict, detail)),
        )
        outstanding = {"job-1": _Watched()}

        async def drive() -> int:
            polls = 0
            while not vanished:
                polls += 1
                await poller.poll(outstanding, interval=0.5, mean_latency=0.0)
                clock.advance(0.5)
            return polls

        polls = asyncio.run(drive())
        assert vanished == ["job-1"]
        assert client.gets > 5
        assert polls <= (LAG_BOUND_S + NOT_FOUND_MAX_RETRY_S) / 0.5 + 1
        assert [(job, verdict) for job, verdict, _ in decided] == [
            ("job-1", "replica_lag"),
            ("job-1", "lag_bound_exceeded"),
        ]
        assert decided[1][2] == (
            f"lag bound exceeded: 404 for {polls * 0.5 - 0.5:.1f} s since submission "
            f"({client.gets} times), never seen; resubmitting its request"
        )


@pytest.fixture(params=["memory", "sqlite"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    store = MemoryCache() if request.param == "memory" else SQLiteCache(tmp_path / "c.sqlite")
    yield store
    store.close()


class TestDecisionStore:
    """Both caches keep decisions by key, oldest first, attached to journal entries."""

    def test_round_trip_and_entries(self, cache: Any) -> None:
        """Decisions come back per key in order, and on the key's journal entry."""
        cache.journal_job("k1", "job-a", "tag1", "run-1")
        cache.journal_decide("k1", "replica_lag", "job-a", "first", "run-1")
        cache.journal_decide("k2", "retention_check", "job-b", "other", "run-1")
        cache.journal_decide("k1", "found_after_404", "job-a", "second", "run-1")
        assert [d.detail for d in cache.journal_decisions(["k1"])] == ["first", "second"]
        assert len(cache.journal_decisions()) == 3
        (entry,) = cache.journal_entries()
        assert [d.verdict for d in entry.decisions] == ["replica_lag", "found_after_404"]
        cache.journal_forget("k1", "job-a")
        assert cache.journal_entries() == []
        assert len(cache.journal_decisions(["k1"])) == 2  # kept after the entry is gone

    def test_file_without_decisions(self, tmp_path: Path) -> None:
        """A file written before decisions existed reads as having none, and takes them."""
        path = tmp_path / "old.sqlite"
        with SQLiteCache(path) as old:
            old.journal_job("k1", "job-a", "tag1", None)
            old.flush()
        with SQLiteCache(path) as cache:
            assert cache.journal_decisions() == []
            assert [e.decisions for e in cache.journal_entries()] == [()]
            cache.journal_decide("k1", "replica_lag", "job-a", "first", None)
        with SQLiteCache(path) as cache:
            assert [d.verdict for d in cache.journal_decisions()] == ["replica_lag"]


class TestRecorder:
    """A run's recorder counts verdicts for the report and writes them to its cache."""

    def test_replaced_and_given_up(self) -> None:
        """'resubmitted as job B (replacing job A, gone)', then 'given up' after 5 losses."""
        cache = MemoryCache()
        recorder = DecisionRecorder(cache, "run-1")
        recorder.replaced("k1", "job-b", "job-a", "posted")
        recorder.replaced("k1", "job-c", "job-b", "reconciled")
        recorder.given_up("k1", "job-c", 5)
        assert [d.detail for d in cache.journal_decisions(["k1"])] == [
            "resubmitted as job job-b (replacing job job-a, gone)",
            "reconciled: job job-c (replacing job job-b, gone)",
            "its job disappeared 5 times: not resubmitted again; the row fails",
        ]
        assert dict(recorder.counts) == {"resubmitted": 2, "given_up": 1}
        assert {d.run_id for d in cache.journal_decisions()} == {"run-1"}

    def test_without_a_cache(self) -> None:
        """cache=False: the decisions are counted (and logged), nothing is stored."""
        recorder = DecisionRecorder(None, "run-1")
        recorder.record("k1", "replica_lag", "job-a", "404 treated as replica lag")
        assert dict(recorder.counts) == {"replica_lag": 1}
