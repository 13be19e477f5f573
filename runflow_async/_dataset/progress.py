"""Live counts of a dataset run, for a progress display."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["DatasetProgress"]


@dataclass
class DatasetProgress:
    """Live counts, for a progress display."""

    total: int
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    spent_usd: Decimal = Decimal(0)
    started: float = field(default_factory=time.monotonic)

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far, or ``None`` before anything finished."""
        finished = self.done + self.failed
        if finished == 0:
            return None
        rate = finished / max(1e-9, time.monotonic() - self.started)
        return max(0.0, (self.total - finished) / rate)
