"""Mistakes in a call: caught before anything is sent, named plainly, pointing at the user's line.

Unknown keywords name the verb the user called and the closest option; every option's type is
checked up front; an unknown model id warns at the caller's line and is still sent, and when the
service refuses it the progress display ends red with that error; reasons are grouped without job
ids; the short IPython rendering of these errors stays within 12 lines and hides the package.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import pandas as pd
import pytest
from helpers import wait_until
from pydantic import BaseModel

import narrative_pandas as npd
from narrative_pandas import _tracebacks
from narrative_pandas._options import RUN_OPTIONS, VERB_OPTIONS, check_options
from narrative_pandas._reasons import group_reasons, reason_key, summarise_reasons
from narrative_pandas._textprogress import TextSink
from narrative_pandas._widget import WidgetSink
from narrative_pandas.sandbox import Sandbox

PROMPT = "Text: {text}"
JOB_ID = "4b37e573-2b1c-4e5f-9a0d-1c2b3a4d5e6f"


class Label(BaseModel):
    label: str
    score: float


def frame(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


class TestUnknownKeyword:
    @pytest.mark.parametrize("verb", ["infer", "start", "preview"])
    def test_accessor_names_the_verb_and_suggests(
        self, verb: str, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """output_schema= raises a TypeError naming the verb called and suggesting output=."""
        method = getattr(frame().narrative, verb)
        with pytest.raises(TypeError) as caught:
            method(PROMPT, output_schema=Label, **target)
        assert isinstance(caught.value, npd.UnknownOptionError)
        assert str(caught.value) == (
            f"{verb}() got an unexpected keyword argument 'output_schema'. Did you mean output=?"
        )
        assert "start()" not in str(caught.value) or verb == "start"
        assert sandbox.stats.requests == 0

    async def test_ainfer_names_ainfer(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """The async verb is named as such."""
        with pytest.raises(npd.UnknownOptionError, match=r"^ainfer\(\) .* Did you mean model="):
            await frame().narrative.ainfer(PROMPT, output=Label, modle="x", **target)
        assert sandbox.stats.requests == 0

    def test_module_functions_and_series_accessor(self) -> None:
        """npd.infer and s.narrative.infer check the same way."""
        with pytest.raises(npd.UnknownOptionError, match="Did you mean concurrency="):
            npd.infer(frame(), PROMPT, output=Label, n_jobs=4)
        with pytest.raises(npd.UnknownOptionError, match=r"^infer\(\).*'temprature'"):
            frame()["text"].narrative.infer("{}", output=Label, temprature=0.2)
        with pytest.raises(npd.UnknownOptionError, match=r"^start\(\).*max_tokens="):
            npd.start(frame(), PROMPT, output=Label, max_token=5)

    def test_nothing_close_lists_the_options(self) -> None:
        """A keyword like no option lists the valid ones."""
        with pytest.raises(npd.UnknownOptionError, match="Valid options: api_key, base_url"):
            frame().narrative.preview(PROMPT, output=Label, zzz=1)

    def test_a_new_verb_joins_the_table(self) -> None:
        """check_options works for any verb in the table (compare joins with one line)."""
        VERB_OPTIONS["compare_test"] = frozenset({*RUN_OPTIONS, "models"})
        try:
            check_options("compare_test", {"models": ["a", "b"]})
            with pytest.raises(npd.UnknownOptionError, match=r"^compare_test\(\).*models="):
                check_options("compare_test", {"modles": ["a"]})
        finally:
            del VERB_OPTIONS["compare_test"]

    def test_table_matches_the_signature(self) -> None:
        """The table's options are exactly start's keywords (so ? in Jupyter lists them all)."""
        import inspect

        params = set(inspect.signature(npd.start).parameters) - {"df", "prompt"}
        assert params == set(RUN_OPTIONS)


class TestOptionTypes:
    @pytest.mark.parametrize(
        ("option", "value", "expected"),
        [
            ("stop_sequences", "STOP", "stop_sequences must be a list of strings"),
            ("tags", "labelling", "tags must be a list of strings"),
            ("max_tokens", 10.5, "max_tokens must be a positive integer"),
            ("temperature", "0.2", "temperature must be a number between 0 and 1"),
            ("concurrency", True, "concurrency must be a positive integer"),
            ("flatten", "yes", "flatten must be True or False"),
            ("cache", 3, "cache must be True, False, a file path or a Cache"),
            ("only_failed", [1, 2], "only_failed must be a previous result"),
            ("system", ["a"], "system must be a string"),
            ("progress", "yes", "progress must be None, True, False, a callable"),
        ],
    )
    def test_wrong_type_refused_before_sending(
        self, option: str, value: Any, expected: str, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A wrong type is an OptionTypeError (a TypeError) naming the option; nothing sent."""
        with pytest.raises(npd.OptionTypeError, match=expected) as caught:
            frame().narrative.infer(
                PROMPT, output=Label, **{"progress": False, **target, option: value}
            )
        assert isinstance(caught.value, TypeError)
        assert isinstance(caught.value, npd.ConfigurationError)
        assert sandbox.stats.requests == 0

    def test_bare_string_never_split(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """stop_sequences="STOP" is refused even where only build_plan sees it (preview)."""
        with pytest.raises(npd.OptionTypeError, match=r'stop_sequences=\["STOP"\]'):
            frame().narrative.preview(PROMPT, output=Label, stop_sequences="STOP")
        out = frame().narrative.preview(PROMPT, output=Label, stop_sequences=["STOP"])
        assert out["body"].iloc[0]["inference_config"]["stop_sequences"] == ["STOP"]

    def test_key_value_never_echoed(self) -> None:
        """A key of the wrong type is refused without showing it."""
        with pytest.raises(npd.OptionTypeError) as caught:
            frame().narrative.infer(PROMPT, output=Label, api_key=b"sk-secret-bytes")
        assert "sk-secret" not in str(caught.value)
        assert "api_key=<bytes>" in str(caught.value)


class TestBadInputValues:
    def test_lone_surrogate_names_row_and_column(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """A cell with a lone surrogate names its row label and column; nothing is sent."""
        df = pd.DataFrame(
            {"text": ["fine", "broken \ud800 text"], "other": ["x", "y"]},
            index=["a", "b"],
            dtype=object,  # pandas' Arrow strings cannot even hold a lone surrogate
        )
        with pytest.raises(npd.ConfigurationError) as caught:
            df.narrative.infer("{other}: {text}", output=Label, progress=False, **target)
        message = str(caught.value)
        assert message.startswith("row 'b', column 'text' holds text that is not valid Unicode")
        assert sandbox.stats.requests == 0

    def test_base_url_with_credentials(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """A base_url with user@ is a ConfigurationError before anything is sent, not echoed."""
        url = target["base_url"].replace("http://", "http://user:hunter2@")
        with pytest.raises(npd.ConfigurationError, match="must not contain credentials") as caught:
            frame().narrative.infer(
                PROMPT, output=Label, progress=False, **{**target, "base_url": url}
            )
        assert "hunter2" not in str(caught.value)
        assert sandbox.stats.requests == 0


class TestUnknownModel:
    def test_warning_at_the_callers_line_with_suggestion(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """The warning's file is this test file, it suggests the known id, and nothing is sent."""
        with pytest.warns(npd.UnknownModelWarning) as caught:
            frame().narrative.preview(PROMPT, output=Label, model="anthropic.claude-haiku-4-5")
        assert len(caught) == 1
        assert caught[0].filename == __file__
        assert "Did you mean 'anthropic.claude-haiku-4.5'?" in str(caught[0].message)
        assert sandbox.stats.requests == 0

    def test_refused_model_ends_the_display_red_with_the_error(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """Still sent once; the 400 ends the widget and the text line as an error, not stopped."""
        widget = WidgetSink(3, display=lambda _: None)
        with pytest.warns(npd.UnknownModelWarning), pytest.raises(npd.BadRequestError) as caught:
            frame().narrative.infer(
                PROMPT, output=Label, model="acme.nope-1", progress=widget, cache=False, **target
            )
        assert sandbox.stats.count("POST", "/model-inference/run", 400) == 1
        assert sandbox.stats.jobs_created == 0
        assert widget.bar.bar_style == "danger"
        assert "error" in widget.status.value and "stopped" not in widget.status.value
        assert "BadRequestError" in widget.errors.value
        assert "not submitted" not in widget.errors.value
        assert "acme.nope-1" in str(caught.value)

        stream = io.StringIO()
        with pytest.warns(npd.UnknownModelWarning), pytest.raises(npd.BadRequestError):
            frame().narrative.infer(
                PROMPT,
                output=Label,
                model="acme.nope-1",
                progress=TextSink(3, stream=stream, width=400),
                cache=False,
                **target,
            )
        final = stream.getvalue().splitlines()[-2:]  # the summary and its one reason
        assert final[0].startswith("narrative  error after")
        assert "stopped" not in final[0] and "3 failed" in final[0]
        assert final[1].startswith("  error: BadRequestError: 400 Bad Request")


class TestGroupedReasons:
    def test_reason_key_drops_job_ids(self) -> None:
        """The same sentence with different job ids is one reason."""
        assert reason_key(f"cancelled: job {JOB_ID} was still running") == (
            "cancelled: was still running"
        )
        assert reason_key(f"timed out (job {JOB_ID})") == "timed out"

    def test_summary_counts_each_reason_once(self) -> None:
        """Most rows first, thousands separated, the rest counted."""
        groups = group_reasons(
            [("not submitted (cancelled)", 1893), "still running when cancelled"] * 1
            + ["still running when cancelled"] * 30
            + ["a", "b"]
        )
        assert summarise_reasons(groups) == (
            "1,893 x not submitted (cancelled); 31 x still running when cancelled; 1 x a; "
            "and 1 other reason"
        )

    def test_row_errors_hold_no_job_id(self, sandbox: Sandbox, target: dict[str, str]) -> None:
        """After a cancel with jobs in flight, no narrative_error repeats its job id."""
        sandbox.configure(queue_latency=30.0)
        run = frame(6).narrative.start(
            PROMPT, output=Label, concurrency=3, progress=False, **target
        )
        wait_until(lambda: sandbox.stats.jobs_created == 3, what="3 submissions")
        run.cancel()
        with pytest.warns(npd.RowsStoppedWarning):
            out = run.result()
        ids = out["narrative_job_id"].dropna()
        assert len(ids) == 3
        for job_id in ids:
            assert not out["narrative_error"].str.contains(job_id, regex=False).any()
        assert set(out["narrative_error"]) == {
            "not submitted (cancelled)",
            "still pending when cancelled; a later run collects the job",
        }


class TestRowsFailedError:
    def test_message_says_the_frame_is_in_result(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """errors="raise": the message says .result holds the whole frame, reasons grouped."""
        sandbox.configure(failure_rate=1.0)
        with pytest.raises(npd.RowsFailedError) as caught:
            frame(4).narrative.infer(PROMPT, output=Label, errors="raise", progress=False, **target)
        message = str(caught.value)
        assert message.startswith(
            "4 of 4 rows failed (4 x Model inference failed: the model provider returned an "
            "error (sandbox)). The whole frame, completed rows included, is in this error's "
            ".result"
        )
        assert "only_failed=err.result" in message
        assert caught.value.result["narrative_status"].tolist() == ["failed"] * 4


class TestShortTraceback:
    def test_rendering_hides_the_package(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """_render_traceback_: message first, this file's line, no narrative_pandas path."""
        monkeypatch.delenv(_tracebacks.FULL_TRACEBACK_ENV, raising=False)
        with pytest.raises(npd.TemplateError) as caught:
            frame().narrative.infer("{nope}", output=Label, api_key="k", data_plane_id="p")
        lines = "\n".join(caught.value._render_traceback_()).splitlines()
        assert lines[0].startswith("TemplateError: ")
        assert len(lines) <= 12
        assert f'File "{__file__}"' in "\n".join(lines)
        assert "narrative_pandas" not in "\n".join(lines[1:-1])
        assert lines[-1] == _tracebacks._HINT

    def test_plain_python_keeps_the_full_traceback(self) -> None:
        """Outside IPython nothing changes: traceback.format_exception shows every frame."""
        import traceback

        with pytest.raises(npd.ConfigurationError) as caught:
            frame().narrative.infer(
                PROMPT, output=Label, errors="sometimes", api_key="k", data_plane_id="p"
            )
        text = "".join(traceback.format_exception(caught.value))
        assert "_plan.py" in text

    def test_user_stacklevel_walks_out_of_the_package(self) -> None:
        """A warning raised deep inside lands on the line that called the package."""
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            frame().narrative.preview(PROMPT, output=Label, model="openai.gpt-4.2")
        assert [w.filename for w in seen] == [__file__]


class TestRequiredOption:
    @pytest.mark.parametrize("verb", ["infer", "start", "preview"])
    def test_missing_output_names_the_verb(self, verb: str) -> None:
        """Forgetting output= names the verb called (never an internal function) and says how."""
        with pytest.raises(npd.OptionTypeError) as caught:
            getattr(frame().narrative, verb)(PROMPT)
        assert str(caught.value) == (
            f"{verb}() needs output=: the structure of each answer: a pydantic model class or "
            "a JSON Schema dict, e.g. output=Sentiment."
        )


class TestRunLevelErrorAgrees:
    def test_report_status_and_partial_agree_after_a_refusal(
        self, sandbox: Sandbox, target: dict[str, str]
    ) -> None:
        """After a 400 on the first POST: status(), report and partial() all say failed."""
        with pytest.warns(npd.UnknownModelWarning):
            run = frame(4).narrative.start(
                PROMPT, output=Label, model="acme.nope-1", progress=False, cache=False, **target
            )
        with pytest.raises(npd.BadRequestError):
            run.result()
        status = run.status()
        assert (status["status"], status["failed"], status["stopped"]) == ("error", 4, 0)
        assert (run.report["failed_rows"], run.report["stopped_rows"]) == (4, 0)
        partial = run.partial()
        assert partial["narrative_status"].tolist() == ["failed"] * 4
        assert set(partial["narrative_error"]) == {"not submitted: BadRequestError"}
