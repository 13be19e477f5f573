"""Reading the journal: items by key, in bulk, or streamed in input order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields

from runflow_async._dataset.journal_commit import GroupCommit
from runflow_async._dataset.journal_file import JournalError
from runflow_async._dataset.journal_item import ItemState, JournalItem, item_from_row

__all__ = ["JournalReads", "JournalStateError"]


class JournalStateError(JournalError, KeyError):
    """No such item, or the item's state does not allow the change."""

    def __str__(self) -> str:
        return str(self.args[0])


_SELECT = f"SELECT {', '.join(f.name for f in fields(JournalItem))} FROM items"  # noqa: S608
_GET_MANY = 500  # keys per SELECT of get_many (SQLite allows 32,766 parameters)


class JournalReads(GroupCommit):
    """The journal's reads (they see its buffered marks: one connection)."""

    def get(self, key: str) -> JournalItem | None:
        """Return the item recorded under ``key``, or ``None``."""
        row = self._conn.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
        return None if row is None else item_from_row(row)

    def get_many(self, keys: Iterable[str]) -> dict[str, JournalItem]:
        """Return the items recorded under ``keys`` (absent keys left out), a few SELECTs."""
        found: dict[str, JournalItem] = {}
        wanted = list(keys)
        for start in range(0, len(wanted), _GET_MANY):
            chunk = wanted[start : start + _GET_MANY]
            sql = f"{_SELECT} WHERE key IN ({', '.join('?' * len(chunk))})"
            for row in self._conn.execute(sql, chunk):
                item = item_from_row(row)
                found[item.key] = item
        return found

    def items(self, *, states: Iterable[ItemState] | None = None) -> list[JournalItem]:
        """Return the items, in input order, optionally only those in ``states``."""
        return list(self.iter_items(states=states))

    def iter_items(self, *, states: Iterable[ItemState] | None = None) -> Iterator[JournalItem]:
        """Yield the items, in input order (optionally only those in ``states``), one at a time.

        For scans of a large journal in little memory; write nothing to the
        journal until it is exhausted.
        """
        sql, args = _SELECT, list[str]()
        if states is not None:
            args = [ItemState(s).value for s in states]
            sql += f" WHERE state IN ({', '.join('?' * len(args))})"
        for row in self._conn.execute(f"{sql} ORDER BY ordinal, key", args):
            yield item_from_row(row)

    def _get(self, key: str) -> JournalItem:
        item = self.get(key)
        if item is None:
            raise JournalStateError(f"no item {key!r} in the journal")
        return item
