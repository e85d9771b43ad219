"""The fast paths behind ``preview`` and the plan: the same keys, bodies and requests as before.

``build_plan`` writes each row's canonical JSON directly and hashes it from the shared head's
state; ``RunPlan.row_bodies`` builds every row's body in one pass. These tests pin both to the
definitions they replace (``request_fingerprint`` of the body, ``JobRequest.body``).
"""

from __future__ import annotations

import gc

import pandas as pd
import pytest
from helpers import SENTIMENT_SCHEMA

import narrative_pandas  # noqa: F401  (registers DataFrame.narrative)
from narrative_pandas._config import resolve_settings
from narrative_pandas._models import request_fingerprint
from narrative_pandas._plan import build_plan, no_cyclic_gc

TEXTS = [
    "plain",
    'a "quote" and a \\ backslash',
    "a newline\nand a\ttab",
    "émoji 😀 and ünïcode",
    "line\u2028separator",
    "\x00control\x1f",
    "{braces}",
    "",
    None,
    "plain",
]
SHAPES = {
    "prompt": {"prompt": "Text: {t} #{n}"},
    "system": {"prompt": "Text: {t}", "system": "Système {n}"},
    "messages": {
        "prompt": None,
        "messages": [
            {"role": "system", "text": "S"},
            {"role": "user", "text": "U {t}"},
            {"role": "assistant", "text": "A"},
            {"role": "user", "text": "again {n}"},
        ],
    },
}


@pytest.fixture
def frame() -> pd.DataFrame:
    """Text that JSON must escape, a missing value and a duplicate row."""
    return pd.DataFrame({"t": TEXTS, "n": [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]})


class TestKeysAndBodies:
    """Keys, bodies and requests equal what the plain definitions give."""

    @pytest.mark.parametrize("shape", sorted(SHAPES))
    @pytest.mark.parametrize("missing", ["empty", "skip"])
    def test_keys_are_the_fingerprints_of_the_bodies(
        self, frame: pd.DataFrame, shape: str, missing: str
    ) -> None:
        """Every row's request_key is request_fingerprint(body), escapes and turns included."""
        options = dict(SHAPES[shape])
        prompt = options.pop("prompt")
        view = frame.narrative.preview(prompt, output=SENTIMENT_SCHEMA, missing=missing, **options)
        skipped = view["request_key"].isna()
        assert skipped.sum() == (1 if missing == "skip" else 0)
        for key, body in zip(view["request_key"][~skipped], view["body"][~skipped], strict=True):
            assert key == request_fingerprint(body)
        assert view["body"][skipped].isna().all()

    @pytest.mark.parametrize("shape", sorted(SHAPES))
    def test_row_bodies_equal_each_requests_body(self, frame: pd.DataFrame, shape: str) -> None:
        """row_bodies gives JobRequest.body for each row (a new dict per row), None if skipped."""
        options = dict(SHAPES[shape])
        prompt = options.pop("prompt")
        settings = resolve_settings(None, None, "dp-1")
        plan = build_plan(
            frame, prompt, output=SENTIMENT_SCHEMA, settings=settings, missing="skip", **options
        )
        bodies = plan.row_bodies()
        assert len(bodies) == len(frame)
        for key, body in zip(plan.row_keys, bodies, strict=True):
            if key is None:
                assert body is None
            else:
                assert body == plan.request(key).body
        assert bodies[0] is not bodies[-1] and bodies[0] == bodies[-1]  # same request, own dict

    def test_duplicates_share_one_request_with_the_estimate(self, frame: pd.DataFrame) -> None:
        """The two identical rows share one request counting 2 rows; tokens are ~chars/4."""
        settings = resolve_settings(None, None, "dp-1")
        plan = build_plan(frame, "Text: {t} #{n}", output=SENTIMENT_SCHEMA, settings=settings)
        assert plan.row_keys[0] == plan.row_keys[-1]
        assert len(plan.requests) == len(frame) - 1
        shared = plan.request(str(plan.row_keys[0]))
        assert shared.rows == 2
        assert shared.prompt_tokens_estimate == max(1, -(-len("Text: plain #1") // 4))


class TestCollectorPause:
    """The cyclic collector is paused while rows are built and always resumed."""

    def test_resumed_after_a_plan_and_after_an_error(self, frame: pd.DataFrame) -> None:
        """gc is enabled after preview, and after a batch that raised."""
        assert gc.isenabled()
        frame.narrative.preview("Text: {t}", output=SENTIMENT_SCHEMA)
        assert gc.isenabled()
        with pytest.raises(RuntimeError), no_cyclic_gc():
            assert not gc.isenabled()
            raise RuntimeError("boom")
        assert gc.isenabled()

    def test_nested_use_leaves_the_outer_pause_alone(self) -> None:
        """An inner batch does not resume the collector the outer one paused."""
        with no_cyclic_gc():
            with no_cyclic_gc():
                pass
            assert not gc.isenabled()
        assert gc.isenabled()
