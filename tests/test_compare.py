"""compare: models x prompts over the sandbox, side by side, one job per (variant, distinct row)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from narrative_pandas import ConfigurationError
from narrative_pandas._frame import METADATA_COLUMNS

HAIKU, SONNET, OPUS = (
    "anthropic.claude-haiku-4.5",
    "anthropic.claude-sonnet-4.5",
    "anthropic.claude-opus-4.5",
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "urgent": {"type": "boolean"},
    },
    "required": ["label", "urgent"],
}
PROMPTS = {"v1": "Text: {text}", "v2": "Judge strictly. Text: {text}"}


def responder(request: dict[str, Any]) -> dict[str, Any]:
    """Rows built to disagree: 'split' by model, 'strict' by prompt (Sonnet + strict only)."""
    text = request["messages"][-1]["text"]
    model = request["model"]
    label = "positive"
    if "split" in text and "sonnet" in model:
        label = "negative"
    if "strict case" in text and "Judge strictly" in text and "sonnet" in model:
        label = "neutral"
    return {"label": label, "urgent": "urgent" in text}


@pytest.fixture
def rows() -> pd.DataFrame:
    """Four rows, three distinct (the last repeats the first)."""
    return pd.DataFrame(
        {
            "text": ["all fine", "split opinion", "strict case", "all fine"],
            "truth": ["positive"] * 4,
        },
        index=pd.Index([10, 11, 12, 13], name="id"),
    )


def _compare(df: pd.DataFrame, target: dict[str, str], models: Any, **options: Any) -> Any:
    return df.narrative.compare(
        output=SCHEMA, models=models, prompts=PROMPTS, progress=False, **target, **options
    )


class TestCompareTwoModelsTwoPrompts:
    """Four variants in one run, with the documented columns and agreement."""

    def test_columns_agreement_and_one_job_per_variant_and_distinct_row(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """Columns are <col>[<model>/<prompt>]; agreement follows the rows built to disagree."""
        sandbox.configure(responder=responder)
        cmp = _compare(rows, target, {"haiku": HAIKU, "sonnet": SONNET})
        names = ["haiku/v1", "haiku/v2", "sonnet/v1", "sonnet/v2"]
        expected = ["text", "truth"]
        for name in names:
            expected += [f"label[{name}]", f"urgent[{name}]"]
            expected += [f"{m}[{name}]" for m in METADATA_COLUMNS]
        expected += ["agreement[label]", "agreement[urgent]", "agreement", "narrative_error"]
        assert list(cmp.columns) == expected
        assert list(cmp.index) == [10, 11, 12, 13]
        assert cmp["label[sonnet/v2]"].dtype == "category"
        assert list(cmp["label[sonnet/v2]"].astype(str)) == [
            "positive",
            "negative",
            "neutral",
            "positive",
        ]
        assert list(cmp["agreement[label]"]) == [1.0, 0.5, 0.75, 1.0]
        assert list(cmp["agreement[urgent]"]) == [1.0, 1.0, 1.0, 1.0]
        assert list(cmp["agreement"]) == [1.0, 0.5, 0.75, 1.0]
        assert cmp["narrative_error"].isna().all()
        assert sandbox.stats.jobs_created == 4 * 3
        assert sandbox.stats.duplicate_submissions == 0
        meta = cmp.attrs["narrative"]
        assert list(meta["variants"]) == names
        assert meta["variants"]["sonnet/v2"]["model"] == SONNET
        assert meta["variants"]["sonnet/v2"]["prompt"] == PROMPTS["v2"]
        assert meta["variants"]["sonnet/v2"]["columns"] == {
            "label": "label[sonnet/v2]",
            "urgent": "urgent[sonnet/v2]",
        }
        assert meta["agreement_columns"] == {
            "label": "agreement[label]",
            "urgent": "agreement[urgent]",
        }
        assert meta["rows"] == 4 and meta["jobs_submitted"] == 12

    def test_adding_a_model_pays_only_for_its_jobs(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """A second comparison with one more model submits only that model's jobs."""
        sandbox.configure(responder=responder)
        _compare(rows, target, {"haiku": HAIKU, "sonnet": SONNET})
        assert sandbox.stats.jobs_created == 12
        bigger = _compare(rows, target, {"haiku": HAIKU, "sonnet": SONNET, "opus": OPUS})
        assert sandbox.stats.jobs_created == 12 + 2 * 3
        assert sandbox.stats.duplicate_submissions == 0
        opus_jobs = [j for j in sandbox.jobs() if j["input"]["model"] == OPUS]
        assert len(opus_jobs) == 6
        assert bigger.attrs["narrative"]["cached_rows"] == 4 * 4
        # opus agrees with haiku, so the split row now has 4 of 6 for "positive"
        assert bigger.loc[11, "agreement[label]"] == pytest.approx(4 / 6)

    def test_evaluate_gives_one_row_per_variant_and_field(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """cmp.narrative.evaluate(truth) has a variant column and the right accuracies."""
        sandbox.configure(responder=responder)
        cmp = _compare(rows, target, {"haiku": HAIKU, "sonnet": SONNET})
        figures = cmp.narrative.evaluate({"label": "truth"})
        assert list(figures["variant"]) == ["haiku/v1", "haiku/v2", "sonnet/v1", "sonnet/v2"]
        assert list(figures["accuracy"]) == [1.0, 1.0, 0.75, 0.5]


class TestCompareNamesAndErrors:
    """Variant names and bad arguments."""

    def test_models_list_names_by_id_without_provider(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """models=[ids] with one prompt names the variants claude-haiku-4.5, claude-sonnet-4.5."""
        sandbox.configure(responder=responder)
        cmp = rows.narrative.compare(
            "Text: {text}", output=SCHEMA, models=[HAIKU, SONNET], progress=False, **target
        )
        assert "label[claude-haiku-4.5]" in cmp.columns
        assert list(cmp["agreement[label]"]) == [1.0, 0.5, 1.0, 1.0]

    def test_bad_arguments_raise_before_any_request(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """prompt and prompts together, a bad placeholder, or model= raise; nothing is sent."""
        with pytest.raises(ConfigurationError, match="either prompt"):
            rows.narrative.compare("x {text}", output=SCHEMA, prompts=PROMPTS, **target)
        with pytest.raises(ConfigurationError, match="models="):
            rows.narrative.compare("x {text}", output=SCHEMA, model=HAIKU, **target)
        with pytest.raises(KeyError):
            rows.narrative.compare("x {nope}", output=SCHEMA, models=[HAIKU, SONNET], **target)
        assert sandbox.stats.requests == 0
