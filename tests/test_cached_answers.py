"""A fully cached re-run: read column-wise, served without the engine, the same frame as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas import _run
from narrative_pandas._cache import CachedResult, MemoryCache, SQLiteCache
from narrative_pandas._cached_answers import CachedAnswers, read_cached
from narrative_pandas._models import InferenceUsage
from narrative_pandas.sandbox import Sandbox


class Review(BaseModel):
    label: str
    score: float
    tags: list[str]


PROMPT = "Text: {text}"


def reviews() -> pd.DataFrame:
    """Rows with a duplicate (one shared request), a missing value and a string index."""
    return pd.DataFrame(
        {"text": ["good", "bad", "good", None, "fine", "odd"], "n": np.arange(6)},
        index=pd.Index(["a", "b", "c", "d", "e", "f"], name="id"),
    )


def options(target: dict[str, str], cache: Any) -> dict[str, Any]:
    return dict(output=Review, cache=cache, progress=False, missing="skip", **target)


def same_report(report: dict[str, Any]) -> dict[str, Any]:
    """A report without what differs from run to run (its id and duration)."""
    return {k: v for k, v in report.items() if k not in ("run_id", "elapsed_s")}


def result(job: int) -> CachedResult:
    usage = InferenceUsage(prompt_tokens=job, completion_tokens=2, total_tokens=job + 2)
    return CachedResult(f"k{job}", {"label": f"l{job}", "n": job}, usage, f"job-{job}")


class TestAllCachedRerun:
    def test_the_rerun_returns_the_first_runs_frame_without_a_request(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """Every column, dtype, status, job id and token count comes back as the first run
        had them, with no request sent and no engine started."""
        path = tmp_path / "c.sqlite"
        first = npd.infer(reviews(), PROMPT, **options(target, str(path)))
        assert sandbox.stats.jobs_created == 4
        before = sandbox.stats.requests
        run = npd.start(reviews(), PROMPT, **options(target, str(path)))
        again = run.result()
        assert sandbox.stats.requests == before
        assert run._engine is None
        pd.testing.assert_frame_equal(again, first)
        assert (
            list(again["narrative_status"]) == ["completed"] * 3 + ["skipped"] + ["completed"] * 2
        )
        report = again.attrs["narrative"]
        assert (report["cached_rows"], report["jobs_submitted"], report["failed_rows"]) == (5, 0, 1)
        assert report["http_requests"]["total"] == 0

    @pytest.mark.parametrize("where", ["file", "memory"])
    def test_frame_and_report_equal_the_engines(
        self,
        sandbox: Sandbox,
        target: dict[str, str],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        where: str,
    ) -> None:
        """The all-cached path and the engine serving the same hits give equal frames and equal
        reports (but for the run id and the duration)."""
        cache: Any = str(tmp_path / "c.sqlite") if where == "file" else MemoryCache()
        npd.infer(reviews(), PROMPT, **options(target, cache))
        fast = npd.infer(reviews(), PROMPT, **options(target, cache))
        monkeypatch.setattr(_run, "read_cached", lambda cache, keys: (None, None))
        slow = npd.infer(reviews(), PROMPT, **options(target, cache))
        assert sandbox.stats.jobs_created == 4
        pd.testing.assert_frame_equal(fast, slow, check_like=False)
        assert same_report(fast.attrs["narrative"]) == same_report(slow.attrs["narrative"])

    def test_status_and_partial_agree_with_the_result(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """run.status() and run.partial() of an all-cached run say what its result says."""
        path = str(tmp_path / "c.sqlite")
        opts = options(target, path) | {"missing": "empty"}
        first = npd.infer(reviews(), PROMPT, **opts)
        run = npd.start(reviews(), PROMPT, **opts)
        out = run.result()
        status = run.status()
        assert (status["total"], status["cached"], status["completed"]) == (6, 6, 0)
        assert status["status"] == "done"
        pd.testing.assert_frame_equal(run.partial(), out)
        pd.testing.assert_frame_equal(out, first)

    def test_partial_hits_are_read_once_and_only_the_rest_is_sent(
        self,
        sandbox: Sandbox,
        target: dict[str, str],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With some rows cached, the engine gets the hits already read (no second lookup)
        and submits exactly the missing requests."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        opts = options(target, cache) | {"missing": "empty"}
        df = reviews()
        npd.infer(df.iloc[:2], PROMPT, **opts)
        assert sandbox.stats.jobs_created == 2
        lookups: list[int] = []
        real = cache.get_many
        monkeypatch.setattr(cache, "get_many", lambda keys: lookups.append(1) or real(keys))
        out = npd.infer(df, PROMPT, **opts)
        assert sandbox.stats.jobs_created == 2 + 3  # "good" twice is one request; "" is new
        assert sandbox.stats.duplicates == 0
        assert lookups == []
        report = out.attrs["narrative"]
        assert (report["cached_rows"], report["jobs_submitted"]) == (3, 3)
        assert out["narrative_status"].eq("completed").all()


class TestCachedAnswers:
    def test_rows_decode_column_wise(self) -> None:
        """Outputs, job ids and token counts come back per key; no usage gives no counts."""
        cache = MemoryCache()
        cache.put_many([result(1), result(2), CachedResult("k3", {"label": "x"}, None, None)])
        answers, hits = read_cached(cache, ["k3", "k1", "k2"])
        assert hits == {}
        assert answers is not None
        rows = answers.by_row(["k1", None, "k3", "k1"])
        assert rows.outputs == [
            {"label": "l1", "n": 1},
            None,
            {"label": "x"},
            {"label": "l1", "n": 1},
        ]
        assert rows.job_ids == ["job-1", None, None, "job-1"]
        assert rows.prompt_tokens == [1, None, None, 1]
        assert rows.total_tokens == [3, None, None, 3]

    def test_a_miss_hands_the_hits_over_decoded(self) -> None:
        """One key without a result: no answers, the others as CachedResult for the engine."""
        cache = MemoryCache()
        cache.put_many([result(1), result(2)])
        answers, hits = read_cached(cache, ["k1", "k2", "k9"])
        assert answers is None
        assert hits["k1"] == cache.get_many(["k1"])["k1"]
        assert sorted(hits) == ["k1", "k2"]

    def test_a_stored_value_that_is_not_an_object_is_refused(self) -> None:
        """Rows the column-wise decoder cannot trust raise ValueError (the caller decodes them
        one by one instead)."""
        row = ("k", json.dumps([1, 2]), None, None, None, 0.0)
        with pytest.raises(ValueError, match="not a JSON object"):
            CachedAnswers.from_rows([row])

    @pytest.mark.parametrize("wanted", [3, 40])
    def test_sqlite_scan_and_lookup_read_the_same_rows(self, tmp_path: Path, wanted: int) -> None:
        """A few keys of a large table are looked up, most keys are read in one scan: both
        give exactly the stored rows of the keys asked for."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        cache.put_many([result(i) for i in range(50)])
        keys = [f"k{i}" for i in range(0, 2 * wanted, 2)] + ["missing"]
        rows = cache.result_rows(keys)
        expected = {k for k in keys if k != "missing" and int(k[1:]) < 50}
        assert {row[0] for row in rows} == expected
        assert all(json.loads(row[1])["label"] == "l" + row[0][1:] for row in rows)
        cache.close()

    def test_the_file_checkpoints_when_a_run_ends(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """After a run the write-ahead log is folded into the file (its size is what it holds)."""
        path = tmp_path / "c.sqlite"
        npd.infer(reviews(), PROMPT, **options(target, str(path)) | {"missing": "empty"})
        wal = Path(f"{path}-wal")
        assert not wal.exists() or wal.stat().st_size == 0
