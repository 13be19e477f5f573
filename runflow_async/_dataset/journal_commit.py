"""Group commit for the journal: marks buffered in one open transaction, committed together.

See :mod:`runflow_async._dataset.journal` for what waits, what commits at once,
and what a ``kill -9`` can lose.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from runflow_async._dataset.journal_file import JournalError

__all__ = ["GROUP_ENTRIES", "GROUP_SECONDS", "GroupCommit"]

GROUP_ENTRIES = 64
"""Buffered marks that make :meth:`GroupCommit.grouped` commit at once."""
GROUP_SECONDS = 0.05
"""Real seconds a buffered mark waits at most (:meth:`GroupCommit.commit_due`, on a timer)."""


class GroupCommit:
    """A journal connection whose writes may wait for one commit (inside :meth:`grouped`).

    Attributes:
        path: The SQLite file.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._grouping = False
        self._buffered = 0  # marks executed in the open transaction, not committed yet
        self._since = 0.0  # when that transaction began (time.monotonic)

    @contextmanager
    def grouped(self) -> Iterator[None]:
        """Group commit inside the block (see the module doc); all committed when it ends."""
        self.commit()
        self._grouping = True
        try:
            yield
        finally:
            self._grouping = False
            self.commit()

    def commit(self) -> None:
        """Commit the buffered marks now (none buffered: nothing happens).

        Raises:
            JournalError: SQLite rolled the open transaction back (a failed
                write, say the disk full): the buffered marks are lost, and
                the run must stop like at any journal that cannot be written.
        """
        buffered, self._buffered = self._buffered, 0
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        elif buffered:
            raise JournalError(
                f"{self.path}: {buffered} change(s) were rolled back before their commit"
            )

    def commit_due(self) -> None:
        """Commit if the oldest buffered mark has waited ``GROUP_SECONDS`` (real time)."""
        if self._buffered and time.monotonic() - self._since >= GROUP_SECONDS:
            self.commit()

    def _execute(self, sql: str, args: Sequence[object], *, defer: bool = True) -> sqlite3.Cursor:
        """Run one write; commit it now unless ``defer`` (and grouped: see :meth:`grouped`)."""
        if self._grouping and not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
            self._since = time.monotonic()
        cursor = self._conn.execute(sql, args)
        if self._conn.in_transaction:
            self._buffered += 1
        if not defer or self._buffered >= GROUP_ENTRIES:
            self.commit()
        return cursor
