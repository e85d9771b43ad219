"""A request's JSON body, encoded once per POST from parts shared by the whole run.

Every body of a run repeats the same data plane, model, inference config (with the whole output
schema) and tags; only the messages and the per-request tag differ. So the shared parts are
encoded once per :class:`~narrative_pandas._job_request.RequestCommon`, and a POST's bytes are
those parts joined around the row's messages (``json``'s C string encoder, as for the request
key): no dict built per POST, no ``json.dumps`` of the schema per POST. The bytes decode to
exactly :attr:`JobRequest.body <narrative_pandas._job_request.JobRequest.body>` (a test checks
it).
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from ._job_request import LIBRARY_TAG
from ._transport import EncodedBody

if TYPE_CHECKING:
    from ._job_request import JobRequest, RequestCommon

__all__ = ["EncodedBody", "encode_body"]

#: ``json.dumps(text, ensure_ascii=False)`` for a str, without the encoder's per-call set-up.
_encode_string: Any = getattr(json.encoder, "c_encode_basestring", None) or (
    json.encoder.py_encode_basestring
)
#: Shared parts kept for this many distinct ``RequestCommon`` objects (a run has one or a few).
_MAX_COMMONS = 64


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


_lock = threading.Lock()
_parts: dict[int, tuple[RequestCommon, str, str]] = {}


def _shared(common: RequestCommon) -> tuple[str, str]:
    """The text before a body's messages, and after them up to the per-request tag."""
    found = _parts.get(id(common))
    if found is not None and found[0] is common:
        return found[1], found[2]
    head = (
        '{"data_plane_id":'
        + _compact(common.data_plane_id)
        + ',"model":'
        + _compact(common.model)
        + ',"messages":['
    )
    tags = "".join(_compact(tag) + "," for tag in (*common.tags, LIBRARY_TAG))
    middle = '],"inference_config":' + _compact(common.inference_config) + ',"tags":[' + tags
    with _lock:
        if len(_parts) >= _MAX_COMMONS:
            _parts.clear()
        _parts[id(common)] = (common, head, middle)  # holds common: its id is not reused
    return head, middle


def encode_body(request: JobRequest) -> EncodedBody:
    """``request``'s body as the bytes to send."""
    common = request.common
    head, middle = _shared(common)
    encode = _encode_string
    messages = ",".join(
        [
            '{"role":' + encode(role) + ',"text":' + encode(text) + "}"
            for role, text in request.messages
        ]
    )
    text = head + messages + middle + encode(request.tag) + "]}"
    return EncodedBody(text.encode(), common.data_plane_id)
