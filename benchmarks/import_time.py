"""How long ``import narrative_pandas`` and the first ``infer`` take, in fresh processes.

Each import sample is a new interpreter that imports pandas, then narrative_pandas, timing each
import with ``time.perf_counter``; the figure is the median over the samples of the second one:
narrative_pandas's own cost once pandas is loaded (a notebook has pandas anyway). It also lists the
heavy modules a bare import must not load (the HTTP stack, jsonschema, ipywidgets, the sandbox's
server), and the first-use cost (``narrative_pandas._api``, which loads them) for comparison.

Each first-infer sample is a new interpreter that runs ``infer`` on a 1-row frame against a
sandbox served by this script's process (as a real service would be: its imports are not the
client's), then on another 1-row frame; the difference is what the first call pays on top
(imports, pydantic's schema, the event loop). It also says whether the first call imported
``jsonschema`` (it should not: see ``narrative_pandas._quickmeta``) and what importing it would
have cost here.

    python benchmarks/import_time.py            # 9 samples of each
    python benchmarks/import_time.py --runs 21
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "aiohttp",
    "httpx",
    "jsonschema",
    "ipywidgets",
    "starlette",
    "uvicorn",
    "pydantic",
    "asyncio",
)
TARGET_S = 0.15

PROBE = """
import json, sys, time
t0 = time.perf_counter()
import pandas
t1 = time.perf_counter()
import narrative_pandas
t2 = time.perf_counter()
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
import narrative_pandas._api
t3 = time.perf_counter()
print(json.dumps({{"pandas": t1 - t0, "package": t2 - t1, "first_use": t3 - t2, "loaded": loaded}}))
"""

FIRST_INFER_PROBE = """
import json, sys, time
from typing import Literal
import pandas as pd
from pydantic import BaseModel
import narrative_pandas

class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float

def once(text):
    frame = pd.DataFrame({{"review": [text]}})
    start = time.perf_counter()
    out = frame.narrative.infer(
        "Review: {{review}}", output=Sentiment, model="anthropic.claude-haiku-4.5", progress=False
    )
    assert out["narrative_error"].isna().all(), out["narrative_error"].tolist()
    return time.perf_counter() - start

first = once("Great battery, fast shipping.")
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
second = once("Broke after a week.")
print(json.dumps({{"first": first, "second": second, "loaded_by_first": loaded}}))
"""

JSONSCHEMA_PROBE = """
import json, time
import pandas
t0 = time.perf_counter()
import jsonschema
print(json.dumps({"jsonschema": time.perf_counter() - t0}))
"""


def sample(code: str | None = None, env_extra: dict[str, str] | None = None) -> dict[str, object]:
    """One fresh interpreter's timings."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **(env_extra or {}),
    }
    out = subprocess.run(
        [sys.executable, "-c", code if code is not None else PROBE.format(HEAVY=HEAVY)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="fresh processes (default 9)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    sample()  # warm the OS file cache and the bytecode caches first
    samples = [sample() for _ in range(args.runs)]
    infers = first_infer_samples(args.runs)
    imports = [sample(JSONSCHEMA_PROBE) for _ in range(args.runs)]

    def median(key: str, rows: list[dict[str, object]] = samples) -> float:
        return statistics.median(float(s[key]) for s in rows)  # type: ignore[arg-type]

    package = median("package")
    loaded = sorted({m for s in samples for m in s["loaded"]})  # type: ignore[attr-defined]
    by_first = sorted({m for s in infers for m in s["loaded_by_first"]})  # type: ignore[attr-defined]
    first, second = median("first", infers), median("second", infers)
    print(f"python {sys.version.split()[0]}, {args.runs} fresh processes, medians:")
    print(f"  import pandas                          {median('pandas'):6.3f} s")
    print(f"  import narrative_pandas (after pandas) {package:6.3f} s   target <= {TARGET_S} s")
    print(f"  first use (narrative_pandas._api)      {median('first_use'):6.3f} s")
    print(f"  heavy modules loaded by the bare import: {', '.join(loaded) or 'none'}")
    print(f"  first infer, 1 row (after the import)  {first:6.3f} s")
    print(f"  second infer, 1 row                    {second:6.3f} s")
    print(f"  first minus second                     {first - second:6.3f} s")
    print(f"  loaded by the first infer: {', '.join(by_first) or 'none'}")
    avoided = median("jsonschema", imports)
    print(f"  import jsonschema (after pandas; the first infer no longer pays it) {avoided:6.3f} s")
    print(f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0 if package <= TARGET_S and not loaded else 1


def first_infer_samples(runs: int) -> list[dict[str, object]]:
    """Fresh client processes against one sandbox in this process (no latency of its own)."""
    from narrative_pandas.sandbox import Sandbox

    with Sandbox(queue_latency=0.0, run_latency=0.0) as server:
        env = {
            "NARRATIVE_API_KEY": server.api_key,
            "NARRATIVE_BASE_URL": server.base_url,
            "NARRATIVE_DATA_PLANE_ID": server.data_plane_id,
        }
        code = FIRST_INFER_PROBE.format(HEAVY=HEAVY)
        return [sample(code, env) for _ in range(runs)]


if __name__ == "__main__":
    raise SystemExit(main())
