"""One claim per request: the journal's claim transaction, owners' liveness, and runs that share
requests (two start() calls, two threads, two processes) paying for each request once."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import python_script, spawn, wait_until
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas import _claims
from narrative_pandas._cache import Cache, ClaimOwner, JournalEntry, MemoryCache, SQLiteCache
from narrative_pandas._claims import CLAIM_STALE_S, live_run, owner_alive, process_owner
from narrative_pandas._clock import FakeClock
from narrative_pandas._finished import FinishedWrites
from narrative_pandas.sandbox import Sandbox
from narrative_pandas.sandbox._knobs import SandboxConfig

T0 = 1_700_000_000.0
PROMPT = "Text: {text}"


class Label(BaseModel):  # no docstring: the scripts below define the same schema
    label: str
    score: float


def frame(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(start, start + n)]})


def assert_report_matches_frame(out: pd.DataFrame) -> None:
    """The run report counts exactly the rows the frame shows as completed and failed."""
    report = out.attrs["narrative"]
    errors = out["narrative_error"]
    assert report["rows"] == len(out)
    assert report["completed_rows"] == int(errors.isna().sum())
    assert report["failed_rows"] == int(errors.notna().sum())


#: Knobs of the fault branch that conftest's DEFAULT_KNOBS does not reset.
FAULT_KNOBS = ("seed", "post_garbage_after_create_rate", "replication_lag", "cancel_rate")


@pytest.fixture
def calm_faults(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The sandbox, with the fault knobs these tests turn on put back afterwards."""
    yield sandbox
    defaults = SandboxConfig()
    sandbox.configure(**{name: getattr(defaults, name) for name in FAULT_KNOBS})


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


def owner(name: str, *, host: str = "host-a", pid: int = 1) -> ClaimOwner:
    return ClaimOwner(host, pid, f"nonce-{name}:engine", f"run-{name}")


def alive_if(*names: str) -> Any:
    """An ``alive`` callback: owners whose run is one of ``names`` are alive."""
    runs = {f"run-{n}" for n in names}
    return lambda entry: entry.run_id in runs


class TestClaimTransaction:
    def test_first_claim_wins_and_a_live_owner_holds_it(self, cache: Cache) -> None:
        """The first claim inserts; a second owner is told the claim is held while A lives."""
        first = cache.journal_claim("k", "npd-k", owner("a"), alive=alive_if("a"))
        assert first.outcome == "new"
        assert first.entry is not None and first.entry.owner == owner("a")
        again = cache.journal_claim("k", "npd-k", owner("a"), alive=alive_if("a"))
        assert again.outcome == "ours"
        second = cache.journal_claim("k", "npd-k", owner("b"), alive=alive_if("a"))
        assert second.outcome == "held"
        assert second.entry is not None and second.entry.run_id == "run-a"
        assert [e.run_id for e in cache.journal_entries()] == ["run-a"]

    def test_a_job_id_is_shared_not_claimed(self, cache: Cache) -> None:
        """Once the claim names a job, another owner gets that job id to poll."""
        cache.journal_claim("k", "npd-k", owner("a"), alive=alive_if("a"))
        cache.journal_job("k", "job-1", "npd-k", "run-a")
        claim = cache.journal_claim("k", "npd-k", owner("b"), alive=alive_if())
        assert claim.outcome == "job"
        assert claim.entry is not None and claim.entry.job_id == "job-1"

    def test_dead_owner_is_taken_over_keeping_the_intent_time(
        self, cache: Cache, clock: FakeClock
    ) -> None:
        """A dead owner's claim passes to the next owner, marked unknown, with its first time."""
        cache.journal_claim("k", "npd-k", owner("a"), alive=alive_if())
        clock.advance(50)
        claim = cache.journal_claim("k", "npd-k", owner("b"), alive=alive_if())
        assert claim.outcome == "taken_over"
        assert claim.previous is not None and claim.previous.run_id == "run-a"
        assert claim.entry is not None
        assert (claim.entry.run_id, claim.entry.state) == ("run-b", "unknown")
        assert claim.entry.submitted_at == T0
        assert claim.entry.heartbeat_at == T0 + 50

    def test_a_cached_result_answers_before_any_claim(self, cache: Cache) -> None:
        """A request whose result is cached is answered from the cache, and nothing is claimed."""
        from test_cache import result

        done = result(1)
        cache.put(done)
        claim = cache.journal_claim(done.key, "npd-1", owner("a"), alive=alive_if())
        assert claim.outcome == "cached"
        assert claim.result is not None and claim.result.job_id == "job-1"
        assert cache.journal_entries() == []
        unchecked = cache.journal_claim(
            done.key, "npd-1", owner("a"), alive=alive_if(), check_results=False
        )
        assert unchecked.outcome == "new"

    def test_release_and_forget_touch_only_their_own_entry(self, cache: Cache) -> None:
        """Release drops only the owner's job-less claim; forget only an entry of that job id."""
        cache.journal_claim("k", "npd-k", owner("a"), alive=alive_if("a"))
        cache.journal_release("k", owner("b"))
        assert len(cache.journal_entries()) == 1
        cache.journal_release("k", owner("a"))
        assert cache.journal_entries() == []
        cache.journal_claim("k", "npd-k", owner("c"), alive=alive_if("c"))
        cache.journal_job("k", "job-2", "npd-k", "run-c")
        cache.journal_forget("k", "job-1")  # an older job of the same request ended
        assert [e.job_id for e in cache.journal_entries()] == ["job-2"]
        cache.journal_forget("k", "job-2")
        assert cache.journal_entries() == []

    def test_heartbeat_and_unknown_mark_only_the_owners_claims(
        self, cache: Cache, clock: FakeClock
    ) -> None:
        """Heartbeats stamp the owner's job-less claims; a run that ends stamps 0."""
        cache.journal_claim("k1", "npd-1", owner("a"), alive=alive_if("a"))
        cache.journal_claim("k2", "npd-2", owner("b"), alive=alive_if("b"))
        clock.advance(10)
        assert cache.journal_heartbeat(owner("a")) == 1
        cache.journal_mark_unknown("k1", owner("a"))
        cache.journal_mark_unknown("k2", owner("a"))
        entries = cache.journal_get_many(["k1", "k2"])
        assert (entries["k1"].heartbeat_at, entries["k1"].state) == (T0 + 10, "unknown")
        assert (entries["k2"].heartbeat_at, entries["k2"].state) == (T0, "posting")
        cache.journal_heartbeat(owner("a"), 0.0)
        assert cache.journal_get_many(["k1"])["k1"].heartbeat_at == 0.0

    def test_an_older_files_journal_gains_the_claim_columns(self, tmp_path: Path) -> None:
        """A file written before claims existed opens, keeps its entries, and takes claims."""
        path = tmp_path / "old.sqlite"
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TABLE journal (key TEXT PRIMARY KEY, job_id TEXT, tag TEXT NOT NULL, "
                "run_id TEXT, submitted_at REAL NOT NULL)"
            )
            db.execute("INSERT INTO journal VALUES ('old', NULL, 'npd-old', 'run-x', 5.0)")
        db.close()
        cache = SQLiteCache(path)
        entry = cache.journal_get_many(["old"])["old"]
        assert (entry.owner, entry.state, entry.submitted_at) == (None, "posting", 5.0)
        claim = cache.journal_claim("old", "npd-old", owner("a"), alive=owner_alive)
        assert claim.outcome == "taken_over"  # no owner recorded: nobody can still be sending
        cache.close()

    def test_two_threads_claiming_at_once_get_one_claim(self, tmp_path: Path) -> None:
        """Sixteen threads on two connections claim 50 keys: each key has exactly one winner."""
        caches = [SQLiteCache(tmp_path / "race.sqlite") for _ in range(2)]
        wins: list[tuple[str, str]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(16)

        def claim_all(n: int) -> None:
            me = owner(str(n))
            barrier.wait()
            for i in range(50):
                claim = caches[n % 2].journal_claim(f"k{i}", f"npd-{i}", me, alive=lambda e: True)
                if claim.outcome == "new":
                    with lock:
                        wins.append((f"k{i}", me.run_id))

        threads = [threading.Thread(target=claim_all, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(k for k, _ in wins) == sorted(f"k{i}" for i in range(50))
        for cache in caches:
            cache.close()


class TestClaimBatches:
    def test_one_batch_answers_like_claims_one_by_one(self, cache: Cache) -> None:
        """A batch meeting a cached result, a live claim, a job and nothing answers each."""
        from test_cache import result

        done = result(1)
        cache.put(done)
        cache.journal_claim("held", "npd-h", owner("a"), alive=alive_if("a"))
        cache.journal_claim("shared", "npd-s", owner("a"), alive=alive_if("a"))
        cache.journal_job("shared", "job-s", "npd-s", "run-a")
        wanted = [(done.key, "npd-1"), ("held", "npd-h"), ("shared", "npd-s"), ("free", "npd-f")]
        claims = cache.journal_claim_many(wanted, owner("b"), alive=alive_if("a"))
        assert [c.outcome for c in claims] == ["cached", "held", "job", "new"]
        assert claims[2].entry is not None and claims[2].entry.job_id == "job-s"
        assert {e.key: e.run_id for e in cache.journal_entries()} == {
            "held": "run-a",
            "shared": "run-a",
            "free": "run-b",
        }

    def test_a_key_twice_in_one_batch_is_claimed_once(self, cache: Cache) -> None:
        """The second ask of a key in the same batch finds the first one's claim: ours."""
        claims = cache.journal_claim_many(
            [("k", "npd-k"), ("k", "npd-k")], owner("a"), alive=alive_if("a")
        )
        assert [c.outcome for c in claims] == ["new", "ours"]
        assert len(cache.journal_entries()) == 1

    async def test_a_wave_of_claims_is_one_commit_made_before_any_answer(
        self, tmp_path: Path
    ) -> None:
        """Fifty claims asked at once make one write transaction, on disk before any returns."""
        path = tmp_path / "wave.sqlite"
        cache = SQLiteCache(path)
        book = _claims.ClaimBook(cache, "run-w", max_age=None)
        len(cache)  # the file exists with its tables
        before = cache._writer.transactions
        seen_on_disk: list[int] = []

        async def claim(i: int) -> str:
            found = await book.claim(f"k{i}", f"npd-{i}")
            with sqlite3.connect(path) as other:  # another connection: only what is committed
                seen_on_disk.append(other.execute("SELECT count(*) FROM journal").fetchone()[0])
            return found.outcome

        outcomes = await asyncio.gather(*(claim(i) for i in range(50)))
        assert outcomes == ["new"] * 50
        assert cache._writer.transactions == before + 1
        assert seen_on_disk == [50] * 50
        cache.close()

    async def test_a_failing_batch_fails_each_claim_of_it(self) -> None:
        """A journal that cannot claim raises to every caller of the batch, and nothing hangs."""

        class Broken(MemoryCache):
            @property
            def persistent(self) -> bool:  # batched like a file
                return True

            def journal_claim_many(self, *args: Any, **kwargs: Any) -> Any:
                raise sqlite3.OperationalError("disk I/O error")

        book = _claims.ClaimBook(Broken(), "run-x", max_age=None)
        answers = await asyncio.gather(
            *(book.claim(f"k{i}", f"npd-{i}") for i in range(5)), return_exceptions=True
        )
        assert [type(a) for a in answers] == [sqlite3.OperationalError] * 5
        with pytest.raises(sqlite3.OperationalError):  # a later claim is asked again, not lost
            await asyncio.wait_for(book.claim("k9", "npd-9"), timeout=10)


class TestJobIdWrites:
    """A wave's job ids are one queued write of a file, and never land after their removal."""

    async def test_job_ids_answered_in_one_turn_are_one_queued_write(self, tmp_path: Path) -> None:
        """Fifty POSTs answered in one turn of the loop queue one write of fifty rows (not
        fifty), and every claim then names its job."""
        cache = SQLiteCache(tmp_path / "jobs.sqlite")
        book = _claims.ClaimBook(cache, "run-j", max_age=None)
        await book.claim_many([(f"k{i}", f"npd-{i}") for i in range(50)])
        queued: list[int] = []
        queue_write = cache._writer.execute_soon

        def counting(sql: Any, rows: Any, *args: Any, **kwargs: Any) -> None:
            queued.append(len(rows))
            queue_write(sql, rows, *args, **kwargs)

        cache._writer.execute_soon = counting  # type: ignore[method-assign]
        for i in range(50):  # answered within one turn of the loop
            await book.job(f"k{i}", f"job-{i}", f"npd-{i}")
        assert queued == []  # gathered until the loop turns
        await asyncio.sleep(0)
        assert queued == [50]
        entries = {e.key: e for e in cache.journal_entries()}
        assert {k: (e.job_id, e.state) for k, e in entries.items()} == {
            f"k{i}": (f"job-{i}", "submitted") for i in range(50)
        }
        cache.close()

    async def test_a_job_that_ends_in_the_same_turn_leaves_no_entry(self, tmp_path: Path) -> None:
        """A job id still gathered when its job's end is written goes to the file first, so
        the removal finds it: nothing stays journaled for a finished job."""
        cache = SQLiteCache(tmp_path / "ended.sqlite")
        book = _claims.ClaimBook(cache, "run-e", max_age=None)
        await book.claim_many([("k1", "npd-1"), ("k2", "npd-2")])
        writes = FinishedWrites(cache, first=book.write_jobs)
        await book.job("k1", "job-1", "npd-1")
        await book.job("k2", "job-2", "npd-2")
        writes.settled("k1", "job-1")
        writes.flush()  # before the loop turned: the job ids are written first
        assert [(e.key, e.job_id) for e in cache.journal_entries()] == [("k2", "job-2")]
        await asyncio.sleep(0)  # nothing is left to write twice
        assert [(e.key, e.job_id) for e in cache.journal_entries()] == [("k2", "job-2")]
        cache.close()

    async def test_a_journal_that_cannot_take_job_ids_only_warns(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The jobs exist and are polled either way: a failing write is a warning, not an error
        in the loop."""

        class Broken(SQLiteCache):
            def journal_jobs(self, jobs: Any, run_id: str | None) -> None:
                raise sqlite3.OperationalError("disk I/O error")

        cache = Broken(tmp_path / "broken.sqlite")
        book = _claims.ClaimBook(cache, "run-b", max_age=None)
        await book.job("k1", "job-1", "npd-1")
        await book.job("k2", "job-2", "npd-2")
        with caplog.at_level("WARNING", logger="narrative_pandas"):
            await asyncio.sleep(0)
        assert [r.getMessage() for r in caplog.records] == ["could not journal 2 job id(s)"]
        cache.close()


class TestOwnerLiveness:
    def entry(self, who: ClaimOwner, heartbeat: float) -> JournalEntry:
        return JournalEntry("k", None, "npd-k", who.run_id, heartbeat, "posting", who, heartbeat)

    def test_owner_in_this_process_lives_while_its_run_runs(self) -> None:
        """An owner of this process is alive exactly while its run is registered."""
        me = process_owner("run-1")
        entry = self.entry(me, 0.0)  # a heartbeat means nothing within one process
        assert not owner_alive(entry)
        with live_run(me):
            assert owner_alive(entry)
            other_engine = process_owner("run-1")  # same run id, another engine (attach)
            assert not owner_alive(self.entry(other_engine, 0.0))
        assert not owner_alive(entry)

    def test_dead_pid_on_this_host_is_gone_at_once(self, tmp_path: Path) -> None:
        """A finished process's claim is free at once, even with a fresh heartbeat."""
        proc = spawn(python_script(tmp_path / "exit.py", "print('bye')"))
        proc.communicate(timeout=60)
        gone = ClaimOwner(socket.gethostname(), proc.pid, "other-process:e", "run-x")
        assert not owner_alive(self.entry(gone, 1000.0), now=1001.0)

    def test_live_pid_needs_a_fresh_heartbeat(self) -> None:
        """A running pid of another nonce is alive while its heartbeat is fresh (pid reuse)."""
        import os

        parent = ClaimOwner(socket.gethostname(), os.getppid(), "other-process:e", "run-x")
        assert owner_alive(self.entry(parent, 1000.0), now=1000.0 + CLAIM_STALE_S - 1)
        assert not owner_alive(self.entry(parent, 1000.0), now=1000.0 + CLAIM_STALE_S + 1)

    def test_other_host_is_judged_by_heartbeat(self) -> None:
        """On another host only the heartbeat tells."""
        far = ClaimOwner("elsewhere.invalid", 1, "far:e", "run-x")
        assert owner_alive(self.entry(far, 1000.0), now=1010.0)
        assert not owner_alive(self.entry(far, 1000.0), now=1000.0 + CLAIM_STALE_S)

    def test_a_forked_child_gets_a_nonce_of_its_own(self) -> None:
        """After fork, the child's owners differ from the parent's (its runs are not ours)."""
        before = _claims._nonce
        _claims._after_fork_in_child()
        try:
            assert _claims._nonce != before
        finally:
            _claims._nonce = before


def check_same_results(first: pd.DataFrame, second: pd.DataFrame) -> None:
    """Both runs answered every row, with the same job and the same output."""
    for out in (first, second):
        assert out["narrative_error"].isna().all()
        assert_report_matches_frame(out)
    columns = ["label", "score", "narrative_job_id"]
    pd.testing.assert_frame_equal(first[columns], second[columns])


@pytest.mark.usefixtures("calm_faults")
class TestRunsShareClaims:
    def test_start_twice_on_the_same_rows_pays_once(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A second start() while the first still runs waits for its jobs instead of paying.

        The second goes through the rows from the other end, so the two meet in the middle and
        each finds rows the other claimed: still running (shared) or already answered (cached),
        depending on how fast either one is."""
        sandbox.configure(queue_latency=0.4, run_latency=0.1)
        df = frame(60)
        options: dict[str, Any] = {"output": Label, "progress": False, "concurrency": 8}
        first = df.narrative.start(PROMPT, **options, **target)
        wait_until(lambda: sandbox.stats.jobs_created >= 4, what="4 submissions")
        second = df.iloc[::-1].narrative.start(PROMPT, **options, **target)
        out1, out2 = first.result(), second.result()
        assert sandbox.stats.jobs_created == 60
        assert sandbox.stats.duplicates == 0
        assert list(out2.index) == list(df.index[::-1])
        check_same_results(out1, out2.loc[out1.index])
        reports = [out1.attrs["narrative"], out2.attrs["narrative"]]
        assert sum(r["jobs_submitted"] for r in reports) == 60
        # Each paid for part of the rows and took the rest from the other: the other's jobs
        # journaled at its start (resumed), jobs it met later (shared), answers (cached).
        for r in reports:
            assert 0 < r["jobs_submitted"] < 60
            taken = r["resumed_rows"] + r["shared_rows"] + r["cached_rows"]
            assert r["jobs_submitted"] + taken == 60

    def test_two_threads_on_one_cache_file_pay_once(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """Two threads running the same call on one cache file create one job per request."""
        sandbox.configure(queue_latency=0.3, run_latency=0.05)
        path = str(tmp_path / "threads.sqlite")
        outs: dict[int, pd.DataFrame] = {}
        barrier = threading.Barrier(2)

        def work(n: int) -> None:
            barrier.wait()
            outs[n] = frame(50).narrative.infer(
                PROMPT, output=Label, cache=path, progress=False, concurrency=8, **target
            )

        threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sandbox.stats.jobs_created == 50
        assert sandbox.stats.duplicates == 0
        check_same_results(outs[0], outs[1])

    def test_two_processes_on_one_cache_file_pay_once(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """Two processes running the same call on one cache file create one job per request."""
        sandbox.configure(queue_latency=0.3, run_latency=0.05)
        path = tmp_path / "shared.sqlite"
        script = python_script(
            tmp_path / "same.py",
            f"""
            import pandas as pd, narrative_pandas as npd
            from pydantic import BaseModel
            class Label(BaseModel):
                label: str
                score: float
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(60)]}})
            out = df.narrative.infer({PROMPT!r}, output=Label, cache={str(path)!r},
                                     progress=False, concurrency=8,
                                     api_key={target["api_key"]!r},
                                     base_url={target["base_url"]!r},
                                     data_plane_id={target["data_plane_id"]!r})
            report = out.attrs["narrative"]
            print("DONE", out["narrative_error"].isna().sum(), report["completed_rows"])
            print("JOBS", ",".join(out["narrative_job_id"]))
            print("LABELS", ",".join(out["label"]))
            """,
        )
        procs = [spawn(script), spawn(script)]
        outputs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, stderr
            assert "DONE 60 60" in stdout
            assert "never retrieved" not in stderr
            outputs.append([line for line in stdout.splitlines() if line[:4] in ("JOBS", "LABE")])
        assert sandbox.stats.jobs_created == 60
        assert sandbox.stats.duplicates == 0
        assert outputs[0] == outputs[1]

    def test_a_claim_held_elsewhere_is_waited_on_and_never_posted(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A live claim of another host's run: the row waits (up to timeout), sending nothing."""
        cache = MemoryCache()
        plan = frame(1).narrative.preview(PROMPT, output=Label, **target)
        key, tag = plan["request_key"].iloc[0], plan["body"].iloc[0]["tags"][-1]
        far = ClaimOwner("elsewhere.invalid", 1, "far:engine", "run-far")
        cache.journal_claim(key, tag, far, alive=owner_alive)  # heartbeat: now
        with pytest.warns(npd.RowsFailedWarning, match="waiting for another run"):
            out = frame(1).narrative.infer(
                PROMPT, output=Label, cache=cache, timeout=1.0, progress=False, **target
            )
        assert_report_matches_frame(out)
        assert out.attrs["narrative"]["timed_out_rows"] == 1
        assert sandbox.stats.count(method="POST") == 0
        assert [e.run_id for e in cache.journal_entries()] == ["run-far"]

    def test_a_killed_owners_claims_are_taken_over_and_reconciled(
        self, sandbox: Sandbox, target: dict[str, str], tmp_path: Path
    ) -> None:
        """kill -9 with POSTs of unknown outcome, 2,500 newer jobs, re-run: jobs == rows."""
        # The killed run's jobs end after the newer jobs are added, so they are listed above them.
        sandbox.configure(
            queue_latency=10.0, run_latency=0.05, post_garbage_after_create_rate=0.5, seed=3
        )
        path = tmp_path / "killed.sqlite"
        script = python_script(
            tmp_path / "killed.py",
            f"""
            import pandas as pd, narrative_pandas as npd
            from pydantic import BaseModel
            class Label(BaseModel):
                label: str
                score: float
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(40)]}})
            df.narrative.infer({PROMPT!r}, output=Label, cache={str(path)!r},
                               progress=False, concurrency=16,
                               api_key={target["api_key"]!r},
                               base_url={target["base_url"]!r},
                               data_plane_id={target["data_plane_id"]!r})
            """,
        )
        proc = spawn(script)
        wait_until(lambda: sandbox.stats.jobs_created >= 16, timeout=60, what="16 jobs")
        proc.kill()
        proc.communicate(timeout=60)
        paid = sandbox.stats.jobs_created
        cache = SQLiteCache(path)
        unknown = [e for e in cache.journal_entries() if e.job_id is None]
        cache.close()
        assert unknown  # POSTs answered with garbage: their outcome was never learned
        sandbox.add_jobs(2500)
        sandbox.configure(queue_latency=0.02, post_garbage_after_create_rate=0.0)
        out = frame(40).narrative.infer(
            PROMPT, output=Label, cache=str(path), progress=False, **target
        )
        assert out["narrative_error"].isna().all()
        assert_report_matches_frame(out)
        assert sandbox.stats.jobs_created == 40
        assert sandbox.stats.duplicates == 0
        report = out.attrs["narrative"]
        assert report["resumed_rows"] + report["reconciled_jobs"] == paid
        assert report["jobs_submitted"] == 40 - paid
