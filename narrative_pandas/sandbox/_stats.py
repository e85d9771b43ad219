"""The sandbox's counters: what the tests read to tell how a client behaved (thread-safe)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

__all__ = ["SandboxStats", "route_template"]


def route_template(path: str) -> str:
    """The route a path belongs to (``/jobs/abc`` -> ``/jobs/{job_id}``); others unchanged."""
    if path.startswith("/jobs/") and path.count("/") == 2 and len(path) > 6:
        return "/jobs/{job_id}"
    return path


class SandboxStats:
    """Counters the tests read; every method is thread-safe.

    ``count(method, path, status)`` filters requests by method, route template
    (``"/model-inference/run"``, ``"/jobs/{job_id}"``, ``"/jobs"``) and answered status; a
    connection the sandbox reset without answering (``outage(status=None)``) counts as status 0.
    """

    def __init__(self, unfinished: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self._unfinished = unfinished
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._jobs_created = 0
        self._duplicates = 0
        self._foreign = 0
        self._listed = 0
        self._peak_unfinished = 0
        self._concurrent = 0
        self._peak_concurrent = 0

    @property
    def requests(self) -> int:
        """Requests answered (any route, any status)."""
        with self._lock:
            return sum(self._counts.values())

    def count(
        self, method: str | None = None, path: str | None = None, status: int | None = None
    ) -> int:
        """Requests answered that match every filter given."""
        want_method = method.upper() if method else None
        want_path = route_template(path) if path else None
        with self._lock:
            return sum(
                n
                for (m, p, s), n in self._counts.items()
                if (want_method is None or m == want_method)
                and (want_path is None or p == want_path)
                and (status is None or s == status)
            )

    @property
    def jobs_created(self) -> int:
        """Jobs created (including those whose POST was then answered 500)."""
        with self._lock:
            return self._jobs_created

    @property
    def duplicate_submissions(self) -> int:
        """Jobs created for a body (tags aside) that an earlier job already had: paid twice."""
        with self._lock:
            return self._duplicates

    @property
    def duplicates(self) -> int:
        """Another name for ``duplicate_submissions`` (the "paid twice" counter)."""
        return self.duplicate_submissions

    @property
    def foreign_jobs(self) -> int:
        """Other users' jobs the sandbox created (``foreign_jobs`` knob, ``add_jobs``); they are
        not counted in ``jobs_created``."""
        with self._lock:
            return self._foreign

    @property
    def records_listed(self) -> int:
        """Job records served by ``GET /jobs`` pages, all pages together (what reading the
        listing costs the service, beyond the request count)."""
        with self._lock:
            return self._listed

    @property
    def peak_unfinished_jobs(self) -> int:
        """Most jobs that were pending or running at the same moment."""
        with self._lock:
            return self._peak_unfinished

    def unfinished_jobs(self) -> int:
        """Jobs pending or running now."""
        return self._unfinished()

    @property
    def concurrent_requests(self) -> int:
        """Requests being answered right now."""
        with self._lock:
            return self._concurrent

    @property
    def peak_concurrent_requests(self) -> int:
        """Most requests being answered at the same moment."""
        with self._lock:
            return self._peak_concurrent

    def reset(self) -> None:
        """Zero the counters; peaks restart from what is unfinished/in flight now."""
        unfinished = self._unfinished()
        with self._lock:
            self._counts.clear()
            self._jobs_created = 0
            self._duplicates = 0
            self._foreign = 0
            self._listed = 0
            self._peak_unfinished = unfinished
            self._peak_concurrent = self._concurrent

    def snapshot(self) -> dict[str, int]:
        """All counters at once, for printing."""
        return {
            "requests": self.requests,
            "jobs_created": self.jobs_created,
            "duplicate_submissions": self.duplicate_submissions,
            "foreign_jobs": self.foreign_jobs,
            "records_listed": self.records_listed,
            "peak_unfinished_jobs": self.peak_unfinished_jobs,
            "unfinished_jobs": self.unfinished_jobs(),
            "peak_concurrent_requests": self.peak_concurrent_requests,
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.snapshot().items())
        return f"SandboxStats({fields})"

    # --- updates from the app and the store ------------------------------------------------
    def request_started(self) -> None:
        with self._lock:
            self._concurrent += 1
            self._peak_concurrent = max(self._peak_concurrent, self._concurrent)

    def request_answered(self, method: str, template: str, status: int) -> None:
        with self._lock:
            self._counts[(method.upper(), template, status)] += 1

    def request_finished(self) -> None:
        with self._lock:
            self._concurrent -= 1

    def listed(self, n: int) -> None:
        with self._lock:
            self._listed += n

    def foreign_created(self, n: int) -> None:
        with self._lock:
            self._foreign += n

    def job_created(self, *, duplicate: bool, unfinished: int) -> None:
        with self._lock:
            self._jobs_created += 1
            self._duplicates += int(duplicate)
            self._peak_unfinished = max(self._peak_unfinished, unfinished)
