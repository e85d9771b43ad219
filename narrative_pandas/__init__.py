"""narrative_pandas: Narrative model inference as a pandas accessor.

Importing the package registers ``DataFrame.narrative`` and ``Series.narrative``.
"""

from __future__ import annotations

from ._config import configure
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
    "ConfigurationError",
    "InferenceConfig",
    "InferenceMessage",
    "InferenceUsage",
    "Job",
    "JobFailedError",
    "JobFailure",
    "JobTimeoutError",
    "JobsPage",
    "ModelId",
    "ModelInferenceRunRequest",
    "ModelInferenceRunResult",
    "NarrativeError",
    "NotFoundError",
    "OutputValidationError",
    "PermissionDeniedError",
    "RateLimitError",
    "RowsFailedError",
    "SchemaError",
    "ServerError",
    "TemplateError",
    "__version__",
    "configure",
]
