"""10,000 rows on a 2-worker Dask cluster vs the pandas path, against a sandbox in its own process.

Starts ``python -m narrative_pandas.sandbox --port 0`` in a separate process, then labels the
same frame twice with the same ``concurrency``: once with ``df.narrative.infer`` (one process) and
once with ``ddf.narrative.infer`` on a ``distributed.LocalCluster`` of 2 worker processes. Prints,
for each: makespan, rows/s, HTTP requests per row (from the run reports), and, from the sandbox's
own job listing, the jobs created, the peak of unfinished jobs (which must stay within
``concurrency`` for the cluster as a whole) and the jobs paid twice; for Dask, the workers' CPU
per row (also net of an idle cluster's own upkeep, measured first) and the scheduler's lease
round trips. The pandas/Dask pair runs ``--repeat`` times (3), each Dask run on a fresh cluster
and each pandas run with no cluster alive; the verdicts are the medians of the pairs' ratios
(one run's CPU per row moves by 20% with the machine). Then, on the last cluster, a Dask run of
2,000 rows with a shared SQLite cache where one worker process is killed mid-run: the jobs paid
twice must be 0 (``--no-kill`` skips it).

    .venv/bin/python benchmarks/dask_scale.py [--rows 10000] [--concurrency 128] [--latency 0.2]
                                              [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from typing import Any

import dask.dataframe as dd
import httpx
import pandas as pd
import psutil
from _machine import describe as machine_speed
from _machine import reference_ms
from distributed import Client, LocalCluster
from sandbox_throughput import start_sandbox  # the same launcher (benchmarks/ is on sys.path)

import narrative_pandas  # noqa: F401  (registers DataFrame.narrative)
import narrative_pandas.dask as npd_dask
from narrative_pandas._demo import ReviewLabel
from narrative_pandas.data import load_reviews

PROMPT = "Review #{n}: {review}\nLabel its sentiment and topics."
#: Seconds the idle cluster is watched for its own CPU use before the Dask run.
IDLE_PROBE_S = 5.0


def make_frame(rows: int) -> pd.DataFrame:
    """``rows`` distinct rows: the bundled reviews repeated, each numbered."""
    reviews = load_reviews()["review"].tolist()
    return pd.DataFrame(
        {"n": range(rows), "review": [reviews[i % len(reviews)] for i in range(rows)]}
    )


def job_stats(settings: dict[str, str], tag: str) -> dict[str, Any]:
    """Jobs created under ``tag``, the peak of them unfinished at once, and the jobs whose
    request was already submitted under ``tag`` (paid twice), from the sandbox's records."""
    headers = {"Authorization": f"Bearer {settings['NARRATIVE_API_KEY']}"}
    spans: list[tuple[datetime, datetime]] = []
    requests: set[str] = set()
    with httpx.Client(base_url=settings["NARRATIVE_BASE_URL"], headers=headers) as http:
        offset = 0
        while True:
            page = http.get(
                "/jobs", params={"per_page": 500, "offset": offset, "order_by": "created_at_desc"}
            ).json()
            records = page.get("records", [])
            for job in records:
                if tag in (job.get("input") or {}).get("tags", []):
                    requests.add(json.dumps(job["input"], sort_keys=True))
                    ended = job.get("ended_at") or job["updated_at"]
                    spans.append(
                        (datetime.fromisoformat(job["created_at"]), datetime.fromisoformat(ended))
                    )
            if len(records) < 500:
                break
            offset += 500
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return {"jobs": len(spans), "peak_unfinished": peak, "duplicates": len(spans) - len(requests)}


def client_cpu(sandbox_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by (this process, its children), the sandbox excluded.

    With a LocalCluster, this process runs the scheduler and the Dask client; the children are
    the nannies and their worker processes.
    """
    me = psutil.Process()
    mine = me.cpu_times()
    children = 0.0
    for proc in me.children(recursive=True):
        if proc.pid == sandbox_pid:
            continue
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        children += times.user + times.system
    return mine.user + mine.system, children


def _thread_names() -> dict[int, str]:
    """On a worker: its threads' names by native id (run with ``client.run``)."""
    return {int(t.native_id or 0): t.name for t in threading.enumerate()}


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], float]:
    """CPU seconds so far of every thread of ``pids``, by (pid, native thread id)."""
    times: dict[tuple[int, int], float] = {}
    for pid in pids:
        try:
            for thread in psutil.Process(pid).threads():
                times[(pid, thread.id)] = thread.user_time + thread.system_time
        except psutil.Error:
            continue
    return times


def _thread_kind(name: str) -> str:
    if name == "narrative-pandas-loop":
        return "narrative loop"
    if name == "MainThread":
        return "Dask event loop"
    if "Dask-Default-Threads" in name:
        return "task thread"
    return "other"


def cpu_by_thread(
    client: Client, before: dict[tuple[int, int], float], after: dict[tuple[int, int], float]
) -> dict[str, float]:
    """The workers' CPU between two :func:`thread_cpu` readings, summed by kind of thread."""
    pids = client.run(os.getpid)
    names = client.run(_thread_names)
    kind_of = {
        (pid, tid): _thread_kind(name)
        for address, pid in pids.items()
        for tid, name in names.get(address, {}).items()
    }
    totals: dict[str, float] = {}
    for key, seconds in after.items():
        kind = kind_of.get(key, "other")  # a thread gone or unnamed by now
        totals[kind] = totals.get(kind, 0.0) + seconds - before.get(key, 0.0)
    return totals


def lease_counts(scheduler: Any) -> dict[str, int]:
    """Semaphore leases granted and returned at the scheduler (each one a round trip)."""
    metrics = scheduler.extensions["semaphores"].metrics
    return {
        "acquired": sum(metrics["acquire_total"].values()),
        "released": sum(metrics["release_total"].values()),
    }


class KillOnce:
    """A progress callable (on the client): ends one busy worker's process once, mid-run."""

    def __init__(self, client: Client, after_rows: int) -> None:
        self.client = client
        self.after_rows = after_rows
        self.killed: str | None = None
        self._lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        snap = event.snapshot
        with self._lock:
            if self.killed is not None or snap.completed < self.after_rows:
                return
            for address, keys in self.client.processing().items():
                if any("narrative-infer-" in str(key) for key in keys):
                    self.killed = address
                    self.client.run(_exit_now, workers=[address], wait=False)
                    return


async def _exit_now() -> None:
    os._exit(1)


def killed_worker_run(
    client: Client, df: pd.DataFrame, settings: dict[str, str], common: dict[str, Any]
) -> None:
    """A worker killed mid-run with a shared SQLite cache: every row once, none paid twice."""
    rows = min(len(df), 2000)
    kill = KillOnce(client, after_rows=rows // 4)
    with tempfile.TemporaryDirectory() as tmp:
        options = {**common, "cache": f"{tmp}/shared.sqlite", "progress": kill}
        out = dd.from_pandas(df.head(rows), npartitions=4).narrative.infer(
            PROMPT, tags=["bench-kill"], **options
        )
        result = npd_dask.compute(out)
    jobs = job_stats(settings, "bench-kill")
    failed = int(result["narrative_error"].notna().sum())
    print(
        f"killed worker: {kill.killed or 'none (the run ended first)'}; {rows} rows, "
        f"{jobs['jobs']} jobs, duplicates {jobs['duplicates']} (must be 0), rows without a "
        f"result {failed}, peak unfinished {jobs['peak_unfinished']}"
    )


def summary(
    name: str, report: dict[str, Any], makespan: float, cpu: float, jobs: dict[str, Any]
) -> str:
    http = report["http_requests"]
    rows = report["rows"]
    return (
        f"{name:<7} makespan {makespan:6.1f} s  {rows / makespan:6.1f} rows/s  "
        f"requests/row {http['total'] / rows:.3f} (post {http['post'] / rows:.3f}, "
        f"get_job {http['get_job'] / rows:.3f}, list {http['list_jobs'] / rows:.3f})  "
        f"client CPU {cpu / rows * 1000:.1f} ms/row  "
        f"jobs {jobs['jobs']}  peak unfinished {jobs['peak_unfinished']}  "
        f"duplicates {jobs['duplicates']}"
    )


def pandas_pass(
    df: pd.DataFrame, common: dict[str, Any], settings: dict[str, str], sandbox_pid: int, tag: str
) -> dict[str, Any]:
    """The pandas path in this process, before any cluster exists (its scheduler would add its
    own upkeep to this process's CPU)."""
    cpu = sum(client_cpu(sandbox_pid))
    started = time.perf_counter()
    frame = df.narrative.infer(PROMPT, tags=[tag], progress=False, **common)
    makespan = time.perf_counter() - started
    used = sum(client_cpu(sandbox_pid)) - cpu
    jobs = job_stats(settings, tag)
    print(summary("pandas", frame.attrs["narrative"], makespan, used, jobs))
    return {"frame": frame, "makespan": makespan, "cpu": used}


def dask_pass(
    df: pd.DataFrame,
    common: dict[str, Any],
    settings: dict[str, str],
    sandbox_pid: int,
    tag: str,
    args: argparse.Namespace,
    kill: bool,
) -> dict[str, Any]:
    """The same rows on a fresh 2-worker cluster: makespan, CPU by process and by thread."""
    with (
        LocalCluster(
            n_workers=args.workers,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(__import__, "narrative_pandas.dask")  # warm the workers' imports
        ddf = dd.from_pandas(df, npartitions=args.partitions)
        out = ddf.narrative.infer(PROMPT, tags=[tag], **common)
        worker_pids = list(client.run(os.getpid).values())
        # The cluster's own upkeep (heartbeats, system monitor, profiler) costs CPU per
        # second, not per row: measured idle, to tell it apart from the rows' cost.
        _, idle_before = client_cpu(sandbox_pid)
        idle_threads = thread_cpu(worker_pids)
        time.sleep(IDLE_PROBE_S)
        idle_rate = (client_cpu(sandbox_pid)[1] - idle_before) / IDLE_PROBE_S
        idle_by_thread = cpu_by_thread(client, idle_threads, thread_cpu(worker_pids))
        main_cpu, workers_cpu = client_cpu(sandbox_pid)
        threads_before = thread_cpu(worker_pids)
        started = time.perf_counter()
        scaled = npd_dask.compute(out, progress=False)
        makespan = time.perf_counter() - started
        by_thread = cpu_by_thread(client, threads_before, thread_cpu(worker_pids))
        main_after, workers_after = client_cpu(sandbox_pid)
        main_cpu, workers_cpu = main_after - main_cpu, workers_after - workers_cpu
        leases = lease_counts(cluster.scheduler)
        if kill:
            killed_worker_run(client, df, settings, common)
    jobs = job_stats(settings, tag)
    report = scaled.attrs["narrative"]
    rows = len(df)
    per_row = 1000 / rows
    print(summary("dask", report, makespan, main_cpu + workers_cpu, jobs))
    print(
        f"dask: {report['partitions']} partitions on {report['workers']} workers; "
        f"per-partition engine time {report['partition_elapsed_s']:.1f} s in total; "
        f"429s {report['http_429']}"
    )
    upkeep = idle_rate * makespan
    net_ms = (workers_cpu - upkeep) * per_row
    print(
        f"dask CPU/row: workers {workers_cpu * per_row:.2f} ms ({net_ms:.2f}"
        f" net of an idle cluster's upkeep: {idle_rate:.3f} CPU-s/s measured idle, x "
        f"{makespan:.1f} s), scheduler+client {main_cpu * per_row:.2f} ms; scheduler lease "
        f"round trips {leases['acquired']} acquired + {leases['released']} released "
        f"({(leases['acquired'] + leases['released']) / rows:.3f}/row)"
    )
    shown = ("narrative loop", "Dask event loop", "task thread", "other")
    print(
        "workers' CPU/row by thread: "
        + ", ".join(
            f"{kind} {by_thread.get(kind, 0.0) * per_row:.3f} ms (idle upkeep "
            f"{idle_by_thread.get(kind, 0.0) / IDLE_PROBE_S * makespan * per_row:.3f})"
            for kind in shown
        )
    )
    return {
        "frame": scaled,
        "makespan": makespan,
        "workers_cpu": workers_cpu,
        "net_cpu": workers_cpu - upkeep,
        "jobs": jobs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds a job runs")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeat", type=int, default=3, help="pandas/Dask pairs run; medians are the verdicts"
    )
    parser.add_argument(
        "--no-kill", dest="kill", action="store_false", help="skip the killed-worker run"
    )
    args = parser.parse_args()
    print(f"load average at start {os.getloadavg()[0]:.1f}")
    speed_before = reference_ms()
    df = make_frame(args.rows)
    proc, settings = start_sandbox(args.latency)
    target = {
        "api_key": settings["NARRATIVE_API_KEY"],
        "base_url": settings["NARRATIVE_BASE_URL"],
        "data_plane_id": settings["NARRATIVE_DATA_PLANE_ID"],
    }
    common = {"output": ReviewLabel, "concurrency": args.concurrency, "cache": False, **target}
    ok = True
    raw: list[float] = []
    net: list[float] = []
    spans: list[float] = []
    try:
        for number in range(args.repeat):
            print(f"--- pair {number + 1} of {args.repeat}")
            plain = pandas_pass(df, common, settings, proc.pid, f"bench-pandas-{number}")
            kill = args.kill and number == args.repeat - 1
            scaled = dask_pass(df, common, settings, proc.pid, f"bench-dask-{number}", args, kill)
            raw.append(scaled["workers_cpu"] / plain["cpu"])
            net.append(scaled["net_cpu"] / plain["cpu"])
            spans.append(scaled["makespan"] / plain["makespan"])
            print(
                f"pair {number + 1}: workers' CPU/row raw {raw[-1]:.2f}x, net of upkeep "
                f"{net[-1]:.2f}x the pandas path's {plain['cpu'] * 1000 / args.rows:.2f} ms; "
                f"makespan {spans[-1]:.2f}x ({scaled['makespan']:.1f} / "
                f"{plain['makespan']:.1f} s); load average {os.getloadavg()[0]:.1f}"
            )
            # Input columns come back as Dask converted them (text -> string[pyarrow]);
            # compare what infer added, job ids aside.
            added = [
                c for c in plain["frame"].columns if c not in df.columns and c != "narrative_job_id"
            ]
            same = plain["frame"][added].equals(scaled["frame"][added]) and plain[
                "frame"
            ].index.equals(scaled["frame"].index)
            print(f"same outputs, dtypes and order as the pandas path (job ids aside): {same}")
            jobs = scaled["jobs"]
            ok = ok and (
                same
                and jobs["jobs"] == args.rows
                and jobs["peak_unfinished"] <= args.concurrency
                and jobs["duplicates"] == 0
            )
        print(
            f"RATIOS dask/pandas, medians of {args.repeat} pairs: workers' CPU/row raw "
            f"{statistics.median(raw):.2f}x (aim <= 1.3), net of upkeep "
            f"{statistics.median(net):.2f}x (target <= 1.5; pairs "
            f"{', '.join(f'{r:.2f}' for r in net)}); makespan {statistics.median(spans):.2f}x "
            f"(target <= 1.2; pairs {', '.join(f'{r:.2f}' for r in spans)}); load average "
            f"{os.getloadavg()[0]:.1f}"
        )
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(machine_speed(speed_before))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
