"""narrative_pandas: Narrative model inference as a pandas accessor.

Importing the package registers ``DataFrame.narrative`` and ``Series.narrative`` and nothing
heavy: the engine, the HTTP stack (aiohttp, httpx), ``jsonschema``, ``ipywidgets`` and the
sandbox load on first use, so a kernel that imports the package starts fast. Every public name
below resolves on first access through the module's ``__getattr__`` (``_LAZY`` says from where);
``benchmarks/import_time.py`` measures the import and a test checks what it loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _accessor  # noqa: F401  (registers DataFrame.narrative and Series.narrative)
from ._config import configure
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    APIUnknownOutcomeError,
    AuthenticationError,
    BadRequestError,
    CacheLockedError,
    ConfigurationError,
    JobFailedError,
    JobTimeoutError,
    NarrativeError,
    NotFoundError,
    OptionTypeError,
    OutputValidationError,
    PermissionDeniedError,
    RateLimitError,
    RowsFailedError,
    RowsFailedWarning,
    RowsStoppedWarning,
    SchemaError,
    ServerError,
    TemplateError,
    UnknownModelWarning,
    UnknownOptionError,
)
from ._progress import ProgressEvent, ProgressSnapshot

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from ._api import ainfer, attach, infer, preview, start
    from ._cache import Cache, MemoryCache, SQLiteCache
    from ._client import Client
    from ._compare import compare
    from ._evaluate import confusion, evaluate
    from ._models import (
        KNOWN_MODELS,
        InferenceConfig,
        InferenceMessage,
        InferenceUsage,
        Job,
        JobFailure,
        JobsPage,
        ModelId,
        ModelInferenceRunRequest,
        ModelInferenceRunResult,
    )
    from ._review import Review, review
    from ._run import Run
    from .sandbox import Sandbox

_LAZY: dict[str, str] = {
    **dict.fromkeys(("ainfer", "attach", "infer", "preview", "start"), "._api"),
    **dict.fromkeys(("Cache", "MemoryCache", "SQLiteCache"), "._cache"),
    "Client": "._client",
    "compare": "._compare",
    **dict.fromkeys(("confusion", "evaluate"), "._evaluate"),
    **dict.fromkeys(("Review", "review"), "._review"),
    **dict.fromkeys(
        (
            "KNOWN_MODELS",
            "InferenceConfig",
            "InferenceMessage",
            "InferenceUsage",
            "Job",
            "JobFailure",
            "JobsPage",
            "ModelId",
            "ModelInferenceRunRequest",
            "ModelInferenceRunResult",
        ),
        "._models",
    ),
    "Run": "._run",
}
"""Public name -> the module that defines it, imported when the name is first used."""

_LAZY_SUBMODULES = ("data", "sandbox")
"""Light-to-reach subpackages (``npd.sandbox.Sandbox``); ``narrative_pandas.dask`` is imported
explicitly, since importing it imports Dask."""


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use, then keep the value in this module."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_LAZY_SUBMODULES})


def use_sandbox(**knobs: Any) -> Sandbox:
    """Start the local sandbox in the background and make it the default target.

    Outputs are synthetic (or come from ``responder=``); nothing leaves this machine and no key
    is needed. ``narrative_pandas.configure(...)`` switches back to real settings. Knobs are those
    of :class:`narrative_pandas.sandbox.Sandbox` (latency, failure_rate, responder, ...).

    Examples
    --------
    >>> import narrative_pandas as npd
    >>> sandbox = npd.use_sandbox(latency=0.2)  # doctest: +SKIP
    """
    from .sandbox import use_sandbox as _use_sandbox

    return _use_sandbox(**knobs)


__version__ = "0.1.0"

__all__ = [
    "KNOWN_MODELS",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "APIUnknownOutcomeError",
    "AuthenticationError",
    "BadRequestError",
    "Cache",
    "CacheLockedError",
    "Client",
    "ConfigurationError",
    "InferenceConfig",
    "InferenceMessage",
    "InferenceUsage",
    "Job",
    "JobFailedError",
    "JobFailure",
    "JobTimeoutError",
    "JobsPage",
    "MemoryCache",
    "ModelId",
    "ModelInferenceRunRequest",
    "ModelInferenceRunResult",
    "NarrativeError",
    "NotFoundError",
    "OptionTypeError",
    "OutputValidationError",
    "PermissionDeniedError",
    "ProgressEvent",
    "ProgressSnapshot",
    "RateLimitError",
    "Review",
    "RowsFailedError",
    "RowsFailedWarning",
    "RowsStoppedWarning",
    "Run",
    "SQLiteCache",
    "SchemaError",
    "ServerError",
    "TemplateError",
    "UnknownModelWarning",
    "UnknownOptionError",
    "__version__",
    "ainfer",
    "attach",
    "compare",
    "configure",
    "confusion",
    "evaluate",
    "infer",
    "preview",
    "review",
    "start",
    "use_sandbox",
]
