"""``python -m narrative_pandas demo``: the labelling example end to end, offline, exit code 0."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import narrative_pandas as npd
from narrative_pandas.__main__ import main
from narrative_pandas._cli_demo import DemoOptions, format_head, format_report, run_demo
from narrative_pandas._demo import REVIEW_PROMPT, review_responder
from narrative_pandas.data import load_reviews

FAST = ["--latency", "0.02", "--queue-latency", "0", "--failure-rate", "0.1"]
"""Quick sandbox settings; with seed 0, 10% fails a few of the first 40 rows."""


def clean_env() -> dict[str, str]:
    """Our environment without Narrative settings, as on a fresh install."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}
    env["PYTHONWARNINGS"] = "error::UserWarning"  # the failed-rows warning must be handled
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def expected_labels(df: pd.DataFrame) -> list[str]:
    """What the rule-based responder says for each row's rendered prompt."""
    labels = []
    for product, review in zip(df["product"], df["review"], strict=True):
        text = REVIEW_PROMPT.format(product=product, review="" if pd.isna(review) else review)
        answer = review_responder({"messages": [{"role": "user", "text": text}]})
        labels.append(answer["sentiment"])
    return labels


@pytest.fixture(scope="module")
def demo_process(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """One run of the command in a subprocess, from an unrelated working directory."""
    return subprocess.run(
        [sys.executable, "-m", "narrative_pandas", "demo", "--rows", "40", *FAST],
        cwd=tmp_path_factory.mktemp("anywhere"),
        env=clean_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


class TestDemoSubprocess:
    """The command as a user runs it: a subprocess with no key and no network settings."""

    def test_exit_code_zero(self, demo_process: subprocess.CompletedProcess[str]) -> None:
        """It succeeds, without a traceback or warning on stderr."""
        assert demo_process.returncode == 0, demo_process.stderr
        assert "Traceback" not in demo_process.stderr
        assert "Warning" not in demo_process.stderr

    def test_prints_the_result_head(self, demo_process: subprocess.CompletedProcess[str]) -> None:
        """The head of the result has the review snippet and its labels."""
        out = demo_process.stdout
        assert "Result: first 8 of 40 rows" in out
        header = next(line for line in out.splitlines() if "narrative_error" in line)
        assert header.split() == ["review", "sentiment", "score", "topics", "narrative_error"]
        first = next(line for line in out.splitlines() if line.startswith("0  "))
        assert "The sound is muddy" in first
        assert "negative" in first
        assert "quality" in first

    def test_prints_the_run_report(self, demo_process: subprocess.CompletedProcess[str]) -> None:
        """The run report lists rows, jobs, tokens and HTTP requests."""
        out = demo_process.stdout
        assert 'Run report: out.attrs["narrative"]' in out
        assert re.search(r"^\s+rows\s+40$", out, re.MULTILINE)
        assert re.search(r"^\s+jobs_submitted\s+40$", out, re.MULTILINE)
        assert re.search(r"^\s+total_tokens\s+[1-9]\d*$", out, re.MULTILINE)
        assert re.search(r"^\s+http_requests\s+total=\d+ post=40 ", out, re.MULTILINE)

    def test_prints_label_counts_and_failures(
        self, demo_process: subprocess.CompletedProcess[str]
    ) -> None:
        """Label counts, the failed rows with the hint to re-run them, and the re-run's outcome."""
        out = demo_process.stdout
        match = re.search(r"labelled\s+(\d+) of 40 rows \((\d+) failed\)", out)
        assert match is not None
        labelled, failed = int(match.group(1)), int(match.group(2))
        assert labelled + failed == 40 and failed > 0
        assert re.search(r"^\s+sentiment\s+\w+ \d+", out, re.MULTILINE)
        assert f"{failed} of 40 rows failed" in out
        assert "only_failed=" in out
        assert f"Now 40 of 40 rows are labelled ({failed} new jobs" in out

    def test_progress_on_stderr(self, demo_process: subprocess.CompletedProcess[str]) -> None:
        """The progress line goes to stderr and ends with the summary of each run."""
        err = demo_process.stderr
        assert re.search(r"narrative demo\s+40/40 done in \S+ · \d+ completed · \d+ failed", err)
        assert "narrative demo" not in demo_process.stdout

    def test_no_key_in_output(self, demo_process: subprocess.CompletedProcess[str]) -> None:
        """The sandbox's generated key is never printed."""
        assert "sk-sandbox" not in demo_process.stdout + demo_process.stderr


class TestDemoInProcess:
    """``main([...])`` and ``run_demo`` called directly (warnings are errors here)."""

    def test_main_returns_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        """main() runs the demo, prints the result and the report, and returns 0."""
        code = main(["demo", "--rows", "12", "--latency", "0.01", "--queue-latency", "0"])
        captured = capsys.readouterr()
        assert code == 0
        assert "Result: first 8 of 12 rows" in captured.out
        assert re.search(r"^\s+rows\s+12$", captured.out, re.MULTILINE)
        assert "Demo finished in" in captured.out
        assert "12/12 done" in captured.err

    def test_failed_rows_do_not_raise(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With many failures and no re-run, the warning becomes a friendly hint, not an error."""
        code = main(["demo", "--rows", "20", *FAST[:4], "--failure-rate", "0.5", "--no-retry"])
        out = capsys.readouterr().out
        assert code == 0
        match = re.search(r"(\d+) of 20 rows failed", out)
        assert match is not None and int(match.group(1)) > 0
        assert "only_failed=" in out
        assert "Re-running" not in out

    def test_result_labels_are_the_responders(self) -> None:
        """The returned frame has every row labelled, exactly as the rule-based responder says."""
        stdout, stderr = io.StringIO(), io.StringIO()
        options = DemoOptions(rows=30, latency=0.01, queue_latency=0, failure_rate=0.2)
        out = run_demo(options, stdout=stdout, stderr=stderr)
        df = load_reviews().head(30)
        assert len(out) == 30
        assert list(out.columns[: len(df.columns)]) == list(df.columns)
        assert out["narrative_error"].isna().all()  # failed rows were re-run
        assert out["sentiment"].astype(str).tolist() == expected_labels(df)
        assert out["score"].between(-1, 1).all()
        assert "30/30 done" in stderr.getvalue()
        assert "Now 30 of 30 rows are labelled" in stdout.getvalue()

    def test_no_progress_option(self) -> None:
        """--no-progress keeps stderr empty."""
        stdout, stderr = io.StringIO(), io.StringIO()
        options = DemoOptions(rows=5, latency=0.01, queue_latency=0, progress=False)
        run_demo(options, stdout=stdout, stderr=stderr)
        assert stderr.getvalue() == ""
        assert "Every row was labelled." in stdout.getvalue()


class TestCommandLine:
    """Argument handling of ``python -m narrative_pandas``."""

    def test_no_command_prints_usage(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a command: usage on stderr, exit code 2."""
        assert main([]) == 2
        assert "demo" in capsys.readouterr().err

    @pytest.mark.parametrize(
        "argv",
        [
            ["demo", "--rows", "0"],
            ["demo", "--failure-rate", "1.5"],
            ["demo", "--latency", "fast"],
            ["demo", "--latency", "2-1"],
            ["nope"],
        ],
    )
    def test_bad_arguments(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """Bad values are usage errors (exit code 2) that name the problem."""
        assert main(argv) == 2
        assert "error:" in capsys.readouterr().err

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the package version and exits 0."""
        assert main(["--version"]) == 0
        assert npd.__version__ in capsys.readouterr().out

    def test_demo_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """demo --help lists the options and exits 0."""
        assert main(["demo", "--help"]) == 0
        out = capsys.readouterr().out
        for option in ("--rows", "--latency", "--failure-rate", "--seed"):
            assert option in out

    def test_console_script_target(self) -> None:
        """pyproject's narrative-pandas script points at this main()."""
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text("utf-8")
        assert 'narrative-pandas = "narrative_pandas.__main__:main"' in text


class TestFormatting:
    """The printed head and report."""

    def test_head_shows_failed_rows_and_empty_reviews(self) -> None:
        """A failed row shows its error and blank labels; an empty review says so."""
        frame = pd.DataFrame(
            {
                "review": pd.array(["Great kettle, " * 10, pd.NA], dtype="string"),
                "sentiment": pd.Categorical([pd.NA, "neutral"]),
                "score": pd.array([pd.NA, 0.0], dtype="Float64"),
                "topics": [None, []],
                "narrative_error": pd.array(["Model inference failed", pd.NA], dtype="string"),
            }
        )
        lines = format_head(frame).splitlines()
        assert lines[0].split() == ["review", "sentiment", "score", "topics", "narrative_error"]
        assert lines[1].startswith("0  Great kettle, Great kettle,")
        assert "…" in lines[1] and lines[1].endswith("Model inference failed")
        assert "(no review)" in lines[2] and "neutral" in lines[2] and "+0.00" in lines[2]

    def test_report_flattens_nested_dicts(self) -> None:
        """Nested dicts print on one line as key=value pairs."""
        text = format_report({"rows": 3, "http_requests": {"total": 5, "post": 3}})
        assert text.splitlines() == ["  rows           3", "  http_requests  total=5 post=3"]
