"""Settings a notebook user expects: what is typed in the session beats what the environment holds.

Order: arguments, then ``use_sandbox()``, then ``configure(...)``, then environment variables.
An authentication error says where the refused key came from, and never shows the key.
"""

from __future__ import annotations

import traceback

import pandas as pd
import pytest
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas._config import ApiKey, resolve_settings, set_sandbox_target
from narrative_pandas.sandbox import Sandbox

PROMPT = "Text: {text}"
WRONG = "sk-wrong-key-0123456789abcdef"


class Label(BaseModel):
    label: str
    score: float


def frame() -> pd.DataFrame:
    return pd.DataFrame({"text": ["a", "b"]})


class TestPrecedence:
    def test_configure_beats_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A stale NARRATIVE_* environment loses to configure(...) typed in the session."""
        monkeypatch.setenv("NARRATIVE_API_KEY", "key-env")
        monkeypatch.setenv("NARRATIVE_BASE_URL", "https://env.example")
        monkeypatch.setenv("NARRATIVE_DATA_PLANE_ID", "plane-env")
        settings = resolve_settings()
        assert settings.api_key == ApiKey("key-env")
        assert settings.key_source == "NARRATIVE_API_KEY (environment variable)"
        npd.configure(api_key="key-conf", base_url="https://conf.example", data_plane_id="p-conf")
        settings = resolve_settings()
        assert settings.api_key == ApiKey("key-conf")
        assert settings.base_url == "https://conf.example"
        assert settings.data_plane_id == "p-conf"
        assert settings.key_source == "narrative_pandas.configure(api_key=...)"

    def test_environment_fills_what_configure_left_out(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """configure(api_key=...) alone still takes the data plane from the environment."""
        monkeypatch.setenv("NARRATIVE_DATA_PLANE_ID", "plane-env")
        npd.configure(api_key="key-conf")
        settings = resolve_settings()
        assert (settings.api_key, settings.data_plane_id) == (ApiKey("key-conf"), "plane-env")

    def test_sandbox_beats_configure_and_arguments_beat_all(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """use_sandbox() wins over configure and environment; an argument wins over the sandbox."""
        monkeypatch.setenv("NARRATIVE_API_KEY", "key-env")
        npd.configure(api_key="key-conf")
        set_sandbox_target("key-sandbox", "http://127.0.0.1:9", "plane-sandbox")
        settings = resolve_settings()
        assert settings.api_key == ApiKey("key-sandbox")
        assert settings.key_source == "the sandbox (use_sandbox())"
        settings = resolve_settings(api_key="key-arg")
        assert settings.api_key == ApiKey("key-arg")
        assert settings.key_source == "the api_key= argument"

    def test_no_key_anywhere_says_how(self) -> None:
        """Without a key, the message names configure first (the notebook way), then the rest."""
        with pytest.raises(npd.ConfigurationError) as caught:
            frame().narrative.infer(PROMPT, output=Label, data_plane_id="p")
        message = str(caught.value)
        assert message.startswith("No Narrative API key. Call narrative_pandas.configure(")
        assert "NARRATIVE_API_KEY" in message and "use_sandbox()" in message


class TestAuthenticationSource:
    @pytest.mark.parametrize(
        ("how", "source"),
        [
            ("argument", "the api_key= argument"),
            ("configure", "narrative_pandas.configure(api_key=...)"),
            ("environment", "NARRATIVE_API_KEY (environment variable)"),
        ],
    )
    def test_401_names_where_the_key_came_from(
        self, how: str, source: str, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The 401 says which setting held the refused key, and the key is nowhere in it."""
        target = {"base_url": sandbox.base_url, "data_plane_id": sandbox.data_plane_id}
        if how == "argument":
            target["api_key"] = WRONG
        elif how == "configure":
            npd.configure(api_key=WRONG)
        else:
            monkeypatch.setenv("NARRATIVE_API_KEY", WRONG)
        with pytest.raises(npd.AuthenticationError) as caught:
            frame().narrative.infer(PROMPT, output=Label, progress=False, cache=False, **target)
        error = caught.value
        assert f"The key sent came from {source}: check or replace it there." in str(error)
        assert sandbox.stats.count("POST", "/model-inference/run", 401) == 1
        rendered = "".join(traceback.format_exception(error)) + repr(error) + str(error.args)
        assert WRONG not in rendered and WRONG[:12] not in rendered

    def test_configured_key_used_over_a_stale_environment(
        self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a stale key exported, configure(api_key=good) makes the run succeed."""
        monkeypatch.setenv("NARRATIVE_API_KEY", WRONG)
        npd.configure(api_key=sandbox.api_key)
        out = frame().narrative.infer(
            PROMPT,
            output=Label,
            progress=False,
            base_url=sandbox.base_url,
            data_plane_id=sandbox.data_plane_id,
        )
        assert out["narrative_status"].tolist() == ["completed", "completed"]
        assert sandbox.stats.count("POST", "/model-inference/run", 401) == 0
