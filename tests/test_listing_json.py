"""Listing pages read for polling keep only what polling reads, whatever shape the server sends."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest
from test_transport_paths import ScriptedServer, as_json, client_on
from test_transport_paths import server as server  # the fixture: a scripted uvicorn server

from narrative_pandas._client import Client
from narrative_pandas._listing_json import BRIEF_FIELDS, brief_page
from narrative_pandas._models import JobRecord
from narrative_pandas.sandbox import Sandbox

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["label"],
}


def record(job_id: str) -> dict[str, Any]:
    """A listing record as the service sends it: most of its bytes are the request."""
    return {
        "job_id": job_id,
        "type": "model_inference",
        "input": {"messages": [{"role": "user", "text": "x" * 500}], "tags": ["t"]},
        "request_source": {"type": "api_user"},
        "idempotency_key": "k",
        "state": "completed",
        "result": {"structured_output": {"label": "yes"}, "usage": {"total_tokens": 3}},
        "failures": [],
        "created_at": "2026-01-01T00:00:00",
        "updated_at": "2026-01-01T00:00:01",
        "ended_at": "2026-01-01T00:00:01",
    }


class TestBriefPage:
    def test_records_keep_only_the_fields_polling_reads(self) -> None:
        page = {"current_page": 1, "total_records": 2, "records": [record("a"), record("b")]}
        brief = brief_page(json.dumps(page).encode())
        assert brief["total_records"] == 2 and brief["current_page"] == 1
        assert [sorted(r) for r in brief["records"]] == [
            sorted(set(BRIEF_FIELDS) & set(record("a")))
        ] * 2
        assert "input" not in brief["records"][0]
        assert brief["records"][0]["result"] == record("a")["result"]

    @pytest.mark.parametrize(
        "body",
        [b"[]", b'{"records": null}', b'{"records": [1, "x"]}', b"\xff\xfe", b"not json"],
    )
    def test_other_shapes_are_refused_for_the_caller_to_read_whole(self, body: bytes) -> None:
        with pytest.raises(ValueError):
            brief_page(body)


class TestBriefListingOverHTTP:
    """``list_jobs_raw(brief=True)`` over a real socket, on every transport path."""

    @pytest.mark.parametrize("path", ["wire", "httpx-client"])
    async def test_brief_and_whole_pages_agree_on_what_polling_reads(
        self, path: str, server: tuple[ScriptedServer, str]
    ) -> None:
        scripted, base = server
        by_id = {name: value for name, value in record("b").items() if name != "job_id"}
        page = {"records": [record("a"), {**by_id, "id": "b"}]}
        scripted.script = [as_json(page), as_json(page)]
        async with client_on(path, base) as client:
            brief = await client.list_jobs_raw(brief=True)
            whole = await client.list_jobs_raw()
        assert [r["job_id"] for r in brief["records"]] == ["a", "b"]
        assert "input" in whole["records"][0] and "input" not in brief["records"][0]
        for cut, full in zip(brief["records"], whole["records"], strict=True):
            assert cut == {name: full[name] for name in cut}
            assert JobRecord.of(cut).output == JobRecord.of(full).output

    @pytest.mark.parametrize(
        ("page", "records"),
        [
            ([{"id": "a"}], [{"id": "a", "job_id": "a"}]),  # a bare list (older servers)
            ({"records": [{"id": "a"}], "extra": 1}, [{"id": "a", "job_id": "a"}]),
            ({"records": None}, []),
            (
                {"records": [{"id": "a", "input": {}}, None]},
                [{"id": "a", "input": {}, "job_id": "a"}, None],
            ),
        ],
    )
    async def test_odd_pages_are_read_whole_as_before(
        self, page: Any, records: list[Any], server: tuple[ScriptedServer, str]
    ) -> None:
        scripted, base = server
        scripted.script = [as_json(page)]
        async with client_on("wire", base) as client:
            got = await client.list_jobs_raw(brief=True)
        assert got["records"] == records


class TestAnswersShareTheirStrings:
    def test_two_rows_answers_share_keys_and_labels(self) -> None:
        """A brief decode makes new strings per record; the answers a run keeps share them
        again (one copy per distinct key or label, as a whole-page decode gave)."""
        page = brief_page(json.dumps({"records": [record("a"), record("b")]}).encode())
        first, second = (JobRecord.of(r).output for r in page["records"])
        assert first == second == {"label": "yes"}
        assert next(iter(first)) is next(iter(second))
        assert first["label"] is second["label"]

    def test_a_run_through_the_sandbox_reads_brief_pages(self) -> None:
        """End to end: the run polls through the listing and every row gets its answer."""
        df = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
        with Sandbox(run_latency=0.05) as sandbox:
            client = Client(sandbox.api_key, sandbox.base_url, data_plane_id=sandbox.data_plane_id)
            out = df.narrative.infer(
                "Is {text} fine?", output=SCHEMA, client=client, progress=False, cache=False
            )
            listings = sandbox.stats.count(method="GET", path="/jobs")
            assert sandbox.stats.jobs_created == 40 and sandbox.stats.duplicates == 0
        assert listings >= 1
        assert out["narrative_error"].isna().all()
        assert set(out["label"]) <= {"yes", "no"}
