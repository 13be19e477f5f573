"""Learned run durations, and the per-run poll schedule they give."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterator

from runflow_async._core.config import PollPolicy
from runflow_async._core.models import Run

__all__ = ["DurationStats"]


class DurationStats:
    """Recent run durations (server clock), to time polls near the expected finish.

    Args:
        default: Median assumed before any run has finished (seconds).
        keep: How many recent durations to remember.
    """

    def __init__(self, default: float = 2.0, keep: int = 256) -> None:
        self._recent: deque[float] = deque(maxlen=keep)
        self._median = default
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
                self._median = statistics.median(self._recent)
                self._since_update = 0

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
        yield max(median - elapsed, policy.initial_interval * 0.2)
        interval = max(0.1, median * 0.15)
        while True:
            yield interval
            interval = min(policy.max_interval, interval * 1.25)
