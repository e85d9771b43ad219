"""How fast this machine is right now: one fixed single-threaded Python workload, timed.

The VM these benchmarks were written on changes speed by up to 2x while its load average stays
low, for minutes or from one minute to the next (this workload took 14.5 ms, then 29-31 ms a
minute later; `run.py --only d` gave 0.373 and then 0.249 ms/row for the same code ten minutes
apart). The load average cannot show that; this can. Every benchmark prints it beside the load
average (as it began and as it ended, where a run is long), so CPU figures from two runs can be
compared: a run whose reference took 1.3x longer ran on a machine about 1.3x slower.

    python benchmarks/_machine.py
"""

from __future__ import annotations

import json
import statistics
import time

#: What the workload does, many times over: encode, decode and walk JSON records, about what
#: the client does per row (CPU-bound Python and C, one thread).
_RECORD = {
    "job_id": "7735af0d-2b72-4c70-8f25-90b065ba895b",
    "state": "completed",
    "updated_at": "2026-01-29T11:19:13.400498",
    "result": {"structured_output": {"label": "positive", "confidence": 0.93}},
    "tags": ["narrative-pandas", "npd-dde21c889fea9bc1"],
}


def _workload() -> int:
    total = 0
    records = [dict(_RECORD, n=i) for i in range(400)]
    for _ in range(8):
        text = json.dumps(records)
        for record in json.loads(text):
            total += len(record["job_id"]) + record["n"] + len(record["result"])
    return total


def reference_ms(repeat: int = 7) -> float:
    """Milliseconds the fixed workload takes here now (median of ``repeat``; lower is faster)."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        _workload()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def describe(before: float | None = None) -> str:
    """One line for a benchmark's header (``before``: the reference taken as it began)."""
    now = reference_ms()
    when = "" if before is None else f"{before:.1f} ms before, "
    return f"machine speed reference {when}{now:.1f} ms (a fixed Python workload; lower is faster)"


if __name__ == "__main__":
    print(describe())
