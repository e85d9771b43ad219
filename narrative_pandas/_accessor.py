"""The ``narrative`` accessor on DataFrame and Series: stateless, forwarding to ``_api``.

``df.narrative.infer(...)`` is ``narrative_pandas.infer(df, ...)``; ``s.narrative.infer(...)``
treats the Series as a one-column frame whose column is named ``value`` (``{}`` or ``{value}``
in the template), and returns that frame with the output columns.
"""

from __future__ import annotations

import inspect
from typing import Any

import pandas as pd

from . import _api, _compare, _evaluate
from ._run import Run

__all__ = ["DataFrameNarrativeAccessor", "SeriesNarrativeAccessor"]


def _method_signature(func: Any) -> inspect.Signature:
    """The public function's signature without its leading ``df`` (shown by ``?``)."""
    sig = inspect.signature(func)
    params = list(sig.parameters.values())[1:]
    return sig.replace(
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *params]
    )


@pd.api.extensions.register_dataframe_accessor("narrative")
class DataFrameNarrativeAccessor:
    """Narrative model inference on the rows of a DataFrame.

    Examples
    --------
    >>> out = df.narrative.infer("Review: {review}", output=Sentiment)  # doctest: +SKIP
    """

    def __init__(self, pandas_obj: pd.DataFrame) -> None:
        self._obj = pandas_obj

    def infer(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        return _api.infer(self._obj, prompt, **options)

    async def ainfer(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        return await _api.ainfer(self._obj, prompt, **options)

    def start(self, prompt: str | None = None, **options: Any) -> Run:
        return _api.start(self._obj, prompt, **options)

    def preview(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        return _api.preview(self._obj, prompt, **options)

    # The labelling loop: compare variants, measure against the truth, review doubtful rows.

    def compare(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        return _compare.compare(self._obj, prompt, **options)

    def evaluate(self, truth: Any, **options: Any) -> pd.DataFrame:
        return _evaluate.evaluate(self._obj, truth, **options)

    def confusion(self, field: str, truth: Any, **options: Any) -> _evaluate.ConfusionMatrix:
        return _evaluate.confusion(self._obj, field, truth, **options)

    def review(self, **options: Any) -> Any:
        from ._review import review

        return review(self._obj, **options)


@pd.api.extensions.register_series_accessor("narrative")
class SeriesNarrativeAccessor:
    """Narrative model inference on the values of a Series (``{}`` or ``{value}`` is the value).

    Examples
    --------
    >>> out = df["review"].narrative.infer("Review: {}", output=Sentiment)  # doctest: +SKIP
    """

    def __init__(self, pandas_obj: pd.Series) -> None:
        self._obj = pandas_obj

    def _frame(self) -> pd.DataFrame:
        return self._obj.to_frame(name="value")

    def infer(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        return _api.infer(self._frame(), prompt, **options)

    async def ainfer(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        return await _api.ainfer(self._frame(), prompt, **options)

    def start(self, prompt: str | None = None, **options: Any) -> Run:
        return _api.start(self._frame(), prompt, **options)

    def preview(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        return _api.preview(self._frame(), prompt, **options)


for _cls in (DataFrameNarrativeAccessor, SeriesNarrativeAccessor):
    for _name in ("infer", "ainfer", "start", "preview"):
        _method = getattr(_cls, _name)
        _public = getattr(_api, _name)
        _method.__doc__ = _public.__doc__
        _method.__signature__ = _method_signature(_public)

for _name, _public in (
    ("compare", _compare.compare),
    ("evaluate", _evaluate.evaluate),
    ("confusion", _evaluate.confusion),
):
    _method = getattr(DataFrameNarrativeAccessor, _name)
    _method.__doc__ = _public.__doc__
    _method.__signature__ = _method_signature(_public)
