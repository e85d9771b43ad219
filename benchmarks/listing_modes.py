"""Requests per row when the listing is read by update or by creation (issue 13's comparison).

Forces the engine's sweeper into one mode from its first poll and runs one workload against an
in-process-served sandbox (``Sandbox().start()``), printing the sandbox's request counts::

    .venv/bin/python benchmarks/listing_modes.py updated --rows 300 --concurrency 32 --latency 1
    .venv/bin/python benchmarks/listing_modes.py created --rows 300 --concurrency 32 --latency 1 \
        --knob executor_skew=2
"""

from __future__ import annotations

import argparse
import ast
import time
from typing import Any

import pandas as pd
from pydantic import BaseModel

from narrative_pandas import _sweep
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):
    label: str
    score: float


def force_mode(mode: str) -> None:
    """Make every new sweeper start (and, unless the listing forces it, stay) in ``mode``."""
    original = _sweep.ListingSweeper.__init__

    def init(self: _sweep.ListingSweeper, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.mode = mode  # type: ignore[assignment]

    _sweep.ListingSweeper.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["updated", "created"])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", default="1", help="seconds, or low,high")
    parser.add_argument("--knob", action="append", default=[], help="sandbox knob=value")
    args = parser.parse_args()
    latency = ast.literal_eval(args.latency)
    knobs: dict[str, Any] = {"queue_latency": 0.0, "run_latency": latency, "seed": 1}
    for item in args.knob:
        name, _, value = item.partition("=")
        knobs[name] = ast.literal_eval(value)
    force_mode(args.mode)
    with Sandbox(**knobs) as sb:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(args.rows)]})
        started = time.monotonic()
        out = df.narrative.infer(
            "Text: {text}",
            output=Label,
            concurrency=args.concurrency,
            progress=False,
            cache=False,
            api_key=sb.api_key,
            base_url=sb.base_url,
            data_plane_id=sb.data_plane_id,
        )
        report = out.attrs["narrative"]
        rows = args.rows
        errors = int(out["narrative_error"].notna().sum())
        print(
            f"{args.mode}: {rows} rows, concurrency {args.concurrency}, knobs {knobs}: "
            f"{time.monotonic() - started:.1f} s, "
            f"GET/row {sb.stats.count(method='GET') / rows:.3f} "
            f"(listing {sb.stats.count(path='/jobs')}, per job "
            f"{sb.stats.count(path='/jobs/{job_id}')}), polls {report['polls']}, "
            f"final mode {report['listing_mode']}, errors {errors}, "
            f"duplicates {sb.stats.duplicates}"
        )


if __name__ == "__main__":
    main()
