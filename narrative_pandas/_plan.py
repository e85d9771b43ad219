"""Everything decided before the first request: options checked, rows rendered, requests deduped.

A :class:`RunPlan` is built synchronously, so a bad template, schema, option or column collision
raises before anything is sent, and ``preview`` shows exactly the bodies ``infer`` would send.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import pandas as pd
from pydantic import BaseModel, ValidationError

from ._config import Settings
from ._engine import (
    LIBRARY_TAG,
    TAG_PREFIX,
    EngineOptions,
    JobRequest,
    RequestCommon,
    request_tag,
)
from ._examples import example_turns, with_examples
from ._exceptions import ConfigurationError, OptionTypeError, UnknownModelWarning
from ._frame import check_collisions
from ._gc_pause import no_cyclic_gc
from ._models import KNOWN_MODELS, InferenceConfig
from ._schema import OutputSpec
from ._template import MessageTemplates
from ._tracebacks import user_stacklevel

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MODEL",
    "RunPlan",
    "build_plan",
    "no_cyclic_gc",
    "request_tag",
]

DEFAULT_MODEL = "anthropic.claude-haiku-4.5"
DEFAULT_CONCURRENCY = 32
ErrorsMode = Literal["coerce", "raise"]
MissingMode = Literal["empty", "skip"]
InterruptMode = Literal["raise", "return"]


@dataclass
class RunPlan:
    """A run, fully decided: the frame, what each row asks, and how the run behaves."""

    df: pd.DataFrame
    spec: OutputSpec
    row_keys: list[str | None]
    skipped: dict[int, str]
    requests: list[JobRequest]
    options: EngineOptions
    prefix: str = ""
    flatten: bool = True
    errors: ErrorsMode = "coerce"
    on_interrupt: InterruptMode = "raise"
    model: str = DEFAULT_MODEL
    _by_key: dict[str, JobRequest] | None = field(default=None, repr=False, compare=False)

    def request(self, key: str) -> JobRequest:
        """The unique request behind a row's key."""
        if self._by_key is None:
            self._by_key = {r.key: r for r in self.requests}
        return self._by_key[key]

    def row_bodies(self) -> list[dict[str, Any] | None]:
        """Each row's request body (a new dict per row, None for a skipped row), equal to its
        request's :attr:`JobRequest.body`; built in one pass for ``preview`` of large frames."""
        with no_cyclic_gc():
            return self._row_bodies()

    def _row_bodies(self) -> list[dict[str, Any] | None]:
        by_key = {r.key: r for r in self.requests}
        bodies: list[dict[str, Any] | None] = []
        append = bodies.append
        for key in self.row_keys:
            if key is None:
                append(None)
                continue
            request = by_key[key]
            common = request.common
            append(
                {
                    "data_plane_id": common.data_plane_id,
                    "model": common.model,
                    "messages": [{"role": role, "text": text} for role, text in request.messages],
                    "inference_config": common.inference_config,
                    "tags": [*common.tags, LIBRARY_TAG, TAG_PREFIX + key[:32]],
                }
            )
        return bodies

    @property
    def deduplicated(self) -> int:
        """Rows that share another row's job."""
        return sum(1 for k in self.row_keys if k is not None) - len(self.requests)


def _choice(name: str, value: Any, allowed: Sequence[str]) -> Any:
    if value not in allowed:
        raise ConfigurationError(
            f"{name}={value!r} is not valid; use one of {', '.join(repr(a) for a in allowed)}."
        )
    return value


def _positive(name: str, value: Any, *, integer: bool = False) -> Any:
    if value is None:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number of seconds"
        raise ConfigurationError(f"{name}={value!r} is not valid; it must be {what}.")
    return value


def build_inference_config(
    spec: OutputSpec,
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop_sequences: Sequence[str] | None,
) -> dict[str, Any]:
    """The ``inference_config`` shared by every row; out-of-range values raise here."""
    try:
        config = InferenceConfig(
            output_format_schema=spec.schema,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_sequences=list(stop_sequences) if stop_sequences is not None else None,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"Invalid inference settings: {problems}.") from None
    return config.to_body()


def _check_model(model: str) -> None:
    """Refuse a non-string model; warn, at the user's line, about an id this version lacks.

    An unknown id is still sent (the service's list grows faster than ours); if the service
    refuses it, the first POST's 400 ends the run with that error.
    """
    if not isinstance(model, str) or not model.strip():
        raise OptionTypeError(
            f"model={model!r} is not valid; pass a model id string, e.g. {DEFAULT_MODEL!r}."
        )
    if model in KNOWN_MODELS:
        return
    close = difflib.get_close_matches(model, KNOWN_MODELS, n=1, cutoff=0.6)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    warnings.warn(
        f"model {model!r} is not one narrative_pandas knows. {hint}Sending it anyway: the "
        f"service decides (known ids: {', '.join(KNOWN_MODELS)}).",
        UnknownModelWarning,
        stacklevel=user_stacklevel(),
    )


def build_plan(
    df: pd.DataFrame,
    prompt: str | None,
    *,
    output: type[BaseModel] | Mapping[str, Any],
    settings: Settings,
    system: str | None = None,
    messages: Sequence[Mapping[str, str]] | None = None,
    model: str = DEFAULT_MODEL,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop_sequences: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    poll_interval: float | None = None,
    timeout: float | None = None,
    errors: str = "coerce",
    missing: str = "empty",
    prefix: str = "",
    flatten: bool = True,
    max_total_tokens: int | None = None,
    refresh: bool = False,
    on_interrupt: str = "raise",
    examples: pd.DataFrame | None = None,
    data_plane_placeholder: str | None = None,
) -> RunPlan:
    """Check every argument and render every row; raises before anything is sent."""
    if not isinstance(df, pd.DataFrame):
        raise ConfigurationError(f"expected a pandas DataFrame, got {type(df).__name__}.")
    errors_mode: ErrorsMode = _choice("errors", errors, ("coerce", "raise"))
    missing_mode: MissingMode = _choice("missing", missing, ("empty", "skip"))
    interrupt_mode: InterruptMode = _choice("on_interrupt", on_interrupt, ("raise", "return"))
    _positive("concurrency", concurrency, integer=True)
    _positive("poll_interval", poll_interval)
    _positive("timeout", timeout)
    _positive("max_total_tokens", max_total_tokens, integer=True)
    if not isinstance(prefix, str):
        raise ConfigurationError(f"prefix={prefix!r} is not valid; pass a string.")
    for name, value, example in (
        ("tags", tags, "tags=['labelling']"),
        ("stop_sequences", stop_sequences, "stop_sequences=['STOP']"),
    ):
        if value is not None and (
            isinstance(value, (str, bytes)) or not all(isinstance(t, str) for t in value)
        ):
            raise OptionTypeError(
                f"{name} must be a list of strings, e.g. {example}; got {value!r} "
                "(a bare string would be split into characters)."
            )
    _check_model(model)

    templates = MessageTemplates.build(prompt, system=system, messages=messages)
    bound = templates.bind(list(df.columns))
    spec = OutputSpec.from_output(output)
    check_collisions(df.columns, spec, prefix=prefix, flatten=flatten)
    config = build_inference_config(
        spec,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_sequences=stop_sequences,
    )
    data_plane_id = settings.data_plane_id or data_plane_placeholder
    if data_plane_id is None:
        data_plane_id = settings.require_data_plane()

    common = RequestCommon(
        data_plane_id=data_plane_id,
        model=model,
        inference_config=config,
        tags=tuple(tags or ()),
    )
    with no_cyclic_gc():
        rendered = bound.render_turns(df, missing=missing_mode)
        if examples is not None:  # few-shot turns from labelled rows (see _examples)
            rendered = with_examples(rendered, example_turns(examples, bound, spec))
        parts = _key_parts(data_plane_id, config, model)
        row_keys, skipped, requests = _requests(
            rendered, common, parts, lambda position: _unencodable(df, position, bound.positions)
        )
    options = EngineOptions(
        concurrency=concurrency,
        poll_interval=poll_interval,
        timeout=timeout,
        max_total_tokens=max_total_tokens,
        refresh=refresh,
        data_plane_id=data_plane_id,
    )
    return RunPlan(
        df=df,
        spec=spec,
        row_keys=row_keys,
        skipped=skipped,
        requests=requests,
        options=options,
        prefix=prefix,
        flatten=flatten,
        errors=errors_mode,
        on_interrupt=interrupt_mode,
        model=model,
    )


def _unencodable(
    df: pd.DataFrame, position: int, used: Sequence[Sequence[int]]
) -> ConfigurationError:
    """Name the cell with a lone surrogate (text that is not valid Unicode) at ``position``."""
    label = df.index[position]
    for column_position in dict.fromkeys(p for turn in used for p in turn):
        column = df.columns[column_position]
        value = df.iat[position, column_position]
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return ConfigurationError(
                    f"row {label!r}, column {column!r} holds text that is not valid Unicode "
                    f"(a lone surrogate {value[exc.start]!r} at character {exc.start}). Fix it "
                    f"first, e.g. df[{column!r}] = df[{column!r}].str.encode('utf-8', "
                    "'replace').str.decode('utf-8')."
                )
    return ConfigurationError(
        f"row {label!r} renders to text that is not valid Unicode (a lone surrogate in the "
        "template or a formatted value); fix the template or the row's values."
    )


def _key_parts(data_plane_id: str, config: Mapping[str, Any], model: str) -> tuple[str, str]:
    """The canonical JSON every row's key text shares, before and after its messages."""
    head = (
        '{"data_plane_id":'
        + _canonical(data_plane_id)
        + ',"inference_config":'
        + _canonical(config)
        + ',"messages":'
    )
    return head, ',"model":' + _canonical(model) + "}"


def _requests(
    rendered: list[tuple[tuple[str, str], ...] | str],
    common: RequestCommon,
    parts: tuple[str, str],
    unencodable: Callable[[int], Exception],
) -> tuple[list[str | None], dict[int, str], list[JobRequest]]:
    """Each row's key (None when skipped), the skip reasons, and one request per unique key.

    A key is the SHA-256 of the canonical JSON of the request's content (what
    :func:`~narrative_pandas._models.request_fingerprint` computes from a body). The shared head
    (with the whole output schema) is hashed once; each row's hash continues from a copy of that
    state with the row's messages, written directly as ``_canonical`` would write them. Each
    step runs over all rows at once (comprehensions), which is what makes 100,000 rows cheap.
    """
    head, tail = parts
    skipped = {i: row for i, row in enumerate(rendered) if isinstance(row, str)}
    rows = cast(
        list[tuple[tuple[str, str], ...]],
        [row for row in rendered if not isinstance(row, str)] if skipped else rendered,
    )
    started = hashlib.sha256((head + "[").encode())
    closing = ("]" + tail).encode()

    def key_of(content: str) -> str:
        digest = started.copy()
        digest.update(content.encode())
        digest.update(closing)
        return digest.hexdigest()

    contents = _contents(rows)
    try:
        keys = list(map(key_of, contents))
    except UnicodeEncodeError:  # a lone surrogate: name its row (and the caller, its column)
        bad = next(i for i, text in enumerate(contents) if not _encodable(text))
        positions = [i for i in range(len(rendered)) if i not in skipped]
        raise unencodable(positions[bad]) from None
    row_keys: list[str | None]
    if skipped:
        found = iter(keys)
        row_keys = [None if i in skipped else next(found) for i in range(len(rendered))]
    else:
        row_keys = list(keys)
    counts = Counter(keys)
    unique = dict(zip(keys, rows, strict=True))  # identical keys have identical messages
    requests = [
        JobRequest(key, row, common, counts[key], _tokens_estimate(row))
        for key, row in unique.items()
    ]
    return row_keys, skipped, requests


def _contents(rows: list[tuple[tuple[str, str], ...]]) -> list[str]:
    """Each row's messages as canonical JSON, without the enclosing brackets."""
    encode = _encode_string
    openers: dict[str, str] = {}

    def opener(role: str) -> str:
        found = openers.get(role)
        if found is None:
            found = openers[role] = '{"role":' + encode(role) + ',"text":'
        return found

    role = rows[0][0][0] if rows and rows[0] else None
    if role is not None and all(len(row) == 1 and row[0][0] == role for row in rows):
        start = opener(role)  # one turn of one role (one template): the common case
        return [start + encode(row[0][1]) + "}" for row in rows]
    return [",".join([opener(role) + encode(text) + "}" for role, text in row]) for row in rows]


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _tokens_estimate(row: tuple[tuple[str, str], ...]) -> int:
    """About four characters per token, at least one."""
    length = len(row[0][1]) if len(row) == 1 else sum(len(text) for _, text in row)
    return max(1, math.ceil(length / 4))


#: ``json.dumps(text, ensure_ascii=False)`` for a str, without the encoder's per-call set-up.
_encode_string: Any = getattr(json.encoder, "c_encode_basestring", None) or (
    json.encoder.py_encode_basestring
)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
