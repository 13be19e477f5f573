"""Progress on stderr: one live line on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from runflow_async._dataset.progress import DatasetProgress

__all__ = ["ProgressPrinter"]


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressPrinter:
    """Call it with :class:`DatasetProgress`; call :meth:`close` at the end."""

    def __init__(self, stream: TextIO, *, live: bool, every: float = 5.0) -> None:
        self.stream = stream
        self.live = live
        self.every = every if not live else 0.1
        self._last = 0.0
        self._wrote_live = False

    @staticmethod
    def line(p: DatasetProgress) -> str:
        """The text of one progress line."""
        return (
            f"done {p.done}/{p.total}  failed {p.failed}  in flight {p.in_flight}  "
            f"spent ${p.spent_usd:.4f}  ETA {_eta(p.eta_seconds())}"
        )

    def __call__(self, progress: DatasetProgress) -> None:
        """Show progress, at most every ``every`` seconds."""
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        if self.live:
            self.stream.write("\r\x1b[2K" + self.line(progress))
            self._wrote_live = True
        else:
            self.stream.write(self.line(progress) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live line."""
        if self._wrote_live:
            self.stream.write("\n")
            self.stream.flush()
