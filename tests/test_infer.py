"""End-to-end tests of df.narrative.infer against the sandbox over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from typing import Any, Literal

import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas.sandbox import Sandbox
from narrative_pandas.sandbox._core import SystemWallClock


class Parity(BaseModel):
    """The answer the row responder gives: derived from the number in the prompt."""

    parity: Literal["even", "odd"]
    double: int
    half: float
    big: bool
    word: str


def parity_responder(request: dict[str, Any]) -> dict[str, Any]:
    """Answers from the row: the last user message holds 'Number: <n>'."""
    text = [m["text"] for m in request["messages"] if m["role"] == "user"][-1]
    match = re.search(r"Number: (-?\d+)", text)
    n = int(match.group(1)) if match else 0
    return {
        "parity": "even" if n % 2 == 0 else "odd",
        "double": 2 * n,
        "half": n / 2,
        "big": n >= 50,
        "word": f"n{n}",
    }


def numbers(n: int, index: Any = None) -> pd.DataFrame:
    return pd.DataFrame({"n": list(range(n))}, index=index)


EXPECTED_DTYPES = {
    "n": "int64",
    "parity": pd.CategoricalDtype(["even", "odd"]),
    "double": "Int64",
    "half": "Float64",
    "big": "boolean",
    "word": "string",
    "narrative_error": "string",
    "narrative_status": pd.CategoricalDtype(
        ["completed", "failed", "invalid", "timed_out", "stopped", "skipped"]
    ),
    "narrative_job_id": "string",
    "narrative_prompt_tokens": "Int64",
    "narrative_completion_tokens": "Int64",
    "narrative_total_tokens": "Int64",
}


def check_parity_rows(out: pd.DataFrame, source: pd.DataFrame) -> None:
    for n, parity, double, half, big, word in zip(
        source["n"], out["parity"], out["double"], out["half"], out["big"], out["word"], strict=True
    ):
        assert parity == ("even" if n % 2 == 0 else "odd")
        assert double == 2 * n
        assert half == n / 2
        assert big == (n >= 50)
        assert word == f"n{n}"


class TestRowsGetTheirOwnOutputs:
    def test_every_row_gets_the_answer_derived_from_it(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Each row's output columns hold the answer computed from that row, with exact dtypes."""
        sandbox.configure(responder=parity_responder)
        df = numbers(60)
        out = df.narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        assert list(out.columns) == list(EXPECTED_DTYPES)
        assert {c: out[c].dtype for c in out.columns} == {
            c: pd.api.types.pandas_dtype(d) if isinstance(d, str) else d
            for c, d in EXPECTED_DTYPES.items()
        }
        check_parity_rows(out, df)
        assert out["narrative_error"].isna().all()
        assert out["narrative_job_id"].notna().all()
        assert out["narrative_job_id"].nunique() == 60
        assert (out["narrative_total_tokens"] > 0).all()
        assert (
            out["narrative_prompt_tokens"] + out["narrative_completion_tokens"]
            == out["narrative_total_tokens"]
        ).all()

    def test_caller_frame_is_not_modified(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """infer returns a new frame and leaves the caller's frame exactly as it was."""
        df = numbers(5)
        before = df.copy()
        df.narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        pd.testing.assert_frame_equal(df, before)

    @pytest.mark.parametrize(
        "index",
        [
            pd.Index(["b", "a", "b", "c", "a", "z"]),
            pd.MultiIndex.from_tuples([(1, "x"), (1, "y"), (0, "x"), (2, "z"), (0, "y"), (9, "q")]),
            pd.Index([50, 3, 7, 1, 99, 2]),
        ],
        ids=["duplicate-strings", "multiindex", "shuffled-ints"],
    )
    def test_any_index_and_order_are_kept(
        self, sandbox: Sandbox, target: dict[str, str], index: pd.Index
    ) -> None:
        """Results land on the right rows whatever the index: duplicates, MultiIndex, shuffled."""
        sandbox.configure(responder=parity_responder)
        df = pd.DataFrame({"n": [11, 4, 7, 52, 8, 3]}, index=index)
        out = df.narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        assert out.index.equals(df.index)
        check_parity_rows(out, df)

    def test_report_matches_the_sandbox_counters(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """The run report's jobs and HTTP requests equal what the server counted."""
        df = numbers(40)
        out = df.narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        report = out.attrs["narrative"]
        stats = sandbox.stats
        assert report["rows"] == 40
        assert report["jobs_submitted"] == stats.jobs_created == 40
        assert report["completed_rows"] == 40
        assert report["failed_rows"] == 0
        assert report["http_requests"]["total"] == stats.requests
        assert report["http_requests"]["post"] == stats.count(method="POST") == 40
        assert report["http_requests"]["get_job"] == stats.count(path="/jobs/{job_id}")
        assert report["http_requests"]["list_jobs"] == stats.count(path="/jobs")
        assert report["total_tokens"] == int(out["narrative_total_tokens"].sum())

    def test_identical_rows_share_one_job(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """N identical rendered requests cost one job, and every row gets its output."""
        df = pd.DataFrame({"n": [7] * 25 + [8] * 5})
        out = df.narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        assert sandbox.stats.jobs_created == 2
        assert out["narrative_error"].isna().all()
        assert out.attrs["narrative"]["deduplicated_rows"] == 28
        assert out.loc[out["n"] == 7, "narrative_job_id"].nunique() == 1

    def test_series_accessor(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """Series.narrative.infer treats {} as the value and returns a frame with the outputs."""
        sandbox.configure(responder=parity_responder)
        s = pd.Series([1, 2, 3], index=["a", "b", "c"], name="n")
        out = s.narrative.infer("Number: {}", output=Parity, progress=False, **target)
        assert list(out["double"]) == [2, 4, 6]
        assert list(out.index) == ["a", "b", "c"]

    def test_empty_frame_sends_nothing(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """An empty frame gives an empty frame with every column and costs no request."""
        out = numbers(0).narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        assert list(out.columns) == list(EXPECTED_DTYPES)
        assert len(out) == 0
        assert sandbox.stats.requests == 0

    def test_prefix_and_collision(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A column named like an output property is an error unless a prefix resolves it."""
        df = pd.DataFrame({"n": [1, 2], "word": ["x", "y"]})
        with pytest.raises(ValueError, match="word"):
            df.narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        assert sandbox.stats.requests == 0
        out = df.narrative.infer(
            "Number: {n}", output=Parity, prefix="ai_", progress=False, **target
        )
        assert "ai_word" in out.columns and "ai_narrative_error" in out.columns
        assert list(out["word"]) == ["x", "y"]

    def test_missing_values_skip(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """missing="skip" sends no job for rows with a missing value and says why."""
        df = pd.DataFrame({"n": [1, None, 3]}, dtype="Int64")
        out = df.narrative.infer(
            "Number: {n}", output=Parity, missing="skip", progress=False, **target
        )
        assert sandbox.stats.jobs_created == 2
        assert pd.isna(out["parity"].iloc[1])
        assert "missing" in out["narrative_error"].iloc[1]
        assert out["narrative_error"].iloc[[0, 2]].isna().all()


class TestConcurrencyAndPolling:
    def test_in_flight_cap_is_never_exceeded(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """The server never sees more than `concurrency` unfinished jobs of the run."""
        sandbox.configure(queue_latency=0.02, run_latency=0.1)
        out = numbers(120).narrative.infer(
            "Number: {n}", output=Parity, concurrency=10, progress=False, **target
        )
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.peak_unfinished_jobs == 10

    def test_polling_many_jobs_costs_few_gets(self) -> None:
        """With 500 jobs in flight, the GET requests per row stay well under one."""
        # The sandbox's clock stands still until all 500 jobs exist, so none finishes before the
        # last is created, however long a loaded machine takes to submit them: the peak below is
        # reached every time. Then they run 1 to 2 s as usual.
        clock = HeldClock()
        with Sandbox(clock=clock, queue_latency=0.5, run_latency=(0.5, 1.5)) as server:
            releaser = threading.Thread(target=clock.release_when, args=(server, 500))
            releaser.start()
            try:
                out = numbers(500).narrative.infer(
                    "Number: {n}",
                    output=Parity,
                    concurrency=500,
                    progress=False,
                    api_key=server.api_key,
                    base_url=server.base_url,
                    data_plane_id=server.data_plane_id,
                )
            finally:
                clock.release()
                releaser.join()
            assert out["narrative_error"].isna().all()
            gets = server.stats.count(method="GET")
            assert gets / 500 < 0.25, gets
            assert 400 < server.stats.peak_unfinished_jobs <= 500


class HeldClock:
    """Sandbox time that stands still until released, then runs on from where it stood."""

    def __init__(self) -> None:
        self._wall = SystemWallClock()
        self._held_at = self._wall.now()
        self._offset: float | None = None
        self._released = threading.Event()

    def now(self) -> float:
        offset = self._offset
        return self._held_at if offset is None else self._wall.now() - offset

    def release(self) -> None:
        if self._offset is None:
            self._offset = self._wall.now() - self._held_at
        self._released.set()

    def release_when(self, server: Sandbox, jobs: int) -> None:
        """Release once ``server`` has created ``jobs`` jobs (or release() was called)."""
        while not self._released.wait(0.01):
            if server.stats.jobs_created >= jobs:
                self.release()


class TestBadInputRaisesBeforeSending:
    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"prompt": "Number: {num}"}, npd.TemplateError, r"(?s)\{num\}.*Number: \{num\}.*'n'"),
            ({"prompt": "Number: {n"}, npd.TemplateError, "Number: {n"),
            (
                {"output": {"type": "object", "properties": {"a": {"type": "strin"}}}},
                npd.SchemaError,
                "type",
            ),
            ({"output": {"type": "string"}}, npd.SchemaError, "object"),
            ({"concurrency": 0}, ValueError, "concurrency"),
            ({"errors": "ignore"}, ValueError, "errors"),
            ({"temperature": 1.5}, ValueError, "temperature"),
            ({"max_tokens": 0}, ValueError, "max_tokens"),
            ({"timeout": -1}, ValueError, "timeout"),
            ({"base_url": "http://example.com"}, npd.ConfigurationError, "clear text"),
        ],
        ids=[
            "missing-column",
            "malformed-template",
            "bad-schema-type",
            "non-object-schema",
            "concurrency",
            "errors",
            "temperature",
            "max-tokens",
            "timeout",
            "insecure-url",
        ],
    )
    def test_bad_input(
        self,
        sandbox: Sandbox,
        target: dict[str, str],
        kwargs: dict[str, Any],
        error: type[Exception],
        message: str,
    ) -> None:
        """A bad template, schema or option raises a clear error and sends no request."""
        call: dict[str, Any] = {"prompt": "Number: {n}", "output": Parity, **target}
        call.update(kwargs)
        prompt = call.pop("prompt")
        with pytest.raises(error, match=message):
            numbers(3).narrative.infer(prompt, progress=False, **call)
        assert sandbox.stats.requests == 0

    def test_missing_column_is_a_key_error(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A missing placeholder column is also a KeyError, naming the columns that exist."""
        with pytest.raises(KeyError) as caught:
            numbers(2).narrative.infer("{review}", output=Parity, progress=False, **target)
        assert "review" in str(caught.value) and "'n'" in str(caught.value)

    def test_missing_key(self, sandbox: Sandbox) -> None:
        """No key anywhere: a clear error that says how to set one, before any request."""
        with pytest.raises(npd.ConfigurationError, match="NARRATIVE_API_KEY"):
            numbers(2).narrative.infer(
                "Number: {n}",
                output=Parity,
                base_url=sandbox.base_url,
                data_plane_id=sandbox.data_plane_id,
                progress=False,
            )
        assert sandbox.stats.requests == 0

    def test_invalid_key_raises_after_one_request(self, sandbox: Sandbox) -> None:
        """A 401 is a run-level error: it raises at once and nothing more is sent."""
        with pytest.raises(npd.AuthenticationError) as caught:
            numbers(50).narrative.infer(
                "Number: {n}",
                output=Parity,
                api_key="sk-wrong-key-123",
                base_url=sandbox.base_url,
                data_plane_id=sandbox.data_plane_id,
                progress=False,
            )
        assert "sk-wrong-key-123" not in str(caught.value)
        assert sandbox.stats.requests == 1

    def test_an_unreachable_service_raises_instead_of_retrying_for_minutes(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nothing listens at base_url: once the client's own retries are spent, the run stops
        with the connection error, naming base_url, and no row is put back in the queue."""
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        client = npd.Client(
            api_key="sk-test",
            base_url=f"http://127.0.0.1:{port}",
            data_plane_id="dp",
            max_retries=1,
        )
        with (
            caplog.at_level("INFO", logger="narrative_pandas"),
            pytest.raises(npd.APIConnectionError) as caught,
        ):
            numbers(50).narrative.infer(
                "Number: {n}", output=Parity, client=client, cache=False, progress=False
            )
        assert f"could not talk to http://127.0.0.1:{port}" in str(caught.value)
        assert "base_url" in str(caught.value)
        assert "requeueing" not in caplog.text

    def test_unknown_data_plane_raises_after_one_request(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """An unknown data plane (404) stops the run at the first request."""
        call = {**target, "data_plane_id": "00000000-0000-0000-0000-000000000000"}
        with pytest.raises(npd.NotFoundError):
            numbers(50).narrative.infer("Number: {n}", output=Parity, progress=False, **call)
        assert sandbox.stats.requests == 1
        assert sandbox.stats.jobs_created == 0

    def test_preview_sends_nothing(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """preview returns the exact bodies that would be sent, without a request or a key."""
        df = pd.DataFrame({"n": [1, 1, 2]}, index=["x", "y", "z"])
        view = df.narrative.preview(
            "Number: {n}",
            output=Parity,
            system="Be exact.",
            temperature=0,
            data_plane_id=target["data_plane_id"],
        )
        assert sandbox.stats.requests == 0
        assert list(view.index) == ["x", "y", "z"]
        body = view["body"].iloc[0]
        assert body["messages"] == [
            {"role": "system", "text": "Be exact."},
            {"role": "user", "text": "Number: 1"},
        ]
        assert body["inference_config"]["temperature"] == 0
        assert body["inference_config"]["output_format_schema"] == Parity.model_json_schema()
        assert body["data_plane_id"] == target["data_plane_id"]
        assert view["request_key"].iloc[0] == view["request_key"].iloc[1]
        assert view["request_key"].iloc[0] != view["request_key"].iloc[2]


class TestRowLevelFaults:
    def test_failed_jobs_land_on_their_rows(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """Jobs that fail give their rows the failure message; the others are complete."""
        sandbox.configure(failure_rate=0.3, responder=parity_responder)
        df = numbers(60)
        with pytest.warns(npd.RowsFailedWarning, match="of 60 rows"):
            out = df.narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        failed_jobs = {j["job_id"] for j in sandbox.jobs() if j["state"] == "failed"}
        assert 5 < len(failed_jobs) < 40
        for job_id, error, parity in zip(
            out["narrative_job_id"], out["narrative_error"], out["parity"], strict=True
        ):
            if job_id in failed_jobs:
                assert isinstance(error, str) and error
                assert pd.isna(parity)
            else:
                assert pd.isna(error)
                assert parity in ("even", "odd")
        assert out.attrs["narrative"]["failed_rows"] == len(failed_jobs)

    def test_errors_raise_carries_the_partial_result(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """errors="raise" raises after the run with the whole frame in .result."""
        sandbox.configure(failure_rate=0.3)
        with pytest.raises(npd.RowsFailedError) as caught:
            numbers(30).narrative.infer(
                "Number: {n}", output=Parity, errors="raise", progress=False, **target
            )
        result = caught.value.result
        assert len(result) == 30
        assert result["narrative_error"].notna().sum() == caught.value.failed > 0
        assert result["parity"].notna().sum() == 30 - caught.value.failed

    def test_invalid_output_is_a_row_error(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """An output that breaks the schema becomes that row's error, not a crash."""

        def sometimes_wrong(request: dict[str, Any]) -> dict[str, Any]:
            answer = parity_responder(request)
            if answer["double"] == 4:
                answer["parity"] = "maybe"
            return answer

        sandbox.configure(responder=sometimes_wrong, validate_responder=False)
        with pytest.warns(npd.RowsFailedWarning):
            out = numbers(4).narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        assert out["narrative_error"].notna().tolist() == [False, False, True, False]
        assert "maybe" in out["narrative_error"].iloc[2]
        assert out["narrative_job_id"].notna().all()

    def test_rate_limits_with_retry_after(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """429s with Retry-After slow the run down but every row completes, no job twice."""
        sandbox.configure(max_unfinished_jobs=5)
        out = numbers(30).narrative.infer(
            "Number: {n}", output=Parity, concurrency=15, progress=False, **target
        )
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 30
        assert sandbox.stats.duplicate_submissions == 0

    def test_server_errors_are_retried(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """Random 500/502/503 answers: every row still ends completed, no request twice."""
        sandbox.configure(error_rate=0.15, seed=3)
        out = numbers(60).narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.count(status=500) + sandbox.stats.count(status=503) > 0
        assert sandbox.stats.jobs_created == 60
        assert sandbox.stats.duplicate_submissions == 0

    def test_post_that_creates_a_job_and_answers_500(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A POST that created its job but answered 500 is reconciled, never submitted twice."""
        sandbox.configure(post_500_after_create_rate=0.3, seed=5)
        out = numbers(40).narrative.infer("Number: {n}", output=Parity, progress=False, **target)
        assert out["narrative_error"].isna().all()
        assert sandbox.stats.count(method="POST", status=500) > 0
        assert sandbox.stats.jobs_created == 40
        assert sandbox.stats.duplicate_submissions == 0
        assert out.attrs["narrative"]["reconciled_jobs"] == sandbox.stats.count(
            method="POST", status=500
        )

    def test_per_job_timeout(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A job still unfinished after `timeout` seconds ends its row with a timeout error."""
        sandbox.configure(queue_latency=30.0)
        with pytest.warns(npd.RowsFailedWarning):
            out = numbers(3).narrative.infer(
                "Number: {n}", output=Parity, timeout=0.3, progress=False, **target
            )
        assert out["narrative_error"].str.startswith("timed out after 0.3s").all()
        assert out["narrative_job_id"].notna().all()


class TestEventLoops:
    def test_infer_inside_a_running_loop(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """infer works when called from inside a running event loop, as in a Jupyter cell."""

        async def cell() -> pd.DataFrame:
            return numbers(5).narrative.infer(
                "Number: {n}", output=Parity, progress=False, **target
            )

        out = asyncio.run(cell())
        assert out["narrative_error"].isna().all()

    async def test_ainfer(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """await df.narrative.ainfer gives the same frame as infer."""
        sandbox.configure(responder=parity_responder)
        df = numbers(8)
        out = await df.narrative.ainfer("Number: {n}", output=Parity, progress=False, **target)
        check_parity_rows(out, df)

    async def test_explicit_client_on_the_callers_loop(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """An explicit client= is used on the caller's loop and wins over settings."""
        sandbox.configure(responder=parity_responder)
        async with npd.Client(**target) as client:
            out = await numbers(6).narrative.ainfer(
                "Number: {n}", output=Parity, client=client, progress=False
            )
            assert client.stats.by_route[("POST", "/model-inference/run")] == 6
        check_parity_rows(out, numbers(6))


class TestSecrets:
    def test_key_never_in_reprs_or_report(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """The key appears in no repr, report or frame."""
        run = numbers(3).narrative.start("Number: {n}", output=Parity, progress=False, **target)
        out = run.result()
        for text in (repr(run), str(out.attrs), out.to_csv(), repr(npd.Client(**target))):
            assert target["api_key"] not in text
