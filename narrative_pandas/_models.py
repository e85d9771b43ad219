"""Pydantic models of the wire format of ``narrative-api.md``, field for field.

Requests are strict (out-of-range values fail here, before anything is sent); responses are
lenient (unknown fields kept, unknown job states accepted, timestamps without a zone parsed).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Hashable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
)

__all__ = [
    "KNOWN_MODELS",
    "TERMINAL_STATES",
    "InferenceConfig",
    "InferenceMessage",
    "InferenceUsage",
    "Job",
    "JobFailure",
    "JobRecord",
    "JobsPage",
    "ModelId",
    "ModelInferenceRunRequest",
    "ModelInferenceRunResult",
    "TokenCounts",
    "parse_timestamp",
    "request_fingerprint",
]

ModelId = Literal[
    "anthropic.claude-haiku-4.5",
    "anthropic.claude-sonnet-4.5",
    "anthropic.claude-opus-4.5",
    "anthropic.claude-sonnet-4.6",
    "anthropic.claude-opus-4.6",
    "openai.gpt-oss-120b",
    "openai.gpt-4.1",
    "openai.o4-mini",
]
"""Model ids the contract lists. The list grows: other ids are sent with a warning."""

KNOWN_MODELS: tuple[str, ...] = get_args(ModelId)

TERMINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
"""Job states after which nothing changes. Unknown states are treated as not terminal."""

JobState = Literal["pending", "running", "completed", "failed", "cancelled", "pending_cancellation"]


class _Wire(BaseModel):
    """Request models: strict, and ``None`` fields are left out of the JSON sent."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def to_body(self) -> dict[str, Any]:
        """The JSON-ready body, without ``None`` fields."""
        return self.model_dump(mode="json", exclude_none=True)


class InferenceMessage(_Wire):
    """One chat turn; serialises to ``{"role", "text"}`` as in the SDK reference."""

    role: Literal["system", "user", "assistant"]
    text: str


class InferenceConfig(_Wire):
    """Generation settings; ``output_format_schema`` is the JSON Schema the answer must follow."""

    output_format_schema: dict[str, Any]
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop_sequences: list[str] | None = None


class ModelInferenceRunRequest(_Wire):
    """The body of ``POST /model-inference/run``."""

    data_plane_id: str = Field(min_length=1)
    model: str = Field(min_length=1)
    messages: list[InferenceMessage] = Field(min_length=1)
    inference_config: InferenceConfig
    tags: list[str] | None = None

    @field_validator("model")
    @classmethod
    def _warn_unknown_model(cls, value: str) -> str:
        if value not in KNOWN_MODELS:
            warnings.warn(
                f"model {value!r} is not one narrative_pandas knows ({', '.join(KNOWN_MODELS)}); "
                "sending it anyway — the service decides.",
                UserWarning,
                stacklevel=2,
            )
        return value


class _Lenient(BaseModel):
    """Response models: unknown fields are kept, nothing is refused that the server may send."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class InferenceUsage(_Lenient):
    """Token counts of one completed job."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


#: Most distinct values a :func:`shared` table holds before it starts over.
SHARED_MAX = 4096

_Hashable = TypeVar("_Hashable", bound=Hashable)


def shared(table: dict[_Hashable, _Hashable], value: _Hashable) -> _Hashable:
    """One object per distinct ``value`` in ``table`` (cleared when full, so a run of
    all-distinct values never grows it past :data:`SHARED_MAX`): many rows use as many tokens,
    and a copy per row of their counts or usage text was 64-110 bytes of every row's memory."""
    found = table.get(value)
    if found is not None:
        return found
    if len(table) >= SHARED_MAX:
        table.clear()
    table[value] = value
    return value


#: Strings up to this length in a job's answer are shared (labels, enum values, keys).
SHARED_STRING_MAX = 64
_ANSWER_STRINGS: dict[str, str] = {}


def shared_json(value: Any) -> Any:
    """``value`` (decoded JSON) with its keys and short strings shared between rows.

    A run keeps every row's answer until the frame is built. The brief decoding of listing
    pages (``_listing_json``) makes new strings for every record, where a full decode shared
    them, so without this each answer's keys and labels were copies: 0.15 KB per row.
    """
    kind = type(value)
    if kind is str:
        return shared(_ANSWER_STRINGS, value) if len(value) <= SHARED_STRING_MAX else value
    if kind is dict:
        return {shared_json(key): shared_json(item) for key, item in value.items()}
    if kind is list:
        return [shared_json(item) for item in value]
    return value


class TokenCounts(NamedTuple):
    """Token counts kept per row after a run (a tuple: a fraction of a model's memory)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: InferenceUsage | None) -> TokenCounts | None:
        """The counts of a usage object (None stays None)."""
        if usage is None:
            return None
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


class ModelInferenceRunResult(_Lenient):
    """``result`` of a completed inference job."""

    structured_output: Any = None
    usage: InferenceUsage | None = None


class JobFailure(_Lenient):
    """One entry of a job's ``failures``."""

    message: str = ""
    timestamp: str | None = None
    value: Any = None


_FRACTION = re.compile(r"\.(\d+)")


_fromisoformat = datetime.fromisoformat


def parse_timestamp(value: Any) -> datetime | None:
    """Parse the service's timestamps leniently; zone-less ones are taken as UTC."""
    if value is None or value == "":
        return None
    if type(value) is str:  # the common case, in one call; anything unusual takes the long way
        if value[-1].isdigit() and value[-6:-5] not in ("+", "-"):
            # Zone-less, as the service sends them: naming UTC in the text costs a fifth of
            # ``datetime.replace(tzinfo=...)`` (a string with a zone after all fails here).
            try:
                return _fromisoformat(value + "+00:00")
            except ValueError:
                pass
        try:
            parsed = _fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, (int, float)):
        parsed = datetime.fromtimestamp(value, tz=timezone.utc)
    else:
        text = str(value).strip().replace("Z", "+00:00").replace("z", "+00:00")
        # Python 3.10's fromisoformat takes only 3 or 6 fraction digits: pad or cut to 6.
        text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
        try:
            parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class Job(_Lenient):
    """A job as ``GET /jobs/{id}`` and the listing return it.

    ``id`` is an alias of ``job_id``. Unknown states are accepted and count as not terminal.
    """

    job_id: str
    data_plane_id: str | None = None
    type: str | None = None
    state: str = "pending"
    input: Any = None
    result: ModelInferenceRunResult | None = None
    failures: list[JobFailure] = Field(default_factory=list)
    request_source: Any = None
    executor: Any = None
    execution_cluster: Any = None
    idempotency_key: Any = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None

    @field_validator("created_at", "updated_at", "ended_at", mode="before")
    @classmethod
    def _lenient_time(cls, value: Any) -> datetime | None:
        return parse_timestamp(value)

    @field_validator("failures", mode="before")
    @classmethod
    def _null_failures(cls, value: Any) -> Any:
        return [] if value is None else value

    @property
    def id(self) -> str:
        """The job id (alias of ``job_id``)."""
        return self.job_id

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change (completed, failed or cancelled)."""
        return self.state in TERMINAL_STATES

    def failure_message(self) -> str:
        """The failures joined into one line, for a row's ``narrative_error``."""
        messages = [f.message for f in self.failures if f.message]
        return "; ".join(messages) if messages else f"job ended {self.state}"


class JobRecord:
    """A job as a run reads it: the few fields the engine uses, decoded from the record as needed.

    Validating a whole :class:`Job` (every field, three timestamps) costs more than the listing
    request that brought the record, and a run needs only the id, the state and, once the job
    ended, its answer and usage. So a record of the usual shape is wrapped as it is: timestamps
    are parsed when read, usage is validated when the job has ended. A record of any other shape
    goes through :class:`Job` (as lenient as ever) or is refused the same way
    (:meth:`of` raises pydantic's ``ValidationError``).
    """

    __slots__ = ("_created_at", "_record", "_updated_at", "_usage", "job_id", "state")

    job_id: str
    state: str
    _record: Mapping[str, Any]
    _usage: InferenceUsage | None
    _created_at: datetime | _Unset | None
    _updated_at: datetime | _Unset | None

    def __init__(self, job_id: str, state: str, record: Mapping[str, Any]) -> None:
        self.job_id = job_id
        self.state = state
        self._record = record
        self._usage = None
        self._created_at = self._updated_at = _UNSET

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> JobRecord:
        """The record of a listing page or ``GET /jobs/{id}`` (with ``job_id`` set)."""
        job_id = record.get("job_id")
        state = record.get("state", "pending")
        result = record.get("result")
        failures = record.get("failures")
        if (
            type(job_id) is not str
            or type(state) is not str
            or not (result is None or type(result) is dict)
            or not (failures is None or (type(failures) is list and _plain_failures(failures)))
        ):
            return cls.from_job(Job.model_validate(record))
        view = cls(job_id, state, record)
        if state in TERMINAL_STATES and result is not None:
            usage = result.get("usage")
            if usage is not None:
                view._usage = InferenceUsage.model_validate(usage)
        return view

    @classmethod
    def from_job(cls, job: Job) -> JobRecord:
        """A validated :class:`Job` (``GET /jobs/{id}``, odd records) seen the same way."""
        result = job.result
        record: dict[str, Any] = {
            "job_id": job.job_id,
            "state": job.state,
            "result": None if result is None else {"structured_output": result.structured_output},
            "failures": [{"message": f.message} for f in job.failures],
        }
        view = cls(job.job_id, job.state, record)
        view._usage = None if result is None else result.usage
        view._created_at, view._updated_at = job.created_at, job.updated_at
        return view

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change (completed, failed or cancelled)."""
        return self.state in TERMINAL_STATES

    @property
    def has_result(self) -> bool:
        """True when the record carries a ``result`` object (a completed job's answer)."""
        return self._record.get("result") is not None

    @property
    def output(self) -> Any:
        """``result.structured_output`` (None without a result)."""
        result = self._record.get("result")
        return None if result is None else shared_json(result.get("structured_output"))

    @property
    def usage(self) -> InferenceUsage | None:
        """``result.usage`` of a job that ended (None when not reported)."""
        return self._usage

    @property
    def created_at(self) -> datetime | None:
        found = self._created_at
        if found is _UNSET:
            found = self._created_at = _lenient_stamp(self._record.get("created_at"))
        return found  # type: ignore[return-value]

    @property
    def updated_at(self) -> datetime | None:
        found = self._updated_at
        if found is _UNSET:
            found = self._updated_at = _lenient_stamp(self._record.get("updated_at"))
        return found  # type: ignore[return-value]

    def failure_message(self) -> str:
        """The failures joined into one line, for a row's ``narrative_error``."""
        failures = self._record.get("failures") or ()
        messages = [f.get("message") for f in failures if f.get("message")]
        return "; ".join(messages) if messages else f"job ended {self.state}"

    def __repr__(self) -> str:
        return f"JobRecord(job_id={self.job_id!r}, state={self.state!r})"


class _Unset:
    """Marks a lazily parsed field not read yet (None is a valid parsed value)."""


_UNSET = _Unset()


def _plain_failures(failures: list[Any]) -> bool:
    """True when every failure is an object whose ``message``, if any, is a string."""
    for failure in failures:
        if type(failure) is not dict:
            return False
        message = failure.get("message")
        if message is not None and type(message) is not str:
            return False
    return True


def _lenient_stamp(value: Any) -> datetime | None:
    """:func:`parse_timestamp`, None for anything it cannot read (never raises)."""
    try:
        return parse_timestamp(value)
    except (ValueError, OverflowError, OSError):
        return None


class JobsPage(_Lenient):
    """One page of ``GET /jobs``; older servers send only ``records``."""

    current_page: int | None = None
    total_records: int | None = None
    total_pages: int | None = None
    records: list[Job] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> Any:
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None}


def request_fingerprint(body: dict[str, Any]) -> str:
    """A stable hash of what makes two requests the same job: data plane, model, messages and
    inference config. Tags and the key are left out, so they never split a cache hit."""
    import hashlib
    import json

    material = {k: body.get(k) for k in ("data_plane_id", "model", "messages", "inference_config")}
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
