"""samples=k: k distinct jobs per row, the majority answer, narrative_agreement, safe resume."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import python_script, spawn, wait_until

from narrative_pandas import ConfigurationError

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
