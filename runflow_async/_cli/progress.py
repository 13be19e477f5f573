"""Progress on stderr: one live tqdm line on a terminal, a plain line every few seconds otherwise.

The live line is drawn by tqdm (carriage return, erasing, the terminal's width
read at every redraw), laid out here to fit that width: a bar where there is
room, then fields dropped least useful first, so it never wraps. Both forms
show the same fields (:func:`fields`): done, failed and pending out of the
input, the runs in flight, this session's rate, an ETA at that rate for the
items still to do, and what the input's items have spent across every session
(the figure the final summary line shows).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TextIO

from tqdm import tqdm

from runflow_async._dataset.progress import DatasetProgress

__all__ = ["ProgressPrinter", "fields", "money"]

Clock = Callable[[], float]

# Display order; then which fields go first when the line does not fit.
_ORDER = ("done", "failed", "pending", "running", "rate", "eta", "spent")
_DROP = ("running", "rate", "pending", "failed")  # done, ETA and spent stay longest
_SEP = "  "
_MIN_BAR = 10  # columns: a narrower bar says nothing
_SHORT = "short_"  # the short form of a field, for narrow terminals
_KEY = "rf_"  # our fields' names in tqdm's format (apart from its own: rate, n, ...)


def money(usd: Decimal) -> str:
    """``usd`` as the summary line shows it: to the $0.000001 costs are rounded to."""
    return f"${usd:.6f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return str(tqdm.format_interval(seconds))


def _rate(per_second: float | None) -> str:
    if per_second is None:
        return "?/s"
    if per_second < 1:
        return f"{per_second * 60:.1f}/min"
    return f"{per_second:.1f}/s"


def fields(p: DatasetProgress, now: float) -> dict[str, str]:
    """The texts of the display's fields, by name (in display order), and short forms."""
    return {
        "done": f"{p.done}/{p.total} done",
        "failed": f"{p.failed} failed",
        "pending": f"{p.pending} pending",
        "running": f"{p.in_flight} running",
        "rate": _rate(p.rate(now)),
        "eta": f"ETA {_duration(p.eta_seconds(now))}",
        "spent": f"{money(p.spent_usd)} spent",
        _SHORT + "done": f"{p.done}/{p.total}",
        _SHORT + "spent": money(p.spent_usd),
    }


def layout(texts: dict[str, str], width: int | None) -> str:
    """A tqdm ``bar_format`` of the fields that fit in ``width`` columns (all when unknown).

    Fields are dropped least useful first, then written short (``12/40``,
    ``$0.01``). The fields are substituted by tqdm (never parsed as a format);
    the bar fills what is left when at least ``_MIN_BAR`` columns are.
    """

    def length(names: list[str], short: bool) -> int:
        size = sum(len(texts[_SHORT + k if short and _SHORT + k in texts else k]) for k in names)
        return size + len(_SEP) * (len(names) - 1)

    def fmt(names: list[str], short: bool = False) -> str:
        keys = [_SHORT + k if short and _SHORT + k in texts else k for k in names]
        return _SEP.join("{%s%s}" % (_KEY, k) for k in keys)  # noqa: UP031 - braces

    every = list(_ORDER)
    if width is None:
        return fmt(every)
    if length(every, False) + len(_SEP) + 2 + _MIN_BAR <= width:  # "|" bar "|" after "done"
        return fmt(every[:1]) + " |{bar}|" + _SEP + fmt(every[1:])
    for short in (False, True):
        for level in range(len(_DROP) + 1):
            keep = [k for k in every if k not in _DROP[:level]]
            if length(keep, short) <= width:
                return fmt(keep, short)
    return fmt(["done", "eta"], short=True)  # tqdm trims what still does not fit


class _LiveBar(tqdm):  # type: ignore[misc]  # tqdm ships no type information
    """A tqdm line showing a :class:`DatasetProgress` on its own clock."""

    monitor_interval = 0  # no monitor thread: the line is redrawn on our calls only

    def __init__(
        self, progress: DatasetProgress, stream: TextIO, width: int | None, clock: Clock
    ) -> None:
        self.progress = progress
        self.clock = clock
        super().__init__(
            total=progress.total,
            initial=progress.done + progress.failed,
            file=stream,
            # One column spare: a line exactly as wide as the terminal wraps on some
            # (tqdm keeps that column when it reads the terminal's width itself).
            ncols=None if width is None else max(1, width - 1),
            dynamic_ncols=width is None,  # the terminal's width, at every redraw
            position=0,  # the one line: never moved to by terminal codes
            mininterval=0,
            leave=True,
            ascii=True,
        )

    @property
    def format_dict(self) -> dict[str, Any]:
        """The values of tqdm and ours: the counts, this session's times, the fitting layout."""
        values: dict[str, Any] = super().format_dict
        p, now = self.progress, self.clock()
        texts = fields(p, now)
        values.update(
            n=p.done + p.failed,
            total=p.total,
            initial=p.done_before + p.failed_before,
            elapsed=max(0.0, now - p.started),
            bar_format=layout(texts, values["ncols"]),  # None: not known
            **{_KEY + k: v for k, v in texts.items()},
        )
        return values

    def show(self, progress: DatasetProgress) -> None:
        """Redraw with ``progress``."""
        self.progress = progress
        self.refresh()


class ProgressPrinter:
    """Call it with :class:`DatasetProgress`; call :meth:`close` at the end.

    Args:
        stream: Where to write (stderr).
        live: One line redrawn in place (a terminal), else plain lines.
        every: Seconds between redraws (default 0.1 live, 5 plain).
        width: Columns of the live line (default: the terminal's, as it changes).
        clock: The clock of the progress' ``started`` (``time.monotonic``).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool,
        every: float | None = None,
        width: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.stream = stream
        self.live = live
        self.every = every if every is not None else 0.1 if live else 5.0
        self.width = width
        self.clock = clock
        self._last: float | None = None
        self._bar: _LiveBar | None = None

    @staticmethod
    def line(p: DatasetProgress, now: float | None = None) -> str:
        """The text of one plain progress line (every field)."""
        texts = fields(p, time.monotonic() if now is None else now)
        return _SEP.join(texts[k] for k in _ORDER)

    def __call__(self, progress: DatasetProgress) -> None:
        """Show progress, at most every ``every`` seconds."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            if self._bar is not None:
                self._bar.progress = progress  # close() shows the latest
            return
        self._last = now
        if not self.live:
            self.stream.write(self.line(progress, now) + "\n")
            self.stream.flush()
        elif self._bar is None:
            self._bar = _LiveBar(progress, self.stream, self.width, self.clock)
        else:
            self._bar.show(progress)

    def close(self) -> None:
        """End the live line, showing the last progress it was given."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
