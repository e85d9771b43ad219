"""A run's POST bodies are encoded once from shared parts and mean exactly the request's body."""

from __future__ import annotations

import json

import pandas as pd
from helpers import SENTIMENT_SCHEMA

from narrative_pandas._body import encode_body
from narrative_pandas._config import Settings
from narrative_pandas._job_request import JobRequest
from narrative_pandas._plan import build_plan


def plan_for(df: pd.DataFrame, tags: list[str]) -> list[JobRequest]:
    settings = Settings(api_key=None, base_url="http://127.0.0.1:1", data_plane_id="dp-ø")
    plan = build_plan(df, "Review: {review}", output=SENTIMENT_SCHEMA, settings=settings, tags=tags)
    return plan.requests


class TestEncodedBody:
    """The bytes a run sends decode to ``JobRequest.body``, whatever the text holds."""

    def test_bytes_decode_to_the_body(self) -> None:
        """Quotes, backslashes, newlines, non-ASCII and emoji survive; the keys keep their order."""
        texts = ['say "hi"\\n', "line\nbreak\ttab", "café ø 日本 🎉", "\x00\x1f control", ""]
        requests = plan_for(pd.DataFrame({"review": texts}), tags=["batch-7", "ünï"])
        assert len(requests) == len(texts)
        for request in requests:
            encoded = encode_body(request)
            assert json.loads(encoded.content) == request.body
            assert list(json.loads(encoded.content)) == list(request.body)
            assert encoded.data_plane_id == "dp-ø"

    def test_several_turns_and_system(self) -> None:
        """A system turn and a user turn are both sent, in order."""
        settings = Settings(api_key=None, base_url="http://127.0.0.1:1", data_plane_id="dp")
        plan = build_plan(
            pd.DataFrame({"review": ["a", "b"]}),
            "Review: {review}",
            system="Be brief.",
            output=SENTIMENT_SCHEMA,
            settings=settings,
        )
        for request in plan.requests:
            body = json.loads(encode_body(request).content)
            assert body == request.body
            assert [m["role"] for m in body["messages"]] == ["system", "user"]
