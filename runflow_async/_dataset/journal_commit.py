"""Group commit for the journal: later marks held in Python, written with the next commit.

See :mod:`runflow_async._dataset.journal` for what waits, what commits at once,
and what a ``kill -9`` can lose. Every SQLite call gives up the GIL (taking it
back behind the download threads costs 100-400 us), so the marks waiting for a
commit are not executed one by one in an open transaction: each key's changes
are merged in a small dict, checked in Python against the state the journal
knows the item has (an invalid transition is refused at the call), and written
together, with the write-ahead mark that commits them, in ONE autocommitted
``UPDATE ... FROM (VALUES ...)`` statement: one call, atomic, for any number of
items.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from runflow_async._dataset.journal_file import JournalError

__all__ = [
    "COLUMNS",
    "GROUP_ENTRIES",
    "GROUP_SECONDS",
    "GroupCommit",
    "JournalStateError",
    "Pending",
    "run_sets",
]

GROUP_ENTRIES = 64
"""Items with waiting marks that make :meth:`GroupCommit.grouped` commit at once."""
GROUP_SECONDS = 0.05
"""Real seconds a waiting mark waits at most (:meth:`GroupCommit.commit_due`, on a timer)."""


class JournalStateError(JournalError, KeyError):
    """No such item, or the item's state does not allow the change."""

    def __str__(self) -> str:
        return str(self.args[0])


COLUMNS = (
    "run_id", "cost_usd", "files", "reserved_usd", "error_type", "error", "batch_id", "shard"
)  # fmt: skip
"""The columns a waiting mark may set (besides the state, ``client_ref`` and ``attempts``)."""
_ROW = f"({', '.join('?' * (6 + len(COLUMNS)))})"
_SETS = ", ".join(
    f"{c} = CASE WHEN v.m & {1 << i} THEN v.{c} ELSE items.{c} END" for i, c in enumerate(COLUMNS)
)


def run_sets(run_id: str, batch_id: str | None) -> dict[str, object]:
    """What a mark of an item's run sets: its id, and its batch's when it has one."""
    return {"run_id": run_id} if batch_id is None else {"run_id": run_id, "batch_id": batch_id}


@dataclass(slots=True)
class Pending:
    """One item's merged changes, not written yet.

    Attributes:
        sources: The states (``,a,b,``) the row must be in for them to apply:
            the state the journal knew, or a write-ahead mark's allowed ones.
        state: The state they move it to.
        sets: Column -> the value it takes (as stored).
        ref: A ``client_ref`` to store if it has none.
        inc: Attempts to count up.
    """

    sources: str
    state: str
    sets: dict[str, object] = field(default_factory=dict)
    ref: str | None = None
    inc: int = 0


class GroupCommit:
    """A journal connection whose marks may wait for one commit (inside :meth:`grouped`).

    Attributes:
        path: The SQLite file.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._grouping = False
        self._pending: dict[str, Pending] = {}  # key -> its changes waiting for a commit
        self._known: dict[str, str] = {}  # key -> its committed state, for unfinished items
        self._since = 0.0  # when the oldest pending change was made (time.monotonic)

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
        """Write the waiting marks now, in one statement (none waiting: nothing happens).

        Raises:
            JournalError: SQLite refused or rolled the statement back (a failed
                write, say the disk full): the waiting marks are lost, and the
                run must stop like at any journal that cannot be written.
        """
        if self._pending:
            self._flush(None)

    def commit_due(self) -> None:
        """Commit if the oldest waiting mark has waited ``GROUP_SECONDS`` (real time)."""
        if self._pending and time.monotonic() - self._since >= GROUP_SECONDS:
            self.commit()

    def _execute(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        """Run one write at once (autocommitted), after the waiting marks."""
        self.commit()
        return self._conn.execute(sql, args)

    def _stage(self, key: str, change: Pending, *, now: bool = False) -> None:
        """Merge ``change`` (checked by the caller) into ``key``'s waiting changes.

        ``now``: a write-ahead mark, committed (with everything waiting) before
        this returns. Outside :meth:`grouped` every change is committed at once.
        """
        entry = self._pending.get(key)
        if entry is None:
            if not self._pending:
                self._since = time.monotonic()
            self._pending[key] = change
        else:
            entry.state = change.state
            entry.sets.update(change.sets)
            entry.ref = entry.ref or change.ref
            entry.inc += change.inc
        if now:
            self._flush(key)
        elif not self._grouping or len(self._pending) >= GROUP_ENTRIES:
            self.commit()

    def _flush(self, checked: str | None) -> None:
        """One statement writes every waiting change; ``checked``'s must have applied."""
        pending, self._pending = self._pending, {}
        args: list[object] = []
        for key, p in pending.items():
            mask = sum(1 << i for i, c in enumerate(COLUMNS) if c in p.sets)
            args += (key, p.state, p.sources, p.inc, p.ref, mask)
            args += (p.sets.get(c) for c in COLUMNS)
        sql = (
            "WITH v(key, state, sources, inc, ref, m, "  # noqa: S608 - ours
            f"{', '.join(COLUMNS)}) AS (VALUES {', '.join([_ROW] * len(pending))})"
            " UPDATE items SET state = v.state, updated_at = ?, attempts = items.attempts + v.inc,"
            f" client_ref = coalesce(items.client_ref, v.ref), {_SETS} FROM v"
            " WHERE items.key = v.key AND instr(v.sources, ',' || items.state || ',') > 0"
        )
        before = self._conn.total_changes
        try:
            self._conn.execute(sql, (*args, datetime.now(UTC).isoformat(timespec="milliseconds")))
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"{self.path}: {len(pending)} change(s) were rolled back before their commit"
            ) from exc
        applied = self._conn.total_changes - before
        for key, p in pending.items():
            self._known[key] = p.state
        if applied < len(pending):
            self._refused(pending, checked)
        for key, p in pending.items():
            if p.state in ("succeeded", "failed"):  # finished: read from the file again
                del self._known[key]

    def _refused(self, pending: dict[str, Pending], checked: str | None) -> None:
        """Some changes did not apply: which (read back), and why that is an error."""
        for key in pending:
            self._known.pop(key, None)
        if checked is not None:
            row = self._conn.execute("SELECT state FROM items WHERE key = ?", (checked,)).fetchone()
            if row is None:
                raise JournalStateError(f"no item {checked!r} in the journal")
            if row[0] != pending[checked].state:
                raise JournalStateError(
                    f"item {checked!r} is {row[0]}; it cannot become {pending[checked].state}"
                )
        raise JournalError(f"{self.path}: an item changed under the journal; changes refused")
