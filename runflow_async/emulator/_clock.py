"""The emulator's scaled clock: no background task ever ticks, every read asks the clock.

An emulated instant is a float: emulated seconds since :data:`EPOCH`. A new clock
starts at its anchor, by default the real wall time when it is made (so
``created_at`` is near now), and then advances ``1 / time_scale`` times as fast as
real time. Pass ``EPOCH`` as the anchor for the former fixed start.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

__all__ = ["EPOCH", "EmulatedClock"]

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
"""Wall time of the emulated instant 0 (the former fixed start of every emulator)."""

_EPOCH_SECONDS = EPOCH.timestamp()


@lru_cache(maxsize=4096)
def _whole_second(days: int, seconds: int) -> str:
    # "2026-01-01T00:00:05": the costly part of a timestamp, shared by nearby instants.
    return (EPOCH + timedelta(days=days, seconds=seconds)).isoformat(timespec="seconds")[:19]


class EmulatedClock:
    """Monotonic emulated time: the anchor plus real elapsed seconds divided by ``time_scale``.

    Args:
        time_scale: Real seconds per emulated second.
        anchor: Wall time the clock starts at (an aware datetime); ``None`` for
            the real time now.
    """

    __slots__ = ("_offset", "_start", "_time_scale", "origin")

    def __init__(self, time_scale: float, anchor: datetime | None = None) -> None:
        self._time_scale = time_scale
        start = datetime.now(UTC) if anchor is None else anchor
        self.origin = (start - EPOCH).total_seconds()
        """The emulated instant the clock started at."""
        self._start = time.monotonic()
        self._offset = self.origin

    def now(self) -> float:
        """Return the emulated instant now (emulated seconds since :data:`EPOCH`)."""
        return (time.monotonic() - self._start) / self._time_scale + self._offset

    def since_start(self, emulated: float) -> float:
        """Return emulated seconds from the clock's start to the instant ``emulated``."""
        return emulated - self.origin

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` emulated seconds into the future.

        Raises:
            ValueError: If ``seconds`` is negative (the clock is monotonic).
        """
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got {seconds}")
        self._offset += seconds

    def real_seconds(self, emulated: float) -> float:
        """Return how many real seconds ``emulated`` seconds last."""
        return emulated * self._time_scale

    @staticmethod
    def epoch_seconds(emulated: float) -> float:
        """Return the Unix time of the emulated instant ``emulated``."""
        return _EPOCH_SECONDS + emulated

    @staticmethod
    def iso(emulated: float) -> str:
        """Return the emulated instant as ISO 8601 (microseconds, ``+00:00`` offset)."""
        # Exactly ``(EPOCH + delta).isoformat(timespec="microseconds")``, faster.
        delta = timedelta(seconds=emulated)
        return f"{_whole_second(delta.days, delta.seconds)}.{delta.microseconds:06d}+00:00"
