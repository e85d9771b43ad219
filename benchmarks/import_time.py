"""How long ``import narrative_pandas`` takes on top of ``import pandas``, in fresh processes.

Each sample is a new interpreter that imports pandas, then narrative_pandas, timing each import
with ``time.perf_counter``; the figure is the median over the samples of the second one:
narrative_pandas's own cost once pandas is loaded (a notebook has pandas anyway). It also lists the
heavy modules a bare import must not load (the HTTP stack, jsonschema, ipywidgets, the sandbox's
server), and the first-use cost (``narrative_pandas._api``, which loads them) for comparison.

    python benchmarks/import_time.py            # 9 samples
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


def sample() -> dict[str, object]:
    """One fresh interpreter's timings."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(HEAVY=HEAVY)],
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
    sample()  # warm the OS file cache and the bytecode caches first
    samples = [sample() for _ in range(args.runs)]

    def median(key: str) -> float:
        return statistics.median(float(s[key]) for s in samples)  # type: ignore[arg-type]

    package = median("package")
    loaded = sorted({m for s in samples for m in s["loaded"]})  # type: ignore[attr-defined]
    print(f"python {sys.version.split()[0]}, {args.runs} fresh processes, medians:")
    print(f"  import pandas                          {median('pandas'):6.3f} s")
    print(f"  import narrative_pandas (after pandas) {package:6.3f} s   target <= {TARGET_S} s")
    print(f"  first use (narrative_pandas._api)      {median('first_use'):6.3f} s")
    print(f"  heavy modules loaded by the bare import: {', '.join(loaded) or 'none'}")
    return 0 if package <= TARGET_S and not loaded else 1


if __name__ == "__main__":
    raise SystemExit(main())
