"""compare: models x prompts over the sandbox, side by side, one job per (variant, distinct row)."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import python_script, spawn, wait_until

import narrative_pandas as npd
from narrative_pandas import ConfigurationError, ProgressEvent, RowsFailedWarning
from narrative_pandas._frame import METADATA_COLUMNS
from narrative_pandas._widget import WidgetSink

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


# ---------------------------------------------------------------------- progress per variant


def failing_for_sonnet(request: dict[str, Any]) -> dict[str, Any]:
    """Like ``responder``, but Sonnet answers the 'split' row off-schema (its job fails)."""
    answer = responder(request)
    if "split" in request["messages"][-1]["text"] and "sonnet" in request["model"]:
        answer["label"] = "not-a-label"
    return answer


class Handle:
    """Stands for IPython's DisplayHandle: keeps the summary that replaced the widget."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, str]] = []

    def update(self, obj: dict[str, str], raw: bool = False) -> None:
        self.bundles.append(obj)


def counts_of(table_html: str, variant: str) -> dict[str, str]:
    """The counts a variant's row of the variants table shows: {"completed": "3", ...}."""
    row = re.search(
        rf'<tr class="[^"]*" data-variant="{re.escape(variant)}">(.*?)</tr>', table_html
    )
    assert row is not None, f"no row for {variant!r} in {table_html!r}"
    cells = dict(re.findall(r"narrative-vcount-([a-z-]+)\"[^>]*>[^<]*<b>([^<]*)</b>", row[1]))
    fraction = re.search(r'narrative-variant-fraction"[^>]*>([^<]*)<', row[1])
    assert fraction is not None
    return {**cells, "fraction": fraction[1]}


class TestCompareProgress:
    """One row of counts per variant: in the events, the live widget, the summary, the text."""

    def run_twice(self, rows: pd.DataFrame, target: dict[str, str], **options: Any) -> Any:
        """haiku alone first (so its rows are cached), then haiku and sonnet compared."""
        rows.narrative.compare(
            "Text: {text}", output=SCHEMA, models=[HAIKU], progress=False, **target
        )
        with pytest.warns(RowsFailedWarning):
            return rows.narrative.compare(
                "Text: {text}",
                output=SCHEMA,
                models={"haiku": HAIKU, "sonnet": SONNET},
                **target,
                **options,
            )

    def test_events_count_rows_per_variant(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """Every event's snapshot splits the counts by variant; they add up to the totals."""
        sandbox.configure(responder=failing_for_sonnet)
        events: list[ProgressEvent] = []
        cmp = self.run_twice(rows, target, progress=events.append)
        assert sandbox.stats.jobs_created == 3 + 3
        for event in events:
            s = event.snapshot
            assert [v.name for v in s.variants] == ["haiku", "sonnet"]
            for phase in ("queued", "pending", "running", "completed", "failed", "cached"):
                assert sum(getattr(v, phase) for v in s.variants) == getattr(s, phase), phase
            assert sum(v.tokens for v in s.variants) == s.tokens
        haiku, sonnet = events[-1].snapshot.variants
        assert (haiku.total, haiku.cached, haiku.completed, haiku.failed) == (4, 4, 0, 0)
        assert (sonnet.total, sonnet.completed, sonnet.failed, sonnet.cached) == (4, 3, 1, 0)
        assert haiku.tokens == 0 and sonnet.tokens == events[-1].snapshot.tokens > 0
        assert any(v.in_flight for e in events for v in e.snapshot.variants if v.name == "sonnet")
        counts = cmp.attrs["narrative"]["variants"]["sonnet"]["counts"]
        assert (counts["completed_rows"], counts["failed_rows"]) == (3, 1)
        assert counts["total_tokens"] == sonnet.tokens + int(
            cmp.loc[13, "narrative_total_tokens[sonnet]"]  # row 13 repeats row 10: one job
        )

    def test_widget_and_summary_have_one_row_per_variant_and_a_total(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """The widget gets a variants table after its header; the summary keeps it."""
        sandbox.configure(responder=failing_for_sonnet)
        handle = Handle()
        sink = WidgetSink(8, display=lambda widget: handle)
        self.run_twice(rows, target, progress=sink)
        header, variants, counts, errors = sink.widget.children
        assert (header, counts, errors) == (sink.header, sink.counts, sink.errors)
        assert variants is sink.variants and "narrative-progress-variants" in variants._dom_classes
        assert counts_of(variants.value, "haiku") == {
            "fraction": "4/4",
            "completed": "0",
            "failed": "0",
            "cached": "4",
            "tokens": "0",
        }
        assert counts_of(variants.value, "sonnet")["failed"] == "1"
        assert counts_of(variants.value, "all")["fraction"] == "8/8"
        assert 'class="narrative-variant-total" data-variant="all"' in variants.value
        (bundle,) = handle.bundles
        page = bundle["text/html"]
        assert counts_of(page, "sonnet") == {
            "fraction": "4/4",
            "completed": "3",
            "failed": "1",
            "cached": "0",
            "tokens": counts_of(variants.value, "sonnet")["tokens"],
        }
        assert counts_of(page, "all")["cached"] == "4"
        assert page.index("narrative-variants") < page.index("narrative-summary-counts")
        lines = bundle["text/plain"].splitlines()
        assert lines[1].startswith("  haiku   4/4 · 0 completed · 0 failed · 4 cached · 0 tokens")
        assert lines[2].startswith("  sonnet  4/4 · 3 completed · 1 failed · 0 cached · ")

    def test_a_single_run_widget_has_no_variants_table(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame
    ) -> None:
        """infer() (and a one-model comparison alike) keeps the widget as it was."""
        sink = WidgetSink(4, display=lambda widget: Handle())
        rows.narrative.infer("Text: {text}", output=SCHEMA, progress=sink, **target)
        assert sink.variants is None and len(sink.widget.children) == 3
        assert "narrative-variants" not in (sink.final_bundle or {})["text/html"]

    def test_the_text_end_line_lists_the_variants(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame, capsys: Any
    ) -> None:
        """Outside Jupyter, the summary on stderr is followed by one line per variant."""
        sandbox.configure(responder=failing_for_sonnet)
        self.run_twice(rows, target, progress=True)
        err = capsys.readouterr().err.splitlines()
        end = next(i for i, line in enumerate(err) if "done in" in line)
        assert err[end].startswith("narrative  8/8 done in ")
        assert err[end + 1].startswith("  haiku   4/4 · 0 completed · 0 failed · 4 cached")
        assert err[end + 2].startswith("  sonnet  4/4 · 3 completed · 1 failed · 0 cached")


# ---------------------------------------------------------------------- partial() and attach


class TestComparePartialAndAttach:
    """partial() and attach() give the comparison's own shape, not one row per job."""

    def test_partial_mid_run_is_folded_with_unfinished_rows_pending(
        self, sandbox: Any, target: dict[str, str]
    ) -> None:
        """Two jobs in flight at a time: row 0 finishes first for both models, the rest wait."""
        sandbox.configure(responder=responder, queue_latency=0.2, run_latency=0.0)
        df = pd.DataFrame({"text": ["split a", "b", "c", "d", "e", "f"]}, index=list("uvwxyz"))
        run = df.narrative.start_compare(
            "Text: {text}",
            output=SCHEMA,
            models={"haiku": HAIKU, "sonnet": SONNET},
            concurrency=2,
            progress=False,
            **target,
        )
        wait_until(lambda: run.status()["completed"] >= 2, what="two completions")
        partial = run.partial()
        status = run.status()
        out = run.result()
        assert list(partial.columns) == list(out.columns)
        assert list(partial.dtypes) == list(out.dtypes)
        assert list(partial.index) == list("uvwxyz") and list(partial["text"]) == list(df["text"])
        assert status["variants"]["haiku"]["completed"] >= 1
        assert status["variants"]["sonnet"]["completed"] >= 1
        first = partial.loc["u"]
        assert (first["label[haiku]"], first["label[sonnet]"]) == ("positive", "negative")
        assert first["agreement[label]"] == 0.5 == out.loc["u", "agreement[label]"]
        assert pd.isna(first["narrative_error"])
        last = partial.loc["z"]
        assert pd.isna(last["label[haiku]"]) and pd.isna(last["narrative_status[haiku]"])
        assert last["narrative_error[sonnet]"] == "pending"
        assert last["narrative_error"] == "haiku: pending; sonnet: pending"
        assert pd.isna(last["agreement[label]"]) and pd.isna(last["agreement"])
        assert partial.attrs["narrative"]["rows"] == 6
        assert partial.attrs["narrative"]["variants"]["sonnet"]["counts"]["pending_rows"] >= 4
        assert out["narrative_error"].isna().all()

    def test_attach_after_the_run_returns_the_comparison(
        self, sandbox: Any, target: dict[str, str], rows: pd.DataFrame, tmp_path: Path
    ) -> None:
        """attach() to a finished comparison gives the same frame; nothing is sent again."""
        sandbox.configure(responder=responder)
        path = str(tmp_path / "cmp.sqlite")
        run = rows.narrative.start_compare(
            output=SCHEMA,
            models={"haiku": HAIKU, "sonnet": SONNET},
            prompts=PROMPTS,
            cache=path,
            progress=False,
            **target,
        )
        cmp = run.result()
        jobs = sandbox.stats.jobs_created
        attached = npd.attach(run.id, cache=path, api_key=target["api_key"], progress=False)
        again = attached.result()
        pd.testing.assert_frame_equal(again, cmp)
        pd.testing.assert_frame_equal(attached.partial(), cmp)
        assert (
            again.attrs["narrative"]["variants"].keys() == cmp.attrs["narrative"]["variants"].keys()
        )
        assert again.attrs["narrative"]["agreement_columns"] == {
            "label": "agreement[label]",
            "urgent": "agreement[urgent]",
        }
        assert sandbox.stats.jobs_created == jobs
        assert list(again.narrative.evaluate({"label": "truth"})["accuracy"]) == [
            1.0,
            1.0,
            0.75,
            0.5,
        ]

    def test_attach_in_a_new_process_after_a_kill(
        self, sandbox: Any, target: dict[str, str], tmp_path: Path
    ) -> None:
        """A comparison killed mid-way is finished by attach(): the whole comparison, no
        job submitted twice."""
        sandbox.configure(responder=responder, queue_latency=0.8, run_latency=0.1)
        path = tmp_path / "cmp.sqlite"
        script = python_script(
            tmp_path / "start.py",
            f"""
            import time, pandas as pd
            import narrative_pandas
            df = pd.DataFrame({{"text": [f"split {{i}}" for i in range(10)]}},
                              index=[f"id{{i}}" for i in range(10)])
            run = df.narrative.start_compare("Text: {{text}}", output={SCHEMA!r},
                                models={{"haiku": {HAIKU!r}, "sonnet": {SONNET!r}}},
                                cache={str(path)!r}, progress=False, concurrency=6,
                                api_key={target["api_key"]!r}, base_url={target["base_url"]!r},
                                data_plane_id={target["data_plane_id"]!r})
            print("RUN", run.id, flush=True)
            time.sleep(600)
            """,
        )
        proc = spawn(script)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("RUN "), proc.stderr.read() if proc.stderr else ""
        wait_until(lambda: sandbox.stats.jobs_created >= 6, what="6 submissions")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        submitted = sandbox.stats.jobs_created
        sandbox.configure(queue_latency=0.02, run_latency=0.02)

        run = npd.attach(
            line.split()[1], cache=str(path), api_key=target["api_key"], progress=False
        )
        out = run.result()
        assert sandbox.stats.jobs_created == 20
        assert sandbox.stats.duplicate_submissions == 0
        assert out.attrs["narrative"]["jobs_submitted"] == 20 - submitted
        assert list(out.index) == [f"id{i}" for i in range(10)]
        assert list(out["text"]) == [f"split {i}" for i in range(10)]
        assert set(out["label[haiku]"].astype(str)) == {"positive"}
        assert set(out["label[sonnet]"].astype(str)) == {"negative"}
        assert list(out["agreement[label]"]) == [0.5] * 10
        fresh = pd.DataFrame({"text": [f"split {i}" for i in range(10)]}, index=out.index)
        again = fresh.narrative.compare(
            "Text: {text}",
            output=SCHEMA,
            models={"haiku": HAIKU, "sonnet": SONNET},
            cache=str(path),
            progress=False,
            **target,
        )
        pd.testing.assert_frame_equal(out, again)
        assert sandbox.stats.jobs_created == 20
