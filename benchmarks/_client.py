"""The benchmark's client process: runs scenarios read from stdin, one ``RESULT {json}`` each.

Run by ``benchmarks/run.py``: the full benchmark starts a fresh process per scenario, so CPU time
and peak memory belong to that scenario's client alone; ``--quick`` reuses one process for every
scenario (importing pandas and the library once), so its memory numbers are only indicative.
CPU is the process's user+system time (every thread: the caller and the library's background
loop) over the call; peak memory is the kernel's high-water mark (VmHWM, reset just before the
call), reported both absolute and above the RSS with the input frame already built.

    echo '{"mode": "ours", "rows": 100, ...}' | python benchmarks/_client.py
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
PROMPT = "Review #{id}: {review}\nWhat is the sentiment of this review?"
MODEL = "anthropic.claude-haiku-4.5"
_WORDS = ("great", "awful", "fine", "slow", "friendly", "broken", "cheap", "late", "tasty", "odd")


def review(i: int, salt: str = "") -> str:
    """A short unique review text for row ``i`` (about 60 characters)."""
    words = " ".join(_WORDS[(i * 7 + k * 3) % len(_WORDS)] for k in range(5))
    return f"The product was {words}; would I buy it again? Row {salt}{i}."


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _rss_kb() -> int:
    rss = _status_kb("VmRSS")
    if rss is not None:
        return rss
    import psutil  # type: ignore[import-untyped]

    return int(psutil.Process().memory_info().rss // 1024)


def _peak_kb(reset_ok: bool) -> int:
    peak = _status_kb("VmHWM") if reset_ok else None
    if peak is not None:
        return peak
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KB on Linux


class _GcTimer:
    """A ``gc.callbacks`` hook: how long the cyclic collector ran, and how often per generation.

    A collection holds the GIL for its whole length, so its wall time is CPU taken from the run.
    """

    def __init__(self) -> None:
        self.by_generation = [0, 0, 0]
        self.seconds_by_generation = [0.0, 0.0, 0.0]
        self._started = 0.0

    @property
    def seconds(self) -> float:
        return sum(self.seconds_by_generation)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds_by_generation[generation] += time.perf_counter() - self._started
            self.by_generation[generation] += 1


#: Seconds the library's first use spent importing (jsonschema, the HTTP stack...), paid once
#: per process before any measurement, like ``import pandas``.
_FIRST_USE_IMPORT_S = 0.0


def _import_first_use() -> float:
    """Import what the library loads on first use, so no scenario measures imports."""
    started = time.perf_counter()
    import narrative_pandas._api
    import narrative_pandas._client
    import narrative_pandas._sync  # noqa: F401

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401

    return time.perf_counter() - started


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario and measure it."""
    import pandas as pd

    import narrative_pandas as npd

    rows = int(spec["rows"])
    salt = str(spec.get("salt", ""))
    df = pd.DataFrame({"id": range(rows), "review": [review(i, salt) for i in range(rows)]})
    target = spec["target"]
    result: dict[str, Any] = {"rows": rows, "pid": os.getpid()}

    if spec["mode"] == "baseline":
        from _baseline import run_baseline

        bodies = [
            {
                "data_plane_id": target["data_plane_id"],
                "model": MODEL,
                "messages": [{"role": "user", "text": PROMPT.format(id=i, review=text)}],
                "inference_config": {"output_format_schema": SCHEMA},
            }
            for i, text in zip(df["id"], df["review"], strict=True)
        ]
        run: Callable[[], Any] = lambda: asyncio.run(  # noqa: E731
            run_baseline(target["base_url"], target["api_key"], bodies)
        )
    else:
        client = None
        if spec.get("transport") == "httpx":
            import httpx

            connections = int(spec.get("max_connections", 32))
            limits = httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections
            )
            client = npd.Client(
                api_key=target["api_key"],
                base_url=target["base_url"],
                data_plane_id=target["data_plane_id"],
                max_connections=connections,
                transport=httpx.AsyncHTTPTransport(limits=limits),
            )
        kwargs: dict[str, Any] = {
            "output": SCHEMA,
            "model": MODEL,
            "concurrency": int(spec["concurrency"]),
            "progress": False,
            "cache": spec.get("cache", True),
        }
        if spec.get("poll_interval") is not None:
            kwargs["poll_interval"] = float(spec["poll_interval"])
        if client is not None:
            kwargs["client"] = client
        else:
            kwargs.update(
                api_key=target["api_key"],
                base_url=target["base_url"],
                data_plane_id=target["data_plane_id"],
            )
        run = lambda: npd.infer(df, PROMPT, **kwargs)  # noqa: E731
        if spec.get("profile"):
            # cProfile sees one thread: run the engine on this thread's loop instead of the
            # library's background loop (an explicit client on a running loop does that).
            async def on_this_thread() -> Any:
                own = client or npd.Client(
                    api_key=target["api_key"],
                    base_url=target["base_url"],
                    data_plane_id=target["data_plane_id"],
                )
                try:
                    return await npd.ainfer(df, PROMPT, **{**kwargs, "client": own})
                finally:
                    await own.aclose()

            run = lambda: asyncio.run(on_this_thread())  # noqa: E731

    profile_path: str | None = spec.get("profile")
    profiler = None
    gc.collect()
    collections = _GcTimer()
    reset_ok = _reset_peak()
    rss_before = _rss_kb()
    cpu_before = _cpu()
    started = time.perf_counter()
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    gc.callbacks.append(collections)
    try:
        out = run()
    finally:
        gc.callbacks.remove(collections)
    if profiler is not None:
        profiler.disable()
    makespan = time.perf_counter() - started
    cpu = _cpu() - cpu_before
    peak = _peak_kb(reset_ok)
    if profiler is not None and profile_path:
        profiler.dump_stats(profile_path)

    if spec["mode"] == "baseline":
        outputs = out["outputs"]
        result["completed"] = sum(1 for o in outputs if o is not None)
        result["failed"] = rows - result["completed"]
        result["client_http"] = {
            "post": out["http"]["post"],
            "get_job": out["http"]["get_job"],
            "list_jobs": 0,
        }
    else:
        report = out.attrs["narrative"]
        errors = out["narrative_error"]
        result["completed"] = int(errors.isna().sum())
        result["failed"] = rows - result["completed"]
        result["first_error"] = None if errors.isna().all() else str(errors.dropna().iloc[0])
        result["client_http"] = report.get("http_requests")
        result["report"] = {k: v for k, v in report.items() if isinstance(v, (int, float, str))}
    result.update(
        makespan_s=makespan,
        cpu_s=cpu,
        rss_before_kb=rss_before,
        peak_rss_kb=peak,
        peak_reset=reset_ok,
        gc_s=collections.seconds,
        gc_collections=collections.by_generation,
        gc_s_by_generation=collections.seconds_by_generation,
        first_use_import_s=_FIRST_USE_IMPORT_S,
    )
    return result


def main() -> int:
    """Import once, then run every spec line from stdin until it closes."""
    import pandas  # noqa: F401  (imports are not part of any measurement)

    import narrative_pandas  # noqa: F401

    global _FIRST_USE_IMPORT_S
    _FIRST_USE_IMPORT_S = _import_first_use()
    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = run_one(json.loads(line))
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print("RESULT " + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
