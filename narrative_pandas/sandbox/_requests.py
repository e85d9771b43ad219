"""Reading a ``POST /model-inference/run`` body the way the service does, and deciding up
front how the job will end (its output, or why it fails)."""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass
from typing import Any

from ._knobs import SandboxConfig
from ._outputs import (
    OutputValidator,
    compile_schema,
    estimate_tokens,
    output_error,
    prompt_words,
    synthesize,
)
from ._records import unit

__all__ = ["BadRequest", "ParsedRequest", "decide_outcome", "parse_run_request"]

_ROLES = ("system", "user", "assistant")


class BadRequest(Exception):
    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


# --- request validation ----------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _string_list(value: Any, field: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{field} must be an array of strings")


def _message_text(message: Any, where: str) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object with 'role' and 'text' or 'content'")
    role = message.get("role")
    if "role" not in message:
        raise BadRequest(f"{where}.role is required")
    if role not in _ROLES:
        raise BadRequest(f"{where}.role must be one of 'system', 'user', 'assistant'")
    if "text" in message and message["text"] is not None:
        if not isinstance(message["text"], str):
            raise BadRequest(f"{where}.text must be a string")
        return role, message["text"]
    content = message.get("content")
    if content is None:
        raise BadRequest(f"{where} needs 'text' (a string) or 'content' (an array of blocks)")
    if isinstance(content, str):
        return role, content
    if not isinstance(content, list) or not content:
        raise BadRequest(f"{where}.content must be a non-empty array of text blocks")
    parts = []
    for j, block in enumerate(content):
        spot = f"{where}.content[{j}]"
        if not isinstance(block, dict):
            raise BadRequest(f"{spot} must be an object like {{'type': 'text', 'text': '...'}}")
        if block.get("type") != "text":
            raise BadRequest(f"{spot}.type must be 'text'")
        if not isinstance(block.get("text"), str):
            raise BadRequest(f"{spot}.text must be a string")
        parts.append(block["text"])
    return role, "\n".join(parts)


@dataclass
class ParsedRequest:
    body: dict[str, Any]
    normalised: dict[str, Any]
    texts: list[str]
    schema: dict[str, Any]
    validator: OutputValidator | None
    schema_problem: str | None


def parse_run_request(raw: bytes, config: SandboxConfig) -> ParsedRequest:
    """Validate a ``POST /model-inference/run`` body; raises BadRequest naming the field."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    for field in ("data_plane_id", "model"):
        if field not in body or body[field] is None:
            raise BadRequest(f"{field} is required")
        if not isinstance(body[field], str) or not body[field].strip():
            raise BadRequest(f"{field} must be a non-empty string")
    messages = body.get("messages")
    if "messages" not in body or messages is None:
        raise BadRequest("messages is required")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    normal = [_message_text(m, f"messages[{i}]") for i, m in enumerate(messages)]
    config_in = body.get("inference_config")
    if "inference_config" not in body or config_in is None:
        raise BadRequest("inference_config is required")
    if not isinstance(config_in, dict):
        raise BadRequest("inference_config must be an object")
    if "output_format_schema" not in config_in or config_in["output_format_schema"] is None:
        raise BadRequest("inference_config.output_format_schema is required")
    schema = config_in["output_format_schema"]
    if not isinstance(schema, dict):
        raise BadRequest("inference_config.output_format_schema must be a JSON Schema object")
    max_tokens = config_in.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadRequest("inference_config.max_tokens must be a positive integer")
    for field in ("temperature", "top_p"):
        value = config_in.get(field)
        if value is not None and not (_is_number(value) and 0 <= value <= 1):
            raise BadRequest(f"inference_config.{field} must be a number between 0 and 1")
    if config_in.get("stop_sequences") is not None:
        _string_list(config_in["stop_sequences"], "inference_config.stop_sequences")
    if body.get("tags") is not None:
        _string_list(body["tags"], "tags")
    if body["data_plane_id"] not in config.data_plane_ids:
        raise BadRequest(
            f"Data plane {body['data_plane_id']!r} was not found or this key may not use it",
            status=config.unknown_data_plane_status,
        )
    if body["model"] not in config.models:
        raise BadRequest(
            f"model {body['model']!r} is not supported; supported models: "
            + ", ".join(sorted(config.models))
        )
    compiled = compile_schema(schema)
    validator: OutputValidator | None = None
    schema_problem: str | None = None
    if isinstance(compiled, str):
        schema_problem = (
            "inference_config.output_format_schema is not a valid JSON Schema "
            f"(Draft 2020-12): {compiled}"
        )
        if not config.invalid_schema_as_job_failure:
            raise BadRequest(schema_problem)
    else:
        validator = compiled
    normalised = {
        "data_plane_id": body["data_plane_id"],
        "model": body["model"],
        "messages": [{"role": role, "text": text} for role, text in normal],
        "inference_config": config_in,
    }
    if body.get("tags") is not None:
        normalised["tags"] = body["tags"]
    return ParsedRequest(
        body, normalised, [t for _, t in normal], schema, validator, schema_problem
    )


# --- deciding a job's fate -------------------------------------------------------------------
def sample_of(request: dict[str, Any]) -> str:
    """A deliberate repeat of a request (``samples=k`` tags each ``npd-sample-<s>``) is its own
    job: not a duplicate submission, and drawn apart from the other samples."""
    tags = request.get("tags") or ()
    return "".join(f":{t}" for t in tags if isinstance(t, str) and t.startswith("npd-sample-"))


def _failure(message: str, **value: Any) -> list[dict[str, Any]]:
    return [{"message": message, "value": value}]


async def decide_outcome(
    parsed: ParsedRequest, config: SandboxConfig, fingerprint: str
) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
    """``(outcome, result, failures)`` for a valid request, decided up front."""
    seed_material = f"{config.seed}:{fingerprint}"
    model = parsed.normalised["model"]
    if parsed.schema_problem is not None:
        return "failed", None, _failure(parsed.schema_problem, reason="invalid_schema")
    if model in config.unavailable_models:
        message = f"Model {model} is not available in data plane {parsed.body['data_plane_id']}"
        return "failed", None, _failure(message, reason="model_not_available", model=model)
    if config.failure_rate and unit(seed_material + ":failure") < config.failure_rate:
        message = "Model inference failed: the model provider returned an error (sandbox)"
        return "failed", None, _failure(message, reason="injected_failure")
    if config.responder is not None:
        try:
            answer = config.responder(copy.deepcopy(parsed.normalised))
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            return "failed", None, _failure(message, reason="responder_error")
        if config.validate_responder and parsed.validator is not None:
            problem_text = output_error(parsed.validator, answer)
            if problem_text is not None:
                message = f"Model output does not match output_format_schema: {problem_text}"
                return "failed", None, _failure(message, reason="invalid_output")
        output = answer
    else:
        words = prompt_words(t for m in parsed.normalised["messages"] for t in [m["text"]])
        output = synthesize(parsed.schema, seed_material, words=words, validator=parsed.validator)
    try:
        output_text = json.dumps(output, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        message = f"Model output is not JSON: {exc}"
        return "failed", None, _failure(message, reason="invalid_output")
    completion = estimate_tokens(output_text)
    prompt = estimate_tokens("".join(parsed.texts))
    max_tokens = parsed.normalised["inference_config"].get("max_tokens")
    if max_tokens is not None and completion > max_tokens:
        message = (
            f"Token limit exceeded: the answer needs {completion} tokens but max_tokens is "
            f"{max_tokens}"
        )
        return (
            "failed",
            None,
            _failure(
                message, reason="token_limit_exceeded", max_tokens=max_tokens, tokens=completion
            ),
        )
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return "completed", {"structured_output": output, "usage": usage}, []
