"""Runs that don't hold the notebook: start, watch, cancel and attach, against the sandbox."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pandas as pd
import pytest
from helpers import python_script, spawn, wait_until
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas import _sync
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):  # no docstring: the scripts below define the same schema
    label: str
    score: float


PROMPT = "Text: {text}"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


def without_run_specifics(out: pd.DataFrame) -> pd.DataFrame:
    return out.drop(columns=["narrative_job_id"])


class TestStart:
    def test_start_returns_before_any_job_completes(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """start() returns at once; other code runs while the jobs move; result() collects."""
        sandbox.configure(queue_latency=0.3, run_latency=0.2)
        run = frame(20).narrative.start(PROMPT, output=Label, progress=False, **target)
        assert not run.done()
        assert not any(j["state"] == "completed" for j in sandbox.jobs())
        assert run.status()["total"] == 20
        busy = sum(i * i for i in range(200_000))  # other work on this thread meanwhile
        assert busy > 0
        wait_until(lambda: run.status()["completed"] > 0, what="first completion")
        out = run.result()
        assert run.done()
        assert out["narrative_error"].isna().all()
        assert run.status()["completed"] == 20

    def test_result_equals_infer(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """start(...).result() gives the same frame as infer(...)."""
        started = frame(15).narrative.start(
            PROMPT, output=Label, cache=False, progress=False, **target
        )
        from_start = started.result()
        from_infer = frame(15).narrative.infer(
            PROMPT, output=Label, cache=False, progress=False, **target
        )
        pd.testing.assert_frame_equal(
            without_run_specifics(from_start), without_run_specifics(from_infer)
        )

    async def test_await_run(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """await run gives the frame."""
        run = frame(5).narrative.start(PROMPT, output=Label, progress=False, **target)
        out = await run
        assert len(out) == 5 and out["narrative_error"].isna().all()

    def test_partial_shows_pending_rows(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """partial() fills finished rows and marks the rest "pending"."""
        sandbox.configure(queue_latency=2.0, run_latency=0.1)
        run = frame(6).narrative.start(
            PROMPT, output=Label, concurrency=3, progress=False, **target
        )
        snapshot = run.partial()
        assert list(snapshot["narrative_error"]) == ["pending"] * 6
        assert snapshot["label"].isna().all()
        assert snapshot.attrs["narrative"]["status"] == "running"
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            run.result()

    def test_status_counts_add_up(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """status() counts always sum to the row count."""
        sandbox.configure(queue_latency=0.1, run_latency=0.1)
        run = frame(12).narrative.start(
            PROMPT, output=Label, concurrency=4, progress=False, **target
        )
        while not run.done():
            status = run.status()
            parts = ("queued", "pending", "running", "completed", "failed", "cached", "stopped")
            assert sum(status[p] for p in parts) == 12
        run.result()


class TestCancel:
    def test_cancel_after_n_submissions(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """Cancel after N submissions: exactly N jobs exist, the frame says what happened."""
        sandbox.configure(queue_latency=30.0)
        run = frame(25).narrative.start(
            PROMPT, output=Label, concurrency=5, progress=False, **target
        )
        wait_until(lambda: sandbox.stats.jobs_created == 5, what="5 submissions")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            out = run.result()
        assert sandbox.stats.jobs_created == 5
        errors = out["narrative_error"]
        assert errors.str.contains("cancelled").all()
        assert (errors == "not submitted (cancelled)").sum() == 20
        assert (out["narrative_status"] == "stopped").all()
        assert out["narrative_job_id"].notna().sum() == 5
        assert out.attrs["narrative"]["status"] == "cancelled"
        status = run.status()  # stopped rows are not failures
        assert (status["stopped"], status["failed"], status["status"]) == (25, 0, "cancelled")

    def test_cancelled_jobs_are_collected_by_a_later_run(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A later run polls the cancelled run's jobs instead of paying for them again."""
        sandbox.configure(queue_latency=0.5, run_latency=0.1)
        run = frame(10).narrative.start(
            PROMPT, output=Label, concurrency=4, progress=False, **target
        )
        wait_until(lambda: sandbox.stats.jobs_created == 4, what="4 submissions")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            run.result()
        out = frame(10).narrative.infer(PROMPT, output=Label, progress=False, **target)
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 10
        assert out.attrs["narrative"]["resumed_rows"] == 4


class TestSharedClient:
    def test_two_runs_share_one_client_and_keep_their_limits(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Two runs at once share one HTTP client; each keeps its own in-flight limit."""
        sandbox.configure(queue_latency=0.05, run_latency=0.15)
        a = frame(30).narrative.start(PROMPT, output=Label, concurrency=3, progress=False, **target)
        b = pd.DataFrame({"text": [f"other {i}" for i in range(30)]}).narrative.start(
            PROMPT, output=Label, concurrency=5, progress=False, **target
        )
        out_a, out_b = a.result(), b.result()
        assert out_a["narrative_error"].isna().all() and out_b["narrative_error"].isna().all()
        assert sandbox.stats.peak_unfinished_jobs <= 8
        assert sandbox.stats.jobs_created == 60
        requests_a = out_a.attrs["narrative"]["http_requests"]
        requests_b = out_b.attrs["narrative"]["http_requests"]
        assert requests_a["post"] == requests_b["post"] == 30
        assert requests_a["total"] + requests_b["total"] == sandbox.stats.requests
        same_target = [
            key
            for key in _sync._clients
            if key[0] == target["base_url"] and key[1] == target["api_key"]
        ]
        assert len(same_target) == 1


class TestAttach:
    def test_attach_after_a_kill_finishes_without_resubmitting(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """A run killed mid-way is finished by attach() in another process: 0 resubmissions."""
        sandbox.configure(queue_latency=0.8, run_latency=0.1)
        path = tmp_path / "runs.sqlite"
        script = python_script(
            tmp_path / "start.py",
            f"""
            import time, pandas as pd, narrative_pandas as npd
            from pydantic import BaseModel
            class Label(BaseModel):
                label: str
                score: float
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(30)]}},
                              index=[f"id{{i}}" for i in range(30)])
            run = df.narrative.start({PROMPT!r}, output=Label, cache={str(path)!r},
                                     progress=False, concurrency=6,
                                     api_key={target["api_key"]!r},
                                     base_url={target["base_url"]!r},
                                     data_plane_id={target["data_plane_id"]!r})
            print("RUN", run.id, flush=True)
            time.sleep(600)
            """,
        )
        proc = spawn(script)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("RUN "), proc.stderr.read() if proc.stderr else ""
        run_id = line.split()[1]
        wait_until(lambda: sandbox.stats.jobs_created >= 6, what="6 submissions")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        submitted = sandbox.stats.jobs_created
        assert submitted >= 6
        sandbox.configure(queue_latency=0.02, run_latency=0.02)

        run = npd.attach(run_id, cache=str(path), api_key=target["api_key"], progress=False)
        out = run.result()
        assert out["narrative_error"].isna().all()
        assert list(out.index) == [f"id{i}" for i in range(30)]
        assert list(out["text"]) == [f"row {i}" for i in range(30)]
        assert sandbox.stats.jobs_created == 30
        assert sandbox.stats.duplicate_submissions == 0
        report = out.attrs["narrative"]
        assert report["jobs_submitted"] == 30 - submitted
        assert report["resumed_rows"] + report["reconciled_jobs"] >= submitted

    def test_attach_unknown_run(self, tmp_path: Path) -> None:
        """attach() names the problem when the cache holds no such run."""
        with pytest.raises(npd.ConfigurationError, match="no run 'nope'"):
            npd.attach("nope", cache=str(tmp_path / "empty.sqlite"), api_key="k")


class TestInterruptInLoop:
    async def test_cancelling_the_awaiting_task_stops_the_run(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Cancelling the task that awaits a run (a notebook interrupt) stops submitting."""
        sandbox.configure(queue_latency=5.0)
        run = frame(20).narrative.start(
            PROMPT, output=Label, concurrency=4, progress=False, **target
        )
        task = asyncio.ensure_future(run._result_async())
        while sandbox.stats.jobs_created < 4:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.get_running_loop().run_in_executor(None, wait_until, run.done)
        assert sandbox.stats.jobs_created == 4
