"""Progress per variant of a comparison: the run's phases, counted once more for each variant.

A ``compare`` run lays every variant's rows end to end in one run (``_variants.combine``), and
the engine reports each request's rows moving between phases together with the request's key.
:class:`VariantBreakdown` knows which variant's rows each key stands for, so the tracker can keep
one set of counts per variant next to its totals; the widget, the static summary, the text end
line and every :class:`~narrative_pandas.ProgressEvent`'s snapshot then show one row of counts
per variant. A key two variants share (the very same request, say the same model listed twice)
splits its rows between them; its tokens count for each (each variant's answer cost them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._progress import Phase

__all__ = ["SKIPPED_KEY", "VariantBreakdown", "VariantCounts"]

SKIPPED_KEY = "skipped rows"
"""The key under which rows without a request (``missing="skip"``) move; never a request key
(those are hex digests)."""

_PHASES = ("queued", "pending", "running", "completed", "failed", "cached", "stopped")


@dataclass(frozen=True)
class VariantCounts:
    """One variant's rows per phase and its tokens, at one moment (see ``ProgressSnapshot``)."""

    name: str
    total: int
    queued: int
    pending: int
    running: int
    completed: int
    failed: int
    cached: int
    stopped: int
    tokens: int

    @property
    def ended(self) -> int:
        """Rows seen through: a result or a failure (completed + failed + cached)."""
        return self.completed + self.failed + self.cached

    @property
    def in_flight(self) -> int:
        """Rows submitted and not finished yet (pending + running)."""
        return self.pending + self.running

    @property
    def fraction(self) -> float:
        """Share of the variant's rows seen through (1.0 for an empty variant)."""
        return self.ended / self.total if self.total else 1.0


class VariantBreakdown:
    """Counts per (variant, phase), moved by request key; not thread-safe (the tracker locks).

    Parameters
    ----------
    names
        The variants, in display order.
    row_variants
        For every row of the run, in order: its request key (``None`` for a skipped row) and the
        index of its variant in ``names``.
    """

    def __init__(self, names: Sequence[str], row_variants: Sequence[tuple[str | None, int]]):
        self.names = tuple(names)
        shares: dict[str, Counter[int]] = {}
        totals = [0] * len(self.names)
        for key, variant in row_variants:
            shares.setdefault(SKIPPED_KEY if key is None else key, Counter())[variant] += 1
            totals[variant] += 1
        # Most keys belong to one variant: keep a plain (variant, rows) pair list per key.
        self._shares = {key: tuple(counter.items()) for key, counter in shares.items()}
        self._totals = totals
        self._counts = [dict.fromkeys(_PHASES, 0) for _ in self.names]
        for variant, total in enumerate(totals):
            self._counts[variant]["queued"] = total
        self._tokens = [0] * len(self.names)

    @classmethod
    def of_blocks(
        cls, names: Sequence[str], block_variants: Sequence[int], row_keys: Sequence[str | None]
    ) -> VariantBreakdown:
        """The breakdown of a run made of equal blocks of rows, ``block_variants[b]`` being the
        variant (index into ``names``) of block ``b``."""
        size = len(row_keys) // len(block_variants) if block_variants else 0
        rows = [(key, block_variants[i // size]) for i, key in enumerate(row_keys)] if size else []
        return cls(names, rows)

    def move(self, key: str, rows: int, old: Phase, new: Phase) -> None:
        """Move the rows of ``key`` (``rows`` of them across its variants) from ``old`` to ``new``.

        ``rows`` is the request's row count (what the engine moves); a key this breakdown does
        not know is ignored (the totals still move).
        """
        shares = self._shares.get(key)
        if shares is None:
            return
        if len(shares) == 1:
            counts = self._counts[shares[0][0]]
            counts[old] -= rows
            counts[new] += rows
            return
        for variant, share in shares:
            counts = self._counts[variant]
            counts[old] -= share
            counts[new] += share

    def add_tokens(self, key: str, tokens: int) -> None:
        """Add a job's tokens to each variant its key belongs to."""
        for variant, _ in self._shares.get(key, ()):
            self._tokens[variant] += tokens

    def counts(self, *, stopped_as_failed: bool = False) -> tuple[VariantCounts, ...]:
        """The counts now; ``stopped_as_failed`` when a run-level error stopped the rest (the
        tracker's totals count those rows as failed too)."""
        out = []
        for name, total, counts, tokens in zip(
            self.names, self._totals, self._counts, self._tokens, strict=True
        ):
            failed, stopped = counts["failed"], counts["stopped"]
            if stopped_as_failed:
                failed, stopped = failed + stopped, 0
            out.append(
                VariantCounts(
                    name=name,
                    total=total,
                    queued=counts["queued"],
                    pending=counts["pending"],
                    running=counts["running"],
                    completed=counts["completed"],
                    failed=failed,
                    cached=counts["cached"],
                    stopped=stopped,
                    tokens=tokens,
                )
            )
        return tuple(out)
