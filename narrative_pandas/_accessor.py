"""The ``narrative`` accessor on DataFrame and Series: stateless, forwarding to ``_api``.

``df.narrative.infer(...)`` is ``narrative_pandas.infer(df, ...)``; ``s.narrative.infer(...)``
treats the Series as a one-column frame whose column is named ``value`` (``{}`` or ``{value}``
in the template), and returns that frame with the output columns.

Registering the accessors must stay cheap (``import narrative_pandas`` does it), so ``_api`` -
and with it the engine, the HTTP stack and ``jsonschema`` - is imported on first use: inside each
method, and by :class:`_DocumentedLike` the first time a method is looked up (it copies the public
function's docstring and signature, so ``df.narrative.infer?`` shows every option).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pandas as pd

if TYPE_CHECKING:
    from ._evaluate import ConfusionMatrix
    from ._review import Review
    from ._run import Run

__all__ = ["DataFrameNarrativeAccessor", "SeriesNarrativeAccessor"]

F = TypeVar("F", bound=Callable[..., Any])


def _method_signature(func: Any) -> inspect.Signature:
    """The public function's signature without its leading ``df`` (shown by ``?``)."""
    sig = inspect.signature(func)
    params = list(sig.parameters.values())[1:]
    return sig.replace(
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *params]
    )


class _DocumentedLike(Generic[F]):
    """A method that takes the docstring and signature of ``_api.<name>`` when first looked up
    (or of ``<module>.<name>`` for the labelling verbs)."""

    def __init__(self, func: F, module: str = "._api") -> None:
        self._func = func
        self._module = module
        self._documented = False

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        func: Any = self._func
        if not self._documented:
            public = getattr(importlib.import_module(self._module, __package__), func.__name__)
            func.__doc__ = public.__doc__
            func.__signature__ = _method_signature(public)
            self._documented = True
        return func if instance is None else func.__get__(instance, owner)


@pd.api.extensions.register_dataframe_accessor("narrative")
class DataFrameNarrativeAccessor:
    """Narrative model inference on the rows of a DataFrame.

    Examples
    --------
    >>> out = df.narrative.infer("Review: {review}", output=Sentiment)  # doctest: +SKIP
    """

    def __init__(self, pandas_obj: pd.DataFrame) -> None:
        self._obj = pandas_obj

    def _frame(self) -> pd.DataFrame:
        return self._obj

    @_DocumentedLike
    def infer(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        from . import _api

        return _api.infer(self._frame(), prompt, **options)

    @_DocumentedLike
    async def ainfer(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        from . import _api

        return await _api.ainfer(self._frame(), prompt, **options)

    @_DocumentedLike
    def start(self, prompt: str | None = None, **options: Any) -> Run:
        from . import _api

        return _api.start(self._frame(), prompt, **options)

    @_DocumentedLike
    def preview(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        from . import _api

        return _api.preview(self._frame(), prompt, **options)

    # The labelling loop: compare variants, measure against the truth, review doubtful rows.

    @partial(_DocumentedLike, module="._compare")
    def compare(self, prompt: str | None = None, **options: Any) -> pd.DataFrame:
        from . import _compare

        return _compare.compare(self._frame(), prompt, **options)

    @partial(_DocumentedLike, module="._compare")
    def start_compare(self, prompt: str | None = None, **options: Any) -> Run:
        from . import _compare

        return _compare.start_compare(self._frame(), prompt, **options)

    @partial(_DocumentedLike, module="._evaluate")
    def evaluate(self, truth: Any, **options: Any) -> pd.DataFrame:
        from . import _evaluate

        return _evaluate.evaluate(self._frame(), truth, **options)

    @partial(_DocumentedLike, module="._evaluate")
    def confusion(self, field: str, truth: Any, **options: Any) -> ConfusionMatrix:
        from . import _evaluate

        return _evaluate.confusion(self._frame(), field, truth, **options)

    @partial(_DocumentedLike, module="._review")
    def review(self, **options: Any) -> Review:
        from . import _review

        return _review.review(self._frame(), **options)


@pd.api.extensions.register_series_accessor("narrative")
class SeriesNarrativeAccessor(DataFrameNarrativeAccessor):
    """Narrative model inference on the values of a Series (``{}`` or ``{value}`` is the value).

    Examples
    --------
    >>> out = df["review"].narrative.infer("Review: {}", output=Sentiment)  # doctest: +SKIP
    """

    def __init__(self, pandas_obj: pd.Series) -> None:
        self._series = pandas_obj

    def _frame(self) -> pd.DataFrame:
        return self._series.to_frame(name="value")
