"""How many requests per second the sandbox serves on loopback.

Starts ``python -m narrative_pandas.sandbox --port 0`` in a separate process, drives it with an
aiohttp client (N concurrent connections, a mix of POST /model-inference/run, GET /jobs/{id} and
GET /jobs) for a few seconds, and prints requests/s. The sandbox must sustain >= 1,000 requests/s.

    .venv/bin/python benchmarks/sandbox_throughput.py [--seconds 3] [--connections 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
from _client import SCHEMA  # the benchmark's schema (benchmarks/ is on sys.path)


def start_sandbox(latency: float = 0.2) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start the CLI on a free port and read the settings it prints."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "narrative_pandas.sandbox",
            "--port",
            "0",
            "--latency",
            str(latency),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(found) < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.match(r"export (NARRATIVE_\w+)=(\S+)", line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    if len(found) < 3:
        proc.kill()
        raise SystemExit("the sandbox did not print its settings")
    return proc, found


async def drive(settings: dict[str, str], seconds: float, connections: int) -> Counter[str]:
    """Run ``connections`` workers for ``seconds``; count answers by kind."""
    base = settings["NARRATIVE_BASE_URL"]
    headers = {"Authorization": f"Bearer {settings['NARRATIVE_API_KEY']}"}
    plane = settings["NARRATIVE_DATA_PLANE_ID"]
    counts: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            body: dict[str, Any] = {
                "data_plane_id": plane,
                "model": "anthropic.claude-haiku-4.5",
                "messages": [{"role": "user", "text": f"Review {n}-{i}: it was fine."}],
                "inference_config": {"output_format_schema": SCHEMA},
            }
            async with session.post(f"{base}/model-inference/run", json=body) as resp:
                data = await resp.json()
                counts[f"POST {resp.status}"] += 1
            job_id = data["job_id"]
            async with session.get(f"{base}/jobs/{job_id}") as resp:
                await resp.read()
                counts[f"GET job {resp.status}"] += 1
            if i % 5 == 0:
                params = {"order_by": "updated_at_desc", "per_page": "20"}
                async with session.get(f"{base}/jobs", params=params) as resp:
                    await resp.read()
                    counts[f"GET list {resp.status}"] += 1

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        await asyncio.gather(*(worker(n, session) for n in range(connections)))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    proc, settings = start_sandbox()
    server = psutil.Process(proc.pid)
    try:
        asyncio.run(drive(settings, 0.5, args.connections))  # warm up
        cpu_before = sum(server.cpu_times()[:2])
        started = time.perf_counter()
        counts = asyncio.run(drive(settings, args.seconds, args.connections))
        elapsed = time.perf_counter() - started
        cpu = sum(server.cpu_times()[:2]) - cpu_before
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    total = sum(counts.values())
    print(f"answers: {dict(sorted(counts.items()))}")
    print(f"{total} requests in {elapsed:.2f} s with {args.connections} connections")
    print(f"throughput: {total / elapsed:,.0f} requests/s (sandbox exit code {code})")
    # Robust to other load on the machine: what one request costs the server process.
    print(
        f"server CPU: {cpu / total * 1e6:,.0f} us per request "
        f"(~{total / cpu:,.0f} requests/s per fully available core); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    return 0 if total / elapsed >= 1000 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
