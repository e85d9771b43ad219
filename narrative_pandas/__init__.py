"""narrative_pandas: Narrative model inference as a pandas accessor.

Importing the package registers ``DataFrame.narrative`` and ``Series.narrative``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _accessor  # noqa: F401  (registers DataFrame.narrative and Series.narrative)
from ._api import ainfer, attach, infer, preview, start
from ._cache import Cache, MemoryCache, SQLiteCache
from ._client import Client
from ._compare import compare
from ._config import configure
from ._evaluate import confusion, evaluate
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    APIUnknownOutcomeError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    JobFailedError,
    JobTimeoutError,
    NarrativeError,
    NotFoundError,
    OutputValidationError,
    PermissionDeniedError,
    RateLimitError,
    RowsFailedError,
    RowsFailedWarning,
    SchemaError,
    ServerError,
    TemplateError,
)
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
from ._progress import ProgressEvent, ProgressSnapshot
from ._review import Review, review
from ._run import Run

if TYPE_CHECKING:
    from .sandbox import Sandbox


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
    "OutputValidationError",
    "PermissionDeniedError",
    "ProgressEvent",
    "ProgressSnapshot",
    "RateLimitError",
    "Review",
    "RowsFailedError",
    "RowsFailedWarning",
    "Run",
    "SQLiteCache",
    "SchemaError",
    "ServerError",
    "TemplateError",
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
