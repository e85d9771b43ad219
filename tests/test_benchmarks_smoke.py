"""Smoke test of ``benchmarks/run.py --quick``: it runs end to end and prints its table.

No timing is asserted (timings belong in ``benchmarks/README.md``, not in tests); only that every
scenario produced a row, with the columns the issue asks for, and that no scenario errored.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "run.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import service_pace  # noqa: E402  (benchmarks/ is not a package)

COLUMNS = (
    "scenario",
    "rows",
    "conc",
    "latency s",
    "makespan s",
    "ideal s",
    "ratio",
    "limit s",
    "/limit",
    "POST/row",
    "GET/row",
    "CPU s/1k rows",
    "peak RSS MB",
)
SCENARIOS = (
    "(a) steady",
    "(b) wide, random",
    "(c) 20% 429",
    "(d) client cost",
    "(e) = (a), httpx",
    "(f) SDK-guide loop",
    "(f) ours, same rows",
    "(g) foreign + skew",
    "(g0) = (g), just made",
    "(h) waves, C=500",
    "(i) waves, 0.2 s",
    "sandbox throughput",
)


@pytest.fixture(scope="module")
def quick_output() -> str:
    """The stdout of one ``run.py --quick`` (run once for the module)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
class TestQuickBenchmark:
    """``python benchmarks/run.py --quick`` as a user runs it."""

    def test_header_has_every_column(self, quick_output: str) -> None:
        """The table's header names every column the issue asks for."""
        header = next(line for line in quick_output.splitlines() if line.startswith("scenario"))
        for column in COLUMNS:
            assert column in header

    def test_header_gives_the_machines_speed(self, quick_output: str) -> None:
        """Beside the load average: the fixed workload's time as the run began and ended."""
        line = next(line for line in quick_output.splitlines() if "speed reference" in line)
        before, after = (float(x) for x in re.findall(r"([\d.]+) ms", line))
        assert before > 0 and after > 0

    def test_one_row_per_scenario(self, quick_output: str) -> None:
        """Each scenario (a)-(f) and the sandbox's throughput has exactly one table row."""
        lines = quick_output.splitlines()
        for title in SCENARIOS:
            assert sum(1 for line in lines if line.startswith(title)) == 1, title

    def test_no_scenario_errored(self, quick_output: str) -> None:
        """Every scenario row carries numbers, none says ERROR."""
        rows = [line for line in quick_output.splitlines() if line.startswith(SCENARIOS[:-1])]
        assert len(rows) == len(SCENARIOS) - 1
        assert not [row for row in rows if "ERROR" in row]
        for row in rows:
            cells = row.split()
            assert len(cells) >= len(COLUMNS)
            float(cells[-1])  # peak RSS MB is a number

    def test_every_row_completed(self, quick_output: str) -> None:
        """The details say every row of every scenario completed."""
        details = [line for line in quick_output.splitlines() if "completed " in line]
        assert len(details) == len(SCENARIOS) - 1
        for line in details:
            done, total = line.split("completed ", 1)[1].split(";", 1)[0].split("/")
            assert done == total

    def test_targets_are_judged(self, quick_output: str) -> None:
        """Each target of the issue gets a PASS or MISS line (the sandbox's may be SKIP)."""
        verdicts = [
            line.split()[0]
            for line in quick_output.splitlines()
            if line.strip().startswith(("PASS", "MISS", "SKIP"))
        ]
        assert len(verdicts) >= 8
        assert set(verdicts) <= {"PASS", "MISS", "SKIP"}

    def test_retry_after_check_saw_429s(self, quick_output: str) -> None:
        """Scenario (c) really met 429s with Retry-After, so its check measured something."""
        line = next(line for line in quick_output.splitlines() if "Retry-After check" in line)
        answered = int(line.split("Retry-After check: ", 1)[1].split(" ", 1)[0])
        assert answered > 0


class TestServicePace:
    """The limit a run is judged against, computed from the sandbox's job timelines."""

    def test_fixed_latency_gives_ceil_n_over_c_times_l(self) -> None:
        # 5 jobs, 2 slots, 1 s each; created late by 0.1 s after each slot frees.
        timelines = [(0.0, 1.0), (0.0, 1.0), (1.1, 2.1), (1.1, 2.1), (2.2, 3.2)]
        pace = service_pace(timelines, concurrency=2)
        assert pace.limit_s == pytest.approx(3.0)  # ceil(5 / 2) x 1 s
        assert pace.ramp_s == 0.0
        assert pace.mean_gap_s == pytest.approx(0.1)
        assert pace.span_s == pytest.approx(3.2)

    def test_random_latency_replays_the_drawn_latencies_in_creation_order(self) -> None:
        # Latencies 4, 1, 1, 2 on 2 slots: slot A runs 4; slot B runs 1, 1, 2 -> limit 4.
        timelines = [(0.0, 4.0), (0.5, 1.5), (1.5, 2.5), (2.5, 4.5)]
        pace = service_pace(timelines, concurrency=2)
        assert pace.limit_s == pytest.approx(4.0)
        assert pace.ramp_s == pytest.approx(0.5)
        assert pace.mean_gap_s == pytest.approx(0.0)  # each next job came as a slot freed
        assert pace.span_s == pytest.approx(4.5)


def run_disk_cache(*options: str) -> str:
    """The stdout of ``disk_cache.py`` with ``options``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "disk_cache.py"), *options],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def disk_cache_output() -> str:
    """The stdout of one ``disk_cache.py --quick`` (run once for the module)."""
    return run_disk_cache("--quick")


@pytest.mark.slow
class TestDiskCacheQuick:
    """``python benchmarks/disk_cache.py --quick`` as a user runs it."""

    def test_one_row_per_step(self, disk_cache_output: str) -> None:
        """The table has the in-memory run, the first disk run and three re-runs."""
        lines = disk_cache_output.splitlines()
        for step in ("memory", "disk first", "re-run 1", "re-run 2", "re-run 3"):
            assert sum(1 for line in lines if line.startswith(f"| {step} |")) == 1, step

    def test_every_target_is_judged(self, disk_cache_output: str) -> None:
        """Each of the five targets gets a PASS or MISS line, and the load average is printed."""
        verdicts = [
            line.split()[0]
            for line in disk_cache_output.splitlines()
            if line.startswith(("PASS ", "MISS "))
        ]
        assert len(verdicts) == 5
        assert "load average" in disk_cache_output

    def test_reruns_send_nothing_and_the_file_does_not_grow(self, disk_cache_output: str) -> None:
        """The counts behind two targets: no request in a re-run, no growth of the file."""
        lines = disk_cache_output.splitlines()
        assert "PASS requests during the re-runs: 0 (0)" in lines
        assert any(line.startswith("PASS file growth over 3 re-runs") for line in lines)
        reruns = [line for line in lines if line.startswith("| re-run")]
        assert [line.split("|")[5].strip() for line in reruns] == ["0", "0", "0"]

    def test_pairs_alternate_and_the_median_is_judged(self) -> None:
        """Two pairs run memory-disk then disk-memory; the verdict names both ratios."""
        output = run_disk_cache("--quick", "--rows", "100", "--pairs", "2", "--reruns", "1")
        steps = [line.split("|")[1].strip() for line in output.splitlines() if line[:2] == "| "]
        assert steps[1:] == [
            "memory 1", "disk first 1", "disk first 2", "memory 2", "re-run 1"
        ]  # fmt: skip
        verdict = next(line for line in output.splitlines() if "first run's CPU" in line)
        assert "(pairs: " in verdict and "; median)" in verdict
