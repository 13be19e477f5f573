"""The ledger: 45 bytes per run ever created, kept when the run itself is forgotten.

It answers ``GET /_emulator/report``: when each run was created, how long it was
drawn to last, when a response first showed it terminal ("noticed"), which is
what a benchmark needs to measure how late a client learns that runs finished,
and how many requests named it ("reads"), which shows what that cost in polling.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from typing import Any

from runflow_async.emulator._clock import EmulatedClock
from runflow_async.emulator._runs import RunRecord, phase

__all__ = ["RunLedger"]

_UNSEEN = -math.inf  # no emulated instant
_ID_BYTES = 16


class RunLedger:
    """Per-run times and read counts in flat arrays indexed by ``seq``."""

    __slots__ = ("_background", "_created", "_duration", "_failed", "_ids", "_noticed", "_reads")

    def __init__(self) -> None:
        self._ids = bytearray()
        self._created = array("d")
        self._duration = array("d")
        self._noticed = array("d")
        self._failed = bytearray()
        self._reads = array("I")
        self._background = bytearray()

    def add(self, run: RunRecord) -> None:
        """Record a new run; its ``seq`` must be the number of runs recorded so far."""
        self._ids += bytes.fromhex(run.id.replace("-", ""))
        self._created.append(run.created)
        self._duration.append(run.duration)
        self._noticed.append(_UNSEEN)
        self._failed.append(run.failure is not None)
        self._reads.append(0)
        self._background.append(run.background)

    def first_created(self, text: str, *, after: bool = False) -> int:
        """Return the first ``seq`` whose ``created_at`` is at or (``after``) past ``text``.

        ``created_at`` (ISO 8601, one fixed width) never decreases with ``seq``:
        runs are stored in the order of their creation time, late commits too.
        """
        find = bisect_right if after else bisect_left
        return find(self._created, text, key=EmulatedClock.iso)

    def notice(self, seq: int, now: float) -> None:
        """Note that a response showed run ``seq`` terminal at ``now``; the first one counts."""
        if self._noticed[seq] == _UNSEEN:
            self._noticed[seq] = now

    def read(self, seq: int) -> None:
        """Count one request that named run ``seq`` (a get by id, or an ``id:`` term of a list)."""
        self._reads[seq] += 1

    def rows(
        self, now: float, since: int = 0, limit: int | None = None, origin: float = 0.0
    ) -> list[dict[str, Any]]:
        """Return runs from creation index ``since`` on (``limit`` at most), as of ``now``.

        Each row holds ``id``, ``created``, ``duration``, ``end`` and ``noticed``
        (emulated seconds since the instant ``origin``, the clock's start;
        ``noticed`` ``None`` until a response showed the run
        terminal), ``status`` (the terminal status, or the current one) and
        ``reads`` (how many requests named the run; see :meth:`read`). Runs of
        another client (``RunRecord.background``) are left out: a page may hold
        fewer than ``limit`` rows, the next starts at ``since + limit``.
        """
        ids, created, duration, noticed, failed, reads = (
            self._ids,
            self._created,
            self._duration,
            self._noticed,
            self._failed,
            self._reads,
        )
        rows: list[dict[str, Any]] = []
        first = max(since, 0)
        stop = len(created) if limit is None else min(len(created), first + max(limit, 0))
        background = self._background
        for seq in range(first, stop):
            if background[seq]:
                continue
            start, length, seen = created[seq], duration[seq], noticed[seq]
            h = ids[seq * _ID_BYTES : (seq + 1) * _ID_BYTES].hex()
            rows.append(
                {
                    "id": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
                    "created": start - origin,
                    "duration": length,
                    "end": start + length - origin,
                    "status": phase(start, length, bool(failed[seq]), now),
                    "noticed": None if seen == _UNSEEN else seen - origin,
                    "reads": reads[seq],
                }
            )
        return rows
