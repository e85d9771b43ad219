"""Rendering DataFrame rows into chat messages, with every placeholder checked up front.

A template is text with ``{column}`` placeholders, filled in once per row. This module parses the
templates, binds each placeholder to a column before anything is sent (a misspelt column is a
:class:`TemplateError` naming the placeholder, its template, the columns that exist and the closest
one), and renders all rows column-wise, so 20,000 rows take milliseconds.

Template syntax
---------------
``{review}``
    The value of column ``review`` in this row.
``{price:.2f}``, ``{when:%Y-%m-%d}``
    A Python format spec, applied to the value (``3.14159`` -> ``3.14``).
``{name!r}``, ``{name!s}``, ``{name!a}``
    A conversion (``repr``/``str``/``ascii``) before formatting, as in :meth:`str.format`.
``{{`` and ``}}``
    A literal ``{`` or ``}``.
``{unit price}``, ``{a.b}``, ``{a[0]}``
    The whole field name is the column name, taken literally: dots and brackets are *not*
    attribute or item access as in :meth:`str.format`.
``{`ratio:x`}``, ``{`weird`:.2f}``
    Backticks quote a name that contains ``:``, ``!``, ``{`` or ``}`` (a spec or conversion may
    follow the closing backtick); a doubled backtick inside them is one backtick, so
    ``{`a``b`}`` names the column ``a`b``.
``{0}``
    Names the column ``"0"``, or the non-string column ``0`` when no string column is called
    ``"0"`` (non-string column names match by their ``str()``).
``{}``
    The only column of a one-column frame: ``Series.narrative.infer`` renders a Series as a frame
    whose single column is called ``value``, so ``{}`` and ``{value}`` both mean the value.

Missing values (``None``, ``NaN``, ``pd.NA``, ``NaT``) render as ``""`` with ``missing="empty"``
(never as the text ``nan``), or skip the row with ``missing="skip"``. Values are inserted as
they are: braces inside a value are never read as placeholders. Nested placeholders inside a
format spec (``{x:{width}}``) are not supported.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from ._exceptions import ConfigurationError, TemplateError
from ._models import InferenceMessage
from ._render import CONVERSIONS, RenderedColumns, render_columns

__all__ = [
    "MISSING_POLICIES",
    "ROLES",
    "BoundTemplates",
    "FieldRef",
    "MessageTemplates",
    "MissingPolicy",
    "Placeholder",
    "Role",
    "Template",
]

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
MissingPolicy = Literal["empty", "skip"]
MISSING_POLICIES: tuple[str, ...] = ("empty", "skip")

_CONVERSIONS = CONVERSIONS
_MAX_LISTED_COLUMNS = 30


def _short(text: str, limit: int = 80) -> str:
    """``repr`` of a template, cut to ``limit`` characters for error messages."""
    if len(text) > limit:
        return repr(text[: limit - 3] + "...")
    return repr(text)


def _list_columns(columns: Sequence[Hashable]) -> str:
    shown = [repr(c) for c in columns[:_MAX_LISTED_COLUMNS]]
    more = len(columns) - len(shown)
    tail = f", ... ({more} more)" if more > 0 else ""
    return "[" + ", ".join(shown) + tail + "]"


@dataclass(frozen=True)
class FieldRef:
    """One placeholder as written in a template, before it is bound to a column."""

    name: str
    spec: str = ""
    conversion: str | None = None
    quoted: bool = False

    @property
    def positional(self) -> bool:
        """True for ``{}`` (and ``{:spec}``): the only column of a one-column frame."""
        return self.name == "" and not self.quoted

    def __str__(self) -> str:
        name = "`" + self.name.replace("`", "``") + "`" if self.quoted else self.name
        conversion = f"!{self.conversion}" if self.conversion else ""
        spec = f":{self.spec}" if self.spec else ""
        return "{" + name + conversion + spec + "}"


@dataclass(frozen=True)
class Placeholder:
    """A placeholder bound to a column: ``name`` as written, ``column`` the frame's label."""

    name: str
    column: Hashable
    spec: str
    conversion: str | None


@dataclass(frozen=True)
class Template:
    """One message template: literal chunks around its placeholders."""

    text: str
    fields: tuple[FieldRef, ...]
    literals: tuple[str, ...]
    label: str = "template"

    @classmethod
    def parse(cls, text: str, *, label: str = "template") -> Template:
        """Parse ``text``; raise :class:`TemplateError` naming the template if it is malformed."""
        if not isinstance(text, str):
            raise TypeError(f"{label} must be a str, got {type(text).__name__}")
        fields, literals = _parse(text, label)
        return cls(text=text, fields=tuple(fields), literals=tuple(literals), label=label)

    @property
    def description(self) -> str:
        """How error messages name this template: its label and (shortened) text."""
        return f"{self.label} {_short(self.text)}"

    @property
    def static_text(self) -> str | None:
        """The rendered text when the template has no placeholders, else None."""
        return self.literals[0] if not self.fields else None


def _parse(text: str, label: str) -> tuple[list[FieldRef], list[str]]:
    """Split ``text`` into literal chunks and fields (one more chunk than fields)."""
    fields: list[FieldRef] = []
    literals: list[str] = []
    chunk: list[str] = []
    n = len(text)
    i = 0

    def fail(why: str) -> TemplateError:
        return TemplateError(
            f"{label} {_short(text)} is malformed: {why}. Write {{{{ and }}}} for literal braces.",
            template=text,
        )

    while i < n:
        c = text[i]
        if c == "}":
            if i + 1 < n and text[i + 1] == "}":
                chunk.append("}")
                i += 2
                continue
            raise fail(f"single '}}' at position {i}")
        if c != "{":
            chunk.append(c)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "{":
            chunk.append("{")
            i += 2
            continue
        start = i
        i += 1
        quoted = False
        if i < n and text[i] == "`":
            quoted = True
            name_chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise fail(f"unclosed backtick in the placeholder at position {start}")
                if text[i] == "`":
                    if i + 1 < n and text[i + 1] == "`":
                        name_chars.append("`")
                        i += 2
                        continue
                    i += 1
                    break
                name_chars.append(text[i])
                i += 1
            name = "".join(name_chars)
            if i >= n or text[i] not in "!:}":
                raise fail(
                    f"expected '}}', ':' or '!' after the quoted name `{name}` "
                    f"in the placeholder at position {start}"
                )
        else:
            j = i
            while j < n and text[j] not in "!:{}":
                j += 1
            if j >= n:
                raise fail(f"unmatched '{{' at position {start}")
            if text[j] == "{":
                raise fail(f"unexpected '{{' inside the placeholder at position {start}")
            name = text[i:j]
            i = j
        conversion: str | None = None
        if text[i] == "!":
            if i + 1 >= n or text[i + 1] not in _CONVERSIONS:
                got = text[i + 1 : i + 2] or "end of text"
                raise fail(
                    f"invalid conversion {got!r} in the placeholder at position {start} "
                    "(use !r, !s or !a)"
                )
            conversion = text[i + 1]
            i += 2
            if i >= n or text[i] not in ":}":
                raise fail(f"expected '}}' or ':' after !{conversion} at position {i}")
        spec = ""
        if text[i] == ":":
            j = i + 1
            while j < n and text[j] not in "{}":
                j += 1
            if j >= n:
                raise fail(f"unmatched '{{' at position {start}")
            if text[j] == "{":
                raise fail(
                    f"nested placeholders in format specs are not supported "
                    f"(placeholder at position {start})"
                )
            spec = text[i + 1 : j]
            i = j
        # text[i] == "}"
        i += 1
        literals.append("".join(chunk))
        chunk = []
        fields.append(FieldRef(name=name, spec=spec, conversion=conversion, quoted=quoted))
    literals.append("".join(chunk))
    return fields, literals


@dataclass(frozen=True)
class MessageTemplates:
    """The templates of one run's messages, in order: ``(role, template)`` turns."""

    turns: tuple[tuple[Role, Template], ...]

    @classmethod
    def build(
        cls,
        prompt: str | None,
        *,
        system: str | None = None,
        messages: Sequence[Mapping[str, str]] | None = None,
    ) -> MessageTemplates:
        """Parse a user ``prompt`` (plus optional ``system``) or multi-turn ``messages``.

        Exactly one of ``prompt`` and ``messages`` is given; ``messages`` items are
        ``{"role": "system" | "user" | "assistant", "text": template}``.
        """
        if prompt is not None and messages is not None:
            raise ConfigurationError(
                "pass either a prompt template or messages=[...], not both "
                "(put the prompt in messages as {'role': 'user', 'text': ...})"
            )
        if prompt is None and messages is None:
            raise ConfigurationError(
                "nothing to send: pass a prompt template such as 'Review: {review}', "
                "or messages=[{'role': 'user', 'text': 'Review: {review}'}]"
            )
        turns: list[tuple[Role, Template]] = []
        if system is not None:
            if not isinstance(system, str):
                raise TypeError(f"system must be a str template, got {type(system).__name__}")
            turns.append(("system", Template.parse(system, label="the system template")))
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(
                    f"the prompt must be a str template such as 'Review: {{review}}', "
                    f"got {type(prompt).__name__}"
                )
            if not prompt.strip():
                raise ConfigurationError("the prompt template is empty: there is nothing to ask")
            turns.append(("user", Template.parse(prompt, label="the user template")))
        else:
            turns.extend(_message_turns(messages, has_system=system is not None))
        return cls(turns=tuple(turns))

    @property
    def fields(self) -> tuple[FieldRef, ...]:
        """Every placeholder of every turn, in order."""
        return tuple(f for _, t in self.turns for f in t.fields)

    def bind(self, columns: Iterable[Hashable]) -> BoundTemplates:
        """Bind every placeholder to a column; raise TemplateError naming any that is missing."""
        columns = list(columns)
        resolver = _Resolver(columns)
        bound: list[tuple[Placeholder, ...]] = []
        positions: list[tuple[int, ...]] = []
        problems: list[tuple[FieldRef, Template, str]] = []
        for _, template in self.turns:
            turn_placeholders: list[Placeholder] = []
            turn_positions: list[int] = []
            for ref in template.fields:
                pos, problem = resolver.resolve(ref)
                if pos is None:
                    problems.append((ref, template, problem))
                    continue
                turn_placeholders.append(
                    Placeholder(
                        name=ref.name, column=columns[pos], spec=ref.spec, conversion=ref.conversion
                    )
                )
                turn_positions.append(pos)
            bound.append(tuple(turn_placeholders))
            positions.append(tuple(turn_positions))
        if problems:
            raise _missing_error(problems, columns)
        return BoundTemplates(
            templates=self,
            columns=tuple(columns),
            placeholders=tuple(bound),
            positions=tuple(positions),
        )


def _message_turns(
    messages: Sequence[Mapping[str, str]] | None, *, has_system: bool
) -> list[tuple[Role, Template]]:
    shape = "messages must be a list of {'role': 'system'|'user'|'assistant', 'text': template}"
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TemplateError(f"{shape} dicts, got {type(messages).__name__}")
    if not messages:
        raise TemplateError(f"messages is empty: {shape}, with at least one 'user' turn")
    turns: list[tuple[Role, Template]] = []
    for k, item in enumerate(messages):
        where = f"messages[{k}]"
        if not isinstance(item, Mapping):
            raise TemplateError(f"{where} is a {type(item).__name__}; {shape}")
        keys = set(item)
        if keys != {"role", "text"}:
            hint = ""
            if "content" in keys and "text" not in keys:
                hint = " (write 'text' instead of 'content')"
            raise TemplateError(
                f"{where} has keys {sorted(map(str, keys))}; each message needs exactly "
                f"'role' and 'text'{hint}"
            )
        role = item["role"]
        if role not in ROLES:
            raise TemplateError(
                f"{where} has role {role!r}; use one of 'system', 'user', 'assistant'"
            )
        if role == "system" and has_system:
            raise ConfigurationError(
                f"system= was given and {where} is a system message too: give the system "
                "template once"
            )
        text = item["text"]
        if not isinstance(text, str):
            raise TemplateError(f"{where} 'text' must be a str template, got {type(text).__name__}")
        turns.append((role, Template.parse(text, label=f"{where} ({role})")))
    if not any(role == "user" for role, _ in turns):
        raise TemplateError("messages need at least one 'user' turn: the question to answer")
    return turns


class _Resolver:
    """Finds the position of the column a placeholder names."""

    def __init__(self, columns: list[Hashable]) -> None:
        self.columns = columns
        self.by_str: dict[str, list[int]] = {}
        self.by_other: dict[str, list[int]] = {}
        for pos, col in enumerate(columns):
            if isinstance(col, str):
                self.by_str.setdefault(col, []).append(pos)
            else:
                self.by_other.setdefault(str(col), []).append(pos)

    def resolve(self, ref: FieldRef) -> tuple[int | None, str]:
        """``(position, "")`` or ``(None, why)``."""
        if ref.positional:
            if len(self.columns) == 1:
                return 0, ""
            return None, (
                "is positional, which needs a frame with exactly one column (it is meant for "
                "Series.narrative.infer); name a column instead"
            )
        for table in (self.by_str, self.by_other):
            found = table.get(ref.name)
            if found is None:
                continue
            if len(found) > 1:
                return None, (
                    f"is ambiguous: {len(found)} columns are named {ref.name!r}; "
                    "rename them so each name is unique"
                )
            return found[0], ""
        return None, self._missing(ref)

    def _missing(self, ref: FieldRef) -> str:
        raw = ref.name
        if ref.conversion:
            raw += "!" + ref.conversion
        if ref.spec:
            raw += ":" + ref.spec
        if not ref.quoted and raw != ref.name and raw in self.by_str:
            quoted = "{`" + raw.replace("`", "``") + "`}"
            return f"names no column; to use the column {raw!r}, quote it: {quoted}"
        names = [str(c) for c in self.columns]
        close = difflib.get_close_matches(ref.name, names, n=1, cutoff=0.6)
        if not close:
            lowered = {n.lower().strip(): n for n in names}
            hit = lowered.get(ref.name.lower().strip())
            close = [hit] if hit is not None else []
        return "names no column" + (f"; did you mean {close[0]!r}?" if close else "")


def _missing_error(
    problems: list[tuple[FieldRef, Template, str]], columns: list[Hashable]
) -> TemplateError:
    ref, template, _ = problems[0]
    lines = [f"placeholder {r} in {t.description} {why}" for r, t, why in problems]
    if len(lines) == 1:
        head = lines[0]
    else:
        head = f"{len(lines)} placeholders do not match a column:\n  " + "\n  ".join(lines)
    return TemplateError(
        f"{head}\nColumns: {_list_columns(columns)}",
        placeholder=str(ref),
        template=template.text,
        columns=columns,
    )


@dataclass(frozen=True)
class BoundTemplates:
    """Templates whose placeholders are bound to columns (by position) of a known frame."""

    templates: MessageTemplates
    columns: tuple[Hashable, ...]
    placeholders: tuple[tuple[Placeholder, ...], ...]
    positions: tuple[tuple[int, ...], ...]

    @property
    def used_columns(self) -> tuple[Hashable, ...]:
        """The columns the templates read, each once, in order of first use."""
        seen: dict[int, Hashable] = {}
        for turn in self.positions:
            for pos in turn:
                seen.setdefault(pos, self.columns[pos])
        return tuple(seen.values())

    def render(
        self, df: pd.DataFrame, *, missing: MissingPolicy = "empty"
    ) -> list[list[InferenceMessage] | str]:
        """One entry per row position, in order: the row's messages, or a skip reason (str).

        With ``missing="skip"``, a row with a missing value in a column the templates use is
        not rendered; its entry says why, e.g. ``"skipped: missing value in column 'review'"``.
        A format spec that fails for a value raises :class:`TemplateError` naming the column,
        the spec and the row's index label.
        """
        return [
            row
            if isinstance(row, str)
            else [InferenceMessage(role=role, text=text) for role, text in row]
            for row in self.render_turns(df, missing=missing)
        ]

    def render_turns(
        self, df: pd.DataFrame, *, missing: MissingPolicy = "empty"
    ) -> list[tuple[tuple[str, str], ...] | str]:
        """:meth:`render` as plain ``(role, text)`` pairs: what a run needs, without building a
        validated message object per turn (roles were checked when the templates were built)."""
        return self.render_columns(df, missing=missing).turns()

    def render_columns(
        self, df: pd.DataFrame, *, missing: MissingPolicy = "empty"
    ) -> RenderedColumns:
        """:meth:`render_turns` held column-wise (one list of texts per turn): what a plan of
        many rows is built from without a tuple per row."""
        if missing not in MISSING_POLICIES:
            raise ConfigurationError(
                f"missing={missing!r} is not an option; use 'empty' (render missing values as "
                "'') or 'skip' (skip rows with a missing value)"
            )
        bound = self if self._matches(df) else self.templates.bind(list(df.columns))
        return render_columns(bound, df, missing)

    def render_row(
        self, df: pd.DataFrame, position: int, *, missing: MissingPolicy = "empty"
    ) -> list[InferenceMessage] | str:
        """The messages (or skip reason) of the row at ``position`` (for previews)."""
        return self.render(df.iloc[[position]], missing=missing)[0]

    def _matches(self, df: pd.DataFrame) -> bool:
        if len(df.columns) != len(self.columns):
            return False
        cols = df.columns
        return all(
            _same_label(cols[pos], self.columns[pos]) for turn in self.positions for pos in turn
        )


def _same_label(a: Hashable, b: Hashable) -> bool:
    return a is b or (type(a) is type(b) and bool(a == b))
