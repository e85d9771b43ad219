"""Everything decided before the first request: options checked, rows rendered, requests deduped.

A :class:`RunPlan` is built synchronously, so a bad template, schema, option or column collision
raises before anything is sent, and ``preview`` shows exactly the bodies ``infer`` would send.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ValidationError

from ._config import Settings
from ._engine import EngineOptions
from ._examples import example_turns
from ._exceptions import ConfigurationError, OptionTypeError, UnknownModelWarning
from ._frame import check_collisions
from ._gc_pause import no_cyclic_gc
from ._job_request import JobRequest, RequestCommon, request_tag
from ._models import KNOWN_MODELS, InferenceConfig
from ._request_table import RequestTable, key_parts, plan_requests, request_keys
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
    """A run, fully decided: the frame, what each row asks, and how the run behaves.

    ``requests`` is usually a :class:`~narrative_pandas._request_table.RequestTable`, which
    builds request objects only when they are iterated (the engine does; ``preview`` and a
    fully cached re-run do not).
    """

    df: pd.DataFrame
    spec: OutputSpec
    row_keys: list[str | None]
    skipped: dict[int, str]
    requests: Sequence[JobRequest]
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

    @property
    def request_keys(self) -> list[str]:
        """The key of each unique request, in order (no request object is built)."""
        return request_keys(self.requests)

    def row_bodies(self) -> list[dict[str, Any] | None]:
        """Each row's request body (a new dict per row, None for a skipped row), equal to its
        request's :attr:`JobRequest.body`; built in one pass for ``preview`` of large frames."""
        with no_cyclic_gc():
            if isinstance(self.requests, RequestTable):
                return self.requests.row_bodies(self.row_keys)
            by_key = {r.key: r for r in self.requests}
            return [None if key is None else by_key[key].body for key in self.row_keys]

    def row_token_estimates(self) -> list[int | None]:
        """Each row's prompt-token estimate (None for a skipped row)."""
        if isinstance(self.requests, RequestTable):
            estimates: list[int | None] = self.requests.estimates.tolist()
            for position in self.skipped:
                estimates[position] = None
            return estimates
        by_key = {r.key: r.prompt_tokens_estimate for r in self.requests}
        return [None if key is None else by_key[key] for key in self.row_keys]

    @property
    def deduplicated(self) -> int:
        """Rows that share another row's job."""
        return len(self.row_keys) - len(self.skipped) - len(self.requests)


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
        rendered = bound.render_columns(df, missing=missing_mode)
        if examples is not None:  # few-shot turns from labelled rows (see _examples)
            shots = example_turns(examples, bound, spec)
            rendered = rendered.with_turns(tuple((turn.role, turn.text) for turn in shots))
        parts = key_parts(data_plane_id, config, model)
        row_keys, requests = plan_requests(
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
        skipped=dict(rendered.skipped),
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
