"""The error tree of narrative_pandas.

Every exception the library raises on purpose derives from :class:`NarrativeError`, and also from
the built-in it resembles, so ``except KeyError`` and ``except ValueError`` keep working::

    NarrativeError
    ├── ConfigurationError (ValueError)      missing key, insecure URL, bad option
    │   ├── UnknownOptionError (TypeError)   a keyword no verb knows (suggests the closest)
    │   └── OptionTypeError (TypeError)      an option of the wrong type (a bare string...)
    ├── TemplateError (KeyError)             a placeholder names no column; a malformed template
    ├── SchemaError (ValueError)             the output schema is not a usable JSON Schema
    ├── OutputValidationError (ValueError)   a job's structured_output breaks the schema
    ├── JobFailedError                       a job ended failed/cancelled (job_id, failures)
    ├── JobTimeoutError (TimeoutError)       a job did not finish within the per-job timeout
    ├── RowsFailedError                      errors="raise": rows failed; .result is the frame
    ├── CacheLockedError                     another process held the cache file too long
    └── APIError                             anything that came from talking to the service
        ├── APIConnectionError               the request did not get an answer
        │   └── APITimeoutError              ... because it timed out
        ├── APIUnknownOutcomeError           a POST may or may not have created a job
        └── APIStatusError                   the service answered 4xx/5xx (status, title, detail,
            ├── BadRequestError      400      log_id, method, path — never the key)
            ├── AuthenticationError  401
            ├── PermissionDeniedError 403
            ├── NotFoundError        404
            ├── RateLimitError       429      (+ retry_after seconds, when the server said)
            └── ServerError          5xx

Messages say what went wrong and what to do next. None of them ever contains the API key.

The errors that mean "your call is wrong" (``ConfigurationError`` and its subclasses,
``TemplateError``, ``SchemaError``, and the service's 400/401/403/404 answers that stop a run)
show in IPython and Jupyter as their message and the user's own line, without the package's
frames; ``%tb`` or ``NARRATIVE_PANDAS_FULL_TRACEBACK=1`` gives the full traceback (see
``_tracebacks``).

Warnings: ``RowsFailedWarning`` (rows failed, ``errors="coerce"``), ``RowsStoppedWarning`` (a
cancel, an interrupt or the token budget stopped rows: not a failure, a re-run finishes them) and
``UnknownModelWarning`` (a model id this version does not know; it is sent anyway).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._tracebacks import render_short_traceback

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "APIUnknownOutcomeError",
    "AuthenticationError",
    "BadRequestError",
    "CacheLockedError",
    "ConfigurationError",
    "JobFailedError",
    "JobTimeoutError",
    "NarrativeError",
    "NotFoundError",
    "OptionTypeError",
    "OutputValidationError",
    "PermissionDeniedError",
    "RateLimitError",
    "RowsFailedError",
    "RowsFailedWarning",
    "RowsStoppedWarning",
    "SchemaError",
    "ServerError",
    "TemplateError",
    "UnknownModelWarning",
    "UnknownOptionError",
    "status_error_class",
]


class NarrativeError(Exception):
    """Root of every error raised on purpose by narrative_pandas."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class _CallMistake:
    """Mixin: in IPython, show the message and the user's line only (``%tb`` for the rest)."""

    def _render_traceback_(self) -> list[str]:
        assert isinstance(self, BaseException)
        return render_short_traceback(self)


class ConfigurationError(_CallMistake, NarrativeError, ValueError):
    """A setting is missing or unsafe (no API key, plain http to a remote host, bad option)."""


class CacheLockedError(NarrativeError):
    """Another process held the SQLite cache file's lock for longer than the cache's ``timeout``.

    ``path`` is the file. Nothing was sent for the write that could not be made. (Not a
    ``TimeoutError``: ``concurrent.futures`` waits would take it for their own timeout.)
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class UnknownOptionError(ConfigurationError, TypeError):
    """A keyword argument none of the verb's options is called; the message names the closest."""

    def __init__(self, message: str, *, verb: str, name: str, suggestion: str | None) -> None:
        super().__init__(message)
        self.verb = verb
        self.name = name
        self.suggestion = suggestion


class OptionTypeError(ConfigurationError, TypeError):
    """An option of the wrong type (e.g. ``stop_sequences="STOP"``), refused before sending."""


class TemplateError(_CallMistake, NarrativeError, KeyError):
    """A template placeholder names no column, or the template cannot be parsed."""

    def __init__(
        self,
        message: str,
        *,
        placeholder: str | None = None,
        template: str | None = None,
        columns: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.placeholder = placeholder
        self.template = template
        self.columns = list(columns)


class SchemaError(_CallMistake, NarrativeError, ValueError):
    """The output schema is not a JSON Schema the service can use; ``keyword`` names the culprit."""

    def __init__(self, message: str, *, keyword: str | None = None, path: str = "") -> None:
        super().__init__(message)
        self.keyword = keyword
        self.path = path


class OutputValidationError(NarrativeError, ValueError):
    """A job completed but its ``structured_output`` does not follow the output schema."""

    def __init__(self, message: str, *, job_id: str | None = None, output: Any = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.output = output


class JobFailedError(NarrativeError):
    """A job ended in ``failed`` or ``cancelled``; ``failures`` are the service's own entries."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        state: str | None = None,
        failures: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.failures = list(failures)


class JobTimeoutError(NarrativeError, TimeoutError):
    """A job was still unfinished when its per-job timeout ran out (it may still be billed)."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class RowsFailedError(NarrativeError):
    """Raised after a run with ``errors="raise"`` when rows failed; ``result`` is the full frame.

    Nothing paid for is lost: the frame holds every completed row and says why the others failed.
    """

    def __init__(self, message: str, *, result: pd.DataFrame, failed: int) -> None:
        super().__init__(message)
        self.result = result
        self.failed = failed


class APIError(NarrativeError):
    """Something went wrong talking to the Narrative API."""

    def __init__(self, message: str, *, method: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.path = path


class APIConnectionError(APIError):
    """No answer: the connection failed or broke before a response arrived."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class APIUnknownOutcomeError(APIError):
    """A POST got no trustworthy answer: the job may or may not exist, so it must be reconciled."""


class APIStatusError(APIError):
    """The service answered with an error status; the fields mirror its RFC 7807-like body."""

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        title: str | None = None,
        detail: str | None = None,
        log_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.status_code = status_code
        self.title = title
        self.detail = detail
        self.log_id = log_id
        self.body = body

    @property
    def status(self) -> int:
        """Alias of ``status_code``."""
        return self.status_code


class BadRequestError(_CallMistake, APIStatusError):
    """400: the request body was malformed or invalid."""


class AuthenticationError(_CallMistake, APIStatusError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(_CallMistake, APIStatusError):
    """403: the key may not use this resource (often the data plane)."""


class NotFoundError(_CallMistake, APIStatusError):
    """404: unknown job (or expired), or unknown data plane."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after`` is the server's wait in seconds, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the service failed; reads are retried, a POST's outcome may be unknown."""


_STATUS_CLASSES: Mapping[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status (5xx -> ServerError)."""
    if status_code >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)


class RowsFailedWarning(UserWarning):
    """Emitted once per run (errors="coerce") when rows failed: how many and the main reasons."""


class RowsStoppedWarning(UserWarning):
    """Emitted once per run when a cancel, an interrupt or the token budget stopped rows.

    Stopped rows did not fail: running the same call again collects the jobs already submitted
    and submits the rest (their ``narrative_status`` is ``stopped``).
    """


class UnknownModelWarning(UserWarning):
    """A model id this version does not list; it is sent anyway (the service's list grows)."""
