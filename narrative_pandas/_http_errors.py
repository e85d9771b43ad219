"""Error answers from any gateway, turned into one clear exception with the status.

The Narrative API documents RFC 7807-like bodies (``title``/``detail``/``logId``) and
``{"error", "error_description"}``; Narrative's own client also reads capitalised ``Title`` /
``Detail``; other gateways send ``{"message"}`` or ``{"error": {"message"}}``; a proxy in front may
answer 502/504 with an HTML page or nothing at all. Each gives a message that names the status, the
request and what the body said. The API key is masked in every text *before* it is cut, so no
fragment of it survives in a message, a repr or a traceback.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from ._config import ApiKey
from ._exceptions import (
    APIStatusError,
    AuthenticationError,
    PermissionDeniedError,
    RateLimitError,
    status_error_class,
)

__all__ = ["MASK", "make_status_error", "mask_secret"]

MASK = "***"
#: Longest explanation kept from a body (after masking the key).
MAX_ERROR_TEXT = 300
#: Longest raw body kept on the exception (after masking the key).
MAX_BODY_TEXT = 2000

_TITLE_KEYS = ("title", "Title")
_DETAIL_KEYS = ("detail", "Detail", "error_description", "message", "Message")
_LOG_ID_KEYS = ("logId", "LogId", "log_id", "logid")
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_HEADING = re.compile(r"<h1[^>]*>(.*?)</h1>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def mask_secret(text: str | None, key: ApiKey | str | None) -> str | None:
    """``text`` with every occurrence of the key replaced by ``***``."""
    if not text or key is None:
        return text
    value = key.reveal() if isinstance(key, ApiKey) else key
    return text.replace(value, MASK) if value and value in text else text


def _cut(text: str | None, limit: int = MAX_ERROR_TEXT) -> str | None:
    if text is None:
        return None
    text = _SPACE.sub(" ", text).strip()
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(value: Any) -> str | None:
    if value is None or value == "" or value == [] or value == {}:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _first(body: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for name in keys:
        text = _text(body.get(name))
        if text:
            return text
    return None


def _from_mapping(body: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """Title, detail and log id from any of the JSON shapes gateways use."""
    title = _first(body, _TITLE_KEYS)
    detail = _first(body, _DETAIL_KEYS)
    log_id = _first(body, _LOG_ID_KEYS)
    error = body.get("error") if "error" in body else body.get("Error")
    if isinstance(error, Mapping):  # {"error": {"code": ..., "message": ...}}
        nested_title, nested_detail, nested_log = _from_mapping(error)
        title = title or nested_title or _text(error.get("code")) or _text(error.get("type"))
        detail = detail or nested_detail
        log_id = log_id or nested_log
    elif error is not None:  # {"error": "invalid_request", "error_description": "..."}
        title = title or _text(error)
    errors = body.get("errors")
    if not detail and isinstance(errors, list) and errors:
        parts = [_text(e.get("message")) if isinstance(e, Mapping) else _text(e) for e in errors]
        detail = "; ".join(p for p in parts if p) or None
    return title, detail, log_id


def _from_html(text: str) -> str:
    """The title (or first heading) of an HTML error page a proxy sent."""
    match = _HTML_TITLE.search(text) or _HTML_HEADING.search(text)
    inner = match.group(1) if match else _TAG.sub(" ", text)
    words = _cut(html.unescape(_TAG.sub(" ", inner)), 120)
    return f"an HTML page from a proxy or gateway ({words or 'no title'})"


def _looks_like_html(response: httpx.Response, text: str) -> bool:
    if "html" in response.headers.get("content-type", "").lower():
        return True
    head = text.lstrip()[:64].lower()
    return head.startswith("<!doctype html") or head.startswith("<html")


def _read_body(response: httpx.Response, key: ApiKey | str | None) -> tuple[Any, str]:
    """The body as JSON when it is JSON, else as (masked, cut) text; and the masked text."""
    try:
        raw = response.text
    except (UnicodeDecodeError, LookupError):
        raw = response.content.decode("utf-8", "replace")
    text = mask_secret(raw, key) or ""
    if not text.strip():
        return None, ""
    try:
        return json.loads(text), text
    except ValueError:
        return text[:MAX_BODY_TEXT], text


def _hint(status_code: int) -> str:
    cls = status_error_class(status_code)
    if issubclass(cls, AuthenticationError):
        return "Check the API key (NARRATIVE_API_KEY or api_key=...)."
    if issubclass(cls, PermissionDeniedError):
        return "The key may lack rights on this resource or data plane, or the plane is unknown."
    if status_code in (502, 503, 504):
        return "The service or a gateway in front of it is unavailable; try again later."
    return ""


def make_status_error(
    response: httpx.Response,
    *,
    method: str,
    path: str,
    retry_after: float | None = None,
    secret: ApiKey | str | None = None,
) -> APIStatusError:
    """The exception for an error answer: status, request, and what the body said.

    ``secret`` (the key, best as the masked :class:`ApiKey`) is scrubbed from the body before
    anything is cut or kept.
    """
    status = response.status_code
    body, text = _read_body(response, secret)
    title = detail = log_id = None
    if isinstance(body, Mapping):
        title, detail, log_id = _from_mapping(body)
    elif isinstance(body, str):
        detail = _from_html(text) if _looks_like_html(response, text) else body
    elif body is None:
        detail = "empty body"
    elif body is not None:  # a JSON list or scalar
        detail = _text(body)
    title, detail, log_id = _cut(title), _cut(detail), _cut(log_id, 120)
    reason = httpx.codes.get_reason_phrase(status) or response.reason_phrase or "Error"
    message = f"{status} {reason} on {method} {path}"
    explanation = ": ".join(part for part in (title, detail) if part and part != reason)
    if explanation:
        message += f": {explanation}"
    if log_id:
        message += f" (logId {log_id})"
    hint = _hint(status)
    if hint:
        message += f"{'' if message.endswith('.') else '.'} {hint}"
    cls = status_error_class(status)
    fields: dict[str, Any] = {
        "status_code": status,
        "title": title,
        "detail": detail,
        "log_id": log_id,
        "method": method,
        "path": path,
        "body": body,
    }
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=retry_after, **fields)
    return cls(message, **fields)
