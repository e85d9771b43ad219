"""The sandbox's wire format over real HTTP, checked against the REST contract field by field."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import SENTIMENT_SCHEMA as SCHEMA

from narrative_pandas._clock import FakeClock
from narrative_pandas.sandbox import DEFAULT_DATA_PLANE_ID, Sandbox

JOB_FIELDS = {
    "job_id",
    "data_plane_id",
    "type",
    "state",
    "input",
    "result",
    "failures",
    "request_source",
    "executor",
    "execution_cluster",
    "idempotency_key",
    "created_at",
    "updated_at",
    "ended_at",
}
PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance", "logId"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def body(text: str = "Great product, loved it.", **changes: Any) -> dict[str, Any]:
    """A valid run request for the default data plane."""
    request: dict[str, Any] = {
        "data_plane_id": DEFAULT_DATA_PLANE_ID,
        "model": "anthropic.claude-haiku-4.5",
        "messages": [
            {"role": "system", "text": "You label reviews."},
            {"role": "user", "text": text},
        ],
        "inference_config": {"output_format_schema": copy.deepcopy(SCHEMA)},
    }
    request.update(changes)
    return request


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(scope="module")
def sandbox(clock: FakeClock) -> Iterator[Sandbox]:
    with Sandbox(clock=clock, queue_latency=1.0, run_latency=2.0) as sb:
        yield sb


@pytest.fixture
def http(sandbox: Sandbox) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    with httpx.Client(base_url=sandbox.base_url, headers=headers) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, path: str) -> dict[str, Any]:
    """The answer is an RFC 7807-like error body with every field."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    problem: dict[str, Any] = response.json()
    assert set(problem) == PROBLEM_FIELDS
    assert problem["status"] == status
    assert problem["instance"] == path
    assert isinstance(problem["title"], str) and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    assert isinstance(problem["logId"], str) and len(problem["logId"]) >= 8
    return problem


class TestServer:
    def test_serves_on_loopback_with_a_generated_key(self, sandbox: Sandbox) -> None:
        """The sandbox listens on 127.0.0.1 and makes an sk-sandbox- key."""
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sandbox.base_url)
        assert sandbox.api_key.startswith("sk-sandbox-")
        assert sandbox.data_plane_id == DEFAULT_DATA_PLANE_ID
        assert str(uuid.UUID(DEFAULT_DATA_PLANE_ID)) == DEFAULT_DATA_PLANE_ID

    def test_repr_hides_the_key(self, sandbox: Sandbox) -> None:
        """The key never shows in the sandbox's repr."""
        assert sandbox.api_key not in repr(sandbox)
        assert sandbox.base_url in repr(sandbox)

    def test_stop_frees_the_port(self) -> None:
        """After stop(), the port no longer answers."""
        with Sandbox() as sb:
            url = sb.base_url
            assert sb.running
        assert not sb.running
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/jobs", timeout=2)


class TestRun:
    def test_answers_a_uuid4_job_id(self, http: httpx.Client) -> None:
        """A valid POST is answered 200 with exactly {"job_id": uuid4}."""
        response = http.post("/model-inference/run", json=body())
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        data = response.json()
        assert set(data) == {"job_id"}
        assert uuid.UUID(data["job_id"]).version == 4

    def test_accepts_content_block_messages(self, http: httpx.Client) -> None:
        """The content-block message shape is accepted like the text shape."""
        request = body(
            messages=[
                {"role": "system", "content": [{"type": "text", "text": "You label reviews."}]},
                {"role": "user", "content": [{"type": "text", "text": "Nice"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "{}"}]},
                {"role": "user", "text": "Again"},
            ]
        )
        assert http.post("/model-inference/run", json=request).status_code == 200

    def test_accepts_every_optional_field(self, http: httpx.Client) -> None:
        """max_tokens, temperature, top_p, stop_sequences and tags at their limits pass."""
        request = body(tags=[], extra_field="ignored")
        request["inference_config"].update(
            max_tokens=4096, temperature=0, top_p=1, stop_sequences=[]
        )
        assert http.post("/model-inference/run", json=request).status_code == 200
        request["inference_config"].update(temperature=1.0, top_p=0.0, stop_sequences=["END"])
        request["tags"] = ["a", "b"]
        assert http.post("/model-inference/run", json=request).status_code == 200

    @pytest.mark.parametrize(
        ("headers", "case"),
        [
            ({}, "no header"),
            ({"Authorization": "Bearer sk-sandbox-wrong"}, "wrong key"),
            ({"Authorization": "Basic abc"}, "wrong scheme"),
            ({"Authorization": "Bearer"}, "empty key"),
        ],
    )
    def test_401_without_the_right_key(
        self, sandbox: Sandbox, headers: dict[str, str], case: str
    ) -> None:
        """Missing or wrong keys are answered 401 with a problem body and no job."""
        created = sandbox.stats.jobs_created
        response = httpx.post(
            sandbox.base_url + "/model-inference/run", json=body(), headers=headers
        )
        assert_problem(response, 401, "/model-inference/run")
        assert sandbox.api_key not in response.text
        assert sandbox.stats.jobs_created == created

    def test_401_on_every_route(self, sandbox: Sandbox) -> None:
        """Reads need the key too."""
        assert_problem(httpx.get(sandbox.base_url + "/jobs"), 401, "/jobs")
        assert_problem(httpx.get(sandbox.base_url + "/jobs/x"), 401, "/jobs/x")

    @pytest.mark.parametrize(
        "raw",
        [b"{not json", b"", b"[1, 2]", b'"text"', b'{"data_plane_id": NaN}'],
    )
    def test_400_for_malformed_bodies(self, http: httpx.Client, raw: bytes) -> None:
        """Bodies that are not a JSON object are answered 400."""
        response = http.post(
            "/model-inference/run", content=raw, headers={"Content-Type": "application/json"}
        )
        assert_problem(response, 400, "/model-inference/run")

    @pytest.mark.parametrize(
        ("path", "value", "field"),
        [
            (("data_plane_id",), None, "data_plane_id"),
            (("data_plane_id",), 7, "data_plane_id"),
            (("model",), None, "model"),
            (("model",), ["x"], "model"),
            (("messages",), None, "messages"),
            (("messages",), [], "messages"),
            (("messages",), "hello", "messages"),
            (("messages", 1, "role"), "robot", "messages[1].role"),
            (("messages", 1, "text"), 5, "messages[1].text"),
            (("messages", 0), "hi", "messages[0]"),
            (("messages", 1), {"role": "user"}, "messages[1]"),
            (("messages", 1), {"role": "user", "content": [{"type": "image"}]}, "messages[1]"),
            (("inference_config",), None, "inference_config"),
            (("inference_config",), "x", "inference_config"),
            (("inference_config", "output_format_schema"), None, "output_format_schema"),
            (("inference_config", "output_format_schema"), [1], "output_format_schema"),
            (("inference_config", "output_format_schema"), True, "output_format_schema"),
            (("inference_config", "max_tokens"), 0, "max_tokens"),
            (("inference_config", "max_tokens"), -5, "max_tokens"),
            (("inference_config", "max_tokens"), 1.5, "max_tokens"),
            (("inference_config", "max_tokens"), True, "max_tokens"),
            (("inference_config", "temperature"), 1.5, "temperature"),
            (("inference_config", "temperature"), -0.1, "temperature"),
            (("inference_config", "temperature"), "hot", "temperature"),
            (("inference_config", "top_p"), 2, "top_p"),
            (("inference_config", "stop_sequences"), "END", "stop_sequences"),
            (("inference_config", "stop_sequences"), [1], "stop_sequences"),
            (("tags",), "a", "tags"),
            (("tags",), ["a", 2], "tags"),
        ],
    )
    def test_400_names_the_invalid_field(
        self, http: httpx.Client, path: tuple[Any, ...], value: Any, field: str
    ) -> None:
        """Each invalid or missing field is answered 400 with a detail that names it."""
        request = body()
        target: Any = request
        for key in path[:-1]:
            target = target[key]
        if value is None:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        response = http.post("/model-inference/run", json=request)
        problem = assert_problem(response, 400, "/model-inference/run")
        assert field in problem["detail"]

    def test_400_for_an_unknown_model(self, http: httpx.Client) -> None:
        """A model id outside the contract's list is refused with 400 naming it."""
        response = http.post("/model-inference/run", json=body(model="openai.gpt-9"))
        problem = assert_problem(response, 400, "/model-inference/run")
        assert "openai.gpt-9" in problem["detail"]

    @pytest.mark.parametrize(
        "model",
        [
            "anthropic.claude-haiku-4.5",
            "anthropic.claude-sonnet-4.5",
            "anthropic.claude-opus-4.5",
            "anthropic.claude-sonnet-4.6",
            "anthropic.claude-opus-4.6",
            "openai.gpt-oss-120b",
            "openai.gpt-4.1",
            "openai.o4-mini",
        ],
    )
    def test_accepts_every_contract_model(self, http: httpx.Client, model: str) -> None:
        """Every model id of the contract is accepted."""
        assert http.post("/model-inference/run", json=body(model=model)).status_code == 200

    @pytest.mark.parametrize(
        "schema",
        [
            {"type": "strnig"},
            {"type": "object", "properties": {"a": {"minLength": -1}}},
            {"type": "string", "pattern": "(unclosed"},
            {"type": "object", "required": "label"},
            {"enum": "not-a-list"},
        ],
    )
    def test_400_for_an_invalid_schema(self, http: httpx.Client, schema: dict[str, Any]) -> None:
        """A schema that is not valid Draft 2020-12 is answered 400 naming the field."""
        request = body(inference_config={"output_format_schema": schema})
        problem = assert_problem(
            http.post("/model-inference/run", json=request), 400, "/model-inference/run"
        )
        assert "output_format_schema" in problem["detail"]

    def test_404_for_an_unknown_data_plane(self, http: httpx.Client) -> None:
        """An unknown data plane is answered 404 and creates nothing."""
        plane = str(uuid.uuid4())
        response = http.post("/model-inference/run", json=body(data_plane_id=plane))
        problem = assert_problem(response, 404, "/model-inference/run")
        assert plane in problem["detail"]

    def test_error_log_ids_differ(self, http: httpx.Client) -> None:
        """Every error answer carries its own logId."""
        ids = {
            http.post("/model-inference/run", json=body(model="x")).json()["logId"]
            for _ in range(3)
        }
        assert len(ids) == 3


class TestGetJob:
    def test_every_contract_field_while_pending(self, http: httpx.Client, sandbox: Sandbox) -> None:
        """A new job shows every field: pending, result null, failures empty, no ended_at."""
        request = body(tags=["t1"])
        job_id = http.post("/model-inference/run", json=request).json()["job_id"]
        response = http.get(f"/jobs/{job_id}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        job = response.json()
        assert set(job) == JOB_FIELDS
        assert job["job_id"] == job_id
        assert job["data_plane_id"] == DEFAULT_DATA_PLANE_ID
        assert job["type"] == "model_inference"
        assert job["state"] == "pending"
        assert job["input"] == request
        assert job["result"] is None
        assert job["failures"] == []
        assert isinstance(job["idempotency_key"], str) and job["idempotency_key"]
        assert job["request_source"] == {
            "type": "api_user",
            "company_id": 1,
            "user_id": job["request_source"]["user_id"],
        }
        assert isinstance(job["request_source"]["user_id"], int)
        assert isinstance(job["executor"], str)
        assert job["execution_cluster"] in ("dedicated", "shared")
        assert TIMESTAMP.match(job["created_at"])
        assert job["updated_at"] == job["created_at"]
        assert job["ended_at"] is None

    def test_running_then_completed(self, http: httpx.Client, clock: FakeClock) -> None:
        """With the clock moved past each latency, the job runs, then completes with a result."""
        job_id = http.post("/model-inference/run", json=body("Running test")).json()["job_id"]
        created = http.get(f"/jobs/{job_id}").json()
        clock.advance(1.5)
        running = http.get(f"/jobs/{job_id}").json()
        assert running["state"] == "running"
        assert running["result"] is None and running["ended_at"] is None
        assert running["updated_at"] > created["updated_at"]
        clock.advance(2.0)
        done = http.get(f"/jobs/{job_id}").json()
        assert done["state"] == "completed"
        assert TIMESTAMP.match(done["ended_at"])
        assert done["updated_at"] == done["ended_at"] > running["updated_at"]
        assert done["failures"] == []
        result = done["result"]
        assert set(result) == {"structured_output", "usage"}
        output = result["structured_output"]
        assert set(output) == {"label", "confidence"}
        assert output["label"] in ("positive", "negative", "neutral")
        assert 0 <= output["confidence"] <= 1
        usage = result["usage"]
        assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["prompt_tokens"] >= 1 and usage["completion_tokens"] >= 1

    def test_job_timelines_give_each_jobs_created_started_ended(
        self, http: httpx.Client, sandbox: Sandbox, clock: FakeClock
    ) -> None:
        """What benchmarks read to compare a client with the service's own pace."""
        before = len(sandbox.job_timelines())
        http.post("/model-inference/run", json=body("Timeline one"))
        clock.advance(0.25)
        http.post("/model-inference/run", json=body("Timeline two"))
        first, second = sandbox.job_timelines()[before:]
        now = clock.now()
        assert first == pytest.approx((now - 0.25, now + 0.75, now + 2.75))  # queue 1, run 2
        assert second == pytest.approx((now, now + 1.0, now + 3.0))

    @pytest.mark.parametrize("job_id", ["5f0c6a2e-8d1b-4c3a-9e7f-2b4d6a8c0e1f", "not-a-uuid"])
    def test_404_for_unknown_ids(self, http: httpx.Client, job_id: str) -> None:
        """Unknown job ids are answered 404 with a problem body."""
        assert_problem(http.get(f"/jobs/{job_id}"), 404, f"/jobs/{job_id}")


class TestListJobs:
    @pytest.fixture
    def fresh(self, clock: FakeClock) -> Iterator[tuple[Sandbox, httpx.Client]]:
        other_plane = str(uuid.uuid4())
        with Sandbox(
            clock=clock,
            queue_latency=1.0,
            run_latency=2.0,
            data_plane_ids=(DEFAULT_DATA_PLANE_ID, other_plane),
        ) as sb:
            headers = {"Authorization": f"Bearer {sb.api_key}"}
            with httpx.Client(base_url=sb.base_url, headers=headers) as client:
                yield sb, client

    def submit(self, client: httpx.Client, n: int, **changes: Any) -> list[str]:
        return [
            client.post("/model-inference/run", json=body(f"row {i}", **changes)).json()["job_id"]
            for i in range(n)
        ]

    async def submit_in_process(self, sandbox: Sandbox, n: int) -> None:
        """Create many jobs quickly, through the in-process transport."""
        headers = {"Authorization": f"Bearer {sandbox.api_key}"}
        async with httpx.AsyncClient(
            transport=sandbox.transport(), base_url="http://sandbox.localhost", headers=headers
        ) as client:
            for i in range(n):
                response = await client.post("/model-inference/run", json=body(f"row {i}"))
                assert response.status_code == 200

    def test_page_shape_and_default_order(self, fresh: tuple[Sandbox, httpx.Client]) -> None:
        """The answer has current_page, total_records, total_pages, records; newest first."""
        _, client = fresh
        ids = self.submit(client, 3)
        response = client.get("/jobs")
        assert response.status_code == 200
        page = response.json()
        assert set(page) == {"current_page", "total_records", "total_pages", "records"}
        assert (page["current_page"], page["total_records"], page["total_pages"]) == (1, 3, 1)
        assert [r["job_id"] for r in page["records"]] == ids[::-1]
        assert all(set(r) == JOB_FIELDS for r in page["records"])

    def test_created_at_asc(self, fresh: tuple[Sandbox, httpx.Client]) -> None:
        """order_by=created_at_asc lists oldest first."""
        _, client = fresh
        ids = self.submit(client, 3)
        records = client.get("/jobs", params={"order_by": "created_at_asc"}).json()["records"]
        assert [r["job_id"] for r in records] == ids

    def test_updated_at_orders_follow_transitions(
        self, fresh: tuple[Sandbox, httpx.Client], clock: FakeClock
    ) -> None:
        """updated_at orders put the job that changed last first (desc) or last (asc)."""
        sb, client = fresh
        first = self.submit(client, 1)[0]
        clock.advance(0.5)
        sb.configure(queue_latency=0.0, run_latency=0.1)
        second = self.submit(client, 1, messages=[{"role": "user", "text": "b"}])[0]
        clock.advance(0.2)  # second completed at +0.1; first still pending (ends at +3)
        clock.advance(0.5)  # first starts running at +1.0
        desc = client.get("/jobs", params={"order_by": "updated_at_desc"}).json()["records"]
        assert [(r["job_id"], r["state"]) for r in desc] == [
            (first, "running"),
            (second, "completed"),
        ]
        asc = client.get("/jobs", params={"order_by": "updated_at_asc"}).json()["records"]
        assert [r["job_id"] for r in asc] == [second, first]
        stamps = [r["updated_at"] for r in desc]
        assert stamps == sorted(stamps, reverse=True)

    def test_filters(self, fresh: tuple[Sandbox, httpx.Client], clock: FakeClock) -> None:
        """type, state and data_plane_id filter the records and the totals."""
        sb, client = fresh
        other = sb.config.data_plane_ids[1]
        mine = self.submit(client, 2)
        theirs = self.submit(client, 1, data_plane_id=other)
        clock.advance(1.5)
        sb.configure(queue_latency=5.0)
        late = self.submit(client, 1, messages=[{"role": "user", "text": "late"}])

        def ids(**params: str) -> tuple[int, list[str]]:
            page = client.get("/jobs", params=params).json()
            return page["total_records"], [r["job_id"] for r in page["records"]]

        assert ids(data_plane_id=other) == (1, theirs)
        assert ids(data_plane_id=DEFAULT_DATA_PLANE_ID) == (3, [*late, *mine[::-1]])
        assert ids(state="pending") == (1, late)
        assert ids(state="running", data_plane_id=DEFAULT_DATA_PLANE_ID) == (2, mine[::-1])
        assert ids(state="completed") == (0, [])
        assert ids(type="model_inference")[0] == 4
        assert ids(type="materialize_view") == (0, [])
        assert ids(data_plane_id=str(uuid.uuid4())) == (0, [])

    def test_paging(self, fresh: tuple[Sandbox, httpx.Client]) -> None:
        """per_page and offset page through the records; current_page follows the offset."""
        _, client = fresh
        ids = self.submit(client, 5)[::-1]
        page = client.get("/jobs", params={"per_page": 2, "offset": 2}).json()
        assert (page["current_page"], page["total_records"], page["total_pages"]) == (2, 5, 3)
        assert [r["job_id"] for r in page["records"]] == ids[2:4]
        last = client.get("/jobs", params={"per_page": 2, "offset": 4}).json()
        assert [r["job_id"] for r in last["records"]] == ids[4:]
        beyond = client.get("/jobs", params={"per_page": 2, "offset": 10}).json()
        assert beyond["records"] == [] and beyond["total_records"] == 5

    def test_per_page_defaults_to_100_and_is_capped_at_500(
        self, fresh: tuple[Sandbox, httpx.Client]
    ) -> None:
        """Without per_page 100 records come back; per_page above 500 gives 500."""
        sb, client = fresh
        asyncio.run(self.submit_in_process(sb, 501))
        default = client.get("/jobs").json()
        assert len(default["records"]) == 100 and default["total_pages"] == 6
        capped = client.get("/jobs", params={"per_page": 1000}).json()
        assert len(capped["records"]) == 500
        assert (capped["total_records"], capped["total_pages"]) == (501, 2)

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"order_by": "name"}, "order_by"),
            ({"per_page": "0"}, "per_page"),
            ({"per_page": "many"}, "per_page"),
            ({"offset": "-1"}, "offset"),
            ({"state": "sleeping"}, "state"),
        ],
    )
    def test_400_for_bad_parameters(
        self, http: httpx.Client, params: dict[str, str], field: str
    ) -> None:
        """Invalid query parameters are answered 400 naming them."""
        problem = assert_problem(http.get("/jobs", params=params), 400, "/jobs")
        assert field in problem["detail"]


class TestOtherRoutes:
    def test_unknown_route_is_a_problem_404(self, http: httpx.Client) -> None:
        """Paths outside the contract are answered 404 with a problem body."""
        assert_problem(http.get("/nothing/here"), 404, "/nothing/here")

    def test_wrong_method_is_a_problem_405(self, http: httpx.Client) -> None:
        """A wrong method is answered 405 with Allow and a problem body."""
        response = http.delete("/jobs")
        assert_problem(response, 405, "/jobs")
        assert "GET" in response.headers["allow"]


class TestContractShapes:
    @pytest.fixture
    def shaped(self, clock: FakeClock) -> Iterator[tuple[Sandbox, httpx.Client]]:
        with Sandbox(clock=clock, queue_latency=1.0, run_latency=2.0, foreign_jobs=3) as sb:
            headers = {"Authorization": f"Bearer {sb.api_key}"}
            with httpx.Client(base_url=sb.base_url, headers=headers) as client:
                yield sb, client

    def test_job_fields_are_shaped_as_the_contract_defines(
        self, shaped: tuple[Sandbox, httpx.Client]
    ) -> None:
        """execution_cluster dedicated|shared, a stable string idempotency_key, an api_user
        request_source with the key's user id."""
        _, client = shaped
        made = [client.post("/model-inference/run", json=body(f"r{i}")).json() for i in range(40)]
        jobs = [client.get(f"/jobs/{m['job_id']}").json() for m in made]
        assert {j["execution_cluster"] for j in jobs} == {"dedicated", "shared"}
        keys = [j["idempotency_key"] for j in jobs]
        assert all(isinstance(k, str) and k for k in keys) and len(set(keys)) == 40
        assert client.get(f"/jobs/{made[0]['job_id']}").json()["idempotency_key"] == keys[0]
        sources = {json_key(j["request_source"]) for j in jobs}
        assert len(sources) == 1
        source = jobs[0]["request_source"]
        assert set(source) == {"type", "company_id", "user_id"}
        assert (source["type"], source["company_id"]) == ("api_user", 1)

    def test_foreign_and_cancelled_jobs_carry_every_field(
        self, shaped: tuple[Sandbox, httpx.Client], clock: FakeClock
    ) -> None:
        """Other users' jobs and cancelled jobs show every contract field, with their states."""
        sb, client = shaped
        job_id = client.post("/model-inference/run", json=body("to cancel")).json()["job_id"]
        assert sb.cancel_job(job_id)
        records = client.get("/jobs", params={"order_by": "created_at_asc"}).json()["records"]
        assert [r["state"] for r in records] == ["pending"] * 3 + ["pending_cancellation"]
        for record in records:
            assert set(record) == JOB_FIELDS
            assert TIMESTAMP.match(record["created_at"]) and TIMESTAMP.match(record["updated_at"])
        foreign = records[0]
        assert foreign["request_source"]["user_id"] != records[-1]["request_source"]["user_id"]
        assert foreign["type"] == "model_inference" and foreign["input"]["tags"]
        clock.advance(1.0)
        cancelled = client.get(f"/jobs/{job_id}").json()
        assert cancelled["state"] == "cancelled"
        assert cancelled["result"] is None
        assert TIMESTAMP.match(cancelled["ended_at"])
        assert cancelled["updated_at"] == cancelled["ended_at"]
        assert [set(f) for f in cancelled["failures"]] == [{"message", "timestamp", "value"}]

    def test_errors_are_application_json(self, shaped: tuple[Sandbox, httpx.Client]) -> None:
        """Every error answer is application/json, as the service's description declares."""
        sb, client = shaped
        answers = [
            client.get("/jobs/nope"),
            client.post("/model-inference/run", json={}),
            client.get("/jobs", params={"per_page": "x"}),
            httpx.get(f"{sb.base_url}/jobs"),
        ]
        sb.outage(1.0)
        answers.append(client.get("/jobs"))
        assert [a.status_code for a in answers] == [404, 400, 400, 401, 503]
        assert {a.headers["content-type"] for a in answers} == {"application/json"}


def json_key(value: Any) -> str:
    """A hashable form of a JSON value."""
    return json.dumps(value, sort_keys=True)
