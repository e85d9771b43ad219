"""The cyclic GC is kept off the hot paths and always given back as the process had it."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from narrative_pandas import _gc_pause
from narrative_pandas._exceptions import AuthenticationError
from narrative_pandas._gc_pause import no_cyclic_gc, run_without_cyclic_gc
from narrative_pandas.sandbox import Sandbox

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"word": {"type": "string"}},
    "required": ["word"],
}


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    """Every test starts and ends with the collector on, as a process normally has it."""
    gc.enable()
    yield
    gc.enable()


class _Node:
    """A container that can be part of a reference cycle and be watched by a weakref."""

    def __init__(self) -> None:
        self.other: Any = None


class TestPauseCounting:
    """Sections nest and overlap; the last one out restores the collector as it was."""

    def test_paused_inside_and_restored_after(self) -> None:
        """The collector is off inside a section and on again after it."""
        with no_cyclic_gc():
            assert not gc.isenabled()
            assert _gc_pause.paused()
        assert gc.isenabled()
        assert not _gc_pause.paused()

    def test_a_process_that_turned_it_off_keeps_it_off(self) -> None:
        """If the user disabled the collector, a section never enables it."""
        gc.disable()
        with no_cyclic_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()

    def test_overlapping_sections_on_two_threads(self) -> None:
        """A section ending on one thread leaves the collector off for one still open elsewhere."""
        inside = threading.Event()
        leave = threading.Event()
        seen_after_first: list[bool] = []

        def other() -> None:
            with no_cyclic_gc():
                inside.set()
                leave.wait(10)

        thread = threading.Thread(target=other)
        with no_cyclic_gc():
            thread.start()
            assert inside.wait(10)
        seen_after_first.append(gc.isenabled())
        leave.set()
        thread.join(10)
        assert seen_after_first == [False]
        assert gc.isenabled()

    def test_what_was_built_is_promoted_without_a_walk(self) -> None:
        """On resume, the objects built while paused leave the young generation (no collection
        runs over them), and nothing stays frozen."""
        walks: list[int] = []

        def record(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                walks.append(info["generation"])

        gc.callbacks.append(record)
        try:
            with no_cyclic_gc():
                built = [[i] for i in range(50_000)]
                assert gc.get_count()[0] >= 50_000
        finally:
            gc.callbacks.remove(record)
        assert gc.get_count()[0] < 1_000
        assert walks == []
        assert gc.get_freeze_count() == 0
        assert len(built) == 50_000

    def test_a_freeze_of_the_user_is_left_alone(self) -> None:
        """A process that froze objects itself keeps them frozen after a paused section."""
        gc.freeze()
        try:
            frozen = gc.get_freeze_count()
            with no_cyclic_gc():
                _ = [[i] for i in range(1_000)]
            # Frozen objects another thread lets go of leave the permanent generation, so the
            # count may fall a little; an unfreeze by the library would take it to 0.
            assert frozen // 2 < gc.get_freeze_count() <= frozen
        finally:
            gc.unfreeze()

    def test_an_error_still_restores(self) -> None:
        """A section that raises still gives the collector back."""
        with pytest.raises(RuntimeError), no_cyclic_gc():
            raise RuntimeError("boom")
        assert gc.isenabled()


class TestYoungCollectionsDuringARun:
    """Cycles made while a run goes are still freed, without turning the collector back on."""

    async def test_cycles_are_freed_while_paused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past the young limit, the next check collects the young generations."""
        monkeypatch.setattr(_gc_pause, "YOUNG_LIMIT", 1_000)
        monkeypatch.setattr(_gc_pause, "YOUNG_CHECK_S", 0.01)
        async with run_without_cyclic_gc():
            a, b = _Node(), _Node()
            a.other, b.other = b, a
            watch = weakref.ref(a)
            del a, b
            assert watch() is not None  # a cycle: reference counting cannot free it
            pile = [[i] for i in range(5_000)]  # past the limit
            for _ in range(100):
                await asyncio.sleep(0.01)
                if watch() is None:
                    break
            assert watch() is None
            assert not gc.isenabled()
            del pile
        assert gc.isenabled()

    async def test_below_the_limit_nothing_is_collected(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under the limit, checks do not collect (no cost when little piles up)."""
        monkeypatch.setattr(_gc_pause, "YOUNG_LIMIT", 10**9)
        collected: list[int] = []

        def record(phase: str, info: dict[str, int]) -> None:
            if phase == "stop":
                collected.append(info["generation"])

        gc.callbacks.append(record)
        try:
            async with run_without_cyclic_gc():
                assert _gc_pause.collect_young_if_due() is False
        finally:
            gc.callbacks.remove(record)
        assert collected == []


class TestDuringInfer:
    """A real run against the sandbox pauses the collector and gives it back."""

    def test_paused_while_the_run_goes(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """The in-process sandbox sees the collector off at every POST; it is on after."""
        states: list[bool] = []

        def responder(request: dict[str, Any]) -> dict[str, Any]:
            states.append(gc.isenabled())
            return {"word": "w"}

        sandbox.configure(responder=responder)
        df = pd.DataFrame({"t": [f"row {i}" for i in range(12)]})
        out = df.narrative.infer("T: {t}", output=SCHEMA, progress=False, **target)
        assert out["narrative_error"].isna().all()
        assert len(states) == 12
        assert not any(states)
        assert gc.isenabled()

    def test_given_back_after_a_run_that_failed(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A run ended by a run-level error (a refused key) still restores the collector."""
        df = pd.DataFrame({"t": ["a", "b"]})
        with pytest.raises(AuthenticationError):
            df.narrative.infer(
                "T: {t}", output=SCHEMA, progress=False, **{**target, "api_key": "wrong"}
            )
        assert gc.isenabled()
