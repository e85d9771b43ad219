"""Tests of narrative_pandas._template: parsing, binding to columns, rendering rows."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest

from narrative_pandas._exceptions import ConfigurationError, NarrativeError, TemplateError
from narrative_pandas._models import InferenceMessage
from narrative_pandas._template import (
    BoundTemplates,
    FieldRef,
    MessageTemplates,
    Placeholder,
    Template,
)

PANDAS_2 = int(pd.__version__.split(".")[0]) < 3


def texts(rendered: list[list[InferenceMessage] | str]) -> list[list[tuple[str, str]] | str]:
    """Rendered rows as plain (role, text) pairs, skip reasons unchanged."""
    return [r if isinstance(r, str) else [(m.role, m.text) for m in r] for r in rendered]


def user_texts(rendered: list[list[InferenceMessage] | str]) -> list[str]:
    """The last message's text of every rendered row."""
    out = []
    for row in rendered:
        assert not isinstance(row, str)
        out.append(row[-1].text)
    return out


def render(prompt: str, df: pd.DataFrame, **kwargs: Any) -> list[list[InferenceMessage] | str]:
    """Build, bind and render a single user template."""
    return MessageTemplates.build(prompt).bind(df.columns).render(df, **kwargs)


@pytest.fixture
def reviews() -> pd.DataFrame:
    """A small frame of reviews with a string index."""
    df: pd.DataFrame = pd.DataFrame(
        {"review": ["great", "awful", "fine"], "stars": [5, 1, 3]},
        index=["r1", "r2", "r3"],
    )
    return df


class TestParse:
    """Template.parse splits text into literals and placeholders."""

    def test_plain_placeholders(self) -> None:
        """Each {column} becomes a field; the text around them stays literal."""
        t = Template.parse("Review: {review}\nStars: {stars}")
        assert [f.name for f in t.fields] == ["review", "stars"]
        assert t.literals == ("Review: ", "\nStars: ", "")

    def test_format_spec_and_conversion(self) -> None:
        """A spec after ':' and a conversion after '!' are kept on the field."""
        t = Template.parse("{price:.2f} {name!r} {x!s:>5}")
        assert t.fields == (
            FieldRef("price", ".2f", None),
            FieldRef("name", "", "r"),
            FieldRef("x", ">5", "s"),
        )

    def test_escaped_braces_are_literal(self) -> None:
        """{{ and }} are literal braces, not placeholders."""
        t = Template.parse('JSON: {{"a": {a}}}')
        assert [f.name for f in t.fields] == ["a"]
        assert t.literals == ('JSON: {"a": ', "}")

    def test_whole_field_name_is_literal(self) -> None:
        """Dots, brackets and spaces are part of the column name, not attribute access."""
        t = Template.parse("{unit price} {a.b} {a[0]} {0}")
        assert [f.name for f in t.fields] == ["unit price", "a.b", "a[0]", "0"]

    def test_backtick_quoting(self) -> None:
        """Backticks quote names with ':' or '!' and a doubled backtick is a backtick."""
        t = Template.parse("{`ratio:x`} {`weird!`:.2f} {`a``b`!r} {`{x}`}")
        assert t.fields == (
            FieldRef("ratio:x", "", None, quoted=True),
            FieldRef("weird!", ".2f", None, quoted=True),
            FieldRef("a`b", "", "r", quoted=True),
            FieldRef("{x}", "", None, quoted=True),
        )
        assert [str(f) for f in t.fields] == [
            "{`ratio:x`}",
            "{`weird!`:.2f}",
            "{`a``b`!r}",
            "{`{x}`}",
        ]

    def test_positional_placeholder(self) -> None:
        """{} and {:spec} are positional."""
        t = Template.parse("{} and {:>3}")
        assert [f.positional for f in t.fields] == [True, True]
        assert t.fields[1].spec == ">3"

    def test_no_placeholders_is_static(self) -> None:
        """A template without placeholders renders to its own (unescaped) text."""
        assert Template.parse("Say {{hi}}").static_text == "Say {hi}"
        assert Template.parse("{x}").static_text is None

    @pytest.mark.parametrize(
        ("text", "why"),
        [
            ("Review: {review", "unmatched '{' at position 8"),
            ("a } b", "single '}' at position 2"),
            ("{`ratio:x}", "unclosed backtick in the placeholder at position 0"),
            ("{x!q}", "invalid conversion 'q' in the placeholder at position 0 (use !r, !s or !a)"),
            ("{x!rr}", "expected '}' or ':' after !r at position 4"),
            (
                "{x:{w}}",
                "nested placeholders in format specs are not supported (placeholder at position 0)",
            ),
            ("{a{b}", "unexpected '{' inside the placeholder at position 0"),
            (
                "{`a`b}",
                "expected '}', ':' or '!' after the quoted name `a` "
                "in the placeholder at position 0",
            ),
            ("{x:>5", "unmatched '{' at position 0"),
        ],
    )
    def test_malformed_templates(self, text: str, why: str) -> None:
        """A malformed template raises TemplateError saying what and where, naming the template."""
        with pytest.raises(TemplateError) as info:
            Template.parse(text, label="the user template")
        assert str(info.value) == (
            f"the user template {text!r} is malformed: {why}. "
            "Write {{ and }} for literal braces."
        )
        assert info.value.template == text

    def test_long_template_is_shortened_in_messages(self) -> None:
        """Error messages quote at most 80 characters of a long template."""
        text = "x" * 200 + "{"
        with pytest.raises(TemplateError) as info:
            Template.parse(text)
        assert repr("x" * 77 + "...") in str(info.value)

    def test_non_string_template(self) -> None:
        """A template that is not a str is a TypeError."""
        with pytest.raises(TypeError, match="template must be a str, got int"):
            Template.parse(3)  # type: ignore[arg-type]


class TestBuild:
    """MessageTemplates.build turns prompt/system/messages into ordered turns."""

    def test_prompt_only(self) -> None:
        """A prompt alone is one user turn."""
        m = MessageTemplates.build("Review: {review}")
        assert [(role, t.text) for role, t in m.turns] == [("user", "Review: {review}")]

    def test_system_comes_first(self) -> None:
        """system= is the first turn, before the user prompt."""
        m = MessageTemplates.build("Q: {q}", system="You are {persona}.")
        assert [(role, t.text) for role, t in m.turns] == [
            ("system", "You are {persona}."),
            ("user", "Q: {q}"),
        ]
        assert [f.name for f in m.fields] == ["persona", "q"]

    def test_messages_multi_turn(self) -> None:
        """messages= keeps every turn, including assistant turns, in order."""
        m = MessageTemplates.build(
            None,
            messages=[
                {"role": "system", "text": "Label {kind}."},
                {"role": "user", "text": "Example: good"},
                {"role": "assistant", "text": '{{"label": "positive"}}'},
                {"role": "user", "text": "{review}"},
            ],
        )
        assert [role for role, _ in m.turns] == ["system", "user", "assistant", "user"]
        assert m.turns[2][1].static_text == '{"label": "positive"}'

    def test_system_plus_messages(self) -> None:
        """system= is prepended to messages= that have no system turn."""
        m = MessageTemplates.build(None, system="S", messages=[{"role": "user", "text": "U"}])
        assert [role for role, _ in m.turns] == ["system", "user"]

    def test_both_prompt_and_messages(self) -> None:
        """Giving both a prompt and messages is a ConfigurationError (a ValueError)."""
        with pytest.raises(
            ConfigurationError, match="either a prompt template or messages"
        ) as info:
            MessageTemplates.build("x", messages=[{"role": "user", "text": "y"}])
        assert isinstance(info.value, ValueError)

    def test_neither_prompt_nor_messages(self) -> None:
        """Giving neither is a ConfigurationError that shows both ways."""
        with pytest.raises(ConfigurationError, match="nothing to send"):
            MessageTemplates.build(None)

    def test_empty_prompt(self) -> None:
        """A blank prompt is refused."""
        with pytest.raises(ConfigurationError, match="the prompt template is empty"):
            MessageTemplates.build("  \n")

    def test_prompt_of_wrong_type(self) -> None:
        """A non-str prompt or system is a TypeError."""
        with pytest.raises(TypeError, match="got list"):
            MessageTemplates.build(["a"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="system must be a str template, got int"):
            MessageTemplates.build("a", system=1)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("messages", "message"),
        [
            (
                "hello",
                "messages must be a list of {'role': 'system'|'user'|'assistant', "
                "'text': template} dicts, got str",
            ),
            ({"role": "user", "text": "x"}, "dicts, got dict"),
            ([], "messages is empty"),
            (["hi"], "messages[0] is a str"),
            (
                [{"role": "bot", "text": "x"}],
                "messages[0] has role 'bot'; use one of 'system', 'user', 'assistant'",
            ),
            (
                [{"role": "user", "content": "x"}],
                "messages[0] has keys ['content', 'role']; each message needs exactly 'role' and "
                "'text' (write 'text' instead of 'content')",
            ),
            (
                [{"role": "user", "text": "x", "name": "n"}],
                "messages[0] has keys ['name', 'role', 'text']",
            ),
            ([{"role": "user", "text": 3}], "messages[0] 'text' must be a str template, got int"),
            ([{"role": "system", "text": "x"}], "messages need at least one 'user' turn"),
        ],
    )
    def test_bad_messages(self, messages: Any, message: str) -> None:
        """A badly shaped messages= raises TemplateError saying which item and how to fix it."""
        with pytest.raises(TemplateError) as info:
            MessageTemplates.build(None, messages=messages)
        assert message in str(info.value)

    def test_system_twice(self) -> None:
        """system= together with a system message is refused."""
        with pytest.raises(ConfigurationError, match=r"messages\[0\] is a system message too"):
            MessageTemplates.build(
                None,
                system="a",
                messages=[{"role": "system", "text": "b"}, {"role": "user", "text": "c"}],
            )

    def test_parse_error_names_the_turn(self) -> None:
        """A malformed turn in messages= is named by its index and role."""
        with pytest.raises(TemplateError) as info:
            MessageTemplates.build(
                None,
                messages=[{"role": "user", "text": "ok"}, {"role": "assistant", "text": "{bad"}],
            )
        assert str(info.value).startswith("messages[1] (assistant) '{bad' is malformed")

    def test_system_parse_error_names_the_system_template(self) -> None:
        """A malformed system template is named as such."""
        with pytest.raises(TemplateError, match=r"^the system template 'x}' is malformed"):
            MessageTemplates.build("q", system="x}")


class TestBind:
    """bind() checks every placeholder against the columns, before anything is rendered."""

    def test_binds_columns(self, reviews: pd.DataFrame) -> None:
        """Each placeholder is bound to its column."""
        bound = MessageTemplates.build("{review} {stars:>2}").bind(reviews.columns)
        assert isinstance(bound, BoundTemplates)
        assert bound.placeholders == (
            (Placeholder("review", "review", "", None), Placeholder("stars", "stars", ">2", None)),
        )
        assert bound.used_columns == ("review", "stars")

    def test_missing_column_message(self, reviews: pd.DataFrame) -> None:
        """A misspelt placeholder names itself, its template, the columns and the closest one."""
        with pytest.raises(TemplateError) as info:
            MessageTemplates.build("Review: {revew}").bind(reviews.columns)
        err = info.value
        assert str(err) == (
            "placeholder {revew} in the user template 'Review: {revew}' names no column; "
            "did you mean 'review'?\nColumns: ['review', 'stars']"
        )
        assert isinstance(err, KeyError)
        assert isinstance(err, NarrativeError)
        assert err.placeholder == "{revew}"
        assert err.template == "Review: {revew}"
        assert err.columns == ["review", "stars"]

    def test_no_close_match(self, reviews: pd.DataFrame) -> None:
        """Without a close column name there is no suggestion."""
        with pytest.raises(TemplateError) as info:
            MessageTemplates.build("{zzz}").bind(reviews.columns)
        assert str(info.value) == (
            "placeholder {zzz} in the user template '{zzz}' names no column\n"
            "Columns: ['review', 'stars']"
        )

    def test_every_placeholder_is_checked(self, reviews: pd.DataFrame) -> None:
        """All missing placeholders, in every turn, are reported together."""
        with pytest.raises(TemplateError) as info:
            MessageTemplates.build("{review} {strs}", system="You are {persona}.").bind(
                reviews.columns
            )
        assert str(info.value) == (
            "2 placeholders do not match a column:\n"
            "  placeholder {persona} in the system template 'You are {persona}.' names no column\n"
            "  placeholder {strs} in the user template '{review} {strs}' names no column; "
            "did you mean 'stars'?\n"
            "Columns: ['review', 'stars']"
        )
        assert info.value.placeholder == "{persona}"

    def test_missing_in_assistant_turn(self, reviews: pd.DataFrame) -> None:
        """A placeholder in an assistant turn is checked and named by its turn."""
        templates = MessageTemplates.build(
            None,
            messages=[
                {"role": "user", "text": "{review}"},
                {"role": "assistant", "text": "{answer}"},
            ],
        )
        with pytest.raises(
            TemplateError,
            match=r"placeholder \{answer\} in messages\[1\] \(assistant\) '\{answer\}'",
        ):
            templates.bind(reviews.columns)

    def test_colon_in_column_name_hint(self) -> None:
        """A column whose name contains ':' gets a hint to quote it with backticks."""
        with pytest.raises(TemplateError) as info:
            MessageTemplates.build("{ratio:x}").bind(["ratio:x"])
        assert (
            "placeholder {ratio:x} in the user template '{ratio:x}' names no column; "
            "to use the column 'ratio:x', quote it: {`ratio:x`}"
        ) in str(info.value)

    def test_case_difference_suggestion(self) -> None:
        """A column that differs only in case is suggested."""
        with pytest.raises(TemplateError, match="did you mean 'Review'"):
            MessageTemplates.build("{review}").bind(["Review", "Stars"])

    def test_many_columns_are_truncated(self) -> None:
        """Only the first 30 columns are listed."""
        columns = [f"c{i}" for i in range(40)]
        with pytest.raises(TemplateError) as info:
            MessageTemplates.build("{zzz}").bind(columns)
        assert str(info.value).endswith("'c28', 'c29', ... (10 more)]")

    def test_duplicate_column_names_are_ambiguous(self) -> None:
        """A placeholder naming a column that appears twice is refused."""
        with pytest.raises(TemplateError, match="is ambiguous: 2 columns are named 'a'"):
            MessageTemplates.build("{a}").bind(["a", "b", "a"])

    def test_non_string_column_names(self) -> None:
        """{0} matches the int column 0, but a str column '0' wins when both exist."""
        bound = MessageTemplates.build("{0} {1}").bind([0, 1])
        assert [p.column for p in bound.placeholders[0]] == [0, 1]
        bound = MessageTemplates.build("{0}").bind([0, "0"])
        assert bound.placeholders[0][0].column == "0"

    def test_positional_needs_one_column(self, reviews: pd.DataFrame) -> None:
        """{} binds to the only column; with several columns it asks for a name."""
        assert MessageTemplates.build("{}").bind(["value"]).placeholders[0][0].column == "value"
        with pytest.raises(TemplateError) as info:
            MessageTemplates.build("{}").bind(reviews.columns)
        assert "placeholder {} in the user template '{}' is positional" in str(info.value)
        assert "name a column instead" in str(info.value)

    def test_bind_accepts_an_index(self, reviews: pd.DataFrame) -> None:
        """bind() takes df.columns (an Index) as well as a list."""
        assert MessageTemplates.build("{review}").bind(reviews.columns).columns == (
            "review",
            "stars",
        )


class TestRender:
    """render() fills every row, in order, column-wise."""

    def test_renders_rows_in_order(self, reviews: pd.DataFrame) -> None:
        """One list of messages per row position, with roles and texts filled in."""
        rendered = (
            MessageTemplates.build("Review: {review} ({stars}/5)", system="Be brief.")
            .bind(reviews.columns)
            .render(reviews)
        )
        assert texts(rendered) == [
            [("system", "Be brief."), ("user", "Review: great (5/5)")],
            [("system", "Be brief."), ("user", "Review: awful (1/5)")],
            [("system", "Be brief."), ("user", "Review: fine (3/5)")],
        ]
        assert all(isinstance(m, InferenceMessage) for row in rendered for m in row)
        first = rendered[0]
        assert not isinstance(first, str)
        assert first[1].to_body() == {"role": "user", "text": "Review: great (5/5)"}

    def test_multi_turn_messages(self, reviews: pd.DataFrame) -> None:
        """Every turn of messages= is rendered, assistant turns included."""
        rendered = (
            MessageTemplates.build(
                None,
                messages=[
                    {"role": "user", "text": "Rate: nice"},
                    {"role": "assistant", "text": '{{"stars": 4}}'},
                    {"role": "user", "text": "Rate: {review}"},
                ],
            )
            .bind(reviews.columns)
            .render(reviews.iloc[:1])
        )
        assert texts(rendered) == [
            [("user", "Rate: nice"), ("assistant", '{"stars": 4}'), ("user", "Rate: great")]
        ]

    @pytest.mark.parametrize(
        "column",
        [
            pd.Series(["a", None, np.nan], dtype=object),
            pd.Series(["a", None, pd.NA], dtype="string"),
            pytest.param(
                pd.Series(["a", None, np.nan], dtype="str"),
                marks=pytest.mark.skipif(PANDAS_2, reason="dtype='str' is NaN-aware from pandas 3"),
            ),
            pd.Series([1.5, np.nan, None], dtype="float64"),
            pd.Series([1, pd.NA, None], dtype="Int64"),
            pd.Series([True, pd.NA, None], dtype="boolean"),
            pd.Series([pd.Timestamp("2024-01-02"), pd.NaT, None]),
            pd.Series(["x", None, np.nan], dtype="category"),
        ],
        ids=["object", "string", "str", "float", "Int64", "boolean", "datetime", "category"],
    )
    def test_missing_values_render_empty(self, column: pd.Series) -> None:
        """None, NaN, pd.NA and NaT render as "" — never "nan", "<NA>", "NaT" or "None"."""
        df = pd.DataFrame({"v": column})
        got = user_texts(render("[{v}]", df))
        assert got[1:] == ["[]", "[]"]
        assert got[0] not in ("[]", "[nan]")

    def test_missing_values_with_spec_and_conversion(self) -> None:
        """A missing value renders "" even with a format spec or a conversion."""
        df = pd.DataFrame({"p": [np.nan], "s": [None]})
        assert user_texts(render("[{p:.2f}][{s!r}]", df)) == ["[][]"]

    def test_skip_missing(self) -> None:
        """missing="skip" replaces rows with a missing used value by a reason."""
        df = pd.DataFrame(
            {
                "review": ["good", None, np.nan, "ok"],
                "title": ["t", "t", None, "t"],
                "other": [None] * 4,
            }
        )
        rendered = render("{review} / {title}", df, missing="skip")
        assert texts(rendered) == [
            [("user", "good / t")],
            "skipped: missing value in column 'review'",
            "skipped: missing values in columns 'review', 'title'",
            [("user", "ok / t")],
        ]

    def test_skip_checks_system_columns_too(self) -> None:
        """A missing value in a column used only by the system template also skips the row."""
        df = pd.DataFrame({"q": ["a", "b"], "persona": ["p", None]})
        rendered = (
            MessageTemplates.build("{q}", system="{persona}")
            .bind(df.columns)
            .render(df, missing="skip")
        )
        assert rendered[1] == "skipped: missing value in column 'persona'"
        assert not isinstance(rendered[0], str)

    def test_unknown_missing_policy(self, reviews: pd.DataFrame) -> None:
        """An unknown missing= is a ConfigurationError naming both options."""
        bound = MessageTemplates.build("{review}").bind(reviews.columns)
        with pytest.raises(
            ConfigurationError, match="missing='drop' is not an option; use 'empty'"
        ):
            bound.render(reviews, missing="drop")  # type: ignore[arg-type]

    def test_format_specs(self) -> None:
        """Format specs apply to the value: floats, ints, dates, alignment."""
        df = pd.DataFrame(
            {
                "price": [3.14159],
                "n": pd.array([7], dtype="Int64"),
                "when": [pd.Timestamp("2024-03-05 10:00")],
                "name": ["ab"],
            }
        )
        got = user_texts(render("{price:.2f}|{n:03d}|{when:%Y-%m-%d}|{name:>4}|{price:,.1%}", df))
        assert got == ["3.14|007|2024-03-05|  ab|314.2%"]

    def test_conversions(self) -> None:
        """!r, !s and !a apply repr/str/ascii before the spec."""
        df = pd.DataFrame({"name": ["café"]})
        assert user_texts(render("{name!r} {name!s} {name!a} {name!r:>8}", df)) == [
            "'café' café 'caf\\xe9'   'café'"
        ]

    def test_default_rendering_of_scalars(self) -> None:
        """Without a spec values render as str(): ints, floats, bools, categories, dates."""
        df = pd.DataFrame(
            {
                "i": [4],
                "f": [3.0],
                "b": [True],
                "c": pd.Categorical(["x"]),
                "d": [dt.date(2024, 1, 2)],
                "l": [[1, 2]],
            }
        )
        assert user_texts(render("{i} {f} {b} {c} {d} {l}", df)) == [
            "4 3.0 True x 2024-01-02 [1, 2]"
        ]

    def test_format_error_names_column_spec_and_row(self) -> None:
        """A spec that fails for a value raises TemplateError naming column, spec and row label."""
        df = pd.DataFrame({"price": [1.5, "n/a"]}, index=["a", "b"])
        with pytest.raises(TemplateError) as info:
            render("Price: {price:.2f}", df)
        assert str(info.value) == (
            "cannot format column 'price' with the format spec '.2f' (placeholder {price:.2f} "
            "in the user template 'Price: {price:.2f}') at row 'b': value 'n/a' (str): "
            "Unknown format code 'f' for object of type 'str'"
        )
        assert info.value.placeholder == "{price:.2f}"

    def test_escapes_and_braces_in_values(self) -> None:
        """{{ }} render as braces, and braces inside values are left exactly as they are."""
        df = pd.DataFrame({"v": ["{review} {0} }{"]})
        assert user_texts(render("{{{v}}}", df)) == ["{{review} {0} }{}"]

    def test_literal_column_names(self) -> None:
        """Columns named with spaces, dots, ':' (quoted) and non-strings are all reachable."""
        df = pd.DataFrame(
            {"unit price": [2], "a.b": ["x"], "ratio:x": [0.5], 0: ["zero"], "a`b": ["bt"]}
        )
        assert user_texts(render("{unit price} {a.b} {`ratio:x`:.1f} {0} {`a``b`}", df)) == [
            "2 x 0.5 zero bt"
        ]

    def test_series_style_value(self) -> None:
        """A Series rendered as a one-column frame named "value" fills {} and {value}."""
        frame = pd.Series(["x", None], name="whatever").to_frame("value")
        assert user_texts(render("{} = {value}", frame)) == ["x = x", " = "]

    def test_static_template_for_every_row(self, reviews: pd.DataFrame) -> None:
        """A template without placeholders renders the same text for each row."""
        assert user_texts(render("Say {{hi}}", reviews)) == ["Say {hi}"] * 3

    def test_duplicate_and_unsorted_index(self) -> None:
        """Rows render by position, whatever the index labels."""
        df = pd.DataFrame({"v": ["a", "b", "c"]}, index=[2, 2, 1])
        assert user_texts(render("{v}", df)) == ["a", "b", "c"]

    def test_empty_frame(self, reviews: pd.DataFrame) -> None:
        """An empty frame renders to an empty list."""
        assert render("{review}", reviews.iloc[:0]) == []

    def test_rebinds_when_columns_moved(self, reviews: pd.DataFrame) -> None:
        """Rendering a frame whose columns were reordered still reads the right columns."""
        bound = MessageTemplates.build("{review}:{stars}").bind(reviews.columns)
        swapped = reviews[["stars", "review"]]
        assert user_texts(bound.render(swapped)) == ["great:5", "awful:1", "fine:3"]

    def test_render_row(self, reviews: pd.DataFrame) -> None:
        """render_row renders the row at one position."""
        bound = MessageTemplates.build("{review}").bind(reviews.columns)
        row = bound.render_row(reviews, 1)
        assert not isinstance(row, str)
        assert row[0].text == "awful"

    def test_same_column_twice_with_different_specs(self) -> None:
        """One column may appear with different specs in one template."""
        df = pd.DataFrame({"x": [2.5]})
        assert user_texts(render("{x} {x:.0f} {x!r}", df)) == ["2.5 2 2.5"]

    def test_many_rows(self) -> None:
        """20,000 rows x 2 placeholders render, one entry per row, in order."""
        n = 20_000
        df = pd.DataFrame({"review": [f"r{i}" for i in range(n)], "stars": np.arange(n) % 5})
        rendered = (
            MessageTemplates.build("{review}|{stars}", system="S").bind(df.columns).render(df)
        )
        assert len(rendered) == n
        assert texts(rendered[:2]) == [
            [("system", "S"), ("user", "r0|0")],
            [("system", "S"), ("user", "r1|1")],
        ]
        assert user_texts(rendered[-1:]) == ["r19999|4"]
