"""One unique request of a run, as the engine submits it, and the tags that find its job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._render import pair_turns

__all__ = ["LIBRARY_TAG", "TAG_PREFIX", "JobRequest", "RequestCommon", "request_tag"]


#: Tags the library adds to every job: one to find its jobs, one per request to reconcile POSTs.
LIBRARY_TAG = "narrative-pandas"
TAG_PREFIX = "npd-"


def request_tag(key: str) -> str:
    """The per-request tag: found through the job listing when a POST's outcome is unknown."""
    return TAG_PREFIX + key[:32]


@dataclass(frozen=True)
class RequestCommon:
    """What every request of a run shares: held once, not once per row."""

    data_plane_id: str
    model: str
    inference_config: Mapping[str, Any]
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One unique request of a run: its fingerprint, its messages and how many rows share it.

    The JSON body is built when it is sent (``body``), so a run holds each row's text once. The
    messages are kept as the run's ``roles`` (one tuple, shared by every request) and this
    request's ``texts`` (a bare string for a single turn): a tuple of ``(role, text)`` pairs
    per row cost 104 bytes a row at 100,000 rows, a tenth of a run's memory.
    """

    key: str
    roles: tuple[str, ...]
    texts: str | tuple[str, ...]
    common: RequestCommon
    rows: int
    prompt_tokens_estimate: int

    @classmethod
    def from_messages(
        cls,
        key: str,
        messages: Sequence[tuple[str, str]],
        common: RequestCommon,
        rows: int,
        prompt_tokens_estimate: int,
    ) -> JobRequest:
        """A request from its ``(role, text)`` pairs."""
        roles = tuple(role for role, _ in messages)
        texts = tuple(text for _, text in messages)
        return cls(
            key, roles, texts[0] if len(texts) == 1 else texts, common, rows, prompt_tokens_estimate
        )

    @property
    def messages(self) -> tuple[tuple[str, str], ...]:
        """The ``(role, text)`` pair of each turn."""
        return pair_turns(self.roles, self.texts)

    @property
    def tag(self) -> str:
        return request_tag(self.key)

    @property
    def body(self) -> dict[str, Any]:
        """The body of ``POST /model-inference/run``."""
        common = self.common
        return {
            "data_plane_id": common.data_plane_id,
            "model": common.model,
            "messages": [{"role": role, "text": text} for role, text in self.messages],
            "inference_config": common.inference_config,
            "tags": [*common.tags, LIBRARY_TAG, self.tag],
        }

    @classmethod
    def from_body(
        cls, key: str, body: Mapping[str, Any], *, rows: int, prompt_tokens_estimate: int
    ) -> JobRequest:
        """Rebuild a request from a recorded body (``attach``)."""
        own = (LIBRARY_TAG, request_tag(key))
        common = RequestCommon(
            data_plane_id=body["data_plane_id"],
            model=body["model"],
            inference_config=body["inference_config"],
            tags=tuple(t for t in body.get("tags") or () if t not in own),
        )
        messages = tuple((m["role"], m["text"]) for m in body["messages"])
        return cls.from_messages(key, messages, common, rows, prompt_tokens_estimate)
