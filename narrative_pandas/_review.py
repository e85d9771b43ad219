"""Reviewing answers in the notebook: a queue of rows a person should look at first.

``out.narrative.review()`` returns a :class:`Review`: the rows in review order (failed rows, then
the least agreement, then rows whose answer differs from a given truth, then the rest), the
reviewed labels so far, and the widget that shows them (``_review_widget``). Every label is
saved the moment it is made (``_review_store``): in the disk cache's file when the result came
from one, so ``review()`` on the same rows after a kernel restart resumes where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from jsonschema import Draft202012Validator

from ._evaluate import resolve_truth
from ._examples import plain as _plain
from ._exceptions import ConfigurationError
from ._fold import agreement
from ._resultinfo import ResultInfo, describe_result, usable_rows
from ._review_store import ReviewLabel, ReviewStore, open_store

__all__ = ["Review", "review"]

SOURCES = ("accepted", "edited")
REVIEWED_COLUMN = "narrative_reviewed"
_AUTO = "auto"


def _label(value: Any) -> Any:
    """An index label as plain Python (tuples of a MultiIndex stay tuples)."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return _plain(value)


class Review:
    """A review of a result's rows; the widget is its view (shown when it is a cell's value).

    Use the widget, or drive it from Python: ``accept()``, ``correct(value, field=...)``,
    ``skip()``, ``previous()``, ``goto(index)``. ``labels`` holds what was reviewed;
    ``apply(out)`` returns ``out`` with the reviewed values and ``narrative_reviewed``.

    Examples
    --------
    >>> rv = out.narrative.review(cache="labels.sqlite")  # doctest: +SKIP
    >>> rv                                                 # doctest: +SKIP
    >>> rv.labels                                          # doctest: +SKIP
    >>> fixed = rv.apply(out)                              # doctest: +SKIP
    """

    def __init__(
        self,
        df: pd.DataFrame,
        info: ResultInfo,
        order: list[int],
        reasons: dict[int, str],
        *,
        store: ReviewStore,
        namespace: str,
        truth: dict[str, pd.Series] | None = None,
    ) -> None:
        self._df = df
        self.info = info
        self.fields = list(info.fields)
        self._order = order
        self._reasons = reasons
        self._store = store
        self._namespace = namespace
        self._truth = truth or {}
        self._answers = self._consensus()
        self._validators = {f: self._validator(f) for f in self.fields}
        self._row_ids = self._identities()
        self._labels: dict[tuple[int, str], ReviewLabel] = {}
        by_id = {rid: p for p, rid in enumerate(self._row_ids)}
        for label in store.load(namespace, self._row_ids):
            if label.field in self.fields and label.row_id in by_id:
                self._labels[(by_id[label.row_id], label.field)] = label
        self._cursor = 0
        self._cursor = self._first_unreviewed()
        self._widget: Any = None

    # ------------------------------------------------------------------ what is reviewed

    def _identities(self) -> list[str]:
        """Each row's identity across sessions: its index label and the values the template
        used (so a review resumes on the same rows, and never on rows whose inputs changed)."""
        columns = self.info.template_columns or self.info.input_columns
        arrays = [self._df[c].to_numpy(dtype=object) for c in columns if c in self._df.columns]
        ids = []
        for position, label in enumerate(self._df.index):
            values = [_plain(array[position]) for array in arrays]
            material = json.dumps([_label(label), values], default=str, sort_keys=True)
            ids.append(hashlib.sha256(material.encode("utf-8")).hexdigest())
        return ids

    def _consensus(self) -> dict[str, list[Any]]:
        """Per field, the answer shown for each row (the majority of the variants, if several)."""
        answers: dict[str, list[Any]] = {}
        oks = [usable_rows(self._df, v).to_numpy() for v in self.info.variants]
        for name in self.fields:
            columns = [self._df[v.columns[name]] for v in self.info.variants]
            winners, _, _ = agreement(columns, oks)
            answers[name] = [_plain(w) for w in winners]
        return answers

    def _validator(self, name: str) -> Draft202012Validator | None:
        node = self.info.field_schema(name)
        if node is None:
            return None
        schema = {**node}
        if self.info.schema and "$defs" in self.info.schema:
            schema["$defs"] = self.info.schema["$defs"]
        return Draft202012Validator(schema)

    def choices(self, name: str) -> list[Any] | None:
        """The values a field may take, in schema order (enums and booleans), else None."""
        node = self.info.field_schema(name) or {}
        if "enum" in node:
            return list(node["enum"])
        column = self._df[self.info.variants[0].columns[name]]
        if isinstance(column.dtype, pd.CategoricalDtype):
            return [_plain(c) for c in column.dtype.categories]
        if node.get("type") == "boolean" or pd.api.types.is_bool_dtype(column.dtype):
            return [True, False]
        return None

    def kind(self, name: str) -> str:
        """How a field is edited: 'choice', 'boolean', 'integer', 'number', 'json' or 'string'."""
        node = self.info.field_schema(name) or {}
        column = self._df[self.info.variants[0].columns[name]]
        if node.get("type") == "boolean" or pd.api.types.is_bool_dtype(column.dtype):
            return "boolean"
        if "enum" in node or isinstance(column.dtype, pd.CategoricalDtype):
            return "choice"
        if node.get("type") == "integer" or pd.api.types.is_integer_dtype(column.dtype):
            return "integer"
        if node.get("type") == "number" or pd.api.types.is_float_dtype(column.dtype):
            return "number"
        if node.get("type") in ("array", "object") or column.dtype == object:
            return "json"
        return "string"

    def check(self, name: str, value: Any) -> str | None:
        """Why ``value`` is not valid for field ``name`` (None when it is)."""
        if name not in self.fields:
            return f"unknown field {name!r}; this review has {', '.join(map(repr, self.fields))}"
        validator = self._validators[name]
        if validator is None:
            return None
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        return errors[0].message if errors else None

    def parse(self, name: str, text: str) -> Any:
        """A typed value from what was typed in a text box (raises ValueError if it is not)."""
        kind = self.kind(name)
        text = text.strip()
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
        if kind == "json":
            return json.loads(text)
        return text

    # ------------------------------------------------------------------ position

    def __len__(self) -> int:
        return len(self._order)

    @property
    def position(self) -> int:
        """Where the review is in its queue (0-based)."""
        return self._cursor

    @property
    def current(self) -> Hashable:
        """The index label of the row being reviewed."""
        label: Hashable = _label(self._df.index[self._order[self._cursor]])
        return label

    @property
    def order(self) -> list[Hashable]:
        """The index labels in review order."""
        return [_label(self._df.index[p]) for p in self._order]

    def reason(self, position: int | None = None) -> str:
        """Why a row is in the queue where it is (failed, agreement, differs from the truth)."""
        row = self._order[self._cursor if position is None else position]
        return self._reasons.get(row, "")

    def row(self, position: int | None = None) -> dict[str, Any]:
        """What the widget shows for a queue position: inputs, answers, labels, truth, reason."""
        at = self._cursor if position is None else position
        row = self._order[at]
        columns = self.info.template_columns or self.info.input_columns
        inputs = {str(c): _plain(self._df[c].iat[row]) for c in columns if c in self._df.columns}
        variants: dict[str, dict[str, Any]] = {}
        for variant in self.info.variants:
            error = None
            if variant.error_column is not None and variant.error_column in self._df.columns:
                error = _plain(self._df[variant.error_column].iat[row])
            variants[variant.name or "answer"] = {
                "values": {f: _plain(self._df[variant.columns[f]].iat[row]) for f in self.fields},
                "error": error,
            }
        return {
            "index": _label(self._df.index[row]),
            "position": at,
            "inputs": inputs,
            "answer": {f: self._answers[f][row] for f in self.fields},
            "variants": variants,
            "labels": {f: self._labels[(row, f)] for f in self.fields if (row, f) in self._labels},
            "truth": {f: _plain(t.iat[row]) for f, t in self._truth.items()},
            "reason": self._reasons.get(row, ""),
        }

    def _first_unreviewed(self) -> int:
        for at, row in enumerate(self._order):
            if not any((row, f) in self._labels for f in self.fields):
                return at
        return max(0, len(self._order) - 1)

    def goto(self, index: Hashable) -> None:
        """Move to the row with this index label (it must be in the queue)."""
        position = self._df.index.get_loc(index)
        if not isinstance(position, int) or position not in self._order:
            raise KeyError(f"{index!r} is not a row of this review")
        self._move(self._order.index(position))

    def next(self) -> None:
        """Move to the next row (stays on the last one)."""
        self._move(min(self._cursor + 1, max(len(self._order) - 1, 0)))

    def previous(self) -> None:
        """Move to the previous row."""
        self._move(max(self._cursor - 1, 0))

    def skip(self) -> None:
        """Leave the row unreviewed and move on."""
        self.next()

    def _move(self, position: int) -> None:
        self._cursor = position
        if self._widget is not None:
            self._widget.refresh()

    # ------------------------------------------------------------------ labelling

    def accept(self, index: Hashable | None = None) -> None:
        """Accept the answer shown for the row (each field that has one), then move on."""
        if index is not None:
            self.goto(index)
        row = self._order[self._cursor]
        answered = [f for f in self.fields if self._answers[f][row] is not None]
        if not answered:
            raise ConfigurationError(
                f"row {self.current!r} has no answer to accept (it failed); pick a value with "
                "correct(value, field=...)."
            )
        for name in answered:
            self._record(row, name, self._answers[name][row], "accepted")
        self.next()

    def correct(
        self, value: Any, *, field: str | None = None, index: Hashable | None = None
    ) -> None:
        """Set the row's value for ``field`` (the only field by default); stays on the row.

        The value is checked against the field's schema; an invalid one raises and is not kept.
        A value equal to the answer shown counts as accepted, any other as edited.
        """
        if index is not None:
            self.goto(index)
        if field is None:
            if len(self.fields) != 1:
                raise ConfigurationError(
                    f"say which field: correct(value, field=...) (one of "
                    f"{', '.join(map(repr, self.fields))})."
                )
            field = self.fields[0]
        value = _plain(value)
        problem = self.check(field, value)
        if problem is not None:
            raise ConfigurationError(f"{value!r} is not a valid {field!r}: {problem}.")
        row = self._order[self._cursor]
        source = "accepted" if value == self._answers[field][row] else "edited"
        self._record(row, field, value, source)
        if self._widget is not None:
            self._widget.refresh()

    def _record(self, row: int, name: str, value: Any, source: str) -> None:
        label = ReviewLabel(
            row_id=self._row_ids[row],
            field=name,
            index=_label(self._df.index[row]),
            value=value,
            source=source,
            reviewed_at=time.time(),
        )
        self._store.save(self._namespace, label)
        self._labels[(row, name)] = label

    def undo(self, index: Hashable | None = None) -> None:
        """Forget the row's reviewed labels (in the store too)."""
        if index is not None:
            self.goto(index)
        row = self._order[self._cursor]
        for name in self.fields:
            if self._labels.pop((row, name), None) is not None:
                self._store.delete(self._namespace, self._row_ids[row], name)
        if self._widget is not None:
            self._widget.refresh()

    # ------------------------------------------------------------------ results

    @property
    def reviewed(self) -> int:
        """Rows with at least one reviewed label."""
        return len({row for row, _ in self._labels})

    @property
    def labels(self) -> pd.DataFrame:
        """The reviewed labels: ``index``, ``field``, ``value``, ``source`` ("accepted" or
        "edited"), ``reviewed_at`` (UTC), in the order they were made."""
        items = sorted(self._labels.items(), key=lambda kv: kv[1].reviewed_at)
        return pd.DataFrame(  # type: ignore[no-any-return]
            {
                "index": pd.Series(
                    [_label(self._df.index[row]) for (row, _), _ in items], dtype=object
                ),
                "field": pd.Series([label.field for _, label in items], dtype="string"),
                "value": pd.Series([label.value for _, label in items], dtype=object),
                "source": pd.Categorical([label.source for _, label in items], categories=SOURCES),
                "reviewed_at": pd.to_datetime(
                    [label.reviewed_at for _, label in items], unit="s", utc=True
                ),
            }
        )

    def apply(self, out: pd.DataFrame | None = None) -> pd.DataFrame:
        """``out`` (default: the reviewed frame) with the reviewed values, ``narrative_reviewed``.

        A result of ``infer``: the reviewed values replace the answers in the field columns. A
        comparison: each field gets a column of its own (the majority answer, replaced by the
        reviewed value where there is one), and ``evaluate`` on the frame measures those. A
        review of a comparison can also be applied to one model's ``infer`` result on the same
        rows (its field columns are corrected).
        """
        frame = (self._df if out is None else out).copy()
        if not frame.index.equals(self._df.index):
            raise ConfigurationError(
                "apply() needs the reviewed result (same rows and index); got a frame with a "
                "different index."
            )
        targets: dict[str, str] = {}
        for name in self.fields:
            if not self.info.is_comparison:
                targets[name] = self.info.variants[0].columns[name]
            elif out is not None and name in out.columns:
                targets[name] = name  # e.g. one model's infer result on the same rows
            else:
                targets[name] = name
                reference = self._df[self.info.variants[0].columns[name]]
                values = pd.Series(self._answers[name], index=frame.index, dtype=object)
                frame[name] = _typed(values, reference.dtype)
        reviewed = np.zeros(len(frame), dtype=bool)
        for (row, name), label in self._labels.items():
            column = frame.columns.get_loc(targets[name])
            frame.iloc[row, column] = label.value
            reviewed[row] = True
        frame[REVIEWED_COLUMN] = pd.array(reviewed, dtype="boolean")
        frame.attrs = copy.deepcopy((self._df if out is None else out).attrs)
        meta = frame.attrs.get("narrative")
        if (
            isinstance(meta, dict)
            and "variants" in meta
            and set(targets.values()) <= {*self.fields}
        ):
            # the reviewed columns are now the answers (evaluate measures them)
            meta.pop("variants")
            meta["fields"] = list(self.fields)
            meta["output_columns"] = {f: f for f in self.fields}
            meta["error_column"] = None
        result: pd.DataFrame = frame
        return result

    # ------------------------------------------------------------------ display

    def widget(self) -> Any:
        """The ipywidget (built once)."""
        if self._widget is None:
            from ._review_widget import ReviewWidget

            self._widget = ReviewWidget(self)
        return self._widget.box

    def _ipython_display_(self) -> None:
        """The live widget, with a static line beside it for a saved notebook, an HTML export or
        a viewer without the widget's kernel (they show the line instead of ``VBox(...)``)."""
        import html

        from IPython.display import display

        bundle = dict(self.widget()._repr_mimebundle_())
        line = repr(self)
        bundle["text/plain"] = line
        bundle["text/html"] = f'<div class="narrative-review-static">{html.escape(line)}</div>'
        display(bundle, raw=True)  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return f"<Review: {len(self)} rows, {self.reviewed} reviewed, at {self.position + 1}>"


def _position(df: pd.DataFrame, label: Hashable) -> int:
    where = df.index.get_loc(label)
    if not isinstance(where, int):
        raise KeyError(label)
    return where


def _typed(values: pd.Series, dtype: Any) -> Any:
    if isinstance(dtype, pd.CategoricalDtype):
        return pd.Categorical(values.where(values.notna(), None), dtype=dtype)
    if pd.api.types.is_object_dtype(dtype):
        return values
    return values.astype(dtype)


# ---------------------------------------------------------------------- building a review


def _agreement_of(df: pd.DataFrame, info: ResultInfo) -> pd.Series | None:
    for column in ("agreement", "narrative_agreement"):
        if column in df.columns:
            return df[column].astype("Float64")
    if info.agreement_columns:
        cols = [df[c].astype("Float64") for c in info.agreement_columns.values() if c in df]
        if cols:
            return pd.concat(cols, axis=1).min(axis=1).astype("Float64")
    return None


def _auto_order(
    df: pd.DataFrame, info: ResultInfo, truth: dict[str, pd.Series] | None
) -> tuple[list[int], dict[int, str]]:
    """Failed rows, the least agreement, rows that differ from the truth, then the rest."""
    n = len(df)
    failed = np.zeros(n, dtype=bool)
    for variant in info.variants:
        failed |= ~usable_rows(df, variant).to_numpy()
    agree = _agreement_of(df, info)
    agree_values = agree.fillna(0.0).to_numpy(dtype=float) if agree is not None else np.ones(n)
    differs = np.zeros(n, dtype=bool)
    if truth:
        for name, values in truth.items():
            for variant in info.variants:
                answer = df[variant.columns[name]].astype(object).to_numpy()
                known = values.notna().to_numpy()
                differs |= known & (answer != values.astype(object).to_numpy())
    reasons: dict[int, str] = {}
    keys = []
    for row in range(n):
        if failed[row]:
            reasons[row] = "failed"
            rank = 0
        elif agree_values[row] < 1:
            reasons[row] = f"agreement {agree_values[row]:.2f}"
            rank = 1
        elif differs[row]:
            reasons[row] = "differs from the truth"
            rank = 2
        else:
            rank = 3
        keys.append((rank, agree_values[row], row))
    return [k[2] for k in sorted(keys)], reasons


def review(
    df: pd.DataFrame,
    *,
    sort_by: str | Sequence[Hashable] = _AUTO,
    fields: Sequence[str] | None = None,
    truth: Any = None,
    cache: Any = None,
    name: str | None = None,
) -> Review:
    """Review a result of ``infer``/``compare`` in the notebook, the doubtful rows first.

    Parameters
    ----------
    sort_by : "auto", a column name, or a list of index labels
        "auto" (default): failed rows, then the lowest ``agreement``/``narrative_agreement``
        (rows where variants or samples disagree), then rows whose answer differs from
        ``truth``, then the rest. A column: ascending by it. A list: exactly those rows, in order.
    fields : list of str, optional
        The output fields to review (default: all).
    truth : column name, Series or mapping, optional
        Shown beside the answer, and rows that differ from it come earlier.
    cache : path or Cache, optional
        Where labels are saved (default: the disk cache the result came from, if any; else
        this process's memory). Reopening the review on the same rows resumes it.
    name : str, optional
        Keeps separate reviews of the same rows apart (default: one per output schema).

    Returns
    -------
    Review
        Shown as a widget when it is a cell's value: the row's template inputs, the answer
        (each variant's, for a comparison), a control per field (buttons for enums, a
        true/false toggle for booleans, a checked text box otherwise), Accept / Skip /
        Previous / Next, a count of reviewed rows, and a shortcut box (a: accept, n or s: next,
        p: previous, 1-9: pick the n-th value of the first enum field).

    Examples
    --------
    >>> rv = out.narrative.review(cache="labels.sqlite")   # doctest: +SKIP
    >>> rv                                                  # doctest: +SKIP
    """
    if not df.index.is_unique:
        raise ConfigurationError(
            "review() needs a unique index to tell rows apart; reset_index() first."
        )
    truths: dict[str, pd.Series] | None = None
    if truth is not None:
        truth_map = truth if isinstance(truth, Mapping) else None
        _, truths = resolve_truth(df, truth_map if truth_map is not None else truth, fields)
    info = describe_result(df, fields)
    if isinstance(sort_by, str) and sort_by == _AUTO:
        order, reasons = _auto_order(df, info, truths)
    elif isinstance(sort_by, str):
        if sort_by not in df.columns:
            raise ConfigurationError(
                f"sort_by={sort_by!r} is not a column; pass 'auto', a column, or index labels."
            )
        column = df[sort_by].reset_index(drop=True)
        positions = column.sort_values(na_position="first", kind="stable").index
        order, reasons = [int(p) for p in positions], {}
    else:
        try:
            order = [_position(df, label) for label in sort_by]
        except KeyError as exc:
            raise ConfigurationError(
                f"sort_by names a row that is not in the frame: {exc}"
            ) from None
        reasons = {}
    if not order:
        raise ConfigurationError("nothing to review: the frame has no rows.")
    where = cache if cache is not None else info.cache_path
    schema_text = json.dumps([info.fields, info.schema], sort_keys=True, default=str)
    namespace = name or "schema:" + hashlib.sha256(schema_text.encode()).hexdigest()[:16]
    return Review(
        df, info, order, reasons, store=open_store(where), namespace=namespace, truth=truths
    )
