"""Request keys, bodies and previews pinned to a golden file made before the columnar plan.

Existing cache files hold answers under the request keys older versions computed, so a faster
``build_plan`` must give exactly the same keys (and the same bodies and previews) for the same
requests. ``tests/data/plan_golden.json`` was written by this module's generator on the code
before the columnar rewrite (commit ed69c6a); regenerate it only for an intended change:

    PYTHONPATH=. python tests/test_plan_golden.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pytest
from pydantic import BaseModel, Field

import narrative_pandas  # noqa: F401  (registers DataFrame.narrative)
from narrative_pandas.data import load_reviews

GOLDEN = Path(__file__).parent / "data" / "plan_golden.json"


class Topic(BaseModel):
    name: str
    weight: float = Field(ge=0, le=1)


class Label(BaseModel):
    """A schema with an enum, a nested list of objects and an optional field."""

    sentiment: Literal["positive", "négatif", "neutral"]
    topics: list[Topic]
    note: str | None = None


TEXTS = [
    "plain",
    'a "quote" and a \\ backslash',
    "a newline\nand a\ttab\r\b\f",
    "émoji 😀, ünïcode, 中文, עברית",
    "line\u2028separator\u2029",
    "\x00control\x1f\x7f",
    "{braces} {{double}} {n}",
    "",
    None,
    "plain",
    "long " * 2_000,
    "x" * 4,
]


def _frame() -> pd.DataFrame:
    n = len(TEXTS)
    return pd.DataFrame(
        {
            "t": TEXTS,
            "n": [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 10, 11],
            "price": [1.5, float("nan"), -0.0, 1e16, 0.1, 2.675, 3.0, 1e-7, 12.0, 1.5, 7.25, 9.0],
            "flag": [True, False] * (n // 2),
            "when": pd.to_datetime(["2026-12-03"] * (n - 1) + [None]),
            "count": pd.array([1, None, 3, 4, 5, 6, 7, 8, 9, 1, 11, 12], dtype="Int64"),
            "kind": pd.Categorical(["a", "b", None, "a", "b", "a", "c", "c", "a", "a", "b", "c"]),
            "mixed": [1, "two", 3.0, None, [4], {"k": 5}, b"6", 7, "8", 1, "é", "z"],
            0: ["zero"] * n,
        }
    )


def _examples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "t": ["great stuff", 'said "meh"'],
            "n": [1, 2],
            "sentiment": ["positive", "neutral"],
            "topics": [[{"name": "quality", "weight": 0.9}], []],
        }
    )


CASES: dict[str, dict[str, Any]] = {
    "prompt": {"prompt": "Text: {t} #{n}"},
    "prompt_skip": {"prompt": "Text: {t} #{n}", "missing": "skip"},
    "specs": {
        "prompt": "{t!r} costs {price:.2f} ({price}) on {when:%Y-%m-%d}; {flag} {count} {kind}",
    },
    "specs_skip": {"prompt": "{t!a} {price:>10.3e} {count} {when}", "missing": "skip"},
    "objects": {"prompt": "{mixed} / {mixed!r} / {0} / {`t`}"},
    "system": {
        "prompt": "Classify: {t}",
        "system": "Tu es un assistant. Ligne {n}.",
        "tags": ["golden", "ünï"],
        "temperature": 0.2,
        "max_tokens": 300,
        "top_p": 0.9,
        "stop_sequences": ["STOP", "\n\n"],
    },
    "messages": {
        "prompt": None,
        "messages": [
            {"role": "system", "text": "S {kind}"},
            {"role": "user", "text": "U {t}"},
            {"role": "assistant", "text": "A static"},
            {"role": "user", "text": "again {n} {price:.1f}"},
        ],
    },
    "messages_skip": {
        "prompt": None,
        "messages": [{"role": "user", "text": "{t}"}, {"role": "user", "text": "{count}"}],
        "missing": "skip",
    },
    "static": {"prompt": "No placeholders at all"},
    "examples": {"prompt": "Review {n}: {t}", "system": "Label it.", "examples": True},
    "model": {"prompt": "{t}", "model": "anthropic.claude-sonnet-4.5"},
}


def _options(case: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    options = dict(case)
    prompt = options.pop("prompt")
    if options.pop("examples", False):
        options["examples"] = _examples()
    return prompt, options


def _digest(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _observe(name: str) -> dict[str, Any]:
    """What a case's preview shows: keys, estimates and digests of the bodies and messages."""
    df = _frame()
    if name == "reviews":  # the bundled reviews (with their missing values), 3,000 rows
        reviews = load_reviews()
        df = pd.concat([reviews] * (3_000 // len(reviews) + 1), ignore_index=True)[:3_000]
        df["n"] = range(len(df))
        view = df.narrative.preview(
            "Review #{n}: {review}", output=Label, data_plane_id="dp-golden"
        )
        return {
            "keys": _digest(view["request_key"].tolist()),
            "estimates": _digest(view["estimated_prompt_tokens"].astype(object).tolist()),
            "bodies": _digest(view["body"].tolist()),
            "unique": int(view["request_key"].nunique()),
        }
    if name == "one_column":
        view = df[["t"]].narrative.preview("{}", output=Label, data_plane_id="dp-golden")
    else:
        prompt, options = _options(CASES[name])
        view = df.narrative.preview(prompt, output=Label, data_plane_id="dp-golden", **options)
    keys = [None if pd.isna(k) else str(k) for k in view["request_key"]]
    return {
        "columns": [str(c) for c in view.columns],
        "dtypes": [str(d) for d in view.dtypes],
        "keys": keys,
        "estimates": [None if pd.isna(e) else int(e) for e in view["estimated_prompt_tokens"]],
        "bodies": _digest(view["body"].tolist()),
        "messages": _digest(view["messages"].tolist()),
        "skipped": [i for i, b in enumerate(view["body"]) if b is None],
    }


NAMES = [*sorted(CASES), "one_column", "reviews"]


def _write() -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    golden = {name: _observe(name) for name in NAMES}
    GOLDEN.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(GOLDEN.read_text())
    return loaded


class TestGoldenPlan:
    """The plan gives the keys, bodies and previews the code before it gave."""

    @pytest.mark.parametrize("name", NAMES)
    def test_preview_matches_the_golden_file(self, golden: dict[str, Any], name: str) -> None:
        """Every row's key, token estimate, body and messages equal the recorded ones."""
        observed = _observe(name)
        expected = golden[name]
        assert observed["keys"] == expected["keys"]
        assert observed == expected

    def test_the_golden_cases_cover_what_keys_depend_on(self, golden: dict[str, Any]) -> None:
        """The recorded cases have skipped rows, shared keys and distinct keys per case."""
        assert golden["prompt_skip"]["skipped"] and golden["specs_skip"]["skipped"]
        shared = golden["prompt"]["keys"]
        assert len(set(shared)) < len(shared)  # rows 0 and 9 are the same request
        # missing= decides which rows are sent, never what a sent row asks
        skip = golden["prompt_skip"]["keys"]
        assert [k for k in skip if k] == [k for k, s in zip(shared, skip, strict=True) if s]
        plain = [n for n in golden if not n.endswith("skip") and n != "reviews"]
        firsts = {n: golden[n]["keys"][0] for n in plain}
        assert len(set(firsts.values())) == len(firsts)  # every case asks something different


class TestGoldenInfer:
    """A real run sends exactly the bodies its preview shows, under the preview's keys."""

    def test_the_sandbox_receives_the_previewed_bodies(
        self, target: dict[str, str], sandbox: Any
    ) -> None:
        """Each job's input equals a previewed body, and its tag is that row's key's."""
        df = _frame()
        prompt, options = _options(CASES["system"])
        view = df.narrative.preview(
            prompt, output=Label, data_plane_id=target["data_plane_id"], **options
        )
        out = df.narrative.infer(
            prompt, output=Label, progress=False, cache=False, **target, **options
        )
        bodies = {_digest(b): b for b in view["body"]}
        sent = {_digest(job["input"]): job["input"] for job in sandbox.jobs()}
        assert sent == bodies
        assert sandbox.stats.jobs_created == view["request_key"].nunique() == len(bodies) == 11
        assert out["narrative_error"].isna().all()


if __name__ == "__main__":
    if "--write" in sys.argv:
        _write()
        print(f"wrote {GOLDEN}")
    else:
        print(json.dumps({name: _observe(name)["keys"][:2] for name in NAMES}, indent=1))
