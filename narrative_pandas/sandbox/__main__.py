"""``python -m narrative_pandas.sandbox``: serve the sandbox until Ctrl-C or SIGTERM.

Prints the base URL, key and data plane id, and the ``export`` lines to point the library (or
any other client) at it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ._knobs import parse_latency
from ._server import Sandbox

__all__ = ["main"]


def _seconds_or_none(text: str) -> float | None:
    """``"none"`` (no updates) or a number of seconds."""
    return None if text.strip().lower() == "none" else float(text)


def _orders(text: str) -> tuple[str, ...]:
    """A comma-separated list of ``order_by`` values."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


_KNOB_OPTIONS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    # (knob, how to read the flag's value, help); the flag is --knob-with-dashes
    ("queue_latency", parse_latency, "seconds a job stays pending: fixed or a range (0.5-2)"),
    ("response_delay", parse_latency, "extra seconds before every answer"),
    ("failure_rate", float, "fraction of jobs that fail"),
    ("cancel_rate", float, "fraction of jobs that go pending_cancellation -> cancelled"),
    ("error_rate", float, "fraction of requests answered 5xx (nothing done)"),
    ("post_500_after_create_rate", float, "fraction of POSTs that create the job, answer 500"),
    (
        "post_garbage_after_create_rate",
        float,
        "fraction of POSTs that create the job and answer 200 with a body that is not JSON",
    ),
    ("rate_limit_rps", float, "requests per second per key (429 beyond)"),
    ("max_unfinished_jobs", int, "POSTs answer 429 while this many jobs are unfinished"),
    ("ttl", float, "seconds jobs live after ending"),
    ("executor_skew", float, "seconds some executors' clocks are behind (negative: ahead)"),
    ("executor_skew_fraction", float, "fraction of jobs on the skewed executors (0.5)"),
    ("replication_lag", float, "seconds a new job answers 404 and is missing from GET /jobs"),
    ("foreign_jobs", int, "other users' jobs of the company, updating in the default plane"),
    ("foreign_update_interval", _seconds_or_none, "seconds between their updates, or 'none'"),
    ("foreign_null_updated_at", int, "how many foreign jobs show updated_at: null"),
    (
        "listing_orders",
        _orders,
        "comma-separated order_by values GET /jobs accepts (e.g. created_at_desc,created_at_asc)",
    ),
    ("total_records_mode", str, "exact, page_end (every page looks last) or missing"),
    ("listing_drip", float, "bytes per second at which GET /jobs answers are sent"),
    ("seed", int, "seed of all random draws"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m narrative_pandas.sandbox",
        description="Serve a local emulator of the Narrative REST API (synthetic outputs).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    parser.add_argument(
        "--latency",
        type=parse_latency,
        default=None,
        help="seconds a job runs: fixed (1.0) or a range (0.5-2)",
    )
    for knob, read, text in _KNOB_OPTIONS:
        parser.add_argument(
            "--" + knob.replace("_", "-"), type=read, default=argparse.SUPPRESS, help=text
        )
    parser.add_argument(
        "--listing-ignores-order",
        action="store_true",
        default=argparse.SUPPRESS,
        help="GET /jobs serves created_at_desc whatever order_by says",
    )
    parser.add_argument("--api-key", default=None, help="the key to accept (default: generated)")
    return parser


def knobs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The sandbox knobs the command line set (flags left out keep the defaults)."""
    knobs: dict[str, Any] = {}
    if args.latency is not None:
        knobs["run_latency"] = args.latency
    for knob in [name for name, _, _ in _KNOB_OPTIONS] + ["listing_ignores_order"]:
        if hasattr(args, knob):  # only flags given are in the namespace (SUPPRESS)
            knobs[knob] = getattr(args, knob)
    return knobs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox in the foreground; returns 0 after Ctrl-C or SIGTERM."""
    args = _parser().parse_args(argv)
    knobs = knobs_from_args(args)
    try:
        sandbox = Sandbox(api_key=args.api_key, host=args.host, port=args.port, **knobs)
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sandbox.start()
        except OSError as exc:
            print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(
            f"Narrative sandbox serving at {sandbox.base_url} (outputs are synthetic)\n"
            f"  base URL:      {sandbox.base_url}\n"
            f"  API key:       {sandbox.api_key}\n"
            f"  data plane id: {sandbox.data_plane_id}\n"
            "To point narrative_pandas (or curl) at it:\n"
            f"export NARRATIVE_BASE_URL={sandbox.base_url}\n"
            f"export NARRATIVE_API_KEY={sandbox.api_key}\n"
            f"export NARRATIVE_DATA_PLANE_ID={sandbox.data_plane_id}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
        sandbox.stop()
        print("Sandbox stopped.", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
