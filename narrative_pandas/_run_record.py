"""What a disk cache keeps about a run so :func:`~narrative_pandas.attach` can finish it elsewhere.

A run's record is small JSON (its options, the output schema, where to send) plus two blobs it
refers to by content:

``frame-<sha256>``
    The input frame in the binary form of :mod:`._frame_codec` (columns as bytes, not JSON text
    of every cell). The id is the hash of those bytes, so a frame is stored once however many
    runs use it. A frame the codec cannot store (a column of dicts, periods...) is not stored;
    the record says why and ``attach`` asks for ``df=``.
``plan-<sha256>``
    The row keys, the skipped rows, and each unique request's messages (the parts every
    request shares are kept once). Its id is the hash of the row keys and the shared parts,
    which determine the rest (a key is the hash of its request), so an identical re-run finds it
    stored without building it again.

So an identical re-run adds one small record and nothing else; records are listed with
``cache.list_runs()`` and pruned with ``cache.prune_runs()`` (blobs go with their last run).
The run's progress is the results and journal tables themselves; the record only gets its final
status (and counts) through ``Cache.update_run``, which SQLite applies in place.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._exceptions import ConfigurationError
from ._frame_codec import UnsupportedFrame, decode_frame, encode_frame
from ._request_table import RequestTable
from ._request_table import request_commons as commons_of

if TYPE_CHECKING:
    from ._cache import Cache
    from ._config import Settings
    from ._fold import Folding
    from ._plan import RunPlan

__all__ = ["RUN_RECORD_VERSION", "load_plan", "record_run"]

RUN_RECORD_VERSION = 2
"""2: frame and plan as blobs. 1 (before): everything inline as JSON; still read by attach."""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def record_run(
    cache: Cache, run_id: str, plan: RunPlan, settings: Settings, *, folding: Folding | None = None
) -> None:
    """Store the record of a run starting now (never the API key; see the module docstring).

    A ``samples=k`` or ``compare`` run (``folding``) stores the caller's frame, not the run's
    blocks of rows, and how to fold them (``record["folding"]``), so ``attach`` returns the
    folded frame."""
    commons: list[dict[str, Any]] = []
    by_text: dict[str, int] = {}
    by_object: dict[int, int] = {}  # requests share one RequestCommon object: encode it once
    distinct, which = commons_of(plan.requests)  # no request object built for this
    for c in distinct:
        text = _dumps([c.data_plane_id, c.model, c.inference_config, list(c.tags)])
        index = by_object[id(c)] = by_text.setdefault(text, len(commons))
        if index == len(commons):
            commons.append(
                {
                    "data_plane_id": c.data_plane_id,
                    "model": c.model,
                    "inference_config": c.inference_config,
                    "tags": list(c.tags),
                }
            )
    index_of = [by_object[id(c)] for c in distinct]
    request_commons = (
        which if index_of == list(range(len(distinct))) else [index_of[i] for i in which]
    )
    keys_text = "\n".join(k or "" for k in plan.row_keys)
    skipped = {str(k): v for k, v in plan.skipped.items()}
    digest = hashlib.sha256(keys_text.encode())
    # With one shared part (the usual case) the keys decide the rest: a key hashes its request.
    shared_by = request_commons if len(commons) > 1 else []
    digest.update(_dumps([skipped, commons, shared_by]).encode())
    plan_id = f"plan-{digest.hexdigest()}"

    frame_id: str | None = None
    frame_problem: str | None = None
    try:
        frame_bytes = encode_frame(plan.df if folding is None else folding.df)
        frame_id = f"frame-{hashlib.sha256(frame_bytes).hexdigest()}"
    except UnsupportedFrame as exc:
        frame_problem = str(exc)

    stored = cache.stored_blobs([i for i in (plan_id, frame_id) if i is not None])
    blobs: dict[str, bytes | None] = {plan_id: None}
    if plan_id not in stored:
        blobs[plan_id] = _plan_blob(plan, keys_text, skipped, commons, request_commons)
    if frame_id is not None:
        blobs[frame_id] = None if frame_id in stored else frame_bytes

    record = {
        "version": RUN_RECORD_VERSION,
        "created_at": time.time(),
        "status": "running",
        "rows": len(plan.row_keys),
        "base_url": settings.base_url,
        "data_plane_id": plan.options.data_plane_id,
        "model": plan.model,
        "schema": plan.spec.schema,
        "prefix": plan.prefix,
        "flatten": plan.flatten,
        "errors": plan.errors,
        "options": {
            "concurrency": plan.options.concurrency,
            "poll_interval": plan.options.poll_interval,
            "timeout": plan.options.timeout,
            "max_total_tokens": plan.options.max_total_tokens,
        },
        "frame": frame_id,
        "frame_problem": frame_problem,
        "plan": plan_id,
    }
    if folding is not None:
        record["folding"] = folding.to_record()
    cache.save_run(run_id, record, blobs=blobs)


def _plan_blob(
    plan: RunPlan,
    keys_text: str,
    skipped: dict[str, str],
    commons: list[dict[str, Any]],
    request_commons: list[int],
) -> bytes:
    if isinstance(plan.requests, RequestTable):  # the usual plan: made column-wise
        requests = plan.requests.record_json()
    else:
        requests = _dumps(
            [
                [r.key, index, [list(m) for m in r.messages], r.prompt_tokens_estimate]
                for r, index in zip(plan.requests, request_commons, strict=True)
            ]
        )
    head = _dumps({"row_keys": keys_text, "skipped": skipped, "commons": commons})
    return f'{head[:-1]},"requests":{requests}}}'.encode()


def load_frame(cache: Cache, run_id: str, record: dict[str, Any]) -> pd.DataFrame:
    """The input frame of a recorded run, or a ConfigurationError that says to pass ``df=``."""
    if record.get("version", 1) < 2:
        text = record.get("frame")
        if text is None:
            raise ConfigurationError(
                f"run {run_id!r} did not record its input frame; pass df=<the same frame>."
            )
        try:
            import io

            return pd.read_json(io.StringIO(text), orient="table")
        except Exception as exc:
            raise ConfigurationError(
                f"run {run_id!r}'s input frame cannot be rebuilt from its record ({exc}); "
                "pass df=<the same frame>."
            ) from None
    frame_id = record.get("frame")
    if frame_id is None:
        problem = record.get("frame_problem") or "it was not recorded"
        raise ConfigurationError(
            f"run {run_id!r}'s input frame could not be stored in the cache ({problem}); "
            "pass df=<the same frame> to attach."
        )
    data = cache.load_blob(frame_id)
    if data is None:
        raise ConfigurationError(
            f"run {run_id!r}'s input frame is no longer in the cache; pass df=<the same frame>."
        )
    try:
        return decode_frame(data)
    except Exception as exc:
        raise ConfigurationError(
            f"run {run_id!r}'s input frame cannot be rebuilt here ({exc}); "
            "pass df=<the same frame> to attach."
        ) from None


def load_plan(cache: Cache, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """Row keys, skipped rows and request bodies of a recorded run, in the version-1 shape:
    ``row_keys``, ``skipped``, ``bodies`` (key -> body) and ``prompt_tokens_estimates``."""
    if record.get("version", 1) < 2:
        return record
    data = cache.load_blob(record["plan"])
    if data is None:
        raise ConfigurationError(
            f"run {run_id!r}'s requests are no longer in the cache (pruned?); "
            "start the run again instead (finished rows still come from the cache)."
        )
    stored = json.loads(data)
    commons = stored["commons"]
    bodies: dict[str, dict[str, Any]] = {}
    estimates: dict[str, int] = {}
    for key, index, messages, estimate in stored["requests"]:
        common = commons[index]
        bodies[key] = {
            "data_plane_id": common["data_plane_id"],
            "model": common["model"],
            "messages": [{"role": role, "text": text} for role, text in messages],
            "inference_config": common["inference_config"],
            "tags": common["tags"],
        }
        estimates[key] = estimate
    row_keys = [k or None for k in stored["row_keys"].split("\n")] if record["rows"] else []
    return {
        "row_keys": row_keys,
        "skipped": stored["skipped"],
        "bodies": bodies,
        "prompt_tokens_estimates": estimates,
    }


def row_counts(row_keys: list[str | None]) -> Counter[str]:
    """How many rows share each request key."""
    return Counter(k for k in row_keys if k is not None)
