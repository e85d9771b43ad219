"""samples=k: k distinct jobs per row, the majority answer, narrative_agreement, safe resume."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import python_script, spawn, wait_until

import narrative_pandas as npd
from narrative_pandas import ConfigurationError, ProgressEvent
from narrative_pandas._clock import FakeClock
from narrative_pandas.sandbox import Sandbox

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer"},
    },
    "required": ["label", "stars"],
}


def sample_of(request: dict[str, Any]) -> int:
    """The sample index a request carries (0: no sample tag)."""
    for tag in request.get("tags") or []:
        if tag.startswith("npd-sample-"):
            return int(tag.rsplit("-", 1)[1])
    return 0


def responder(request: dict[str, Any]) -> dict[str, Any]:
    """'sure' rows: the same answer every sample; 'torn' rows: sample 2 disagrees on the label;
    'lost' rows: every sample differs."""
    text = request["messages"][-1]["text"]
    sample = sample_of(request)
    if "torn" in text:
        return {"label": "negative" if sample == 2 else "positive", "stars": 4}
    if "lost" in text:
        return {"label": ["positive", "negative", "neutral"][sample], "stars": sample + 1}
    return {"label": "positive", "stars": 5}


@pytest.fixture
def rows() -> pd.DataFrame:
    return pd.DataFrame({"text": ["sure a", "torn b", "lost c", "sure a"]}, index=list("wxyz"))


class TestSamples:
    """Three samples per row over the sandbox."""

    def test_three_distinct_jobs_per_row_and_agreement(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """Each distinct row is three jobs with distinct tags; agreement is per row and field."""
        sandbox.configure(responder=responder)
        out = rows.narrative.infer("{text}", output=SCHEMA, samples=3, progress=False, **target)
        assert sandbox.stats.jobs_created == 3 * 3  # 3 distinct rows ("sure a" twice)
        assert sandbox.stats.duplicate_submissions == 0
        tags = [
            tuple(sorted(t for t in j["input"]["tags"] if "sample" in t)) for j in sandbox.jobs()
        ]
        assert sorted(tags) == sorted([(), ("npd-sample-1",), ("npd-sample-2",)] * 3)
        assert list(out["label"].astype(str)) == ["positive", "positive", "positive", "positive"]
        assert list(out["narrative_agreement[label]"]) == [1.0, 2 / 3, 1 / 3, 1.0]
        assert list(out["narrative_agreement[stars]"]) == [1.0, 1.0, 1 / 3, 1.0]
        assert list(out["narrative_agreement"]) == [1.0, 2 / 3, 1 / 3, 1.0]
        assert list(out["narrative_samples"]) == [3, 3, 3, 3]
        assert out["narrative_agreement"].dtype == "Float64"
        assert list(out.index) == list("wxyz")
        report = out.attrs["narrative"]
        assert report["rows"] == 4 and report["samples"] == 3 and report["jobs_submitted"] == 9
        per_job = int(sandbox.jobs()[0]["result"]["usage"]["total_tokens"])
        assert out["narrative_total_tokens"].iloc[0] == 3 * per_job
        assert report["total_tokens"] == 9 * per_job

    def test_samples_1_is_the_plain_request_and_is_reused(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """samples=1 changes nothing; samples=3 afterwards pays only for samples 1 and 2."""
        sandbox.configure(responder=responder)
        plain = rows.narrative.infer("{text}", output=SCHEMA, progress=False, **target)
        assert "narrative_agreement" not in plain.columns
        assert sandbox.stats.jobs_created == 3
        rows.narrative.infer("{text}", output=SCHEMA, samples=3, progress=False, **target)
        assert sandbox.stats.jobs_created == 9
        assert sandbox.stats.duplicate_submissions == 0

    def test_bad_samples_raise_before_any_request(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """samples=0, 2.5 or True are refused with a message; nothing is sent."""
        for bad in (0, 2.5, True):
            with pytest.raises(ConfigurationError, match="samples="):
                rows.narrative.infer("{text}", output=SCHEMA, samples=bad, **target)
        assert sandbox.stats.requests == 0

    def test_interrupt_then_rerun_does_not_resubmit_samples(
        self, sandbox: Any, target: dict[str, str], tmp_path: Path
    ) -> None:
        """Ctrl-C after a few samples were submitted; the re-run pays only for the rest."""
        sandbox.configure(responder=responder, queue_latency=1.0, run_latency=0.1)
        path = tmp_path / "cache.sqlite"
        script = python_script(
            tmp_path / "samples.py",
            f"""
            import pandas as pd, narrative_pandas as npd
            schema = {SCHEMA!r}
            df = pd.DataFrame({{"text": [f"torn {{i}}" for i in range(10)]}})
            try:
                out = df.narrative.infer("{{text}}", output=schema, samples=3,
                                         cache={str(path)!r}, progress=False, concurrency=4,
                                         api_key={target["api_key"]!r},
                                         base_url={target["base_url"]!r},
                                         data_plane_id={target["data_plane_id"]!r})
            except KeyboardInterrupt:
                print("INTERRUPTED")
                raise SystemExit(130)
            report = out.attrs["narrative"]
            print("DONE", out["narrative_error"].isna().sum(), report["jobs_submitted"],
                  round(out["narrative_agreement"].mean(), 3))
            """,
        )
        proc = spawn(script)
        wait_until(lambda: sandbox.stats.jobs_created >= 4, what="4 submissions")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        submitted = sandbox.stats.jobs_created
        assert 4 <= submitted < 30
        sandbox.configure(queue_latency=0.02, run_latency=0.02)
        proc = spawn(script)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert f"DONE 10 {30 - submitted} 0.667" in stdout
        assert sandbox.stats.jobs_created == 30
        assert sandbox.stats.duplicate_submissions == 0


class TestSamplesInACompare:
    """compare(samples=k): k jobs per (variant, distinct row), agreement within each variant."""

    def test_jobs_and_columns(self, sandbox: Any, target: dict[str, str]) -> None:
        """2 models x 3 samples x 2 distinct rows = 12 jobs; per-variant sample agreement."""

        def by_model(request: dict[str, Any]) -> dict[str, Any]:
            label = (
                "negative"
                if sample_of(request) == 1 and "sonnet" in request["model"]
                else "positive"
            )
            return {"label": label, "stars": 3}

        sandbox.configure(responder=by_model)
        df = pd.DataFrame({"text": ["one", "two", "one"]})
        cmp = df.narrative.compare(
            "{text}",
            output=SCHEMA,
            models={"haiku": "anthropic.claude-haiku-4.5", "sonnet": "anthropic.claude-sonnet-4.5"},
            samples=3,
            progress=False,
            **target,
        )
        assert sandbox.stats.jobs_created == 12
        assert sandbox.stats.duplicate_submissions == 0
        assert list(cmp["narrative_agreement[haiku]"]) == [1.0, 1.0, 1.0]
        assert list(cmp["narrative_agreement[sonnet]"]) == [2 / 3, 2 / 3, 2 / 3]
        assert list(cmp["label[sonnet]"].astype(str)) == ["positive"] * 3
        assert list(cmp["agreement[label]"]) == [1.0, 1.0, 1.0]
        assert list(cmp["narrative_samples[sonnet]"]) == [3, 3, 3]


class TestSamplesPartialAndAttach:
    """partial() and attach() give one row per input row: majority answer and agreement."""

    def test_partial_mid_run_is_folded_with_unfinished_rows_pending(self) -> None:
        """Row v has 2 of its 3 samples answered: pending (no early majority) until the 3rd."""
        clock = FakeClock(1000.0)
        with Sandbox(clock=clock, queue_latency=1.0, run_latency=0.0, responder=responder) as sb:
            target = {"api_key": sb.api_key, "base_url": sb.base_url}
            target["data_plane_id"] = sb.data_plane_id
            df = pd.DataFrame({"text": ["torn a", "b", "c"]}, index=list("vwx"))
            run = df.narrative.start(
                "{text}", output=SCHEMA, samples=3, concurrency=2, progress=False, **target
            )
            wait_until(lambda: sb.stats.jobs_created == 2, what="v's first two samples sent")
            clock.advance(5)  # those two finish; the next two (v's third, w's first) never do
            wait_until(lambda: run.status()["completed"] == 2 and sb.stats.jobs_created == 4)
            partial = run.partial()
            assert run.status()["completed"] == 2
            while not run.done():
                clock.advance(5)
                time.sleep(0.02)
            out = run.result()
        assert list(partial.columns) == list(out.columns)
        assert list(partial.dtypes) == list(out.dtypes)
        assert list(partial.index) == list("vwx")
        first = partial.loc["v"]
        assert pd.isna(first["label"]) and pd.isna(first["narrative_status"])
        assert first["narrative_error"] == "pending" and first["narrative_samples"] == 2
        assert pd.isna(first["narrative_agreement"]) and pd.isna(first["narrative_job_id"])
        assert list(partial["narrative_error"]) == ["pending"] * 3
        assert partial.attrs["narrative"]["rows"] == 3
        assert partial.attrs["narrative"]["samples"] == 3
        assert out.loc["v", "label"] == "positive" and out.loc["v", "narrative_samples"] == 3
        assert out.loc["v", "narrative_agreement[label]"] == pytest.approx(2 / 3)
        assert out["narrative_error"].isna().all()
        assert sb.stats.jobs_created == 9

    def test_attach_after_the_run_returns_the_majority_frame(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame, tmp_path: Path
    ) -> None:
        """attach() to a finished samples=3 run: the same frame, nothing sent again."""
        sandbox.configure(responder=responder)
        path = str(tmp_path / "samples.sqlite")
        run = rows.narrative.start(
            "{text}", output=SCHEMA, samples=3, cache=path, progress=False, **target
        )
        out = run.result()
        attached = npd.attach(run.id, cache=path, api_key=target["api_key"], progress=False)
        again = attached.result()
        pd.testing.assert_frame_equal(again, out)
        assert list(again["narrative_agreement[label]"]) == [1.0, 2 / 3, 1 / 3, 1.0]
        assert sandbox.stats.jobs_created == 9
        assert again.attrs["narrative"]["samples"] == 3
        assert again.attrs["narrative"]["jobs_submitted"] == 0

    def test_attach_refuses_a_frame_of_the_wrong_length(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame, tmp_path: Path
    ) -> None:
        """df= must be the caller's frame (4 rows), not the run's 12 jobs; the error says so."""
        path = str(tmp_path / "samples.sqlite")
        run = rows.narrative.start(
            "{text}", output=SCHEMA, samples=3, cache=path, progress=False, **target
        )
        run.result()
        with pytest.raises(ConfigurationError, match=r"df has 12 rows but run .* had 4"):
            npd.attach(run.id, cache=path, df=pd.concat([rows] * 3), api_key=target["api_key"])


class TestSamplesProgress:
    """The display says each row is k jobs: one row of counts, not one per sample."""

    def test_counts_are_of_jobs_and_say_samples_per_row(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame, capsys: Any
    ) -> None:
        """Events count 12 jobs with samples=3 and no per-variant rows; stderr says 3/row."""
        sandbox.configure(responder=responder)
        events: list[ProgressEvent] = []
        rows.narrative.infer("{text}", output=SCHEMA, samples=3, progress=events.append, **target)
        last = events[-1].snapshot
        assert (last.total, last.samples, last.variants) == (12, 3, ())
        assert last.completed == 12
        rows.narrative.infer("{text}", output=SCHEMA, samples=3, progress=True, **target)
        (end,) = [line for line in capsys.readouterr().err.splitlines() if "done in" in line]
        assert end.startswith("narrative  12/12 done in ")
        assert end.endswith(" · 3 samples/row · 0 completed · 0 failed · 12 cached · 0 tokens")
