"""The disk cache at scale: run records stored once, a file that does not grow, locks that never
freeze the event loop, and attach() rebuilding frames of every common dtype."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, wait_until
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas import _sync
from narrative_pandas._cache import CachedResult, SQLiteCache
from narrative_pandas._frame_codec import UnsupportedFrame, decode_frame, encode_frame
from narrative_pandas.sandbox import Sandbox


class Label(BaseModel):
    label: str
    score: float


PROMPT = "Text: {text}"


def frame(n: int, width: int = 20) -> pd.DataFrame:
    noise = [hashlib.sha256(str(i).encode()).hexdigest() * (width // 64 + 1) for i in range(n)]
    return pd.DataFrame(
        {"text": [f"row {i} {noise[i][:width]}" for i in range(n)], "n": np.arange(n)},
        index=pd.Index([f"id{i}" for i in range(n)], name="id"),
    )


def every_dtype() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": ["a", None, "ç"],
            "int": [1, 2, 3],
            "float": [1.5, np.nan, -0.0],
            "flag": [True, False, True],
            "Int64": pd.array([1, None, 3], dtype="Int64"),
            "Float64": pd.array([1.0, None, np.nan], dtype="Float64"),
            "boolean": pd.array([True, None, False], dtype="boolean"),
            "string": pd.array(["x", None, "z"], dtype="string"),
            "mixed": pd.Series(["x", 1, None], dtype=object),
            "odd": pd.Series([pd.NA, float("inf"), 2.5], dtype=object),
            "when": pd.date_range("2020-01-01", periods=3),
            "when_tz": pd.date_range("2020-01-01", periods=3, tz="Europe/Paris"),
            "wait": pd.to_timedelta([1, 2, None], unit="s"),
            "cat": pd.Categorical(["a", "b", "a"]),
            "level": pd.Categorical(["lo", "hi", "lo"], categories=["lo", "hi"], ordered=True),
            7: [7, 8, 9],
        },
        index=pd.Index(["r1", "r2", "r3"], name="id"),
    )


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        found: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return found


class LockHolder:
    """Another process holding the cache file's write lock until released."""

    def __init__(self, path: Path) -> None:
        code = textwrap.dedent(
            f"""
            import sqlite3, sys
            conn = sqlite3.connect({str(path)!r}, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            print("LOCKED", flush=True)
            sys.stdin.readline()
            conn.execute("COMMIT")
            print("FREE", flush=True)
            """
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "LOCKED"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "FREE"
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.wait(timeout=30)


class Ticker:
    """A coroutine on the library's background loop that counts its turns."""

    def __init__(self) -> None:
        self.ticks = 0
        self.stop = False
        self.future = _sync.submit(self._run())

    async def _run(self) -> None:
        while not self.stop:
            self.ticks += 1
            await asyncio.sleep(0.005)

    def close(self) -> None:
        self.stop = True
        self.future.result(timeout=10)


@pytest.fixture
def ticker() -> Iterator[Ticker]:
    ticking = Ticker()
    yield ticking
    ticking.close()


class TestFrameCodec:
    def test_every_common_dtype_round_trips_exactly(self) -> None:
        """Strings, numbers, nullable, datetimes (tz too), timedeltas, categoricals and a
        non-string column label come back with the same values, dtypes and index."""
        df = every_dtype()
        out = decode_frame(encode_frame(df))
        pd.testing.assert_frame_equal(out, df, check_exact=True)
        assert out["wait"].dtype.kind == "m"

    def test_multiindex_and_range_index_round_trip(self) -> None:
        """A MultiIndex (levels of any stored dtype) and a RangeIndex are rebuilt."""
        df = every_dtype().reset_index().set_index(["id", "int"])
        pd.testing.assert_frame_equal(decode_frame(encode_frame(df)), df, check_exact=True)
        plain = pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(5, 9, 2, name="r"))
        pd.testing.assert_frame_equal(decode_frame(encode_frame(plain)), plain)

    @pytest.mark.parametrize(
        ("column", "words"),
        [
            (pd.Series([{"a": 1}, {"b": 2}]), "holds a dict"),
            (pd.Series(pd.period_range("2020", periods=2)), "dtype period"),
        ],
    )
    def test_what_it_cannot_store_is_named(self, column: pd.Series, words: str) -> None:
        """A column it cannot store raises UnsupportedFrame naming the column and why."""
        with pytest.raises(UnsupportedFrame, match=rf"column 'bad' .*{words}"):
            encode_frame(pd.DataFrame({"ok": [1, 2], "bad": column}))


class TestRunRecordStorage:
    def test_blobs_are_stored_once_and_pruned_with_their_last_run(self, tmp_path: Path) -> None:
        """Two runs sharing a blob store it once; pruning the older keeps it, pruning both drops
        it; results are untouched."""
        path = tmp_path / "c.sqlite"
        now = [1000.0]
        cache = SQLiteCache(path, now=lambda: now[0])
        cache.put(CachedResult("k", {"label": "a", "score": 1.0}, None, "job-1"))
        cache.save_run("r1", {"rows": 1, "created_at": 1000.0}, blobs={"b": b"x" * 1000})
        cache.flush()
        assert cache.stored_blobs(["b", "nope"]) == {"b"}
        cache.save_run("r2", {"rows": 1, "created_at": 2000.0}, blobs={"b": None, "c": b"y"})
        cache.flush()
        assert count(path, "blobs") == 2
        now[0] = 2500.0
        assert cache.prune_runs(older_than=1000) == ["r1"]
        assert cache.load_blob("b") == b"x" * 1000
        assert [r["id"] for r in cache.list_runs()] == ["r2"]
        assert cache.prune_runs(keep_last=0) == ["r2"]
        assert count(path, "blobs") == 0
        assert count(path, "run_blobs") == 0
        assert set(cache.get_many(["k"])) == {"k"}
        cache.close()

    def test_prune_needs_a_rule(self, tmp_path: Path) -> None:
        """prune_runs() without older_than= or keep_last= refuses to guess."""
        with pytest.raises(ValueError, match=r"older_than= .*keep_last="):
            SQLiteCache(tmp_path / "c.sqlite").prune_runs()

    def test_update_run_patches_in_place(self, tmp_path: Path) -> None:
        """update_run merges fields into the stored record without rewriting the others."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        cache.save_run("r", {"rows": 3, "options": {"a": 1}})
        cache.update_run("r", status="done", jobs_submitted=3)
        record = cache.load_run("r")
        assert record is not None
        assert (record["status"], record["jobs_submitted"], record["options"]) == (
            "done",
            3,
            {"a": 1},
        )
        assert cache.list_runs()[0]["status"] == "done"
        with pytest.raises(KeyError):
            cache.update_run("nope", status="done")
        cache.close()

    def test_a_schema_1_file_is_upgraded_in_place(self, tmp_path: Path) -> None:
        """A file written by the previous layout keeps its results and runs, and gains blobs."""
        path = tmp_path / "old.sqlite"
        with sqlite3.connect(path) as conn:
            conn.executescript(
                """
                CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
                INSERT INTO meta VALUES ('schema_version', '1');
                CREATE TABLE runs (run_id TEXT PRIMARY KEY, record TEXT NOT NULL,
                    status TEXT NOT NULL, rows INTEGER, created_at REAL NOT NULL,
                    updated_at REAL NOT NULL);
                INSERT INTO runs VALUES ('old', '{"rows": 2}', 'done', 2, 1.0, 1.0);
                """
            )
        cache = SQLiteCache(path)
        assert cache.load_run("old") == {"rows": 2}
        cache.save_run("new", {"rows": 1}, blobs={"b": b"1"})
        assert cache.load_blob("b") == b"1"
        cache.close()
        assert count(path, "meta") == 1


class TestIdenticalReruns:
    def test_the_file_does_not_grow_and_nothing_is_sent(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """Three identical re-runs add three small records and no blob: the file stays within
        four pages of its size after the first run (its blobs are over ten times that)."""
        sandbox.configure(queue_latency=0.0, run_latency=0.0)
        path = tmp_path / "runs.sqlite"
        df = frame(1500, width=200)
        options = dict(output=Label, cache=str(path), progress=False, **target)
        first = npd.infer(df, PROMPT, **options)
        assert first["narrative_error"].isna().all()
        created = sandbox.stats.jobs_created
        after_first = file_bytes(path)
        for _ in range(3):
            again = npd.infer(df, PROMPT, **options)
            assert again.attrs["narrative"]["cached_rows"] == 1500
        assert sandbox.stats.jobs_created == created == 1500
        assert count(path, "runs") == 4
        assert count(path, "blobs") == 2  # one frame, one plan, shared by the four runs
        with sqlite3.connect(path) as conn:
            stored = conn.execute("SELECT SUM(LENGTH(data)) FROM blobs").fetchone()[0]
        assert stored >= 10 * 16_384  # another copy per re-run would be plain to see
        assert file_bytes(path) - after_first <= 16_384


class TestAttachRebuildsTheFrame:
    def test_timedelta_and_friends_come_back(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """A run whose frame has timedelta, tz-aware, categorical and nullable columns is
        finished by attach() without df=, on the same index and dtypes."""
        path = tmp_path / "runs.sqlite"
        df = every_dtype().assign(text=["one", "two", "three"])
        run = npd.start(df, PROMPT, output=Label, cache=str(path), progress=False, **target)
        run.result()
        out = npd.attach(run.id, cache=str(path), api_key=target["api_key"], progress=False)
        result = out.result()
        pd.testing.assert_frame_equal(result[df.columns], df, check_exact=True)
        assert result["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 3

    def test_a_frame_it_cannot_store_asks_for_df(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """attach() on a run whose frame held dicts says which column and to pass df=; with
        df= it finishes the run without sending anything again."""
        path = tmp_path / "runs.sqlite"
        df = pd.DataFrame({"text": ["a", "b"], "meta": [{"k": 1}, {"k": 2}]})
        run = npd.start(df, PROMPT, output=Label, cache=str(path), progress=False, **target)
        run.result()
        with pytest.raises(npd.ConfigurationError, match=r"column 'meta'.*pass df="):
            npd.attach(run.id, cache=str(path), api_key=target["api_key"], progress=False)
        out = npd.attach(
            run.id, cache=str(path), df=df, api_key=target["api_key"], progress=False
        ).result()
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 2


class TestLockedFile:
    def test_a_lock_before_start_keeps_the_loop_ticking_and_names_the_file(
        self,
        sandbox: Sandbox,
        target: dict[str, str],
        tmp_path: Path,
        ticker: Ticker,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """While another process holds the file, the library's loop keeps running (ticks
        counted), a warning names the file, nothing is sent; once free the run finishes."""
        path = tmp_path / "runs.sqlite"
        existing = SQLiteCache(path)  # the file exists, as when another notebook has it open
        assert len(existing) == 0
        existing.close()
        holder = LockHolder(path)
        try:
            with caplog.at_level(logging.WARNING, logger="narrative_pandas"):
                run = npd.start(
                    frame(20), PROMPT, output=Label, cache=str(path), progress=False, **target
                )
                wait_until(lambda: "locked by another process" in caplog.text, what="notice")
                before = ticker.ticks
                wait_until(lambda: ticker.ticks >= before + 20, what="20 ticks while locked")
                assert sandbox.stats.jobs_created == 0
                assert not run.done()
        finally:
            holder.release()
        out = run.result()
        assert out["narrative_error"].isna().all()
        assert str(path) in caplog.text
        assert sandbox.stats.jobs_created == 20

    def test_a_lock_mid_run_never_crashes_the_run(
        self,
        sandbox: Sandbox,
        target: dict[str, str],
        tmp_path: Path,
        ticker: Ticker,
    ) -> None:
        """A lock taken while jobs are in flight delays submissions but raises nothing: the
        loop keeps ticking, every row ends correct, and no job is paid twice."""
        sandbox.configure(queue_latency=0.05, run_latency=0.5)
        path = tmp_path / "runs.sqlite"
        cache = SQLiteCache(path, timeout=120)
        run = npd.start(
            frame(60), PROMPT, output=Label, cache=cache, progress=False, concurrency=3, **target
        )
        wait_until(lambda: sandbox.stats.jobs_created >= 5, what="5 submissions")
        holder = LockHolder(path)
        try:
            before = ticker.ticks
            wait_until(lambda: ticker.ticks >= before + 40, what="40 ticks while locked")
            assert sandbox.stats.jobs_created < 60
        finally:
            holder.release()
        out = run.result()
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 60
        assert sandbox.stats.duplicate_submissions == 0
        cache.close()

    def test_a_lock_longer_than_the_timeout_is_a_clear_error(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """With a 1 s cache timeout and a lock held longer, the run raises CacheLockedError
        naming the file and saying another process holds it; nothing was sent."""
        path = tmp_path / "runs.sqlite"
        cache = SQLiteCache(path, timeout=1.0)
        len(cache)
        holder = LockHolder(path)
        try:
            run = npd.start(frame(5), PROMPT, output=Label, cache=cache, progress=False, **target)
            with pytest.raises(npd.CacheLockedError, match="locked by another process") as info:
                run.result()
        finally:
            holder.release()
        assert str(path) in str(info.value)
        assert info.value.path == str(path)
        assert sandbox.stats.jobs_created == 0
        assert "OperationalError" not in repr(info.value)
        cache.close()
