"""Never pay twice: cache, journal, interrupts and resume, against the sandbox's counters."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import python_script, spawn, wait_until
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas import _cache
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):  # no docstring: the scripts below define the same schema
    label: str
    score: float


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


PROMPT = "Text: {text}"


def infer(df: pd.DataFrame, target: dict[str, str], **options: Any) -> pd.DataFrame:
    options.setdefault("progress", False)
    return df.narrative.infer(PROMPT, output=Label, **target, **options)


class TestCache:
    def test_second_identical_run_costs_nothing(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Re-running the same call submits 0 jobs and sends 0 requests."""
        first = infer(frame(30), target)
        before = sandbox.stats.requests
        second = infer(frame(30), target)
        assert sandbox.stats.requests == before
        assert sandbox.stats.jobs_created == 30
        assert second.attrs["narrative"]["cached_rows"] == 30
        assert second.attrs["narrative"]["jobs_submitted"] == 0
        pd.testing.assert_frame_equal(first, second)

    def test_refresh_and_disabled_cache_resubmit(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """refresh=True ignores hits; cache=False neither reads nor writes."""
        infer(frame(5), target)
        infer(frame(5), target, refresh=True)
        assert sandbox.stats.jobs_created == 10
        infer(frame(5), target, cache=False)
        assert sandbox.stats.jobs_created == 15
        out = infer(frame(5), target)
        assert sandbox.stats.jobs_created == 15
        assert out.attrs["narrative"]["cached_rows"] == 5

    def test_failed_rows_are_not_cached(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """Running again resubmits exactly the rows that failed, and they now succeed."""
        sandbox.configure(failure_rate=0.4, seed=11)
        with pytest.warns(npd.RowsFailedWarning):
            first = infer(frame(40), target)
        failed = int(first["narrative_error"].notna().sum())
        assert 0 < failed < 40
        sandbox.configure(failure_rate=0.0)
        second = infer(frame(40), target)
        assert sandbox.stats.jobs_created == 40 + failed
        assert second.attrs["narrative"]["jobs_submitted"] == failed
        assert second["narrative_error"].isna().all()

    def test_only_failed_reruns_exactly_those_rows(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """only_failed= submits just the failed rows and merges them into the previous result."""
        sandbox.configure(failure_rate=0.4, seed=11)
        df = frame(40)
        df.index = [f"r{i}" for i in range(39, -1, -1)]
        with pytest.warns(npd.RowsFailedWarning):
            first = infer(df, target, cache=False)
        failed_mask = first["narrative_error"].notna()
        sandbox.configure(failure_rate=0.0)
        posts_before = sandbox.stats.count(method="POST")
        merged = infer(df, target, cache=False, only_failed=first)
        assert sandbox.stats.count(method="POST") - posts_before == int(failed_mask.sum())
        assert merged.index.equals(df.index)
        assert merged["narrative_error"].isna().all()
        assert merged["label"].notna().all()
        unchanged = ~failed_mask
        pd.testing.assert_series_equal(
            merged.loc[unchanged, "narrative_job_id"], first.loc[unchanged, "narrative_job_id"]
        )
        assert merged.attrs["narrative"]["rerun_rows"] == int(failed_mask.sum())
        assert list(merged.dtypes) == list(first.dtypes)

    def test_disk_cache_survives_a_new_process(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """A run in another process fills the file; this process then pays for nothing."""
        path = tmp_path / "cache.sqlite"
        script = python_script(
            tmp_path / "fill.py",
            f"""
            import pandas as pd, narrative_pandas as npd
            from pydantic import BaseModel
            class Label(BaseModel):
                label: str
                score: float
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(20)]}})
            out = df.narrative.infer({PROMPT!r}, output=Label, cache={str(path)!r},
                                     progress=False, api_key={target["api_key"]!r},
                                     base_url={target["base_url"]!r},
                                     data_plane_id={target["data_plane_id"]!r})
            print("DONE", out["narrative_error"].isna().sum())
            """,
        )
        proc = spawn(script)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert "DONE 20" in stdout
        assert sandbox.stats.jobs_created == 20
        before = sandbox.stats.requests
        out = infer(frame(20), target, cache=str(path))
        assert sandbox.stats.requests == before
        assert out.attrs["narrative"]["cached_rows"] == 20

    def test_two_processes_share_a_cache_file(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """Two processes writing one cache file at once leave it whole and complete."""
        path = tmp_path / "shared.sqlite"
        code = f"""
            import sys, pandas as pd, narrative_pandas as npd
            from pydantic import BaseModel
            class Label(BaseModel):
                label: str
                score: float
            start = int(sys.argv[1])
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(start, start + 60)]}})
            out = df.narrative.infer({PROMPT!r}, output=Label, cache={str(path)!r},
                                     progress=False, concurrency=8,
                                     api_key={target["api_key"]!r},
                                     base_url={target["base_url"]!r},
                                     data_plane_id={target["data_plane_id"]!r})
            print("DONE", out["narrative_error"].isna().sum())
            """
        script = python_script(tmp_path / "share.py", code)
        procs = [spawn(script, "0"), spawn(script, "60")]
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr
            assert "DONE 60" in stdout
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        before = sandbox.stats.requests
        out = infer(frame(120), target, cache=str(path))
        assert sandbox.stats.requests == before
        assert out.attrs["narrative"]["cached_rows"] == 120

    def test_cache_file_never_holds_the_key(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """No byte of the cache files is the API key, even with runs recorded."""
        path = tmp_path / "secret.sqlite"
        infer(frame(10), target, cache=str(path))
        run = frame(5).narrative.start(
            PROMPT, output=Label, cache=str(path), progress=False, **target
        )
        run.result()
        key = target["api_key"].encode()
        files = [p for p in tmp_path.iterdir() if p.name.startswith("secret.sqlite")]
        assert files
        for file in files:
            assert key not in file.read_bytes(), file


class TestBudget:
    def test_budget_stops_at_the_cap_and_keeps_completed_rows(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """max_total_tokens stops submitting; the server's token total stays under the cap."""
        cap = 300
        with pytest.warns(npd.RowsStoppedWarning, match="max_total_tokens"):
            out = infer(frame(100), target, max_total_tokens=cap, max_tokens=20, concurrency=4)
        jobs = sandbox.jobs()
        used = sum(j["result"]["usage"]["total_tokens"] for j in jobs if j["result"])
        assert 0 < used <= cap
        completed = out["narrative_error"].isna()
        assert int(completed.sum()) == len(jobs) == sum(1 for j in jobs if j["result"])
        assert out.loc[completed, "label"].notna().all()
        stopped = out.loc[~completed, "narrative_error"]
        assert stopped.str.contains(f"max_total_tokens={cap}").all()
        assert (out.loc[~completed, "narrative_status"] == "stopped").all()
        assert out.attrs["narrative"]["stopped_rows"] == len(stopped)
        assert out.attrs["narrative"]["total_tokens"] == used


class TestInterruptAndResume:
    async def test_cancelled_task_then_rerun_submits_only_the_rest(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Cancelling ainfer after N submissions, then re-running, submits only the other rows."""
        sandbox.configure(queue_latency=0.6, run_latency=0.2)
        df = frame(30)
        task = asyncio.ensure_future(
            df.narrative.ainfer(PROMPT, output=Label, concurrency=6, progress=False, **target)
        )
        while sandbox.stats.jobs_created < 6:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # the run winds down on its own loop
        submitted = sandbox.stats.jobs_created
        assert submitted == 6
        sandbox.configure(queue_latency=0.02, run_latency=0.02)
        out = await df.narrative.ainfer(PROMPT, output=Label, progress=False, **target)
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 30
        assert sandbox.stats.duplicate_submissions == 0
        report = out.attrs["narrative"]
        assert report["resumed_rows"] == submitted
        assert report["jobs_submitted"] == 30 - submitted

    def test_sigint_in_a_script_then_rerun(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """Ctrl-C in a script raises KeyboardInterrupt; running it again pays only for the rest."""
        sandbox.configure(queue_latency=1.0, run_latency=0.1)
        path = tmp_path / "cache.sqlite"
        script = python_script(
            tmp_path / "label.py",
            f"""
            import pandas as pd, narrative_pandas as npd
            from pydantic import BaseModel
            class Label(BaseModel):
                label: str
                score: float
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(40)]}})
            try:
                out = df.narrative.infer({PROMPT!r}, output=Label, cache={str(path)!r},
                                         progress=False, concurrency=5,
                                         api_key={target["api_key"]!r},
                                         base_url={target["base_url"]!r},
                                         data_plane_id={target["data_plane_id"]!r})
            except KeyboardInterrupt:
                print("INTERRUPTED")
                raise SystemExit(130)
            report = out.attrs["narrative"]
            print("DONE", out["narrative_error"].isna().sum(), report["jobs_submitted"])
            """,
        )
        proc = spawn(script)
        wait_until(lambda: sandbox.stats.jobs_created >= 5, what="5 submissions")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "INTERRUPTED" in stdout
        submitted = sandbox.stats.jobs_created
        assert submitted == 5
        sandbox.configure(queue_latency=0.02, run_latency=0.02)
        proc = spawn(script)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert f"DONE 40 {40 - submitted}" in stdout
        assert sandbox.stats.jobs_created == 40
        assert sandbox.stats.duplicate_submissions == 0

    def test_on_interrupt_return_gives_the_partial_frame(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """on_interrupt="return" turns Ctrl-C into the partial frame, rows saying why."""
        sandbox.configure(queue_latency=1.0, run_latency=0.1)
        script = python_script(
            tmp_path / "partial.py",
            f"""
            import warnings, pandas as pd, narrative_pandas as npd
            from pydantic import BaseModel
            warnings.simplefilter("ignore")
            class Label(BaseModel):
                label: str
                score: float
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(20)]}})
            out = df.narrative.infer({PROMPT!r}, output=Label, on_interrupt="return",
                                     progress=False, concurrency=4,
                                     api_key={target["api_key"]!r},
                                     base_url={target["base_url"]!r},
                                     data_plane_id={target["data_plane_id"]!r})
            errors = out["narrative_error"]
            print("ROWS", len(out))
            print("INTERRUPTED", errors.str.contains("interrupted").sum())
            print("STOPPED", (out["narrative_status"] == "stopped").sum())
            print("STATUS", out.attrs["narrative"]["status"])
            """,
        )
        proc = spawn(script)
        wait_until(lambda: sandbox.stats.jobs_created >= 4, what="4 submissions")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert "ROWS 20" in stdout
        assert "INTERRUPTED 20" in stdout
        assert "STOPPED 20" in stdout
        assert "STATUS interrupted" in stdout

    def test_journaled_job_the_server_forgot_is_resubmitted(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A journal entry answered 404 (expired job) is submitted again, once."""
        cache = npd.MemoryCache()
        sandbox.configure(queue_latency=5.0)
        run = frame(3).narrative.start(PROMPT, output=Label, cache=cache, progress=False, **target)
        wait_until(lambda: sandbox.stats.jobs_created == 3, what="3 submissions")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            run.result()
        assert len(cache.journal_entries()) == 3
        sandbox.reset()  # the server forgets every job
        sandbox.configure(queue_latency=0.02)
        out = infer(frame(3), target, cache=cache)
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 3
        # each forgotten job is asked again with backoff for GONE_CONFIRM_S (replica lag?)
        # before it counts as gone: a bounded number of 404s per job, then one resubmission
        assert 3 * 2 <= sandbox.stats.count(path="/jobs/{job_id}", status=404) <= 3 * 6
        assert cache.journal_entries() == []

    async def test_unknown_outcome_intent_is_reconciled_not_resubmitted(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """An intent without job id (POST outcome unknown) is found by its tag in the listing."""
        cache = npd.MemoryCache()
        df = frame(1)
        body = df.narrative.preview(PROMPT, output=Label, **target)["body"].iloc[0]
        key = df.narrative.preview(PROMPT, output=Label, **target)["request_key"].iloc[0]
        tag = body["tags"][-1]
        cache.journal_intent(key, tag, "earlier-run")
        async with npd.Client(**target) as client:
            job = await client.run_model_inference(body)
        out = await df.narrative.ainfer(PROMPT, output=Label, cache=cache, progress=False, **target)
        assert sandbox.stats.jobs_created == 1
        assert out["narrative_job_id"].iloc[0] == job.job_id
        assert out.attrs["narrative"]["reconciled_jobs"] == 1
        assert out.attrs["narrative"]["jobs_submitted"] == 0

    def test_default_cache_is_process_wide(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """The default in-memory cache holds results after a run (so re-running is free)."""
        infer(frame(4), target)
        assert len(_cache.default_cache()) == 4
