"""Tests of the result cache and job journal: both backends, several threads, several processes."""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import os
import pickle
import queue
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from narrative_pandas import _cache_sqlite
from narrative_pandas._cache import (
    SCHEMA_VERSION,
    Cache,
    CachedResult,
    ClaimOwner,
    JournalEntry,
    MemoryCache,
    SQLiteCache,
    default_cache,
    resolve_cache,
)
from narrative_pandas._clock import FakeClock
from narrative_pandas._config import resolve_settings
from narrative_pandas._exceptions import ConfigurationError
from narrative_pandas._finished import FILE_BATCH_S, FinishedWrites
from narrative_pandas._models import InferenceUsage, request_fingerprint

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0
SECRET = "npd-test-SECRET-4f1c9a7e2b"


def key(i: int) -> str:
    """A realistic cache key: the fingerprint of a request body."""
    return request_fingerprint(
        {
            "data_plane_id": "dp",
            "model": "anthropic.claude-haiku-4.5",
            "messages": [{"role": "user", "text": f"row {i}"}],
            "inference_config": {"output_format_schema": {"type": "object"}},
        }
    )


def result(i: int, **overrides: Any) -> CachedResult:
    fields: dict[str, Any] = {
        "key": key(i),
        "output": {"label": "positive", "confidence": 0.5, "i": i, "tags": ["a", "é"]},
        "usage": InferenceUsage(prompt_tokens=10, completion_tokens=i, total_tokens=10 + i),
        "job_id": f"job-{i}",
        "model": "anthropic.claude-haiku-4.5",
    }
    fields.update(overrides)
    return CachedResult(**fields)


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout (fails the test on error)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture(params=["memory", "sqlite"])
def cache(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Cache]:
    made: Cache
    if request.param == "memory":
        made = MemoryCache(now=clock.now)
    else:
        made = SQLiteCache(tmp_path / "cache.sqlite", now=clock.now)
    yield made
    made.close()


class TestResults:
    def test_put_and_get_many_round_trip(self, cache: Cache) -> None:
        """A stored result comes back field for field, stamped with the time it was stored."""
        cache.put(result(1))
        got = cache.get_many([key(1)])
        assert list(got) == [key(1)]
        assert got[key(1)] == result(1, created_at=T0)
        assert got[key(1)].usage == InferenceUsage(
            prompt_tokens=10, completion_tokens=1, total_tokens=11
        )

    def test_missing_keys_are_absent(self, cache: Cache) -> None:
        """Only hits are returned; an empty request returns an empty dict."""
        cache.put_many([result(1), result(2)])
        assert set(cache.get_many([key(2), key(3), key(2)])) == {key(2)}
        assert cache.get_many([]) == {}

    def test_explicit_created_at_and_missing_usage_are_kept(self, cache: Cache) -> None:
        """created_at given by the caller and usage=None survive storage."""
        cache.put(result(1, usage=None, model=None, job_id=None, created_at=123.5))
        got = cache.get_many([key(1)])[key(1)]
        assert (got.usage, got.model, got.job_id, got.created_at) == (None, None, None, 123.5)

    def test_put_replaces(self, cache: Cache) -> None:
        """Storing a key again replaces its result without adding an entry."""
        cache.put(result(1))
        cache.put(result(1, output={"label": "negative"}))
        assert len(cache) == 1
        assert cache.get_many([key(1)])[key(1)].output == {"label": "negative"}

    def test_delete_clear_len(self, cache: Cache) -> None:
        """delete forgets the given keys, clear forgets all results, len counts them."""
        cache.put_many(result(i) for i in range(10))
        assert len(cache) == 10
        cache.delete([key(0), key(1), key(99)])
        assert len(cache) == 8
        assert key(0) not in cache.get_many([key(0), key(2)])
        cache.clear()
        assert len(cache) == 0
        assert cache.get_many([key(2)]) == {}

    def test_clear_keeps_journal_and_runs(self, cache: Cache) -> None:
        """Clearing results keeps the record of jobs already paid for."""
        cache.put(result(1))
        cache.journal_intent(key(2), "npd-2", "run-a")
        cache.save_run("run-a", {"rows": 1})
        cache.clear()
        assert len(cache.journal_entries()) == 1
        assert cache.load_run("run-a") == {"rows": 1}

    def test_returned_outputs_are_fresh_objects(self, cache: Cache) -> None:
        """Mutating a returned or a stored output never changes what the cache holds."""
        original = result(1)
        cache.put(original)
        original.output["label"] = "mutated-after-put"
        cache.get_many([key(1)])[key(1)].output["label"] = "mutated-after-get"
        assert cache.get_many([key(1)])[key(1)].output["label"] == "positive"

    def test_many_keys_in_one_call(self, cache: Cache) -> None:
        """1,000 results put at once are all found among 20,000 keys asked in one call."""
        cache.put_many([result(i) for i in range(1000)])
        got = cache.get_many([key(i) for i in range(20_000)])
        assert len(got) == 1000
        assert got[key(999)].output["i"] == 999

    def test_bad_values_are_refused(self, cache: Cache) -> None:
        """A non-dict output, a non-result or a bare string of keys raises TypeError."""
        with pytest.raises(TypeError, match="dict"):
            cache.put(result(1, output=["not", "a", "dict"]))
        with pytest.raises(TypeError, match="CachedResult"):
            cache.put_many([{"key": "k"}])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="single str"):
            cache.get_many(key(1))
        assert len(cache) == 0

    def test_persistent_flag(self, cache: Cache) -> None:
        """Only the disk cache says it outlives the process."""
        assert cache.persistent is isinstance(cache, SQLiteCache)


class TestJournal:
    def test_intent_job_remove_lifecycle(self, cache: Cache, clock: FakeClock) -> None:
        """An intent has no job id; the job id keeps the intent's time; remove forgets it."""
        cache.journal_intent(key(1), "npd-1", "run-a")
        assert cache.journal_get_many([key(1), key(2)]) == {
            key(1): JournalEntry(key(1), None, "npd-1", "run-a", T0)
        }
        clock.advance(5)
        cache.journal_job(key(1), "job-1", "npd-1", "run-a")
        assert cache.journal_get_many([key(1)])[key(1)] == JournalEntry(
            key(1), "job-1", "npd-1", "run-a", T0
        )
        cache.journal_remove([key(1), key(2)])
        assert cache.journal_get_many([key(1)]) == {}
        assert cache.journal_entries() == []

    def test_job_without_intent_is_stamped_now(self, cache: Cache, clock: FakeClock) -> None:
        """A job id recorded with no intent before it is timed when recorded."""
        clock.advance(7)
        cache.journal_job(key(1), "job-1", "npd-1", None)
        assert cache.journal_get_many([key(1)])[key(1)].submitted_at == T0 + 7

    def test_new_intent_replaces_old_job(self, cache: Cache, clock: FakeClock) -> None:
        """A resubmission's intent replaces the earlier job entry."""
        cache.journal_job(key(1), "job-old", "npd-1", "run-a")
        clock.advance(60)
        cache.journal_intent(key(1), "npd-1", "run-b")
        assert cache.journal_get_many([key(1)])[key(1)] == JournalEntry(
            key(1), None, "npd-1", "run-b", T0 + 60
        )

    def test_max_age_drops_stale_entries(self, cache: Cache, clock: FakeClock) -> None:
        """Entries older than max_age are left out of the answer but stay stored."""
        cache.journal_job(key(1), "job-1", "npd-1", "run-a")
        clock.advance(100)
        cache.journal_intent(key(2), "npd-2", "run-a")
        clock.advance(10)
        keys = [key(1), key(2)]
        assert set(cache.journal_get_many(keys)) == {key(1), key(2)}
        assert set(cache.journal_get_many(keys, max_age=50)) == {key(2)}
        assert set(cache.journal_get_many(keys, max_age=110)) == {key(1), key(2)}
        assert cache.journal_get_many(keys, max_age=5) == {}
        assert len(cache.journal_entries()) == 2

    def test_entries_by_run_oldest_first(self, cache: Cache, clock: FakeClock) -> None:
        """journal_entries lists all entries oldest first, or only one run's."""
        cache.journal_intent(key(3), "npd-3", "run-b")
        clock.advance(1)
        cache.journal_job(key(1), "job-1", "npd-1", "run-a")
        clock.advance(1)
        cache.journal_intent(key(2), "npd-2", "run-a")
        assert [e.key for e in cache.journal_entries()] == [key(3), key(1), key(2)]
        assert [e.key for e in cache.journal_entries("run-a")] == [key(1), key(2)]
        assert cache.journal_entries("run-z") == []

    def test_many_journal_keys(self, cache: Cache) -> None:
        """Journal lookups and removals work for more keys than one SQL chunk holds."""
        for i in range(1200):
            cache.journal_intent(key(i), f"npd-{i}", "run-a")
        assert len(cache.journal_get_many(key(i) for i in range(1200))) == 1200
        cache.journal_remove([key(i) for i in range(1100)])
        assert len(cache.journal_entries("run-a")) == 100


class TestRuns:
    def test_large_record_round_trip(self, cache: Cache, clock: FakeClock) -> None:
        """A 5,000-row record comes back equal and is listed with its row count."""
        rows = [{"review": f"text {i} ✓", "stars": i % 5, "missing": None} for i in range(5000)]
        record = {"arguments": {"model": "m", "temperature": 0}, "rows": rows}
        cache.save_run("run-a", record)
        assert cache.load_run("run-a") == record
        assert cache.list_runs() == [
            {"id": "run-a", "created_at": T0, "updated_at": T0, "status": "running", "rows": 5000}
        ]

    def test_update_merges_fields(self, cache: Cache, clock: FakeClock) -> None:
        """update_run merges fields into the record and the listing, keeping created_at."""
        cache.save_run("run-a", {"rows": 3, "template": "{a}"})
        clock.advance(30)
        cache.update_run("run-a", status="done", completed=3)
        assert cache.load_run("run-a") == {
            "rows": 3,
            "template": "{a}",
            "status": "done",
            "completed": 3,
        }
        assert cache.list_runs() == [
            {"id": "run-a", "created_at": T0, "updated_at": T0 + 30, "status": "done", "rows": 3}
        ]

    def test_update_unknown_run_raises(self, cache: Cache) -> None:
        """Updating a run that was never saved raises KeyError."""
        with pytest.raises(KeyError, match="run-x"):
            cache.update_run("run-x", status="done")

    def test_load_unknown_run_is_none(self, cache: Cache) -> None:
        """Loading an unknown run returns None."""
        assert cache.load_run("nope") is None

    def test_list_newest_first_and_resave_keeps_created_at(
        self, cache: Cache, clock: FakeClock
    ) -> None:
        """Runs are listed newest first; saving a run again keeps its creation time."""
        cache.save_run("run-a", {"rows": [1, 2]})
        clock.advance(10)
        cache.save_run("run-b", {"rows": 5, "status": "done"})
        clock.advance(10)
        cache.save_run("run-a", {"rows": [1, 2, 3], "status": "cancelled"})
        listing = cache.list_runs()
        assert [r["id"] for r in listing] == ["run-b", "run-a"]
        assert listing[1] == {
            "id": "run-a",
            "created_at": T0,
            "updated_at": T0 + 20,
            "status": "cancelled",
            "rows": 3,
        }

    def test_delete_run(self, cache: Cache) -> None:
        """delete_run forgets one run and ignores unknown ids."""
        cache.save_run("run-a", {"rows": 1})
        cache.delete_run("run-a")
        cache.delete_run("run-zz")
        assert cache.list_runs() == []

    def test_secret_fields_are_dropped(self, cache: Cache) -> None:
        """Fields named like an API key never reach the stored record, at any dict depth."""
        record = {
            "api_key": "x" * 20,
            "arguments": {"API_KEY": "y" * 20, "model": "m", "headers": {"Authorization": "z"}},
            "rows": [{"api_key": "a user column"}],
        }
        cache.save_run("run-a", record)
        cache.update_run("run-a", api_key="w" * 20)
        assert cache.load_run("run-a") == {
            "arguments": {"model": "m", "headers": {}},
            "rows": [{"api_key": "a user column"}],
        }

    def test_record_holding_the_key_is_refused(
        self, cache: Cache, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A record that contains the API key's value raises without echoing the key."""
        monkeypatch.setenv("NARRATIVE_API_KEY", SECRET)
        with pytest.raises(ConfigurationError) as info:
            cache.save_run("run-a", {"arguments": {"token": f"Bearer {SECRET}"}})
        assert SECRET not in str(info.value)
        assert cache.load_run("run-a") is None
        cache.save_run("run-a", {"rows": 1})
        with pytest.raises(ConfigurationError):
            cache.update_run("run-a", note=SECRET)
        assert cache.load_run("run-a") == {"rows": 1}

    def test_non_json_record_is_refused(self, cache: Cache) -> None:
        """A record that is not JSON-serialisable raises TypeError and stores nothing."""
        with pytest.raises(TypeError):
            cache.save_run("run-a", {"client": object()})
        assert cache.list_runs() == []


class TestThreads:
    def test_background_and_main_thread_alternately(self, cache: Cache) -> None:
        """Calls alternate between a worker thread and the main thread without errors."""
        tasks: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        answers: queue.Queue[Any] = queue.Queue()

        def worker() -> None:
            while (task := tasks.get()) is not None:
                try:
                    answers.put(task())
                except BaseException as exc:  # handed to the main thread
                    answers.put(exc)

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            for i in range(0, 40, 2):
                tasks.put(functools.partial(cache.put, result(i)))
                assert answers.get(timeout=30) is None
                cache.put(result(i + 1))
                tasks.put(functools.partial(cache.get_many, [key(i), key(i + 1)]))
                assert len(answers.get(timeout=30)) == 2
                cache.journal_intent(key(i), f"npd-{i}", "run-a")
                tasks.put(
                    functools.partial(cache.journal_job, key(i), f"job-{i}", f"npd-{i}", None)
                )
                assert answers.get(timeout=30) is None
        finally:
            tasks.put(None)
            thread.join()
        assert len(cache) == 40
        job_ids = {e.job_id for e in cache.journal_entries()}
        assert job_ids == {f"job-{i}" for i in range(0, 40, 2)}

    def test_event_loop_thread(self, cache: Cache) -> None:
        """A background event loop and the main thread share the cache."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever)
        thread.start()

        async def store(i: int) -> int:
            cache.put(result(i))
            return len(cache)

        try:
            for i in range(10):
                assert asyncio.run_coroutine_threadsafe(store(i), loop).result(30) == 2 * i + 1
                cache.put(result(100 + i))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
        assert len(cache.get_many([key(100 + i) for i in range(10)])) == 10

    def test_many_threads_at_once(self, cache: Cache) -> None:
        """Eight threads writing and reading at once lose nothing."""

        def work(offset: int) -> None:
            for i in range(offset, offset + 50):
                cache.put(result(i))
                cache.journal_intent(key(i), f"npd-{i}", "run-a")
                assert key(i) in cache.get_many([key(i)])

        threads = [threading.Thread(target=work, args=(n * 50,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(cache) == 400
        assert len(cache.journal_entries("run-a")) == 400


class TestSQLiteFile:
    def test_creates_folders_and_private_file(self, tmp_path: Path) -> None:
        """Parent folders are made, the file is owner-only, the schema version is recorded."""
        path = tmp_path / "a" / "b" / "cache.sqlite"
        cache = SQLiteCache(path)
        assert not path.exists()  # opened lazily
        cache.put(result(1))
        assert path.is_file()
        if os.name == "posix":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with sqlite3.connect(path) as conn:
            version = conn.execute("SELECT value FROM meta WHERE name='schema_version'")
            assert version.fetchone() == (str(SCHEMA_VERSION),)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()
        cache.close()

    def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        """A file from a newer schema raises ConfigurationError instead of being changed."""
        path = tmp_path / "cache.sqlite"
        SQLiteCache(path).close()
        SQLiteCache(path).put(result(1))
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("UPDATE meta SET value='99' WHERE name='schema_version'")
        conn.close()
        with pytest.raises(ConfigurationError, match="newer"):
            SQLiteCache(path).get_many([key(1)])

    def test_folder_path_is_refused(self, tmp_path: Path) -> None:
        """A folder given as the cache path raises ConfigurationError naming a file to use."""
        with pytest.raises(ConfigurationError, match=r"narrative-cache\.sqlite"):
            SQLiteCache(tmp_path)

    def test_close_then_reuse(self, tmp_path: Path) -> None:
        """A closed disk cache reopens on the next call and still holds its entries."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        cache.put(result(1))
        cache.close()
        cache.close()
        assert set(cache.get_many([key(1)])) == {key(1)}
        cache.close()

    def test_pickles_as_its_path(self, tmp_path: Path) -> None:
        """A pickled disk cache (as sent to a spawned process) opens the same file."""
        cache = SQLiteCache(tmp_path / "c.sqlite", timeout=5)
        cache.put(result(1))
        clone = pickle.loads(pickle.dumps(cache))
        assert isinstance(clone, SQLiteCache)
        assert (clone.path, clone.timeout) == (cache.path, 5.0)
        assert set(clone.get_many([key(1)])) == {key(1)}
        clone.close()
        cache.close()

    def test_put_many_is_one_transaction_and_lookups_are_chunked(self, tmp_path: Path) -> None:
        """1,000 puts make one write transaction; 20,000 lookups make 40 queries."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        len(cache)
        statements: list[str] = []
        cache._connection().set_trace_callback(statements.append)
        before = cache._writer.transactions
        cache.put_many([result(i) for i in range(1000)])
        cache.flush()
        assert cache._writer.transactions == before + 1
        assert len(cache.get_many([key(i) for i in range(20_000)])) == 1000
        assert sum(s.startswith("SELECT") for s in statements) == 40
        cache.close()

    def test_waits_out_a_lock_held_by_another_connection(self, tmp_path: Path) -> None:
        """A write made while another connection holds the write lock succeeds once it is freed
        (the cache's timeout bounds the whole wait: here 5 s for a 0.1 s lock)."""
        path = tmp_path / "c.sqlite"
        cache = SQLiteCache(path, timeout=5)
        len(cache)
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.1, lambda: other.execute("COMMIT"))
        release.start()
        cache.put(result(1))
        release.join()
        other.close()
        assert set(cache.get_many([key(1)])) == {key(1)}
        cache.close()

    def test_survives_a_new_process(self, tmp_path: Path) -> None:
        """What one process writes, a new process reads, and the other way round."""
        path = tmp_path / "c.sqlite"
        run_python(
            """
            import sys
            from narrative_pandas._cache import CachedResult, SQLiteCache
            from narrative_pandas._models import InferenceUsage
            cache = SQLiteCache(sys.argv[1])
            cache.put(CachedResult("k-child", {"label": "neutral"},
                                   InferenceUsage(total_tokens=9), "job-c", "m"))
            cache.journal_job("k-child", "job-c", "npd-k-child", "run-c")
            cache.save_run("run-c", {"rows": [{"a": 1}], "status": "running"})
            """,
            str(path),
        )
        cache = SQLiteCache(path)
        got = cache.get_many(["k-child"])["k-child"]
        assert (got.output, got.usage, got.job_id) == (
            {"label": "neutral"},
            InferenceUsage(total_tokens=9),
            "job-c",
        )
        assert cache.journal_get_many(["k-child"])["k-child"].job_id == "job-c"
        assert cache.load_run("run-c") == {"rows": [{"a": 1}], "status": "running"}

        cache.put(result(1))
        cache.journal_intent(key(1), "npd-1", "run-p")
        cache.update_run("run-c", status="done")
        out = run_python(
            """
            import json, sys
            from narrative_pandas._cache import SQLiteCache
            cache = SQLiteCache(sys.argv[1])
            hit = cache.get_many([sys.argv[2]])[sys.argv[2]]
            entry = cache.journal_get_many([sys.argv[2]])[sys.argv[2]]
            print(json.dumps([hit.output, hit.job_id, entry.tag, cache.list_runs()[0]["status"]]))
            """,
            str(path),
            key(1),
        )
        assert json.loads(out) == [result(1).output, "job-1", "npd-1", "done"]
        cache.close()

    def test_two_processes_writing_at_once(self, tmp_path: Path) -> None:
        """Two processes writing 500 results and journal entries each leave 1,000 intact rows."""
        path = tmp_path / "c.sqlite"
        code = textwrap.dedent(
            """
            import sys
            from narrative_pandas._cache import CachedResult, SQLiteCache
            cache = SQLiteCache(sys.argv[1])
            name = sys.argv[2]
            print("ready", flush=True)
            sys.stdin.readline()
            for start in range(0, 500, 5):
                batch = [CachedResult(f"{name}-{i}", {"i": i}, None, f"job-{name}-{i}")
                         for i in range(start, start + 5)]
                for r in batch:
                    cache.journal_intent(r.key, "npd-" + r.key, name)
                    cache.journal_job(r.key, r.job_id, "npd-" + r.key, name)
                cache.put_many(batch)
                cache.get_many([r.key for r in batch])
            print("done", flush=True)
            """
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(path), name],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
            for name in ("a", "b")
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
            for proc in procs:  # release both together
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            outcomes = [proc.communicate(timeout=120) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
        for proc, (out, err) in zip(procs, outcomes, strict=True):
            assert proc.returncode == 0, err
            assert out.strip() == "done"

        cache = SQLiteCache(path)
        keys = [f"{name}-{i}" for name in ("a", "b") for i in range(500)]
        got = cache.get_many(keys)
        assert len(got) == 1000
        assert got["b-499"].output == {"i": 499}
        assert len(cache.journal_get_many(keys)) == 1000
        assert {e.job_id for e in cache.journal_entries("a")} == {f"job-a-{i}" for i in range(500)}
        cache.close()
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()

    @pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork()"
    )
    def test_forked_child_reopens(self, tmp_path: Path) -> None:
        """A child forked after the parent opened the file writes through its own connection."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        cache.put(result(1))

        def child() -> None:
            cache.put(result(2))
            cache.journal_job(key(2), "job-2", "npd-2", "run-f")
            ok = set(cache.get_many([key(1), key(2)])) == {key(1), key(2)}
            os._exit(0 if ok else 3)

        with warnings.catch_warnings():  # Python >= 3.12 warns about fork with threads running
            warnings.simplefilter("ignore", DeprecationWarning)
            proc = multiprocessing.get_context("fork").Process(target=child)
            proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        cache.put(result(3))
        assert set(cache.get_many([key(1), key(2), key(3)])) == {key(1), key(2), key(3)}
        assert cache.journal_get_many([key(2)])[key(2)].job_id == "job-2"
        cache.close()


class TestQueuedRuns:
    """How the writer thread groups what a run queues (held off while the test queues)."""

    @staticmethod
    def claimed(cache: SQLiteCache, n: int) -> ClaimOwner:
        me = ClaimOwner("host", 1, "nonce:engine", "run-a")
        cache.journal_claim_many([(key(i), f"npd-{i}") for i in range(n)], me, alive=lambda e: True)
        return me

    def test_a_sweeps_results_and_removals_are_two_runs_in_one_transaction(
        self, tmp_path: Path
    ) -> None:
        """100 results and journal removals queued in turn: 2 queued runs, 1 commit, all kept."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        self.claimed(cache, 100)
        for i in range(100):
            cache.journal_job(key(i), f"job-{i}", f"npd-{i}", "run-a")
        cache.flush()
        before = cache._writer.transactions
        with cache._writer._commit:  # the writer thread cannot start a transaction meanwhile
            for i in range(100):
                cache.put(result(i))
                cache.journal_forget(key(i), f"job-{i}")
            assert cache._writer.pending == 2
            labels = [item.label for item in cache._writer._state.queue]
        assert labels == ["result", "journal forget"]  # every result before any removal
        cache.flush()
        assert cache._writer.transactions == before + 1
        assert len(cache.get_many([key(i) for i in range(100)])) == 100
        assert cache.journal_entries() == []
        cache.close()

    def test_a_result_never_joins_a_run_across_a_removal_of_results(self, tmp_path: Path) -> None:
        """put, delete, put of one key ends with the second result (order kept per table)."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        len(cache)
        with cache._writer._commit:
            cache.put(result(1, job_id="first"))
            cache.delete([key(1)])
            cache.put(result(1, job_id="second"))
            assert cache._writer.pending == 3
        assert cache.get_many([key(1)])[key(1)].job_id == "second"
        cache.close()

    def test_job_ids_of_claims_and_of_other_keys_in_one_run(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """In one run, a claimed key keeps its claim's time and owner; an unclaimed one is now."""
        cache = SQLiteCache(tmp_path / "c.sqlite", now=clock.now)
        me = self.claimed(cache, 1)
        clock.advance(5)
        with cache._writer._commit:
            cache.journal_job(key(0), "job-0", "npd-0", "run-a")
            cache.journal_job(key(1), "job-1", "npd-1", "run-a")
            cache.journal_job(key(2), "job-2", "npd-other-tag", "run-a")
            assert cache._writer.pending == 1
        entries = {e.key: e for e in cache.journal_entries()}
        assert [(entries[key(i)].job_id, entries[key(i)].state) for i in range(3)] == [
            ("job-0", "submitted"),
            ("job-1", "submitted"),
            ("job-2", "submitted"),
        ]
        assert [entries[key(i)].submitted_at for i in range(3)] == [T0, T0 + 5, T0 + 5]
        assert entries[key(0)].owner == me
        cache.close()

    def test_one_bad_row_in_a_run_spoils_no_other(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A row SQLite refuses is logged and dropped; the rows queued with it are stored."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        len(cache)
        bad = [(key(2), None, None, None, None, 0.0)]  # output is NOT NULL
        with cache._writer._commit:
            cache.put(result(1))
            cache._execute_soon(
                _cache_sqlite._PUT, bad, frozenset({"results"}), "result", early=True
            )
            cache.put(result(3))
            assert cache._writer.pending == 1
        with caplog.at_level("WARNING", logger="narrative_pandas"):
            cache.flush()
        assert set(cache.get_many([key(1), key(2), key(3)])) == {key(1), key(3)}
        assert "a result could not be stored" in caplog.text
        cache.close()


class TestFinishedWrites:
    """What a run's polls end is written in batches: a second's worth for a file."""

    def ended(self, writes: FinishedWrites, rows: range) -> None:
        for i in rows:
            writes.result(key(i), {"label": "positive"}, None, f"job-{i}", "m")

    def test_a_files_writes_wait_up_to_a_second_across_polls(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Three polls' results go to the file as one write once the oldest is a second old,
        and their journal entries go with them; an unforced flush before writes nothing."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        TestQueuedRuns.claimed(cache, 30)
        for i in range(30):
            cache.journal_job(key(i), f"job-{i}", f"npd-{i}", "run-a")
        writes = FinishedWrites(cache, clock=clock.now)
        calls: list[int] = []
        put_many = cache.put_many
        cache.put_many = lambda results: (calls.append(len(list(results))), put_many(results))  # type: ignore[assignment,method-assign]
        for poll in range(3):
            self.ended(writes, range(poll * 10, poll * 10 + 10))
            writes.flush(wait=True)
            clock.advance(FILE_BATCH_S / 2 - 0.01)
        assert calls == [] and len(cache) == 0
        assert len(cache.journal_entries()) == 30  # each finished job still journaled
        clock.advance(0.02)
        with cache._writer._commit:  # the writer thread cannot start a transaction meanwhile
            writes.flush(wait=True)
            labels = [item.label for item in cache._writer._state.queue]
        assert labels == ["result", "journal forget"]  # one queued write each, results first
        assert calls == [30] and len(cache) == 30
        assert cache.journal_entries() == []
        cache.close()

    def test_writes_left_waiting_get_a_timer(self, tmp_path: Path, clock: FakeClock) -> None:
        """Polls of long jobs are seconds apart: writes left waiting are written by a timer at
        their second (one timer however many polls leave them), not at the next poll."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        timers: list[tuple[float, Callable[[], None]]] = []
        writes = FinishedWrites(
            cache, clock=clock.now, call_later=lambda delay, write: timers.append((delay, write))
        )
        self.ended(writes, range(3))
        clock.advance(0.25)
        writes.flush(wait=True)
        writes.flush(wait=True)
        assert [delay for delay, _ in timers] == [pytest.approx(FILE_BATCH_S - 0.25)]
        assert len(cache) == 0
        timers[0][1]()
        assert len(cache) == 3
        cache.close()

    def test_a_timer_that_cannot_write_only_warns(
        self, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The timer is a loop callback: a failing write is a warning there, not an error that
        only asyncio's handler would see."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        timers: list[Callable[[], None]] = []
        writes = FinishedWrites(
            cache, clock=clock.now, call_later=lambda delay, write: timers.append(write)
        )

        def refuse(results: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        cache.put_many = refuse  # type: ignore[method-assign]
        self.ended(writes, range(2))
        writes.flush(wait=True)
        with caplog.at_level("WARNING", logger="narrative_pandas"):
            timers[0]()
        assert "could not write finished rows to the cache" in caplog.text
        cache.close()

    def test_the_runs_end_writes_what_waits(self, tmp_path: Path, clock: FakeClock) -> None:
        """A flush without ``wait`` (the run's end) writes at once, however young."""
        cache = SQLiteCache(tmp_path / "c.sqlite")
        writes = FinishedWrites(cache, clock=clock.now)
        self.ended(writes, range(5))
        writes.flush()
        assert len(cache) == 5
        cache.close()

    def test_the_in_memory_cache_is_written_every_poll(self, clock: FakeClock) -> None:
        """Nothing to gain from waiting in memory: each poll's results are there at once."""
        cache = MemoryCache()
        writes = FinishedWrites(cache, clock=clock.now)
        self.ended(writes, range(5))
        writes.flush(wait=True)
        assert len(cache) == 5


class TestNoSecretOnDisk:
    def test_api_key_never_in_the_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the key in the environment, a full write sequence leaves no trace of it."""
        monkeypatch.setenv("NARRATIVE_API_KEY", SECRET)
        settings = resolve_settings(data_plane_id="dp")
        assert settings.api_key is not None and settings.api_key.reveal() == SECRET
        path = tmp_path / "c.sqlite"
        cache = SQLiteCache(path)
        arguments = {
            "model": "anthropic.claude-haiku-4.5",
            "api_key": settings.api_key.reveal(),
            "settings": {"base_url": settings.base_url, "api_key": settings.api_key.reveal()},
        }
        cache.save_run("run-a", {"arguments": arguments, "rows": [{"t": i} for i in range(50)]})
        for i in range(50):
            cache.journal_intent(key(i), f"npd-{key(i)[:24]}", "run-a")
            cache.journal_job(key(i), f"job-{i}", f"npd-{key(i)[:24]}", "run-a")
        cache.put_many(result(i) for i in range(50))
        cache.journal_remove(key(i) for i in range(25))
        with pytest.raises(ConfigurationError):
            cache.update_run("run-a", leaked=repr({"Authorization": f"Bearer {SECRET}"}))
        cache.update_run("run-a", status="done")

        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(f.exists() for f in files[:2])
        for f in files:
            if f.exists():
                data = f.read_bytes()
                assert SECRET.encode() not in data
                assert SECRET.encode("utf-16-le") not in data
        assert cache.load_run("run-a") is not None
        cache.close()
        assert SECRET.encode() not in path.read_bytes()


class TestResolveCache:
    def test_true_and_none_give_the_default_memory_cache(self) -> None:
        """True and None both give the one process-wide in-memory cache."""
        assert resolve_cache(True) is default_cache()
        assert resolve_cache(None) is default_cache()
        assert isinstance(default_cache(), MemoryCache)
        assert default_cache().persistent is False

    def test_false_disables(self) -> None:
        """False means no cache at all."""
        assert resolve_cache(False) is None

    def test_path_gives_one_sqlite_cache_per_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A str or Path gives a disk cache, the same instance for the same absolute file."""
        monkeypatch.chdir(tmp_path)
        by_str = resolve_cache("caches/one.sqlite")
        assert isinstance(by_str, SQLiteCache)
        assert by_str.persistent is True
        assert resolve_cache(tmp_path / "caches" / "one.sqlite") is by_str
        assert resolve_cache(str(tmp_path / "caches" / ".." / "caches" / "one.sqlite")) is by_str
        other = resolve_cache(tmp_path / "two.sqlite")
        assert isinstance(other, SQLiteCache) and other is not by_str
        by_str.put(result(1))
        assert (tmp_path / "caches" / "one.sqlite").is_file()
        by_str.close()

    def test_cache_instance_is_itself(self, tmp_path: Path) -> None:
        """A Cache instance is used as given."""
        mine = MemoryCache()
        assert resolve_cache(mine) is mine
        disk = SQLiteCache(tmp_path / "x.sqlite")
        assert resolve_cache(disk) is disk

    @pytest.mark.parametrize("bad", [1, 0, 2.5, b"cache.sqlite", ["a"], object(), "", ":memory:"])
    def test_wrong_values_raise_a_clear_error(self, bad: Any) -> None:
        """Anything else raises ConfigurationError (a ValueError) listing what is accepted."""
        with pytest.raises(ConfigurationError) as info:
            resolve_cache(bad)
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        for accepted in ("cache=True", "cache=False", "file path", "Cache instance"):
            assert accepted in message
