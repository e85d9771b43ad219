"""No gap between waves: one listing request per sweep, records applied as pages arrive, and
polls timed from the latencies seen.

Counts only (requests, the order they reached the server), never wall time.
"""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel

from narrative_pandas._cadence import MIN_POLL_INTERVAL_S, PollCadence
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):
    label: str
    score: float


PROMPT = "Text: {text}"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


class TestOnePagePerSweep:
    """A sweep by update asks for a page as deep as the last sweep had to read: one request."""

    def test_pages_per_sweep(self, sandbox: Sandbox) -> None:
        """400 rows, 100 in flight, 0.2 s jobs: listing pages per sweep stay near one (a page
        sized to the jobs in flight needed several sequential pages per sweep)."""
        sandbox.configure(queue_latency=0.0, run_latency=0.2)
        out = frame(400).narrative.infer(
            PROMPT,
            output=Label,
            concurrency=100,
            progress=False,
            cache=False,
            api_key=sandbox.api_key,
            base_url=sandbox.base_url,
            data_plane_id=sandbox.data_plane_id,
        )
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 400 and sandbox.stats.duplicates == 0
        report = out.attrs["narrative"]
        pages = sandbox.stats.count(path="/jobs")
        assert report["listing_mode"] == "updated"
        assert report["listing_sweeps"] >= 5
        assert pages <= 1.25 * report["listing_sweeps"] + 2


class TestCadence:
    """The next poll follows the latencies seen: at the oldest job's due time while it is ahead."""

    def test_polls_when_the_oldest_job_is_due(self) -> None:
        """Jobs of 1 s seen; a wave submitted at 10.0: the next poll is at 11.0, not in 50 ms."""
        cadence = PollCadence()
        for _ in range(3):
            cadence.record(1.0)
        assert cadence.next_poll(10.05, [10.0, 10.02, 10.04]) == 11.0

    def test_interval_once_the_oldest_is_due(self) -> None:
        """With the oldest job past its due time, polls come every interval (~0.1 s here)."""
        cadence = PollCadence()
        for _ in range(3):
            cadence.record(1.0)
        submitted = [9.0] + [10.0] * 99
        interval = cadence.interval(10.05, submitted, 100)
        assert MIN_POLL_INTERVAL_S <= interval < 0.2
        assert cadence.next_poll(10.05, submitted) == 10.05 + interval

    def test_no_due_time_before_three_jobs_or_with_a_fixed_interval(self) -> None:
        """Two latencies are not enough to trust; a user's poll_interval always wins."""
        cadence = PollCadence()
        cadence.record(1.0)
        cadence.record(1.0)
        assert cadence.next_poll(10.05, [10.0] * 100) == 10.05 + MIN_POLL_INTERVAL_S
        fixed = PollCadence(fixed=0.3)
        for _ in range(3):
            fixed.record(1.0)
        assert fixed.next_poll(10.05, [10.0] * 100) == 10.05 + 0.3

    def test_waits_at_most_the_longest_interval(self) -> None:
        """Jobs of 60 s: the poll after a new wave is 5 s away, not 60."""
        cadence = PollCadence()
        for _ in range(3):
            cadence.record(60.0)
        assert cadence.next_poll(10.05, [10.0] * 10) == 10.05 + 5.0


class TestFewerPollsPerWave:
    """Waves of equally long jobs: the polls between a wave's start and its end are not made."""

    def test_polls_per_wave(self, sandbox: Sandbox) -> None:
        """300 rows, 100 in flight, 1 s jobs (3 waves): every row, no duplicate, and fewer
        polls per wave than a cadence by interval alone made."""
        sandbox.configure(queue_latency=0.0, run_latency=1.0)
        out = frame(300).narrative.infer(
            PROMPT,
            output=Label,
            concurrency=100,
            progress=False,
            cache=False,
            api_key=sandbox.api_key,
            base_url=sandbox.base_url,
            data_plane_id=sandbox.data_plane_id,
        )
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 300 and sandbox.stats.duplicates == 0
        # About 35 polls by interval alone (the cadence then shrinks with each young wave);
        # by due time ~24: one as each wave comes due, then the interval while it drains.
        assert out.attrs["narrative"]["polls"] <= 3 * 10
