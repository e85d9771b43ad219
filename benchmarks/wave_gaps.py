"""Where a freed slot's wait goes: job end -> seen by a poll -> its next POST -> job created.

Runs one waves scenario (default: (h), 5,000 rows, C=500, 1 s jobs) against the benchmark's
sandbox process (``_server.py``) with the engine observed from outside (its poll, its
observation of each job and its POSTs are wrapped, nothing else changes) and prints the mean
slot gap split into its parts, the polls' length and spacing, and the listing pages' depth.
A diagnostic for issue 17 item 2; ``run.py`` holds the targets.

    PYTHONPATH=. python benchmarks/wave_gaps.py [--rows 5000] [--concurrency 500] [--latency 1]

The split pairs the k-th freed slot with the k-th observed end and the k-th POST (all sorted),
so each part is a mean over the run, not a per-job trace. Wall times: run it alone
on the machine and read the load average printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _control(base_url: str, path: str, data: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        base_url + path,
        data=None if data is None else json.dumps(data).encode(),
        method="GET" if data is None else "POST",
    )
    with urllib.request.urlopen(request) as answer:
        return json.loads(answer.read())


def _mean_ms(later: list[float], earlier: list[float]) -> float:
    n = min(len(later), len(earlier))
    return statistics.mean(b - a for a, b in zip(earlier[:n], later[:n], strict=True)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_server.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        target = json.loads(server.stdout.readline())
        knobs = {"run_latency": args.latency, "queue_latency": 0.0}
        _control(target["base_url"], "/_bench/setup", {"knobs": knobs})
        return _measure(args, target)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=15)


def _measure(args: argparse.Namespace, target: dict[str, str]) -> int:
    import pandas as pd
    from _client import MODEL, PROMPT, SCHEMA, review
    from run import service_pace

    import narrative_pandas as npd
    from narrative_pandas import _client, _engine, _submitter

    seen: list[float] = []
    posted: list[float] = []
    polls: list[tuple[float, float]] = []
    pages: list[int] = []

    observe = _engine.Engine._observe

    def observe_timed(self: Any, job: Any) -> None:
        if job.is_terminal and job.job_id in self._outstanding:
            seen.append(time.time())
        observe(self, job)

    post = _submitter.Submitter._post

    async def post_timed(self: Any, request: Any, *, since: float) -> Any:
        posted.append(time.time())
        return await post(self, request, since=since)

    poll = _engine.Engine._poll

    async def poll_timed(self: Any) -> None:
        started = time.time()
        await poll(self)
        polls.append((started, time.time() - started))

    list_raw = _client.Client.list_jobs_raw

    async def list_counted(self: Any, **params: Any) -> Any:
        page = await list_raw(self, **params)
        pages.append(len(page.get("records", [])))
        return page

    _engine.Engine._observe = observe_timed  # type: ignore[method-assign]
    _submitter.Submitter._post = post_timed  # type: ignore[method-assign]
    _engine.Engine._poll = poll_timed  # type: ignore[method-assign]
    _client.Client.list_jobs_raw = list_counted  # type: ignore[method-assign]

    rows, concurrency = args.rows, args.concurrency
    salt = str(time.time())
    df = pd.DataFrame({"id": range(rows), "review": [review(i, salt) for i in range(rows)]})
    cpu, started = time.process_time(), time.time()
    out = npd.infer(
        df, PROMPT, output=SCHEMA, model=MODEL, concurrency=concurrency, progress=False,
        cache=False, api_key=target["api_key"], base_url=target["base_url"],
        data_plane_id=target["data_plane_id"],
    )  # fmt: skip
    wall, cpu = time.time() - started, time.process_time() - cpu
    stats = _control(target["base_url"], "/_bench/stats?timelines=1")
    timelines = stats["timelines"]
    mean_gap_s = service_pace(timelines, concurrency).mean_gap_s
    created_after = sorted(c for c, _ in timelines)[concurrency:]
    freed = sorted(e for _, e in timelines)[: len(created_after)]
    posts_after = sorted(posted)[concurrency:]
    seen.sort()
    gets = sum(stats["by_route"][r]["total"] for r in ("GET /jobs", "GET /jobs/{job_id}"))
    report = out.attrs["narrative"]
    print(
        f"{rows} rows, C={concurrency}, {args.latency:g} s jobs: makespan {wall:.2f} s, client CPU "
        f"{cpu / rows * 1000:.2f} ms/row, sandbox CPU {stats['server_cpu_s']:.2f} s; load "
        f"average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  mean slot gap {mean_gap_s * 1000:.0f} ms = end -> seen "
        f"{_mean_ms(seen, freed):.0f} + seen -> POST {_mean_ms(posts_after, seen):.0f} + "
        f"POST -> created {_mean_ms(created_after, posts_after):.0f} ms"
    )
    spacing = [b[0] - a[0] for a, b in itertools.pairwise(polls)]
    print(
        f"  {report['polls']} polls: {statistics.mean(d for _, d in polls) * 1000:.0f} ms each, "
        f"{statistics.mean(spacing) * 1000 if spacing else 0:.0f} ms apart; {len(pages)} listing "
        f"pages of {statistics.mean(pages) if pages else 0:.0f} records; GET/row {gets / rows:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
