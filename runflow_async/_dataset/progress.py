"""Live counts of a dataset run, for a progress display.

The counts cover the items of this input across every session of the folder
(``done``, ``failed``, ``spent_usd``: what the final summary shows), while the
rate and the ETA are this session's own: items finished in earlier sessions
(``done_before``, ``failed_before``) neither speed up the rate nor shorten the
ETA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from runflow_async._dataset.outputs import summarize

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from runflow_async._dataset.input import DatasetItem
    from runflow_async._dataset.journal import Journal

__all__ = ["DatasetProgress", "session_progress"]


@dataclass
class DatasetProgress:
    """Live counts, for a progress display.

    Attributes:
        total: The items of this input.
        done: Succeeded, earlier sessions included.
        failed: Failed, earlier sessions included.
        in_flight: Given to the engine and without an outcome yet.
        spent_usd: What this input's items count as spent, earlier sessions
            included (as the summary counts it).
        done_before: Of ``done``, those that succeeded before this session.
        failed_before: Of ``failed``, those that failed before this session.
        deferred: Items this session ended without finishing them (not
            submitted, outcome unknown, left to collect): a later run's work.
        started: When this session started, on the clock of ``time.monotonic``
            (or whichever clock the display passes to the methods below).
    """

    total: int
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    spent_usd: Decimal = Decimal(0)
    done_before: int = 0
    failed_before: int = 0
    deferred: int = 0
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def resumed(
        cls, total: int, *, done: int, failed: int, spent_usd: Decimal, started: float | None = None
    ) -> DatasetProgress:
        """Progress of a session that starts where earlier ones left the folder."""
        return cls(
            total=total,
            done=done,
            failed=failed,
            spent_usd=spent_usd,
            done_before=done,
            failed_before=failed,
            started=time.monotonic() if started is None else started,
        )

    @property
    def pending(self) -> int:
        """Items not finished (neither succeeded nor failed), as the summary counts them."""
        return max(0, self.total - self.done - self.failed)

    @property
    def finished_now(self) -> int:
        """Items this session finished (succeeded or failed)."""
        return max(0, self.done + self.failed - self.done_before - self.failed_before)

    @property
    def to_do(self) -> int:
        """Items this session may still finish."""
        return max(0, self.pending - self.deferred)

    def rate(self, now: float | None = None) -> float | None:
        """Items per second this session, or ``None`` before it finished any."""
        if self.finished_now == 0:
            return None
        elapsed = (time.monotonic() if now is None else now) - self.started
        return self.finished_now / max(1e-9, elapsed)

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left for the items still to do at this session's rate (``None``: unknown)."""
        rate = self.rate(now)
        if rate is None:
            return None
        return self.to_do / rate


def session_progress(
    out_dir: Path, journal: Journal, items: Sequence[DatasetItem]
) -> DatasetProgress:
    """Progress at the start of a session: where earlier sessions left ``items``.

    Counted by :func:`summarize` itself, so the live counts and ``spent`` start
    from what the final summary line counts, and stay consistent with it.
    """
    before = summarize(out_dir, journal, items, images=0)
    return DatasetProgress.resumed(
        len(items), done=before.succeeded, failed=before.failed, spent_usd=before.spent_usd
    )
