"""Learned run durations, and the per-run poll schedule they give.

Before enough runs have finished, a run is read first at the assumed median
and then at growing gaps. Once :data:`LEARNED_AFTER` durations are known, the
reads fall at the learned quantiles (:data:`QUANTILES`: the median, then
where 70%, 85%, ... of recent runs had ended), so that one read or two notice
most runs, and the gaps then grow from the last one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from runflow_async._core.config import PollPolicy
from runflow_async._core.models import Run

__all__ = ["LEARNED_AFTER", "QUANTILES", "DurationStats"]

QUANTILES = (0.5, 0.7, 0.85, 0.93, 0.97)
"""Where in the learned distribution a per-run poll reads (shares of runs ended by then)."""

LEARNED_AFTER = 16
"""Durations known before the schedule follows the learned quantiles."""

_MIN_GAP = 0.1  # seconds between two reads of one run, at the least


class DurationStats:
    """Recent run durations (server clock), to time polls near the expected finish.

    Args:
        default: Median assumed before any run has finished (seconds).
        keep: How many recent durations to remember.
    """

    def __init__(self, default: float = 2.0, keep: int = 256) -> None:
        self._recent: deque[float] = deque(maxlen=keep)
        self._median = default
        self._marks: tuple[float, ...] = ()
        self._since_update = 0

    def add(self, run: Run) -> None:
        """Learn from a finished run (needs ``created_at`` and ``completed_at``)."""
        if run.created_at is None or run.completed_at is None:
            return
        seconds = (run.completed_at - run.created_at).total_seconds()
        if seconds > 0:
            self._recent.append(seconds)
            self._since_update += 1
            # Re-sorting 256 floats on every run is waste; every 16th is plenty.
            if self._since_update >= 16 or len(self._recent) < 16:
                self._update()
                self._since_update = 0

    def _update(self) -> None:
        ordered = sorted(self._recent)
        n = len(ordered)
        mid = n // 2
        self._median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        if n >= LEARNED_AFTER:
            self._marks = tuple(ordered[min(n - 1, int(q * n))] for q in QUANTILES)

    @property
    def median(self) -> float:
        """The median duration in seconds."""
        return self._median

    def schedule(self, policy: PollPolicy, *, elapsed: float = 0.0) -> Iterator[float]:
        """Gaps for polling one run: first near its expected finish, then growing.

        Args:
            policy: ``max_interval`` caps the gaps.
            elapsed: Seconds the run has already been going.
        """
        median = self._median
        interval = max(_MIN_GAP, median * 0.15)
        at, floor = elapsed, policy.initial_interval * 0.2
        for mark in self._marks or (median,):
            if mark <= at and self._marks:
                continue  # already past this quantile: on to the next
            gap = max(mark - at, floor)
            yield gap
            at, floor = at + gap, _MIN_GAP
        while True:
            yield interval
            interval = min(policy.max_interval, interval * 1.25)
