"""A plan's unique requests, held column-wise: keyed, deduplicated, made into objects on demand.

A request's key is the SHA-256 of the canonical JSON of its content (what
:func:`~narrative_pandas._models.request_fingerprint` computes from a body): the keys of cache
entries and journal rows, so they never change. Every row's canonical JSON is the same text
around its own messages, and with one templated turn (the usual case) the same text around that
turn's JSON-escaped text. So the shared head (with the whole output schema and any fixed turns)
is hashed once, and each row costs one string escape (``json``'s C encoder), one hash-state copy
and one digest. Rows are deduplicated by key with one dict, and a
:class:`~narrative_pandas._job_request.JobRequest` is built only when the engine asks for the
requests; ``preview`` and a fully cached re-run never do.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any, overload

import numpy as np

from ._job_request import LIBRARY_TAG, TAG_PREFIX, JobRequest, RequestCommon
from ._render import RenderedColumns

__all__ = ["RequestTable", "key_parts", "plan_requests", "request_commons", "request_keys"]

#: ``json.dumps(text, ensure_ascii=False)`` for a str, without the encoder's per-call set-up.
_encode_string: Callable[[str], str] = getattr(json.encoder, "c_encode_basestring", None) or (
    json.encoder.py_encode_basestring
)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_parts(data_plane_id: str, config: Mapping[str, Any], model: str) -> tuple[str, str]:
    """The canonical JSON every row's key text shares, before and after its messages."""
    head = (
        '{"data_plane_id":'
        + _canonical(data_plane_id)
        + ',"inference_config":'
        + _canonical(config)
        + ',"messages":'
    )
    return head, ',"model":' + _canonical(model) + "}"


class RequestTable(Sequence[JobRequest]):
    """The unique requests of a plan, in the order of their first row, one list per field.

    ``positions[i]`` is a row of request ``i`` (its messages are that row's turns in
    ``rendered``); ``estimates`` holds every row's prompt-token estimate.
    """

    def __init__(
        self,
        keys: list[str],
        positions: Sequence[int],
        rows: list[int],
        rendered: RenderedColumns,
        estimates: np.ndarray,
        common: RequestCommon,
    ) -> None:
        self.keys = keys
        self.positions = positions
        self.rows = rows
        self.rendered = rendered
        self.estimates = estimates
        self.common = common
        self._built: list[JobRequest] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _make(self, i: int) -> JobRequest:
        position = self.positions[i]
        estimate = int(self.estimates[position])
        rendered = self.rendered
        return JobRequest(
            self.keys[i],
            rendered.roles,
            rendered.texts_at(position),
            self.common,
            self.rows[i],
            estimate,
        )

    @overload
    def __getitem__(self, index: int) -> JobRequest: ...

    @overload
    def __getitem__(self, index: slice) -> list[JobRequest]: ...

    def __getitem__(self, index: int | slice) -> JobRequest | list[JobRequest]:
        if self._built is not None or isinstance(index, slice):
            return self._objects()[index]
        return self._make(range(len(self.keys))[index])

    def __iter__(self) -> Iterator[JobRequest]:
        return iter(self._objects())

    def _objects(self) -> list[JobRequest]:
        """Every request as an object, built once (what the engine and the run record use)."""
        if self._built is None:
            common, positions, roles = self.common, self.positions, self.rendered.roles
            estimates = self.estimates.tolist()
            self._built = [
                JobRequest(key, roles, texts, common, rows, estimates[position])
                for key, texts, rows, position in zip(
                    self.keys,
                    self.rendered.texts_of(positions),
                    self.rows,
                    positions,
                    strict=True,
                )
            ]
        return self._built

    def record_json(self) -> str:
        """Every request as a run record keeps it, ``[[key, 0, [[role, text], ...], estimate],
        ...]``, as JSON text made column-wise (no request object, no ``json.dumps`` of a list
        per row: 0.13 s at 100,000 rows, against 0.78 s that way). ``0``: the one shared part."""
        encode, positions = _encode_string, self.positions
        estimates = self.estimates.tolist()
        opens = ["[" + encode(role) + "," for role in self.rendered.roles]
        columns: list[Any] = [  # each turn's texts as JSON strings, or one for every row
            repeat(encode(texts))
            if isinstance(texts, str)
            else [encode(texts[p]) for p in positions]
            for texts in self.rendered.texts
        ]
        if len(columns) == 1 and isinstance(columns[0], list):  # one templated turn
            opened = opens[0]
            items = [
                f'["{key}",0,[{opened}{text}]],{estimates[position]}]'
                for key, text, position in zip(self.keys, columns[0], positions, strict=True)
            ]
        else:
            items = [
                f'["{key}",0,['
                + ",".join(o + t + "]" for o, t in zip(opens, texts, strict=True))
                + f"],{estimates[position]}]"
                for key, position, *texts in zip(self.keys, positions, *columns, strict=False)
            ]
        return "[" + ",".join(items) + "]"

    def row_bodies(self, row_keys: Sequence[str | None]) -> list[dict[str, Any] | None]:
        """Each row's request body (a new dict per row, None for a skipped row)."""
        common = self.common
        data_plane_id, model, config = common.data_plane_id, common.model, common.inference_config
        tags = [*common.tags, LIBRARY_TAG]
        rendered = self.rendered
        if len(rendered.roles) == 1 and not isinstance(rendered.texts[0], str):
            role, texts = rendered.roles[0], rendered.texts[0]
            return [
                None
                if key is None
                else {
                    "data_plane_id": data_plane_id,
                    "model": model,
                    "messages": [{"role": role, "text": text}],
                    "inference_config": config,
                    "tags": [*tags, TAG_PREFIX + key[:32]],
                }
                for key, text in zip(row_keys, texts, strict=True)
            ]
        columns = [repeat(t) if isinstance(t, str) else t for t in rendered.texts]
        roles = rendered.roles
        return [
            None
            if key is None
            else {
                "data_plane_id": data_plane_id,
                "model": model,
                "messages": [
                    {"role": role, "text": text} for role, text in zip(roles, row, strict=False)
                ],
                "inference_config": config,
                "tags": [*tags, TAG_PREFIX + key[:32]],
            }
            for key, *row in zip(row_keys, *columns, strict=False)
        ]


def request_keys(requests: Sequence[JobRequest]) -> list[str]:
    """The key of each request (without building request objects from a table)."""
    if isinstance(requests, RequestTable):
        return requests.keys
    return [r.key for r in requests]


def request_commons(requests: Sequence[JobRequest]) -> tuple[list[RequestCommon], list[int]]:
    """The distinct shared parts of the requests (by object), and which one each request has
    (without building request objects from a table)."""
    if isinstance(requests, RequestTable):
        return [requests.common], [0] * len(requests)
    found: dict[int, int] = {}
    distinct: list[RequestCommon] = []
    which: list[int] = []
    for request in requests:
        common = request.common
        index = found.get(id(common))
        if index is None:
            index = found[id(common)] = len(distinct)
            distinct.append(common)
        which.append(index)
    return distinct, which


def plan_requests(
    rendered: RenderedColumns,
    common: RequestCommon,
    parts: tuple[str, str],
    unencodable: Callable[[int], Exception],
) -> tuple[list[str | None], RequestTable]:
    """Each row's key (None when skipped) and the table of unique requests."""
    skipped = rendered.skipped
    kept = [i for i in range(rendered.rows) if i not in skipped] if skipped else None
    sent: Sequence[int] = range(rendered.rows) if kept is None else kept
    try:
        keys = _keys(rendered, kept, parts)
    except UnicodeEncodeError:  # a lone surrogate: name its row (and the caller, its column)
        bad = next(i for i in sent if not all(_encodable(t) for _, t in rendered.row(i)))
        raise unencodable(bad) from None
    row_keys: list[str | None]
    if kept is None:
        row_keys = list(keys)
    else:
        row_keys = [None] * rendered.rows
        for position, key in zip(kept, keys, strict=True):
            row_keys[position] = key
    if len(set(keys)) == len(keys):  # every row its own request: the table is the rows
        positions, rows = sent, [1] * len(keys)
    else:
        first = dict(zip(keys, sent, strict=True))  # ordered by each key's first row
        counts = Counter(keys)
        keys, positions, rows = list(first), list(first.values()), [counts[k] for k in first]
    estimates = np.maximum(1, -(-rendered.lengths() // 4))  # about 4 characters per token
    return row_keys, RequestTable(keys, positions, rows, rendered, estimates, common)


def _keys(rendered: RenderedColumns, kept: list[int] | None, parts: tuple[str, str]) -> list[str]:
    """The key of each row that is sent (each row of ``kept``, or every row)."""
    count = rendered.rows if kept is None else len(kept)
    if count == 0:
        return []
    head, tail = parts
    encode = _encode_string
    openers = ['{"role":' + encode(role) + ',"text":' for role in rendered.roles]
    fixed: dict[int, str] = {}  # a turn every row shares, as JSON
    varying: dict[int, list[str]] = {}  # a templated turn's texts, of the rows sent
    for i, texts in enumerate(rendered.texts):
        if isinstance(texts, str):
            fixed[i] = openers[i] + encode(texts) + "}"
        else:
            varying[i] = texts if kept is None else [texts[p] for p in kept]
    started = hashlib.sha256((head + "[").encode())
    closing = "]" + tail
    if not varying:  # every row asks the same
        started.update((",".join(fixed.values()) + closing).encode())
        return [started.hexdigest()] * count
    if len(varying) == 1:  # the same text around one turn's escaped text
        ((at, texts),) = varying.items()
        before = [fixed[i] for i in range(at)]
        started.update(("".join(t + "," for t in before) + openers[at]).encode())
        after = "}" + "".join("," + fixed[i] for i in range(at + 1, len(openers))) + closing
        copy = started.copy

        def key_of(text: str) -> str:
            digest = copy()
            digest.update((encode(text) + after).encode())
            return digest.hexdigest()

        return list(map(key_of, texts))
    pieces: list[Any] = [
        repeat(fixed[i])
        if i in fixed
        else [openers[i] + encoded + "}" for encoded in map(encode, varying[i])]
        for i in range(len(openers))
    ]
    copy = started.copy

    def content_key(*turns: str) -> str:
        digest = copy()
        digest.update((",".join(turns) + closing).encode())
        return digest.hexdigest()

    return list(map(content_key, *pieces))


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
