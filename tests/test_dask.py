"""The ``narrative`` accessor on Dask DataFrames, on a two-process ``distributed.LocalCluster``.

One cluster (2 worker processes, 1 thread each) serves the whole module; the sandbox runs in this
process on 127.0.0.1. Semaphore leases time out after 2 s here (30 s by default), so a killed
worker's leases come back quickly and a job longer than the timeout shows leases are refreshed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudpickle
import dask
import dask.dataframe as dd
import nbformat
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from helpers import wait_until
from test_dask_slots import _MetadataClient
from test_notebooks import execute_twice

import narrative_pandas as npd
import narrative_pandas.dask as npd_dask
from narrative_pandas._client import Client as HTTPClient
from narrative_pandas._config import ApiKey, resolve_settings
from narrative_pandas._dask_slots import _DemandBoard
from narrative_pandas._demo import REVIEW_PROMPT, REVIEW_SYSTEM, ReviewLabel
from narrative_pandas._engine import Engine
from narrative_pandas._plan import build_plan
from narrative_pandas._progress import ProgressEvent, make_progress
from narrative_pandas.data import load_reviews
from narrative_pandas.sandbox import Sandbox

# Tasks below (the worker killer) are defined here; workers cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "scale_out_dask.ipynb"
CLUSTER_CONFIG = {
    "distributed.scheduler.locks.lease-timeout": "2s",
    "distributed.scheduler.locks.lease-validation-interval": "200ms",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    """Two worker processes with one thread each, shared by every test of this module."""
    with (
        dask.config.set(CLUSTER_CONFIG),
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as local,
        Client(local) as client,
    ):
        yield client


@pytest.fixture
def frame() -> pd.DataFrame:
    """60 distinct reviews (every row its own request)."""
    df = load_reviews().drop_duplicates("review").head(60).reset_index(drop=True)
    assert df["review"].is_unique
    return df


def _options(sandbox: Sandbox, **extra: Any) -> dict[str, Any]:
    return {
        "system": REVIEW_SYSTEM,
        "output": ReviewLabel,
        "api_key": sandbox.api_key,
        "base_url": sandbox.base_url,
        "data_plane_id": sandbox.data_plane_id,
        **extra,
    }


def _kill_a_busy_worker(client: Client, sandbox: Sandbox, killed: list[str]) -> None:
    """Once jobs are under way, end the process of a worker running a partition of the run."""
    wait_until(lambda: sandbox.stats.jobs_created >= 6, timeout=60.0, what="jobs under way")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # the scheduler may not show the task the same instant
        for address, keys in client.processing().items():
            if any("narrative-infer-" in str(key) for key in keys):
                killed.append(address)
                client.run(_exit_now, workers=[address], wait=False)
                return
        time.sleep(0.02)


async def _exit_now() -> None:
    os._exit(1)


def _rows_into(events: list[ProgressEvent], phase: str) -> int:
    """Rows the client's tracker moved into ``phase`` over a run."""
    return sum(e.rows for e in events if e.kind == "transition" and e.new == phase)


class TestLazy:
    """Nothing runs until the result is computed; the schema gives columns and dtypes."""

    def test_meta_comes_from_the_schema_without_requests(
        self, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """infer returns a lazy frame whose dtypes are the pandas path's, and sends nothing."""
        ddf = dd.from_pandas(frame, npartitions=3)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox))
        assert isinstance(out, dd.DataFrame)
        assert sandbox.stats.requests == 0
        expected = frame.head(2).narrative.infer(REVIEW_PROMPT, **_options(sandbox, cache=False))
        assert list(out.columns) == list(expected.columns)
        # Input columns keep Dask's own dtypes (it may store text as string[pyarrow]); the new
        # columns are typed from the schema exactly as on the pandas path.
        new = [c for c in expected.columns if c not in frame.columns]
        assert out.dtypes[new].to_dict() == expected.dtypes[new].to_dict()
        assert out.dtypes[list(frame.columns)].to_dict() == ddf.dtypes.to_dict()
        assert out.dtypes["sentiment"].categories.tolist() == [
            "positive",
            "negative",
            "mixed",
            "neutral",
        ]

    def test_bad_template_raises_before_compute(
        self, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """A placeholder naming no column raises at infer, like the pandas path."""
        ddf = dd.from_pandas(frame, npartitions=2)
        with pytest.raises(KeyError, match="nope"):
            ddf.narrative.infer("Text: {nope}", **_options(sandbox))
        assert sandbox.stats.requests == 0

    def test_process_bound_options_are_refused(self, sandbox: Sandbox, frame: pd.DataFrame) -> None:
        """client= and an in-memory Cache instance cannot travel to workers: clear errors."""
        ddf = dd.from_pandas(frame, npartitions=2)
        with pytest.raises(npd.ConfigurationError, match="client="):
            ddf.narrative.infer(REVIEW_PROMPT, client=object(), **_options(sandbox))
        with pytest.raises(npd.ConfigurationError, match="cannot be shared"):
            ddf.narrative.infer(REVIEW_PROMPT, cache=npd.MemoryCache(), **_options(sandbox))

    def test_bad_progress_is_refused_before_compute(
        self, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """progress= that is no display, callable or sink: ConfigurationError, nothing sent."""
        ddf = dd.from_pandas(frame, npartitions=2)
        with pytest.raises(npd.ConfigurationError, match="progress"):
            ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox, progress="yes"))
        with pytest.raises(npd.ConfigurationError, match="progress"):
            npd_dask.progress(ddf)  # not a frame from infer
        assert sandbox.stats.requests == 0

    def test_key_is_masked_in_graph_reprs(self, sandbox: Sandbox, frame: pd.DataFrame) -> None:
        """The graph, its tasks and the expression show the key masked, never in clear."""
        ddf = dd.from_pandas(frame, npartitions=2)
        out = ddf.narrative.infer(
            REVIEW_PROMPT, **_options(sandbox, api_key=ApiKey(sandbox.api_key))
        )
        graph = dict(out.__dask_graph__())
        texts = [repr(out.expr), str(out.expr.operands), repr(graph)]
        for task in graph.values():
            texts += [repr(getattr(task, "args", "")), repr(getattr(task, "kwargs", ""))]
        assert not any(sandbox.api_key in text for text in texts)
        assert any("<narrative run" in text for text in texts)

    def test_preview_is_lazy_and_keyless(self, sandbox: Sandbox, frame: pd.DataFrame) -> None:
        """preview gives the pandas preview per partition; the key never enters the graph."""
        ddf = dd.from_pandas(frame.head(6), npartitions=2)
        lazy = ddf.narrative.preview(REVIEW_PROMPT, **_options(sandbox))
        assert sandbox.api_key not in repr(dict(lazy.__dask_graph__()))
        shown = lazy.compute(scheduler="sync")
        expected = frame.head(6).narrative.preview(REVIEW_PROMPT, **_options(sandbox))
        assert shown["request_key"].tolist() == expected["request_key"].tolist()
        assert sandbox.stats.requests == 0


class TestThreadsScheduler:
    """Without distributed, partitions share one process-wide limit."""

    def test_concurrency_holds_across_threads(self, sandbox: Sandbox, frame: pd.DataFrame) -> None:
        """Four threads, concurrency 3: never more than 3 unfinished jobs, each row once."""
        sandbox.configure(run_latency=0.1)
        ddf = dd.from_pandas(frame.head(24), npartitions=4)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox, concurrency=3))
        result = npd_dask.compute(out, scheduler="threads", num_workers=4)
        assert sandbox.stats.peak_unfinished_jobs <= 3
        assert sandbox.stats.jobs_created == 24
        assert result["narrative_error"].isna().all()
        report = result.attrs["narrative"]
        assert report["rows"] == 24 and report["partitions"] == 4
        assert {r["slots"] for r in report["partition_reports"]} == {"process"}

    def test_empty_partitions(self, sandbox: Sandbox, frame: pd.DataFrame) -> None:
        """Partitions left empty by a filter give no rows, no jobs and no report, and no error."""
        ddf = dd.from_pandas(frame.head(12), npartitions=3)
        ddf = ddf[ddf["review_id"] <= int(frame["review_id"].iloc[2])]  # rows of partition 0
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox))
        result = npd_dask.compute(out, scheduler="threads")
        assert len(result) == 3 and result["narrative_error"].isna().all()
        assert result.attrs["narrative"]["partitions"] == 1  # Dask returns meta for empty ones
        assert sandbox.stats.jobs_created == 3

    def test_plain_compute_gives_the_same_rows(self, sandbox: Sandbox, frame: pd.DataFrame) -> None:
        """out.compute() returns the same frame, without the merged report (attrs are dropped)."""
        ddf = dd.from_pandas(frame.head(12), npartitions=3)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox))
        merged = npd_dask.compute(out, scheduler="threads")
        plain = out.compute(scheduler="threads")  # served by this process's memory cache
        pd.testing.assert_frame_equal(plain, merged)
        assert plain.attrs == {} and merged.attrs["narrative"]["rows"] == 12
        assert sandbox.stats.jobs_created == 12


class TestCluster:
    """Two worker processes against the sandbox."""

    def test_same_result_as_pandas_and_cluster_wide_concurrency(
        self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """Same outputs, dtypes and order as the pandas path; peak unfinished <= concurrency."""
        sandbox.configure(run_latency=0.2)
        ddf = dd.from_pandas(frame, npartitions=6)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox, concurrency=4))
        result = out.narrative.compute()
        stats = sandbox.stats.snapshot()
        assert stats["peak_unfinished_jobs"] <= 4
        assert stats["duplicate_submissions"] == 0
        assert stats["jobs_created"] == 60

        report = result.attrs["narrative"]
        assert report["rows"] == 60 and report["partitions"] == 6 and report["workers"] == 2
        assert report["jobs_submitted"] == 60 and report["completed_rows"] == 60
        assert report["http_requests"]["post"] == 60
        assert {r["slots"] for r in report["partition_reports"]} == {"distributed.Semaphore"}
        assert [r["partition"] for r in report["partition_reports"]] == list(range(6))

        sandbox.reset()
        expected = ddf.compute().narrative.infer(
            REVIEW_PROMPT, **_options(sandbox, concurrency=4, cache=False)
        )
        pd.testing.assert_frame_equal(
            result.drop(columns="narrative_job_id"), expected.drop(columns="narrative_job_id")
        )
        assert result["narrative_job_id"].notna().all()

    def test_long_jobs_keep_their_leases(
        self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """Jobs running twice the lease timeout keep their slot: concurrency 1 means 1."""
        sandbox.configure(run_latency=2.6, queue_latency=0.0)
        ddf = dd.from_pandas(frame.head(2), npartitions=2)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox, concurrency=1, cache=False))
        result = npd_dask.compute(out)
        assert result["narrative_error"].isna().all()
        assert sandbox.stats.peak_unfinished_jobs == 1
        assert sandbox.stats.jobs_created == 2

    def test_killed_worker_resumes_without_duplicate_jobs(
        self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame, tmp_path: Path
    ) -> None:
        """A worker exiting mid-partition: the retry resumes its journaled jobs, none twice.
        Jobs of 1 s keep each partition running for seconds, so the kill lands mid-partition
        on a loaded machine too."""
        sandbox.configure(run_latency=1.0)
        ddf = dd.from_pandas(frame, npartitions=4)
        out = ddf.narrative.infer(
            REVIEW_PROMPT,
            **_options(sandbox, concurrency=4, cache=str(tmp_path / "shared.sqlite")),
        )
        killed: list[str] = []
        killer = threading.Thread(target=_kill_a_busy_worker, args=(cluster, sandbox, killed))
        killer.start()
        result = npd_dask.compute(out, progress=False)
        killer.join()
        assert killed  # a worker really died mid-run
        assert result["narrative_error"].isna().all()
        assert len(result) == 60
        assert sandbox.stats.duplicate_submissions == 0
        assert sandbox.stats.jobs_created == 60
        report = result.attrs["narrative"]
        picked_up = report["cached_rows"] + report["resumed_rows"] + report["reconciled_jobs"]
        assert picked_up >= 1  # the retried partition took over its first attempt's work
        assert report["jobs_submitted"] + picked_up >= 60

    def test_errors_raise_crosses_processes(
        self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """errors="raise" raises RowsFailedError from compute, with the partition's frame."""
        sandbox.configure(failure_rate=1.0)
        ddf = dd.from_pandas(frame.head(4), npartitions=2)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox, errors="raise", cache=False))
        with pytest.raises(npd.RowsFailedError) as caught:
            out.compute()
        assert isinstance(caught.value, npd_dask.PartitionRowsFailedError)
        assert caught.value.failed == 2
        assert len(caught.value.result) == 2

    def test_rate_limits_are_shared_and_nothing_is_duplicated(
        self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """Under 429s every row still completes once, and the 429 gate reaches the scheduler."""
        sandbox.configure(rate_limit_rps=8.0, run_latency=0.1)
        ddf = dd.from_pandas(frame.head(24), npartitions=2)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox, concurrency=12, cache=False))
        result = npd_dask.compute(out)
        assert result["narrative_error"].isna().all()
        assert sandbox.stats.duplicate_submissions == 0
        assert sandbox.stats.jobs_created == 24
        report = result.attrs["narrative"]
        assert report["http_429"] >= 1
        gate = cluster.get_metadata(["narrative-pandas", report["run_id"], "429"], default=0.0)
        assert gate > 0.0

    def test_worker_logs_never_show_the_key(self, cluster: Client, sandbox: Sandbox) -> None:
        """After the runs above, no worker or scheduler log line contains the key."""
        logs = [cluster.get_scheduler_logs(n=1000)]
        logs += list(cluster.get_worker_logs(n=1000).values())
        assert not any(sandbox.api_key in line for log in logs for _, line in log)


def _lease_counts(client: Client, token: str) -> dict[str, int]:
    """Leases of one run's semaphore granted and returned at the scheduler (round trips)."""

    def read(dask_scheduler: Any, name: str) -> dict[str, int]:
        metrics = dask_scheduler.extensions["semaphores"].metrics
        return {k: int(metrics[k].get(name, 0)) for k in ("acquire_total", "release_total")}

    return dict(client.run_on_scheduler(read, name=f"narrative-slots-{token}"))


class TestClusterProgressAndLeases:
    """Progress over the whole cluster's rows; leases reused instead of one round trip per job."""

    def test_the_run_chooses_its_lease_size_for_the_cluster_it_sees(
        self, cluster: Client, frame: pd.DataFrame
    ) -> None:
        """On 2 workers a limit of 128 makes leases of 8 slots; the size travels with the
        run's tasks, so every worker uses the same; without a cluster, the default share."""
        ddf = dd.from_pandas(frame, npartitions=2)
        options = {"output": ReviewLabel, "api_key": "k", "data_plane_id": "p"}
        task, _, _ = npd_dask._task(ddf, "Review: {review}", {**options, "concurrency": 128})
        assert task.slots_per_lease == 8 and task.concurrency == 128
        task, _, _ = npd_dask._task(ddf, "Review: {review}", {**options, "concurrency": 100})
        assert task.slots_per_lease == 5

    def test_progress_callable_sees_every_row_of_the_cluster(
        self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """compute(progress=callable) on 2 workers: events for all 60 rows, ending done."""
        sandbox.configure(run_latency=0.2)
        ddf = dd.from_pandas(frame, npartitions=4)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox, concurrency=6, cache=False))
        events: list[ProgressEvent] = []
        result = out.narrative.compute(progress=events.append)
        assert result["narrative_error"].isna().all()
        assert result.attrs["narrative"]["workers"] == 2
        assert events and events[0].snapshot.total == 60
        assert {e.snapshot.total for e in events} == {60}
        last = events[-1]
        assert last.kind == "finish" and last.snapshot.status == "done"
        assert last.snapshot.completed == 60 and last.snapshot.queued == 0
        assert _rows_into(events, "completed") == 60  # every row reached the client's tracker once
        assert any(0 < e.snapshot.completed < 60 for e in events)  # live, not only at the end
        assert sandbox.stats.jobs_created == 60 and sandbox.stats.duplicate_submissions == 0

    def test_persisted_frame_progress_and_few_lease_round_trips(
        self, cluster: Client, sandbox: Sandbox
    ) -> None:
        """A plain persist() + progress(): all rows shown; far fewer lease requests than jobs."""
        sandbox.configure(run_latency=0.05)
        df = pd.DataFrame({"text": [f"review number {i}" for i in range(400)]})
        ddf = dd.from_pandas(df, npartitions=2)
        out = ddf.narrative.infer(
            "Text: {text}", **_options(sandbox, concurrency=8, cache=False, progress=False)
        )
        run = npd_dask._run_of(out)
        assert run is not None
        token = run.token
        persisted = out.persist()
        events: list[ProgressEvent] = []
        npd_dask.progress(persisted, events.append)
        assert events[-1].kind == "finish" and events[-1].snapshot.completed == 400
        result = persisted.compute()
        assert result["narrative_error"].isna().all() and len(result) == 400
        assert sandbox.stats.peak_unfinished_jobs <= 8
        assert sandbox.stats.jobs_created == 400 and sandbox.stats.duplicate_submissions == 0
        leases = _lease_counts(cluster, token)
        assert leases["acquire_total"] < 400 / 4, leases  # one per job before the pools
        # Every lease goes back (idle leases linger LEASE_LINGER_S before they are returned).
        wait_until(
            lambda: (n := _lease_counts(cluster, token))["acquire_total"] == n["release_total"],
            what="every lease returned",
        )


def _narrative_tasks_sampled(dask_worker: Any) -> list[str]:
    """The run's tasks among the threads this worker's profiler samples."""
    with dask_worker.active_threads_lock:
        keys = list(dask_worker.active_threads.values())
    return [str(key) for key in keys if "narrative-infer-" in str(key)]


class TestDaskProfiler:
    """A partition that only waits for its jobs is not sampled by the worker's profiler."""

    def test_waiting_partitions_are_not_sampled(
        self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """While jobs run, no worker lists the run's tasks as threads to sample; the tasks
        still end normally, and the next task on the same workers is listed while it runs."""
        sandbox.configure(run_latency=3.0, queue_latency=0.0)
        ddf = dd.from_pandas(frame.head(4), npartitions=2)
        out = ddf.narrative.infer(REVIEW_PROMPT, **_options(sandbox, concurrency=4, cache=False))
        persisted = out.persist()
        wait_until(lambda: sandbox.stats.jobs_created == 4, timeout=60.0, what="every job sent")
        assert any(
            "narrative-infer-" in str(k) for keys in cluster.processing().values() for k in keys
        )
        assert cluster.run(_narrative_tasks_sampled) == {w: [] for w in cluster.run(os.getpid)}
        result = npd_dask.compute(persisted)
        assert result["narrative_error"].isna().all() and len(result) == 4
        assert sandbox.stats.jobs_created == 4 and sandbox.stats.duplicate_submissions == 0

        def own_key_is_active() -> bool:
            from distributed import get_worker

            worker = get_worker()
            return threading.get_ident() in worker.active_threads

        futures = cluster.map(lambda _: own_key_is_active(), range(2), pure=False)
        assert cluster.gather(futures) == [True, True]

    def test_the_thread_is_listed_again_when_the_wait_raises(self, monkeypatch: Any) -> None:
        """The worker's bookkeeping is restored whatever ends the wait."""

        ident = threading.get_ident()
        worker = SimpleNamespace(
            active_threads={ident: "narrative-infer-x", 7: "other"},
            active_threads_lock=threading.Lock(),
        )
        import distributed

        monkeypatch.setattr(distributed, "get_worker", lambda: worker)
        with pytest.raises(KeyboardInterrupt), npd_dask._unsampled():
            assert worker.active_threads == {7: "other"}
            raise KeyboardInterrupt
        assert worker.active_threads == {ident: "narrative-infer-x", 7: "other"}
        del worker.active_threads[ident]
        with npd_dask._unsampled():  # a thread the worker does not list stays unlisted
            pass
        assert worker.active_threads == {7: "other"}


class TestProgressHoweverComputed:
    """infer(progress=callable): the client sees every row, whichever call computes the frame."""

    def test_dask_compute(self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame) -> None:
        """dask.compute(out) on 2 worker processes: events for all 60 rows, ending done."""
        sandbox.configure(run_latency=0.2)
        ddf = dd.from_pandas(frame, npartitions=4)
        events: list[ProgressEvent] = []
        out = ddf.narrative.infer(
            REVIEW_PROMPT, **_options(sandbox, concurrency=6, cache=False, progress=events.append)
        )
        (result,) = dask.compute(out)
        assert len(result) == 60 and result["narrative_error"].isna().all()
        wait_until(lambda: bool(events) and events[-1].kind == "finish", what="the final event")
        assert {e.snapshot.total for e in events} == {60}
        assert events[-1].snapshot.status == "done" and events[-1].snapshot.completed == 60
        assert _rows_into(events, "completed") == 60
        assert any(0 < e.snapshot.completed < 60 for e in events)  # live, not only at the end
        assert sandbox.stats.jobs_created == 60 and sandbox.stats.duplicate_submissions == 0

    def test_plain_persist_then_progress(
        self, cluster: Client, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """out.persist(): the callable sees all rows; .narrative.progress() finds the run."""
        sandbox.configure(run_latency=0.2)
        ddf = dd.from_pandas(frame, npartitions=4)
        events: list[ProgressEvent] = []
        out = ddf.narrative.infer(
            REVIEW_PROMPT, **_options(sandbox, concurrency=6, cache=False, progress=events.append)
        )
        persisted = out.persist()
        followed: list[ProgressEvent] = []
        persisted.narrative.progress(followed.append)  # blocks until every row is through
        for seen in (events, followed):
            wait_until(lambda s=seen: bool(s) and s[-1].kind == "finish", what="the final event")
            assert {e.snapshot.total for e in seen} == {60}
            assert seen[-1].snapshot.status == "done" and seen[-1].snapshot.completed == 60
        assert _rows_into(events, "completed") == 60
        assert sandbox.stats.jobs_created == 60 and sandbox.stats.duplicate_submissions == 0
        late: list[ProgressEvent] = []
        npd_dask.progress(persisted[["review", "sentiment"]], late.append)  # after the end
        assert late[-1].kind == "finish" and late[-1].snapshot.completed == 60
        assert sandbox.stats.jobs_created == 60  # following never computes anything again

    def test_failure_reasons_summed_over_partitions(
        self, sandbox: Sandbox, frame: pd.DataFrame
    ) -> None:
        """Failed rows of 2 partitions: one reason counting all 6 rows, as on the pandas path."""
        sandbox.configure(failure_rate=1.0)
        ddf = dd.from_pandas(frame.head(6), npartitions=2)
        events: list[ProgressEvent] = []
        out = ddf.narrative.infer(
            REVIEW_PROMPT, **_options(sandbox, cache=False, progress=events.append)
        )
        with pytest.warns(npd.RowsFailedWarning):
            result = npd_dask.compute(out, scheduler="threads")
        assert result["narrative_error"].notna().all()
        last = events[-1].snapshot
        assert last.failed == 6 and [rows for _, rows in last.reasons] == [6]
        assert last.errors == (f"6 x {last.reasons[0][0]}",)

    def test_threads_scheduler(self, sandbox: Sandbox, frame: pd.DataFrame) -> None:
        """Without distributed, partitions in this process report to the same callable."""
        ddf = dd.from_pandas(frame.head(20), npartitions=4)
        events: list[ProgressEvent] = []
        out = ddf.narrative.infer(
            REVIEW_PROMPT, **_options(sandbox, concurrency=4, cache=False, progress=events.append)
        )
        result = npd_dask.compute(out, scheduler="threads")
        assert len(result) == 20
        assert events[-1].kind == "finish" and events[-1].snapshot.completed == 20
        assert _rows_into(events, "completed") == 20


class _FakeStore:
    """An in-memory stand-in for the scheduler's metadata store."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    async def read(self) -> float:
        return self.value

    async def raise_to(self, wall: float) -> None:
        self.value = max(self.value, wall)


class TestSharedRateGate:
    """One worker's 429 becomes every worker's gate."""

    async def test_local_429_is_published(self, sandbox: Sandbox) -> None:
        """A client gated for 5 s publishes a wall time about 5 s ahead."""
        client = HTTPClient(sandbox.api_key, sandbox.base_url, data_plane_id=sandbox.data_plane_id)
        client._rate_limited_until = time.monotonic() + 5.0
        store = _FakeStore()
        share = npd_dask._RateShare()
        await npd_dask._share_once(client, npd_dask._SharedGate(store), share)
        assert 4.0 < store.value - time.time() <= 5.0
        assert share.holds == 0
        await client.aclose()

    async def test_remote_429_holds_this_client(self, sandbox: Sandbox) -> None:
        """A gate published by another worker closes this client's gate for as long."""
        client = HTTPClient(sandbox.api_key, sandbox.base_url, data_plane_id=sandbox.data_plane_id)
        store = _FakeStore(time.time() + 3.0)
        gate = npd_dask._SharedGate(store)
        share = npd_dask._RateShare()
        await npd_dask._share_once(client, gate, share)
        assert 2.0 < client.rate_limited_until - time.monotonic() <= 3.0
        assert share.holds == 1
        assert gate.until == store.value
        await client.aclose()

    async def test_the_gate_comes_with_the_lease_boards_read(self, monkeypatch: Any) -> None:
        """Fed by the lease pool's board, the gate makes no scheduler round trip of its own;
        when the board's copy is older than the sharing interval, it reads for itself."""
        monkeypatch.setattr(npd_dask, "RATE_SHARE_INTERVAL_S", 0.05)
        client = _MetadataClient()
        key = ["narrative-pandas", "tok", "429"]
        wall = time.time() + 3.0
        await client.set_metadata(key, wall)  # another worker's 429
        loop = asyncio.get_running_loop()
        board = _DemandBoard(client, "tok", loop)
        store = npd_dask._MetadataStore(client, key, loop, board=board)
        board.listeners.add(store.feed)
        assert await board.exchange("a", 4) == {"a": 4}
        reads = client.reads
        assert await store.read() == wall and client.reads == reads
        await asyncio.sleep(0.06)
        assert await store.read() == wall and client.reads == reads + 1


class _CountingSlots:
    """A slot limiter that only counts."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released = 0

    async def acquire(self) -> None:
        self.acquired += 1

    async def release(self) -> None:
        self.released += 1


class TestEngineSlotsOnResume:
    """What a retried partition does with its first attempt's journaled jobs."""

    async def test_resumed_jobs_hold_slots(self, sandbox: Sandbox) -> None:
        """Jobs resumed from the journal are unfinished jobs too: each should hold a slot."""
        settings = resolve_settings(sandbox.api_key, sandbox.base_url, sandbox.data_plane_id)
        df = pd.DataFrame({"text": ["first", "second"]})
        plan = build_plan(df, "Text: {text}", output=ReviewLabel, settings=settings)
        cache = npd.MemoryCache()
        slots = _CountingSlots()
        async with HTTPClient(
            sandbox.api_key, sandbox.base_url, data_plane_id=sandbox.data_plane_id
        ) as client:
            for request in plan.requests:  # what a first attempt left behind
                job = await client.run_model_inference(dict(request.body))
                cache.journal_job(request.key, job.job_id, request.tag, "first-attempt")
            engine = Engine(
                client,
                plan.requests,
                plan.spec,
                cache=cache,
                options=dataclasses.replace(plan.options, slots=slots),
                tracker=make_progress(False, len(df)),
                run_id="retry",
            )
            await engine.run()
        assert engine.report.resumed == 2 and sandbox.stats.jobs_created == 2
        assert slots.acquired == 2 and slots.released == 2

    async def test_a_limiter_that_releases_at_once_is_called_without_a_task(
        self, sandbox: Sandbox
    ) -> None:
        """A limiter with ``release_now`` (the lease pool's) gets every job's slot back through
        it at the job's end, not through a task per job; none is released twice."""
        settings = resolve_settings(sandbox.api_key, sandbox.base_url, sandbox.data_plane_id)
        df = pd.DataFrame({"text": [f"row {i}" for i in range(12)]})
        plan = build_plan(df, "Text: {text}", output=ReviewLabel, settings=settings)
        slots = _CountingSlots()
        now: list[int] = []
        slots.release_now = lambda: now.append(1)  # type: ignore[attr-defined]
        async with HTTPClient(
            sandbox.api_key, sandbox.base_url, data_plane_id=sandbox.data_plane_id
        ) as client:
            engine = Engine(
                client,
                plan.requests,
                plan.spec,
                cache=npd.MemoryCache(),
                options=dataclasses.replace(plan.options, slots=slots),
                tracker=make_progress(False, len(df)),
                run_id="sync-release",
            )
            await engine.run()
        assert engine.report.completed == 12 and sandbox.stats.jobs_created == 12
        assert slots.acquired == 12 and len(now) == 12 and slots.released == 0


class TestNotebook:
    """notebooks/scale_out_dask.ipynb runs top to bottom and is committed without outputs."""

    def test_committed_without_outputs(self) -> None:
        """No cell carries outputs or execution counts."""
        nb = nbformat.read(NOTEBOOK, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None

    @pytest.mark.slow  # two passes of the notebook (shared with test_notebooks)
    def test_runs_on_a_local_cluster(self, jupyter_path: Path) -> None:
        """Executed in a fresh kernel, every cell runs and shows what it should.

        The first of the two passes ``test_notebooks`` runs (once a session, shared).
        """
        nb = execute_twice(NOTEBOOK.name, jupyter_path).first
        text = "".join(
            output.get("text", "")
            for cell in nb.cells
            if cell.cell_type == "code"
            for output in cell.outputs
            if output.output_type == "stream"
        )
        assert "peak unfinished jobs: " in text
        assert "second run: 0 new jobs" in text
        rows = len(load_reviews())
        assert f"rows followed: {rows}" in text
        # Live progress over the cluster's rows (compute() and the persisted run's progress()):
        # each display ends with all rows counted, as the static HTML of the final state.
        html = [
            str(output.get("data", {}).get("text/html", ""))
            for cell in nb.cells
            if cell.cell_type == "code"
            for output in cell.outputs
        ]
        summaries = [h for h in html if "narrative" in h and f"{rows}" in h]
        assert len(summaries) >= 2, summaries
