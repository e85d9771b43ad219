"""Where reviewed labels are kept: the disk cache's SQLite file, or this process's memory.

With ``cache="labels.sqlite"`` every label is written to the table ``npd_review_labels`` of that
file the moment it is made (this module's own table; the cache's tables are untouched), so a
review survives a kernel restart. Without a disk cache, labels live for the life of the process,
so opening the review again in the same kernel resumes it too.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MemoryReviewStore", "ReviewLabel", "ReviewStore", "SQLiteReviewStore", "open_store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS npd_review_labels (
    namespace   TEXT NOT NULL,
    row_id      TEXT NOT NULL,
    field       TEXT NOT NULL,
    row_index   TEXT NOT NULL,
    value       TEXT NOT NULL,
    source      TEXT NOT NULL,
    reviewed_at REAL NOT NULL,
    PRIMARY KEY (namespace, row_id, field)
)
"""


@dataclass(frozen=True)
class ReviewLabel:
    """One reviewed value: which row (its id and index label), which field, what, how, when."""

    row_id: str
    field: str
    index: Any
    value: Any
    source: str
    reviewed_at: float


class ReviewStore:
    """Reviewed labels of one review namespace (a label set), keyed by (row id, field)."""

    def load(self, namespace: str, row_ids: Iterable[str]) -> list[ReviewLabel]:
        raise NotImplementedError

    def save(self, namespace: str, label: ReviewLabel) -> None:
        raise NotImplementedError

    def delete(self, namespace: str, row_id: str, field: str) -> None:
        raise NotImplementedError


class MemoryReviewStore(ReviewStore):
    """Labels kept in this process (shared by every review opened in it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._labels: dict[tuple[str, str, str], ReviewLabel] = {}

    def load(self, namespace: str, row_ids: Iterable[str]) -> list[ReviewLabel]:
        wanted = set(row_ids)
        with self._lock:
            return [
                label
                for (ns, row_id, _), label in self._labels.items()
                if ns == namespace and row_id in wanted
            ]

    def save(self, namespace: str, label: ReviewLabel) -> None:
        with self._lock:
            self._labels[(namespace, label.row_id, label.field)] = label

    def delete(self, namespace: str, row_id: str, field: str) -> None:
        with self._lock:
            self._labels.pop((namespace, row_id, field), None)


def _index_to_json(index: Any) -> str:
    return json.dumps({"tuple": list(index)} if isinstance(index, tuple) else index, default=str)


def _index_from_json(text: str) -> Any:
    value = json.loads(text)
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(value["tuple"])
    return value


class SQLiteReviewStore(ReviewStore):
    """Labels in the table ``npd_review_labels`` of a SQLite file (the disk cache's file).

    Each read or write opens and closes its own connection: labels come at the pace of a person,
    and nothing is left open when the review object goes away.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with (
            self._lock,
            contextlib.closing(
                sqlite3.connect(self.path, timeout=30, isolation_level=None)
            ) as conn,
        ):
            conn.execute(_SCHEMA)
            yield conn

    def load(self, namespace: str, row_ids: Iterable[str]) -> list[ReviewLabel]:
        ids = list(dict.fromkeys(row_ids))
        found: list[ReviewLabel] = []
        with self._connection() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT row_id, field, row_index, value, source, reviewed_at "
                    f"FROM npd_review_labels WHERE namespace = ? AND row_id IN ({marks})",
                    [namespace, *chunk],
                ).fetchall()
                found.extend(
                    ReviewLabel(r[0], r[1], _index_from_json(r[2]), json.loads(r[3]), r[4], r[5])
                    for r in rows
                )
        return found

    def save(self, namespace: str, label: ReviewLabel) -> None:
        with self._connection() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO npd_review_labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    namespace,
                    label.row_id,
                    label.field,
                    _index_to_json(label.index),
                    json.dumps(label.value),
                    label.source,
                    label.reviewed_at,
                ),
            )

    def delete(self, namespace: str, row_id: str, field: str) -> None:
        with self._connection() as conn:
            conn.execute(
                "DELETE FROM npd_review_labels WHERE namespace = ? AND row_id = ? AND field = ?",
                (namespace, row_id, field),
            )


_MEMORY = MemoryReviewStore()


def open_store(cache: Any) -> ReviewStore:
    """The store for ``cache``: a path or a disk cache -> its file; else the process's memory."""
    path = getattr(cache, "path", None) if not isinstance(cache, (str, Path)) else cache
    if path is None or cache is False:
        return _MEMORY
    return SQLiteReviewStore(path)
