"""Why rows have no answer, summarised: identical reasons counted once, never a job id.

Every place that sums up a run's failures (the warnings, ``RowsFailedError``, the widget's list,
the terminal's last lines) goes through :func:`group_reasons` and :func:`summarise_reasons`, so a
cancel of 2,000 rows reads "1,893 x not submitted (cancelled); 31 x still running when
cancelled" instead of 31 sentences that differ only by a job id (ids live in
``narrative_job_id``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

__all__ = ["group_reasons", "reason_key", "summarise_reasons"]

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_JOB_ID = re.compile(rf"\s*\b(?:job(?:_id)?[\s:=]+)?{_UUID}\b")
_EMPTY_PARENS = re.compile(r"\(\s*[;,:]?\s*\)")
_SPACES = re.compile(r"\s+")


def reason_key(reason: object) -> str:
    """``reason`` on one line, with any job id taken out (the same reason for every job)."""
    text = _EMPTY_PARENS.sub("", _JOB_ID.sub("", str(reason)))
    return _SPACES.sub(" ", text).strip(" ;,") or "(no reason given)"


def group_reasons(reasons: Iterable[tuple[object, int] | object]) -> list[tuple[str, int]]:
    """Identical reasons counted once, most rows first (ties: first seen first).

    Items are reasons (one row each) or ``(reason, rows)`` pairs.
    """
    counts: Counter[str] = Counter()
    for item in reasons:
        if isinstance(item, tuple):
            reason, rows = item
        else:
            reason, rows = item, 1
        counts[reason_key(reason)] += int(rows)
    return counts.most_common()


def summarise_reasons(groups: list[tuple[str, int]], *, limit: int = 3) -> str:
    """``"1,893 x not submitted (cancelled); 31 x still running when cancelled"``."""
    shown = "; ".join(f"{rows:,} x {reason}" for reason, rows in groups[:limit])
    rest = len(groups) - limit
    if rest > 0:
        shown += f"; and {rest} other reason{'s' if rest > 1 else ''}"
    return shown
