"""The ``python -m narrative_pandas demo`` command: the labelling example, end to end, offline.

A fresh install has no API key and maybe no network, yet the first thing a user runs should show
the real thing: rows becoming jobs, jobs finishing (a few failing), typed columns coming back, and
the run report. So the demo starts the embedded sandbox on 127.0.0.1 with the plainly rule-based
``review_responder`` standing in for a model, labels the bundled reviews with ``ReviewLabel``,
shows progress on stderr and prints the result, the report and a label summary on stdout. This is
a command-line program, so it writes to its output streams; library modules never print.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, TextIO

import pandas as pd

from ._demo import REVIEW_PROMPT, REVIEW_SYSTEM, ReviewLabel, review_responder
from ._exceptions import RowsFailedWarning
from ._textprogress import TextSink
from .data import load_reviews
from .sandbox import Sandbox
from .sandbox._knobs import Latency, parse_latency

__all__ = ["DemoOptions", "add_demo_parser", "run_demo"]

HEAD_ROWS = 8
"""Rows of the result the demo prints."""
SNIPPET_CHARS = 48
"""Reviews and error messages are cut to this many characters in the printed head."""

DEMO_CODE = """\
import narrative_pandas as npd
from narrative_pandas.data import load_reviews
from narrative_pandas.data import REVIEW_PROMPT, REVIEW_SYSTEM, ReviewLabel

df = load_reviews()
out = df.narrative.infer(REVIEW_PROMPT, system=REVIEW_SYSTEM, output=ReviewLabel)
out[["review", "sentiment", "score", "topics", "narrative_error"]]
out.attrs["narrative"]                                  # the run report
fixed = df.narrative.infer(REVIEW_PROMPT, system=REVIEW_SYSTEM, output=ReviewLabel,
                           only_failed=out)              # re-run only the failed rows"""


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs: how many rows, and how slow and flaky the sandbox is."""

    rows: int | None = None
    """First ``rows`` reviews of the bundled data (``None``: all 300)."""
    latency: Latency = (0.2, 0.8)
    """Seconds each job runs (fixed, or a ``(low, high)`` range)."""
    queue_latency: Latency = 0.1
    """Seconds each job waits in the queue before it runs."""
    failure_rate: float = 0.03
    """Fraction of jobs that fail on purpose, so failures are part of the demo."""
    seed: int = 0
    """Seeds the sandbox's latencies and which jobs fail."""
    concurrency: int | None = None
    """Jobs unfinished at once (``None``: the library's default)."""
    retry: bool = True
    """Re-run only the failed rows at the end (with the sandbox's failures switched off)."""
    progress: bool = True
    """Show the progress line on stderr."""


def _snippet(value: Any, width: int = SNIPPET_CHARS) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return ""
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _latency_text(latency: Latency) -> str:
    if isinstance(latency, tuple):
        return f"{latency[0]:g}-{latency[1]:g} s"
    return f"{latency:g} s"


def _topics_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return ""


def format_head(out: pd.DataFrame, rows: int = HEAD_ROWS) -> str:
    """The first ``rows`` rows as a text table: review snippet, sentiment, score, topics, error."""
    head = out.head(rows)
    columns: dict[str, list[str]] = {
        "": [str(i) for i in head.index],
        "review": [_snippet(v) or "(no review)" for v in head["review"]],
        "sentiment": [_snippet(v, 9) for v in head["sentiment"]],
        "score": [("" if pd.isna(v) else f"{float(v):+.2f}") for v in head["score"]],
        "topics": [_topics_text(v) for v in head["topics"]],
        "narrative_error": [_snippet(v, 40) for v in head["narrative_error"]],
    }
    right = {"", "score"}
    widths = {name: max([len(name), *map(len, values)]) for name, values in columns.items()}

    def cell(name: str, text: str) -> str:
        return text.rjust(widths[name]) if name in right else text.ljust(widths[name])

    lines = ["  ".join(cell(name, name) for name in columns).rstrip()]
    for i in range(len(head)):
        lines.append("  ".join(cell(name, values[i]) for name, values in columns.items()).rstrip())
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """The run report as aligned ``key  value`` lines (nested dicts on one line)."""
    width = max((len(k) for k in report), default=0)
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"  {key:<{width}}  {value}")
    return "\n".join(lines)


def format_counts(out: pd.DataFrame) -> str:
    """Label counts: sentiment per value, and how often each topic is mentioned."""
    labelled = out[out["narrative_error"].isna()]
    sentiment = labelled["sentiment"].astype("object").value_counts()
    topics = labelled["topics"].explode().dropna().astype("object").value_counts()
    failed = int(out["narrative_error"].notna().sum())

    def join(counts: pd.Series[Any]) -> str:
        return " · ".join(f"{name} {count}" for name, count in counts.items()) or "(none)"

    lines = [f"  sentiment  {join(sentiment)}", f"  topics     {join(topics)}"]
    lines.append(f"  labelled   {len(labelled)} of {len(out)} rows ({failed} failed)")
    return "\n".join(lines)


def _infer_quietly(
    df: pd.DataFrame,
    options: DemoOptions,
    sandbox: Sandbox,
    *,
    rows: int,
    stderr: TextIO,
    **extra: Any,
) -> tuple[pd.DataFrame, str | None]:
    """Run ``infer`` on the sandbox; return the frame and the failed-rows warning, if any."""
    progress: TextSink | bool = (
        TextSink(rows, title="narrative demo", stream=stderr) if options.progress else False
    )
    kwargs: dict[str, Any] = {
        "system": REVIEW_SYSTEM,
        "output": ReviewLabel,
        "progress": progress,
        "api_key": sandbox.api_key,
        "base_url": sandbox.base_url,
        "data_plane_id": sandbox.data_plane_id,
        "cache": False,
    }
    if options.concurrency is not None:
        kwargs["concurrency"] = options.concurrency
    kwargs.update(extra)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RowsFailedWarning)
        out = df.narrative.infer(REVIEW_PROMPT, **kwargs)
    message = None
    for warning in caught:
        if issubclass(warning.category, RowsFailedWarning):
            message = str(warning.message)
        else:  # not ours to swallow
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return out, message


def run_demo(
    options: DemoOptions | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> pd.DataFrame:
    """Run the labelling demo on a fresh sandbox and print what happened; return the result.

    The returned frame is the final one (after re-running failed rows when ``options.retry``).
    Progress goes to ``stderr`` (the real ``sys.stderr`` unless given), the rest to ``stdout``.
    """
    options = options or DemoOptions()
    out_stream = stdout if stdout is not None else sys.stdout
    err_stream = stderr if stderr is not None else sys.stderr

    def say(text: str = "") -> None:
        out_stream.write(text + "\n")
        out_stream.flush()

    df = load_reviews()
    if options.rows is not None:
        df = df.head(options.rows)
    say(f"narrative-pandas demo: labelling {len(df)} product reviews on the local sandbox.")
    say(
        "No API key, nothing leaves this machine. A rule-based responder (keyword counting) "
        "stands in for the model;"
    )
    say(
        f"jobs queue {_latency_text(options.queue_latency)} and run "
        f"{_latency_text(options.latency)}, and "
        f"{options.failure_rate:.0%} of them fail on purpose."
    )
    say()
    sandbox = Sandbox(
        queue_latency=options.queue_latency,
        run_latency=options.latency,
        failure_rate=options.failure_rate,
        responder=review_responder,
        seed=options.seed,
    )
    with sandbox:
        out, failed_message = _infer_quietly(df, options, sandbox, rows=len(df), stderr=err_stream)
        say(f"Result: first {min(HEAD_ROWS, len(out))} of {len(out)} rows")
        say(format_head(out))
        say()
        say('Run report: out.attrs["narrative"]')
        say(format_report(out.attrs["narrative"]))
        say()
        say("Labels")
        say(format_counts(out))
        failed = out[out["narrative_error"].notna()]
        if failed_message is None or failed.empty:
            say()
            say("Every row was labelled.")
        else:
            say()
            say(
                f"{len(failed)} of {len(out)} rows failed (the sandbox fails "
                f"{options.failure_rate:.0%} of jobs on purpose); their narrative_error says why:"
            )
            for index, error in failed["narrative_error"].head(3).items():
                say(f"  row {index}: {_snippet(error, 80)}")
            say(
                "Re-run only those rows with df.narrative.infer(..., only_failed=out): "
                "rows that succeeded are kept, not sent again."
            )
            if options.retry:
                # The sandbox fails the same requests every time (by request hash and seed);
                # a real service's failures are mostly transient. Switch them off to show it.
                sandbox.configure(failure_rate=0.0)
                say()
                say(f"Re-running the {len(failed)} failed rows (sandbox failures switched off)…")
                out, still_failed = _infer_quietly(
                    df, options, sandbox, rows=len(failed), stderr=err_stream, only_failed=out
                )
                report = out.attrs["narrative"]
                labelled = int(out["narrative_error"].isna().sum())
                say(
                    f"Now {labelled} of {len(out)} rows are labelled "
                    f"({report['jobs_submitted']} new jobs; the other rows were kept)."
                )
                if still_failed is not None:
                    say(f"Still failing: {still_failed}")
    say()
    say("The code behind this demo (with a real key set in NARRATIVE_API_KEY and")
    say("NARRATIVE_DATA_PLANE_ID, the same code runs against the Narrative API):")
    say()
    for line in DEMO_CODE.splitlines():
        say("    " + line)
    return out


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


def _latency(text: str) -> Latency:
    try:
        return parse_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to an ``argparse`` subparsers object."""
    defaults = DemoOptions()
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="label the bundled product reviews on the local sandbox (no key, no network)",
        description=(
            "Run the labelling example end to end on the embedded sandbox: no API key, no "
            "network. A rule-based responder stands in for the model."
        ),
    )
    parser.add_argument(
        "--rows", type=_positive_int, default=None, help="label only the first N reviews (of 300)"
    )
    parser.add_argument(
        "--latency",
        type=_latency,
        default=defaults.latency,
        metavar="SECONDS",
        help="seconds each job runs: '0.5' or a range '0.2-0.8' (default: 0.2-0.8)",
    )
    parser.add_argument(
        "--queue-latency",
        type=_latency,
        default=defaults.queue_latency,
        metavar="SECONDS",
        help="seconds each job waits in the queue (default: %(default)s)",
    )
    parser.add_argument(
        "--failure-rate",
        type=_fraction,
        default=defaults.failure_rate,
        metavar="FRACTION",
        help="fraction of jobs that fail on purpose (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="sandbox seed (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, default=None, help="jobs unfinished at once"
    )
    parser.add_argument(
        "--no-retry", action="store_true", help="do not re-run the failed rows at the end"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show the progress line on stderr"
    )
    parser.set_defaults(handler=_handle)
    return parser


def _handle(args: argparse.Namespace) -> int:
    options = DemoOptions(
        rows=args.rows,
        latency=args.latency,
        queue_latency=args.queue_latency,
        failure_rate=args.failure_rate,
        seed=args.seed,
        concurrency=args.concurrency,
        retry=not args.no_retry,
        progress=not args.no_progress,
    )
    started = time.monotonic()
    run_demo(options)
    sys.stdout.write(f"\nDemo finished in {time.monotonic() - started:.1f} s.\n")
    return 0
