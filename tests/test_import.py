"""A bare ``import narrative_pandas`` registers the accessors and loads nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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


class TestBareImport:
    """What ``import narrative_pandas`` does in a fresh process (by sys.modules, not time)."""

    def test_loads_none_of_the_heavy_modules(self) -> None:
        """None of the HTTP stack, jsonschema, ipywidgets, starlette, uvicorn, pydantic, asyncio."""
        assert probe(PROBE % (HEAVY,))["loaded"] == []

    def test_loads_only_the_light_modules_of_the_package(self) -> None:
        """The engine, client, schema, sandbox and widget modules wait for first use."""
        own = probe(PROBE % (HEAVY,))["own"]
        assert own == [
            "narrative_pandas",
            "narrative_pandas._accessor",
            "narrative_pandas._config",
            "narrative_pandas._exceptions",
            "narrative_pandas._progress",
            "narrative_pandas._reasons",
            "narrative_pandas._tracebacks",
        ]

    def test_registers_both_accessors(self) -> None:
        """DataFrame.narrative and Series.narrative exist right after the import."""
        report = probe(PROBE % (HEAVY,))
        assert report["df_accessor"] is True
        assert report["series_accessor"] is True

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
