"""The baseline of scenario (f): the polling loop of Narrative's SDK guide, in plain httpx.

What a user writes from the guide: submit a job, poll it every 2 seconds until it is terminal,
with 5 jobs in flight at a time (a pool of 5 workers). One ``GET /jobs/{id}`` per poll, no
listing, no adaptive interval. It renders the same prompts and collects the same outputs as
``npd.infer`` so that the two are compared on the same work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

POLL_INTERVAL_S = 2.0
"""The guide's advice for inference jobs: poll every ~2 s."""
WORKERS = 5
"""Jobs in flight at a time."""
TERMINAL = frozenset({"completed", "failed", "cancelled"})


async def run_baseline(
    base_url: str,
    api_key: str,
    bodies: Sequence[Mapping[str, Any]],
    *,
    workers: int = WORKERS,
    interval: float = POLL_INTERVAL_S,
) -> dict[str, Any]:
    """Run every body to a terminal job; return outputs in order and the requests sent."""
    headers = {"Authorization": f"Bearer {api_key}"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    results: list[Any] = [None] * len(bodies)
    counts = {"post": 0, "get_job": 0}

    async def worker(http: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            counts["post"] += 1
            answer = await http.post("/model-inference/run", json=dict(bodies[i]))
            answer.raise_for_status()
            job_id = answer.json()["job_id"]
            while True:
                await asyncio.sleep(interval)
                counts["get_job"] += 1
                answer = await http.get(f"/jobs/{job_id}")
                answer.raise_for_status()
                job = answer.json()
                if job["state"] in TERMINAL:
                    result = job.get("result") or {}
                    results[i] = result.get("structured_output")
                    break

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30.0) as http:
        await asyncio.gather(*(worker(http) for _ in range(workers)))
    return {"outputs": results, "http": counts}
