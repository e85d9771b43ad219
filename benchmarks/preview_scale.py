"""``df.narrative.preview`` of 100,000 distinct rows: wall time, CPU time and where it goes.

Builds 100,000 numbered reviews (each row its own request), then times ``preview`` in this
process: the median of ``--repeat`` calls (a full garbage collection before each, so a call does
not pay for the previous one's objects), and the stages inside it (template render, keys and
the request table, bodies). Target: under 1 s on a quiet machine; the load average is printed
(wall time on a loaded machine is inflated, CPU time much less so).

    .venv/bin/python benchmarks/preview_scale.py [--rows 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from _machine import describe as machine_speed

import narrative_pandas  # noqa: F401  (registers DataFrame.narrative)
from narrative_pandas._config import resolve_settings
from narrative_pandas._demo import ReviewLabel
from narrative_pandas._plan import build_plan, no_cyclic_gc
from narrative_pandas._template import MessageTemplates
from narrative_pandas.data import load_reviews

PROMPT = "Review #{n}: {review}\nLabel its sentiment and topics."
TARGET_S = 1.0


def make_frame(rows: int) -> pd.DataFrame:
    """``rows`` distinct rows: the bundled reviews repeated, each numbered."""
    reviews = load_reviews()["review"].tolist()
    return pd.DataFrame(
        {"n": range(rows), "review": [reviews[i % len(reviews)] for i in range(rows)]}
    )


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``call()`` over ``repeat`` runs."""
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(repeat):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        del result
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    df = make_frame(args.rows)
    df.head(3).narrative.preview(PROMPT, output=ReviewLabel)  # imports and schema set-up
    wall, cpu = timed(lambda: df.narrative.preview(PROMPT, output=ReviewLabel), args.repeat)
    view = df.narrative.preview(PROMPT, output=ReviewLabel)
    print(
        f"preview of {args.rows:,} rows: {wall:.3f} s wall, {cpu:.3f} s CPU "
        f"(median of {args.repeat}); {view['request_key'].nunique():,} requests; "
        f"target < {TARGET_S:.1f} s: {'met' if wall < TARGET_S else 'MISSED'}"
    )
    settings = resolve_settings(None, None, None)
    bound = MessageTemplates.build(PROMPT).bind(list(df.columns))

    def render() -> Any:
        with no_cyclic_gc():
            return bound.render_columns(df)

    def plan() -> Any:
        return build_plan(
            df, PROMPT, output=ReviewLabel, settings=settings, data_plane_placeholder="<d>"
        )

    built = plan()
    stages = {
        "template render (column-wise)": render,
        "render + keys + request table (build_plan)": plan,
        "bodies (RunPlan.row_bodies)": built.row_bodies,
    }
    for name, call in stages.items():
        stage_wall, stage_cpu = timed(call, args.repeat)
        print(f"  {name:<44} {stage_wall:.3f} s wall, {stage_cpu:.3f} s CPU")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(machine_speed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
