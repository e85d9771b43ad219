"""The public surface: a sorted, complete __all__, and wire models that match the contract."""

from __future__ import annotations

import inspect
import types

import pytest
from pydantic import ValidationError

import narrative_pandas as npd
from narrative_pandas._config import ApiKey, resolve_settings
from narrative_pandas._models import request_fingerprint


class TestAll:
    def test_all_is_sorted(self) -> None:
        """__all__ is sorted (constants first, as ruff's isort-style ordering puts them)."""
        assert npd.__all__ == sorted(npd.__all__, key=lambda n: (not n.isupper(), n))

    def test_all_is_complete(self) -> None:
        """Every public name the package exposes is in __all__, and every name there exists."""
        public = {
            name
            for name in dir(npd)  # dir: the lazily imported names too
            if not name.startswith("_")
            and not isinstance(getattr(npd, name), types.ModuleType)
            and name not in ("annotations", "TYPE_CHECKING", "Any")
        }
        assert public - {"sandbox", "dask", "data"} == set(npd.__all__) - {"__version__"}
        for name in npd.__all__:
            assert hasattr(npd, name), name

    def test_accessor_methods_show_every_option(self) -> None:
        """df.narrative.infer? lists the same options as npd.start."""
        import pandas as pd

        method = pd.DataFrame().narrative.infer
        options = set(inspect.signature(method).parameters)
        assert set(inspect.signature(npd.start).parameters) - {"df"} <= options
        assert "Examples" in (method.__doc__ or "")


class TestWireModels:
    def base(self, **config: object) -> dict[str, object]:
        return {
            "data_plane_id": "dp",
            "model": "anthropic.claude-haiku-4.5",
            "messages": [{"role": "user", "text": "hi"}],
            "inference_config": {"output_format_schema": {"type": "object"}, **config},
        }

    def test_none_fields_are_left_out(self) -> None:
        """The JSON sent has no null fields."""
        body = npd.ModelInferenceRunRequest.model_validate(self.base(max_tokens=5)).to_body()
        assert body == {
            "data_plane_id": "dp",
            "model": "anthropic.claude-haiku-4.5",
            "messages": [{"role": "user", "text": "hi"}],
            "inference_config": {"output_format_schema": {"type": "object"}, "max_tokens": 5},
        }

    @pytest.mark.parametrize(
        "config",
        [{"max_tokens": 0}, {"temperature": 1.5}, {"top_p": -0.1}, {"stop_sequences": "x"}],
    )
    def test_out_of_range_values_fail_in_the_model(self, config: dict[str, object]) -> None:
        """Out-of-range settings fail before any request."""
        with pytest.raises(ValidationError):
            npd.ModelInferenceRunRequest.model_validate(self.base(**config))

    def test_messages_must_not_be_empty_and_roles_are_checked(self) -> None:
        """At least one message; roles are system, user or assistant."""
        with pytest.raises(ValidationError):
            npd.ModelInferenceRunRequest.model_validate({**self.base(), "messages": []})
        with pytest.raises(ValidationError):
            npd.InferenceMessage.model_validate({"role": "bot", "text": "x"})

    def test_unknown_model_is_sent_with_a_warning(self) -> None:
        """An unknown model id warns but is kept."""
        with pytest.warns(UserWarning, match="not one narrative_pandas knows"):
            request = npd.ModelInferenceRunRequest.model_validate(
                {**self.base(), "model": "acme.new-model"}
            )
        assert request.model == "acme.new-model"

    def test_job_is_lenient(self) -> None:
        """Jobs keep unknown fields, accept unknown states and zone-less timestamps."""
        job = npd.Job.model_validate(
            {
                "job_id": "j1",
                "state": "warming_up",
                "created_at": "2026-01-29T11:19:13.400498",
                "failures": None,
                "shard": 7,
            }
        )
        assert job.id == "j1" and not job.is_terminal
        assert job.created_at is not None and job.created_at.tzinfo is not None
        assert job.model_extra == {"shard": 7}
        for state in ("completed", "failed", "cancelled"):
            assert npd.Job(job_id="x", state=state).is_terminal
        assert not npd.Job(job_id="x", state="pending_cancellation").is_terminal

    def test_jobs_page_old_shape(self) -> None:
        """A page with only records parses."""
        page = npd.JobsPage.model_validate({"records": [{"job_id": "a"}]})
        assert [j.job_id for j in page.records] == ["a"] and page.total_records is None

    def test_fingerprint_ignores_tags(self) -> None:
        """Tags never split a cache hit; the content does."""
        body = self.base()
        assert request_fingerprint(body) == request_fingerprint({**body, "tags": ["x"]})
        assert request_fingerprint(body) != request_fingerprint({**body, "model": "m"})


class TestSecrets:
    def test_key_is_masked(self) -> None:
        """Settings and keys never show the key."""
        settings = resolve_settings("sk-very-secret", "https://api.narrative.io", "dp")
        assert "sk-very-secret" not in repr(settings)
        assert "sk-very-secret" not in str(ApiKey("sk-very-secret"))
        assert settings.require_key().reveal() == "sk-very-secret"


class TestTimestamps:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-01-29T11:19:13.400498", "2026-01-29T11:19:13.400498+00:00"),
            ("2026-01-29T11:19:13.4Z", "2026-01-29T11:19:13.400000+00:00"),
            ("2026-01-29 11:19:13", "2026-01-29T11:19:13+00:00"),
            ("2026-01-29T11:19:13.123456789+02:00", "2026-01-29T11:19:13.123456+02:00"),
            (" 2026-01-29T11:19:13.5z ", "2026-01-29T11:19:13.500000+00:00"),
            ("2026-01-29T11:19:13.1234567", "2026-01-29T11:19:13.123456+00:00"),
        ],
    )
    def test_lenient_parsing(self, text: str, expected: str) -> None:
        """Zone-less, Z-suffixed, space-separated and odd-precision timestamps all parse."""
        from narrative_pandas._models import parse_timestamp

        parsed = parse_timestamp(text)
        assert parsed is not None and parsed.isoformat() == expected

    def test_garbage_is_none(self) -> None:
        """A timestamp that cannot be read is None, not an error."""
        from narrative_pandas._models import parse_timestamp

        assert parse_timestamp("yesterday") is None
