"""The review widget: one row at a time, its inputs, the answer(s), and a control per field.

Built from plain ipywidgets (imported here, lazily), so it works wherever the progress widget
does. Picking a value (a click on an enum's button, the boolean toggle, or Enter in a text box)
saves it at once; Accept saves the answer shown and moves on. ipywidgets have no key events, so
keyboard shortcuts go through a small text box that keeps the focus: each key typed there is an
action (``a`` accept, ``n``/``s`` next, ``p`` previous, ``1``-``9`` pick a value).
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

if TYPE_CHECKING:
    from ._review import Review

__all__ = ["ReviewWidget"]

SHORTCUTS = "a accept · n next · p previous · s skip · 1-9 pick"
_HELP = f"<span style='color:#777'>Keys, typed in the box: {SHORTCUTS}</span>"
_MAX_BUTTONS = 8


def _show(value: Any) -> str:
    if value is None:
        return "<i>none</i>"
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value, ensure_ascii=False))
    return html.escape(str(value))


class ReviewWidget:
    """The view of a :class:`Review`; ``box`` is the widget to display."""

    def __init__(self, review: Review) -> None:
        self.review = review
        self._updating = False
        self.header = widgets.HTML()
        self.inputs = widgets.HTML()
        self.answers = widgets.HTML()
        self.message = widgets.HTML(_HELP)
        self.editors: dict[str, Any] = {}
        rows = []
        for name in review.fields:
            editor = self._editor(name)
            self.editors[name] = editor
            label = widgets.HTML(f"<b>{html.escape(name)}</b>", layout=widgets.Layout(width="9em"))
            rows.append(widgets.HBox([label, editor]))
        self.accept_button = widgets.Button(
            description="Accept", button_style="success", icon="check", tooltip="Accept (a)"
        )
        self.previous_button = widgets.Button(description="Previous", icon="arrow-left")
        self.next_button = widgets.Button(description="Next", icon="arrow-right")
        self.skip_button = widgets.Button(description="Skip", tooltip="Skip (s)")
        self.accept_button.on_click(lambda _: self._act(self.review.accept))
        self.previous_button.on_click(lambda _: self._act(self.review.previous))
        self.next_button.on_click(lambda _: self._act(self.review.next))
        self.skip_button.on_click(lambda _: self._act(self.review.skip))
        self.keys = widgets.Text(
            value="",
            placeholder="type a key: a n p s 1-9",
            tooltip=f"Keyboard: {SHORTCUTS}",
            continuous_update=True,
            layout=widgets.Layout(width="24em"),
        )
        self.keys.add_class("npd-review-keys")
        self.keys.observe(self._on_key, names="value")
        buttons = widgets.HBox(
            [
                self.previous_button,
                self.accept_button,
                self.skip_button,
                self.next_button,
                self.keys,
            ]
        )
        self.box = widgets.VBox(
            [self.header, self.inputs, self.answers, *rows, buttons, self.message],
            layout=widgets.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.box.add_class("npd-review")
        self.refresh()

    # ------------------------------------------------------------------ building

    def _editor(self, name: str) -> Any:
        kind = self.review.kind(name)
        choices = self.review.choices(name)
        if kind == "boolean":
            editor = widgets.ToggleButtons(options=[("true", True), ("false", False)], value=None)
        elif kind == "choice" and choices is not None and len(choices) <= _MAX_BUTTONS:
            editor = widgets.ToggleButtons(options=[(str(c), c) for c in choices], value=None)
            editor.style.button_width = "auto"
        elif kind == "choice" and choices is not None:
            editor = widgets.Dropdown(options=[(str(c), c) for c in choices], value=None)
        else:
            editor = widgets.Text(continuous_update=False, placeholder=kind)
        editor.add_class(f"npd-review-field-{name}")
        editor.observe(lambda change, n=name: self._on_edit(n, change), names="value")
        return editor

    # ------------------------------------------------------------------ updating

    def refresh(self) -> None:
        """Show the review's current row."""
        review = self.review
        row = review.row()
        self._updating = True
        try:
            reason = f" · {html.escape(row['reason'])}" if row["reason"] else ""
            self.header.value = (
                f"<b>Row {row['position'] + 1} of {len(review)}</b> (index "
                f"{html.escape(repr(row['index']))}){reason} · <b>reviewed {review.reviewed}</b>"
            )
            self.inputs.value = "".join(
                f"<div><b>{html.escape(k)}</b>: {_show(v)}</div>" for k, v in row["inputs"].items()
            )
            self.answers.value = self._answers_html(row)
            for name, editor in self.editors.items():
                label = row["labels"].get(name)
                value = label.value if label is not None else row["answer"][name]
                if isinstance(editor, widgets.Text):
                    editor.value = (
                        ""
                        if value is None
                        else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))
                    )
                else:
                    editor.value = value if value in [v for _, v in editor.options] else None
            self.accept_button.disabled = all(v is None for v in row["answer"].values())
        finally:
            self._updating = False

    def _answers_html(self, row: dict[str, Any]) -> str:
        parts = []
        for name, variant in row["variants"].items():
            if variant["error"] is not None:
                text = f"<span style='color:#b00'>failed: {_show(variant['error'])}</span>"
            else:
                text = ", ".join(
                    f"{html.escape(f)}={_show(v)}" for f, v in variant["values"].items()
                )
            parts.append(f"<div><b>{html.escape(name)}</b>: {text}</div>")
        if row["truth"]:
            truth = ", ".join(f"{html.escape(f)}={_show(v)}" for f, v in row["truth"].items())
            parts.append(f"<div><b>truth</b>: {truth}</div>")
        if row["labels"]:
            done = ", ".join(
                f"{html.escape(f)}={_show(label.value)} ({label.source})"
                for f, label in row["labels"].items()
            )
            parts.append(f"<div style='color:#080'><b>reviewed</b>: {done}</div>")
        return "".join(parts)

    # ------------------------------------------------------------------ events

    def _act(self, action: Any, *args: Any, **kwargs: Any) -> None:
        try:
            action(*args, **kwargs)
        except Exception as exc:  # shown in the widget; the kernel stays quiet
            self.message.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
        else:
            self.message.value = _HELP
        self.refresh()

    def _on_edit(self, name: str, change: dict[str, Any]) -> None:
        if self._updating:
            return
        value = change["new"]
        if value is None:
            return
        editor = self.editors[name]
        if isinstance(editor, widgets.Text):
            try:
                value = self.review.parse(name, value)
            except ValueError:
                self.message.value = (
                    f"<span style='color:#b00'>{html.escape(repr(change['new']))} is not a "
                    f"valid {html.escape(self.review.kind(name))}</span>"
                )
                return
        self._act(self.review.correct, value, field=name)

    def _on_key(self, change: dict[str, Any]) -> None:
        text = change["new"]
        if not text:
            return
        self.keys.value = ""
        for key in text.lower():
            self._key(key)

    def _key(self, key: str) -> None:
        review = self.review
        if key == "a":
            self._act(review.accept)
        elif key in "ns":
            self._act(review.next)
        elif key in "pb":
            self._act(review.previous)
        elif key.isdigit() and key != "0":
            for name in review.fields:
                choices = review.choices(name)
                if choices is not None:
                    number = int(key) - 1
                    if number < len(choices):
                        self._act(review.correct, choices[number], field=name)
                    return
