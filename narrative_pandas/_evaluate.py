"""Labels measured against the truth: ``evaluate`` (figures per field and variant), ``confusion``.

The figures are computed here with numpy (scikit-learn is not a dependency) and equal
scikit-learn's: ``accuracy_score``, ``f1_score(average="macro", zero_division=0)``,
``cohen_kappa_score``, ``mean_absolute_error`` and Pearson's r. Rows that failed (their
``narrative_error`` is set, or their ``narrative_status`` is not completed) and rows without a
truth or an answer are left out of a field's figures and counted in ``n_missing``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._exceptions import ConfigurationError
from ._resultinfo import ResultInfo, Variant, describe_result, usable_rows

__all__ = ["ConfusionMatrix", "confusion", "evaluate", "resolve_truth"]

CATEGORICAL_METRICS = ("accuracy", "macro_f1", "cohen_kappa")
NUMERIC_METRICS = ("mae", "pearson_r")
TruthLike = Any  # a column name, a Series, a mapping {field: column or Series}, or review labels


# ---------------------------------------------------------------------- the truth


def _truth_series(df: pd.DataFrame, value: Any, what: str) -> pd.Series:
    """One truth column as a Series on ``df``'s index (a Series is aligned by label)."""
    if isinstance(value, pd.Series):
        if not value.index.is_unique:
            raise ConfigurationError(
                f"the truth for {what} has a duplicated index; align it first."
            )
        return value.reindex(df.index)
    if isinstance(value, Hashable) and value in df.columns:
        column = df[value]
        if isinstance(column, pd.DataFrame):
            raise ConfigurationError(f"truth column {value!r} appears twice in the frame.")
        return column
    raise ConfigurationError(
        f"truth {value!r} for {what} is not a column of the frame; pass a column name, a Series "
        f"aligned on the index, or a mapping {{output field: truth column}}. Columns: "
        f"{', '.join(map(repr, list(df.columns)[:12]))}."
    )


def _from_review_labels(labels: pd.DataFrame) -> dict[str, pd.Series]:
    """``review.labels`` (index, field, value, ...) as one truth Series per field."""
    result: dict[str, pd.Series] = {}
    for name, group in labels.groupby("field", sort=False):
        result[str(name)] = pd.Series(
            group["value"].to_list(), index=pd.Index(group["index"].to_list()), dtype=object
        )
    return result


def resolve_truth(
    df: pd.DataFrame, truth: TruthLike, fields: Sequence[str] | None
) -> tuple[ResultInfo, dict[str, pd.Series]]:
    """The result's layout and one truth Series (on ``df``'s index) per compared field."""
    if hasattr(truth, "labels") and isinstance(truth.labels, pd.DataFrame):
        truth = truth.labels  # a Review: its reviewed labels
    if isinstance(truth, pd.DataFrame) and {"index", "field", "value"} <= set(truth.columns):
        truth = _from_review_labels(truth)
    if isinstance(truth, Mapping):
        names = list(truth) if fields is None else list(fields)
        info = describe_result(df, names)
        missing = [n for n in names if n not in truth]
        if missing:
            raise ConfigurationError(
                f"no truth given for field(s) {', '.join(map(repr, missing))}."
            )
        return info, {n: _truth_series(df, truth[n], f"field {n!r}") for n in names}
    if isinstance(truth, pd.DataFrame):
        raise ConfigurationError(
            "truth is a DataFrame; pass one column (a name or a Series) or a mapping "
            "{output field: truth column}."
        )
    info = describe_result(df, fields)
    if fields is None and len(info.fields) > 1:
        raise ConfigurationError(
            f"this result has several output fields ({', '.join(map(repr, info.fields))}); say "
            "which one the truth is for: fields=['...'], or truth={'field': 'truth column'}."
        )
    series = _truth_series(df, truth, "the compared field(s)")
    return info, {n: series for n in info.fields}


# ---------------------------------------------------------------------- the figures


def _kind(values: pd.Series) -> str:
    """'categorical', 'integer' (both metric families) or 'numeric'."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype):
        return "categorical"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "numeric"
    return "categorical"


def _python(value: Any) -> Any:
    """A plain Python scalar (numpy/pandas scalars compare and hash like their values)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return _python(value)


def categorical_scores(truth: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
    """Accuracy, macro F1 (labels = those seen in either; 0 where undefined), Cohen's kappa."""
    n = len(truth)
    if n == 0:
        return dict.fromkeys(CATEGORICAL_METRICS, math.nan)
    labels = list(dict.fromkeys([*truth, *predicted]))
    position = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[position[t], position[p]] += 1
    tp = np.diag(matrix).astype(float)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    observed = tp.sum() / n
    expected = float((matrix.sum(axis=1) * matrix.sum(axis=0)).sum()) / (n * n)
    kappa = (observed - expected) / (1 - expected) if expected < 1 else math.nan
    return {"accuracy": float(observed), "macro_f1": float(f1.mean()), "cohen_kappa": kappa}


def numeric_scores(truth: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """Mean absolute error and Pearson's r (NaN with fewer than two rows or no variation)."""
    t = np.asarray(truth, dtype=float)
    p = np.asarray(predicted, dtype=float)
    if len(t) == 0:
        return dict.fromkeys(NUMERIC_METRICS, math.nan)
    mae = float(np.abs(t - p).mean())
    if len(t) < 2 or t.std() == 0 or p.std() == 0:
        return {"mae": mae, "pearson_r": math.nan}
    tc, pc = t - t.mean(), p - p.mean()
    r = float((tc * pc).sum() / math.sqrt((tc * tc).sum() * (pc * pc).sum()))
    return {"mae": mae, "pearson_r": max(-1.0, min(1.0, r))}


def _pairs(
    df: pd.DataFrame, variant: Variant, field: str, truth: pd.Series
) -> tuple[list[Any], list[Any], int, int]:
    """(truth values, predictions, failed rows, rows without truth or answer)."""
    predicted = df[variant.columns[field]]
    ok = usable_rows(df, variant).to_numpy()
    has_truth = truth.notna().to_numpy()
    has_answer = predicted.notna().to_numpy()
    keep = ok & has_truth & has_answer
    t = [_hashable(v) for v in truth.to_numpy(dtype=object)[keep]]
    p = [_hashable(v) for v in predicted.to_numpy(dtype=object)[keep]]
    return t, p, int((~ok).sum()), int((ok & ~(has_truth & has_answer)).sum())


def evaluate(
    df: pd.DataFrame, truth: TruthLike, *, fields: Sequence[str] | None = None
) -> pd.DataFrame:
    """Measure the answers of ``df`` (a result of ``infer`` or ``compare``) against the truth.

    Parameters
    ----------
    truth : str, Series, mapping or review labels
        A column of ``df``; a Series aligned on ``df``'s index; a mapping ``{output field:
        truth column or Series}``; or ``review.labels`` (reviewed values serve as the truth).
    fields : list of str, optional
        The output fields to measure (default: those in a mapping, else the only output field).

    Returns
    -------
    DataFrame
        One row per field (per variant and field for ``compare``, with a ``variant`` column):
        ``field``, ``kind``, ``n`` (rows compared), ``n_missing`` (rows left out: failed, no
        truth or no answer), ``n_failed``, ``accuracy``, ``macro_f1``, ``cohen_kappa`` (enum,
        string, boolean and integer fields), ``mae`` and ``pearson_r`` (number and integer
        fields); NaN where a figure does not apply.

    Examples
    --------
    >>> out.narrative.evaluate({"sentiment": "true_sentiment"})      # doctest: +SKIP
           field         kind    n  n_missing  n_failed  accuracy  macro_f1  cohen_kappa ...
    0  sentiment  categorical  285         15        12  0.821053  0.774015     0.712901 ...
    """
    info, truths = resolve_truth(df, truth, fields)
    rows: list[dict[str, Any]] = []
    for variant in info.variants:
        for name, truth_values in truths.items():
            t, p, failed, unmatched = _pairs(df, variant, name, truth_values)
            kind = _kind(df[variant.columns[name]])
            row: dict[str, Any] = {"variant": variant.name} if info.is_comparison else {}
            row.update(
                field=name, kind=kind, n=len(t), n_missing=failed + unmatched, n_failed=failed
            )
            row.update(dict.fromkeys(CATEGORICAL_METRICS + NUMERIC_METRICS, math.nan))
            if kind in ("categorical", "integer"):
                row.update(categorical_scores(t, p))
            if kind in ("numeric", "integer"):
                try:
                    row.update(numeric_scores(t, p))
                except (TypeError, ValueError):
                    raise ConfigurationError(
                        f"the truth for the number field {name!r} is not numeric; pass numbers."
                    ) from None
            rows.append(row)
    result = pd.DataFrame(rows)
    for column in ("n", "n_missing", "n_failed"):
        result[column] = result[column].astype("int64")
    figures: pd.DataFrame = result
    return figures


# ---------------------------------------------------------------------- confusion matrix


class ConfusionMatrix(pd.DataFrame):
    """A confusion matrix (rows: truth, columns: answer) shown as a heatmap table in Jupyter.

    It is a DataFrame; anything computed from it is a plain DataFrame again. The colours come
    from a pandas Styler with inline CSS, so matplotlib is not needed.
    """

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame

    def styled(self) -> Any:
        """The pandas Styler: cells shaded by their share of the largest count."""
        values = self.to_numpy(dtype=float)
        top = float(np.nanmax(values)) if values.size else 0.0

        def shade(frame: pd.DataFrame) -> pd.DataFrame:
            def css(value: float) -> str:
                share = 0.0 if top <= 0 or math.isnan(value) else value / top
                text = "white" if share > 0.55 else "black"
                red, green, blue = (
                    int(247 - share * 239),
                    int(251 - share * 203),
                    int(255 - share * 148),
                )
                return f"background-color: rgb({red}, {green}, {blue}); color: {text}"

            shaded: pd.DataFrame = frame.apply(lambda column: column.map(css))
            return shaded

        fmt = "{:.2f}" if (values % 1).any() else "{:.0f}"
        return pd.DataFrame(self).style.apply(shade, axis=None).format(fmt)

    def _repr_html_(self) -> str | None:
        html: str = self.styled().to_html()
        return html


def confusion(
    df: pd.DataFrame,
    field: str,
    truth: TruthLike,
    *,
    variant: str | None = None,
    normalize: str | None = None,
) -> ConfusionMatrix:
    """The confusion matrix of one output field against the truth, as a labelled DataFrame.

    Rows are the true values (index name ``truth``), columns the answers (``answer``), both in
    the schema's order (enum order; ``False, True`` for booleans), then any other value seen.
    Failed rows and rows without a truth are left out. In Jupyter it shows as a heatmap table.

    Parameters
    ----------
    field : str
        The output field.
    truth : str, Series or mapping
        As for :func:`evaluate`.
    variant : str, optional
        For a ``compare`` result: which variant (required when there are several).
    normalize : {None, "truth", "answer", "all"}
        Counts (default), or shares of each true value's row, each answer's column, or the total.

    Examples
    --------
    >>> out.narrative.confusion("sentiment", "true_sentiment")        # doctest: +SKIP
    """
    if normalize not in (None, "truth", "answer", "all"):
        raise ConfigurationError(
            f"normalize={normalize!r} is not valid; use None, 'truth', 'answer' or 'all'."
        )
    truth_map = truth if isinstance(truth, Mapping) else {field: truth}
    info, truths = resolve_truth(df, truth_map, [field])
    chosen = _pick_variant(info, variant)
    t, p, _, _ = _pairs(df, chosen, field, truths[field])
    order = _schema_order(df[chosen.columns[field]], info, field)
    labels = order + [v for v in dict.fromkeys([*t, *p]) if v not in order]
    position = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for a, b in zip(t, p, strict=True):
        counts[position[a], position[b]] += 1
    values: np.ndarray[Any, Any] = counts
    if normalize is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            if normalize == "truth":
                values = counts / counts.sum(axis=1, keepdims=True)
            elif normalize == "answer":
                values = counts / counts.sum(axis=0, keepdims=True)
            else:
                values = counts / max(counts.sum(), 1)
    return ConfusionMatrix(  # type: ignore[no-any-return]
        values,
        index=pd.Index(labels, name="truth", dtype=object),
        columns=pd.Index(labels, name="answer", dtype=object),
    )


def _pick_variant(info: ResultInfo, name: str | None) -> Variant:
    if name is None:
        if len(info.variants) > 1:
            names = ", ".join(repr(v.name) for v in info.variants)
            raise ConfigurationError(
                f"this comparison has several variants; pass variant= one of {names}."
            )
        return info.variants[0]
    for candidate in info.variants:
        if candidate.name == name:
            return candidate
    names = ", ".join(repr(v.name) for v in info.variants)
    raise ConfigurationError(f"no variant {name!r}; this result has {names}.")


def _schema_order(values: pd.Series, info: ResultInfo, field: str) -> list[Any]:
    """The field's possible values in schema order, where the schema says (enum, boolean)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [_python(c) for c in values.dtype.categories]
    node = info.field_schema(field) or {}
    if "enum" in node:
        return [_python(v) for v in node["enum"]]
    if pd.api.types.is_bool_dtype(values.dtype) or node.get("type") == "boolean":
        return [False, True]
    return []
