"""``python -m narrative_pandas.sandbox``: serve the sandbox until Ctrl-C or SIGTERM.

Prints the base URL, key and data plane id, and the ``export`` lines to point the library (or
any other client) at it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ._knobs import parse_latency
from ._server import Sandbox

__all__ = ["main"]


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
    parser.add_argument(
        "--queue-latency", type=parse_latency, default=None, help="seconds a job stays pending"
    )
    parser.add_argument("--failure-rate", type=float, default=None, help="fraction of jobs failing")
    parser.add_argument("--error-rate", type=float, default=None, help="fraction answered 5xx")
    parser.add_argument("--rate-limit-rps", type=float, default=None, help="requests/s per key")
    parser.add_argument("--ttl", type=float, default=None, help="seconds jobs live after ending")
    parser.add_argument("--seed", type=int, default=None, help="seed of all random draws")
    parser.add_argument("--api-key", default=None, help="the key to accept (default: generated)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox in the foreground; returns 0 after Ctrl-C or SIGTERM."""
    args = _parser().parse_args(argv)
    knobs: dict[str, Any] = {}
    for option, knob in (
        ("latency", "run_latency"),
        ("queue_latency", "queue_latency"),
        ("failure_rate", "failure_rate"),
        ("error_rate", "error_rate"),
        ("rate_limit_rps", "rate_limit_rps"),
        ("ttl", "ttl"),
        ("seed", "seed"),
    ):
        value = getattr(args, option)
        if value is not None:
            knobs[knob] = value
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
