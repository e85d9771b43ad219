"""A bare ``import narrative_pandas`` registers the accessors and loads nothing heavy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from narrative_pandas.sandbox import Sandbox

HEAVY = (
    "aiohttp",
    "httpx",
    "jsonschema",
    "ipywidgets",
    "starlette",
    "uvicorn",
    "pydantic",
    "asyncio",
)

PROBE = """
import json, sys
import pandas as pd
import narrative_pandas as npd
report = {
    "loaded": sorted(m for m in %r if m in sys.modules),
    "own": sorted(m for m in sys.modules if m.startswith("narrative_pandas")),
    "df_accessor": hasattr(pd.DataFrame, "narrative"),
    "series_accessor": hasattr(pd.Series, "narrative"),
}
print(json.dumps(report))
"""


def probe(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter and return the JSON it printed last."""
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def bare() -> dict[str, object]:
    """What one fresh process reports after ``import pandas; import narrative_pandas``."""
    return probe(PROBE % (HEAVY,))


class TestBareImport:
    """What ``import narrative_pandas`` does in a fresh process (by sys.modules, not time)."""

    def test_loads_none_of_the_heavy_modules(self, bare: dict[str, object]) -> None:
        """None of the HTTP stack, jsonschema, ipywidgets, starlette, uvicorn, pydantic, asyncio."""
        assert bare["loaded"] == []

    def test_loads_only_the_light_modules_of_the_package(self, bare: dict[str, object]) -> None:
        """The engine, client, schema, sandbox and widget modules wait for first use."""
        own = bare["own"]
        assert own == [
            "narrative_pandas",
            "narrative_pandas._accessor",
            "narrative_pandas._config",
            "narrative_pandas._exceptions",
            "narrative_pandas._progress",
            "narrative_pandas._reasons",
            "narrative_pandas._tracebacks",
        ]

    def test_registers_both_accessors(self, bare: dict[str, object]) -> None:
        """DataFrame.narrative and Series.narrative exist right after the import."""
        assert bare["df_accessor"] is True
        assert bare["series_accessor"] is True

    @pytest.mark.parametrize(
        ("name", "module"),
        [("infer", "narrative_pandas._api"), ("Run", "narrative_pandas._run")],
    )
    def test_a_public_name_loads_its_module_on_first_use(self, name: str, module: str) -> None:
        """``npd.infer`` / ``npd.Run`` import their module when first touched, not before."""
        code = (
            "import json, sys; import narrative_pandas as npd; "
            f"before = {module!r} in sys.modules; npd.{name}; "
            f"print(json.dumps([before, {module!r} in sys.modules]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout
        assert json.loads(out) == [False, True]

    def test_dir_lists_every_public_name(self) -> None:
        """``dir(npd)`` shows the lazy names too (tab completion finds them)."""
        import narrative_pandas as npd

        assert set(npd.__all__) <= set(dir(npd))

    def test_unknown_name_is_an_attribute_error(self) -> None:
        """A misspelt name fails like any module attribute, naming the name."""
        import narrative_pandas as npd

        with pytest.raises(AttributeError, match="'infre'"):
            npd.infre  # noqa: B018


FIRST_INFER = """
import json, sys
import pandas as pd
from pydantic import BaseModel
from typing import Literal
import narrative_pandas as npd

class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative"]}, "n": {"type": "integer"}},
    "required": ["label", "n"],
    "additionalProperties": False,
}
output = Sentiment if sys.argv[1] == "model" else SCHEMA
MODEL = "anthropic.claude-haiku-4.5"
frame = pd.DataFrame({"review": ["Great kettle.", "Broke at once."]})
out = frame.narrative.infer("Review: {review}", output=output, model=MODEL, progress=False)
print(json.dumps({
    "loaded": sorted(m for m in ("jsonschema", "rfc3987_syntax") if m in sys.modules),
    "errors": [None if pd.isna(e) else e for e in out["narrative_error"]],
    "labels": [None if pd.isna(v) else v for v in out["label"]],
}))
"""


def wrong_n(request: dict[str, Any]) -> dict[str, Any]:
    """An answer whose ``n`` is a string: the schema says integer."""
    return {"label": "positive", "n": "three"}


class TestFirstInfer:
    """The first ``infer`` of a fresh process imports jsonschema only when an answer is wrong."""

    def run(self, target: dict[str, str], kind: str) -> dict[str, Any]:
        env = {
            **os.environ,
            "NARRATIVE_API_KEY": target["api_key"],
            "NARRATIVE_BASE_URL": target["base_url"],
            "NARRATIVE_DATA_PLANE_ID": target["data_plane_id"],
        }
        done = subprocess.run(
            [sys.executable, "-c", FIRST_INFER, kind], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def test_a_pydantic_output_never_loads_jsonschema(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Schema checked and answers validated (by pydantic) with jsonschema never imported."""
        report = self.run(target, "model")
        assert report["loaded"] == []
        assert report["errors"] == [None, None]
        assert sandbox.stats.jobs_created == 2

    def test_valid_answers_to_a_schema_dict_do_not_load_it(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A JSON Schema dict whose answers all follow it: the quick checks suffice."""
        report = self.run(target, "schema")
        assert report["loaded"] == []
        assert report["errors"] == [None, None]
        assert set(report["labels"]) <= {"positive", "negative"}

    def test_a_wrong_answer_loads_it_to_explain_why(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """jsonschema comes in to write the message naming the field and the expected type."""
        sandbox.configure(responder=wrong_n, validate_responder=False)
        report = self.run(target, "schema")
        assert "jsonschema" in report["loaded"]
        assert (
            report["errors"]
            == ["output does not match the schema: 'n': 'three' is not of type 'integer'"] * 2
        )
        assert report["labels"] == [None, None]

    def test_the_embedded_sandbox_does_not_load_it_either(self) -> None:
        """``use_sandbox()`` and a run on it: the sandbox checks the usual schemas quickly too."""
        code = (
            "import json, sys; import pandas as pd; import narrative_pandas as npd\n"
            "from narrative_pandas.data import REVIEW_PROMPT, ReviewLabel, load_reviews\n"
            "sb = npd.use_sandbox()\n"
            "out = load_reviews().head(5).narrative.infer(\n"
            "    REVIEW_PROMPT, output=ReviewLabel, progress=False)\n"
            "print(json.dumps([int(out['narrative_error'].notna().sum()), sb.stats.jobs_created,\n"
            "                  'jsonschema' in sys.modules]))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, 5, False]
