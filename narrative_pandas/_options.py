"""Options checked by name and by type before anything is sent.

Every verb has a table entry listing the keywords it takes; a keyword outside it is an
:class:`UnknownOptionError` (a ``TypeError``) that names the verb the user called and the closest
valid option (``output_schema`` -> ``output``). Each option's type is checked here too, so
``stop_sequences="STOP"`` is refused instead of being sent as ``["S", "T", "O", "P"]``.

A new option joins with one line in :data:`RUN_OPTIONS` (and one in :data:`OPTION_TYPES` if its
type can be checked); a new verb with one line in :data:`VERB_OPTIONS`.
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

from ._exceptions import OptionTypeError, UnknownOptionError

__all__ = ["OPTION_TYPES", "RUN_OPTIONS", "VERB_OPTIONS", "VERB_REQUIRED", "check_options"]

RUN_OPTIONS: tuple[str, ...] = (
    "output",
    "system",
    "messages",
    "model",
    "data_plane_id",
    "api_key",
    "base_url",
    "client",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "tags",
    "concurrency",
    "poll_interval",
    "timeout",
    "errors",
    "missing",
    "prefix",
    "flatten",
    "progress",
    "cache",
    "refresh",
    "max_total_tokens",
    "only_failed",
    "on_interrupt",
    "samples",
    "examples",
)
"""The keywords of ``start`` (and so of ``infer``, ``ainfer`` and ``preview``)."""

VERB_OPTIONS: dict[str, frozenset[str]] = {
    "start": frozenset(RUN_OPTIONS),
    "infer": frozenset(RUN_OPTIONS),
    "ainfer": frozenset(RUN_OPTIONS),
    "preview": frozenset(RUN_OPTIONS),
    "compare": frozenset(RUN_OPTIONS) | {"models", "prompts", "prompt"},
}
"""Valid keywords per public verb."""

VERB_REQUIRED: dict[str, tuple[str, ...]] = {
    "start": ("output",),
    "infer": ("output",),
    "ainfer": ("output",),
    "preview": ("output",),
    "compare": ("output",),
}
"""Keywords a verb cannot do without (checked first, so the message names the verb called)."""

_REQUIRED_HINTS: dict[str, str] = {
    "output": "the structure of each answer: a pydantic model class or a JSON Schema dict, "
    "e.g. output=Sentiment",
}

# Words people reach for, from other libraries, that are not close in spelling.
_ALIASES: dict[str, str] = {
    "output_schema": "output",
    "schema": "output",
    "response_format": "output",
    "response_model": "output",
    "output_format": "output",
    "output_model": "output",
    "template": "prompt",
    "system_prompt": "system",
    "model_id": "model",
    "model_name": "model",
    "stop": "stop_sequences",
    "max_output_tokens": "max_tokens",
    "max_new_tokens": "max_tokens",
    "n_jobs": "concurrency",
    "workers": "concurrency",
    "max_workers": "concurrency",
    "max_concurrency": "concurrency",
    "budget": "max_total_tokens",
    "token_budget": "max_total_tokens",
    "retry_failed": "only_failed",
    "key": "api_key",
    "url": "base_url",
}


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _is_messages(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(m, Mapping) for m in value)


def _is_cache(value: Any) -> bool:
    from ._cache import Cache

    return isinstance(value, (bool, str, os.PathLike, Cache))


def _is_key(value: Any) -> bool:
    from ._config import ApiKey

    return isinstance(value, (str, ApiKey))


def _is_client(value: Any) -> bool:
    from ._client import Client

    return isinstance(value, Client)


def _is_progress(value: Any) -> bool:
    return isinstance(value, bool) or callable(value) or hasattr(value, "update")


def _is_frame(value: Any) -> bool:
    import pandas as pd

    return isinstance(value, pd.DataFrame)


OPTION_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "system": (_is_str, "a string (a template, like prompt)"),
    "messages": (_is_messages, 'a list of {"role": ..., "text": ...} dicts'),
    "model": (_is_str, 'a model id string, e.g. "anthropic.claude-haiku-4.5"'),
    "data_plane_id": (_is_str, "a data plane id string"),
    "api_key": (_is_key, "a string"),
    "base_url": (_is_str, 'a URL string, e.g. "https://api.narrative.io"'),
    "client": (_is_client, "a narrative_pandas.Client"),
    "max_tokens": (_is_int, "a positive integer"),
    "temperature": (_is_number, "a number between 0 and 1"),
    "top_p": (_is_number, "a number between 0 and 1"),
    "stop_sequences": (_is_str_list, 'a list of strings, e.g. stop_sequences=["STOP"]'),
    "tags": (_is_str_list, 'a list of strings, e.g. tags=["labelling"]'),
    "concurrency": (_is_int, "a positive integer"),
    "poll_interval": (_is_number, "a positive number of seconds"),
    "timeout": (_is_number, "a positive number of seconds"),
    "errors": (_is_str, 'one of "coerce", "raise"'),
    "missing": (_is_str, 'one of "empty", "skip"'),
    "prefix": (_is_str, "a string"),
    "flatten": (_is_bool, "True or False"),
    "progress": (_is_progress, "None, True, False, a callable taking each event, or a sink"),
    "cache": (_is_cache, "True, False, a file path or a Cache"),
    "refresh": (_is_bool, "True or False"),
    "max_total_tokens": (_is_int, "a positive integer"),
    "only_failed": (_is_frame, "a previous result of this call (a DataFrame)"),
    "on_interrupt": (_is_str, 'one of "raise", "return"'),
    "samples": (_is_int, "a positive integer (jobs per row)"),
    "examples": (
        _is_frame,
        "a DataFrame of labelled rows (the template's columns and the answers)",
    ),
}
"""How each option's type is checked (None always passes: it means "the default")."""


def closest_option(name: str, valid: frozenset[str] | set[str]) -> str | None:
    """The valid option ``name`` most likely meant, or None."""
    alias = _ALIASES.get(name.lower())
    if alias is not None and alias in valid | {"prompt"}:
        return alias
    close = difflib.get_close_matches(name.lower(), sorted(valid), n=1, cutoff=0.6)
    return close[0] if close else None


def check_options(verb: str, options: Mapping[str, Any]) -> None:
    """Refuse unknown keywords (naming ``verb``), missing required ones, and wrong types."""
    valid = VERB_OPTIONS[verb]
    for name in options:
        if name in valid:
            continue
        suggestion = closest_option(name, valid)
        hint = (
            f"Did you mean {suggestion}=?"
            if suggestion is not None and suggestion != "prompt"
            else "Did you mean the prompt (the first argument)?"
            if suggestion == "prompt"
            else f"Valid options: {', '.join(sorted(valid))}."
        )
        raise UnknownOptionError(
            f"{verb}() got an unexpected keyword argument {name!r}. {hint}",
            verb=verb,
            name=name,
            suggestion=suggestion,
        )
    for name in VERB_REQUIRED.get(verb, ()):
        if options.get(name) is None:
            what = _REQUIRED_HINTS.get(name, "a value")
            raise OptionTypeError(f"{verb}() needs {name}=: {what}.")
    for name, value in options.items():
        check = OPTION_TYPES.get(name)
        if value is None or check is None:
            continue
        accepts, expected = check
        if not accepts(value):
            raise OptionTypeError(
                f"{name}={_short_repr(name, value)} is not valid: {name} must be {expected}."
            )


def _short_repr(name: str, value: Any) -> str:
    if name in ("api_key", "client"):  # never echo anything that may hold the key
        return f"<{type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
