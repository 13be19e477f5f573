"""Reading the journal: items by key, in bulk, or streamed in input order."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import fields, replace
from decimal import Decimal
from typing import Any

from runflow_async._dataset.journal_commit import GroupCommit, JournalStateError
from runflow_async._dataset.journal_item import ItemState, JournalItem, item_from_row

__all__ = ["JournalReads", "JournalStateError"]


_SELECT = f"SELECT {', '.join(f.name for f in fields(JournalItem))} FROM items"  # noqa: S608
_GET_MANY = 500  # keys per SELECT of get_many (SQLite allows 32,766 parameters)


class JournalReads(GroupCommit):
    """The journal's reads (they see its waiting marks: merged, or written first)."""

    def get(self, key: str) -> JournalItem | None:
        """Return the item recorded under ``key``, or ``None``."""
        row = self._conn.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._merged(item_from_row(row))

    def get_many(self, keys: Iterable[str]) -> dict[str, JournalItem]:
        """Return the items recorded under ``keys`` (absent keys left out), a few SELECTs."""
        found: dict[str, JournalItem] = {}
        wanted = list(keys)
        for start in range(0, len(wanted), _GET_MANY):
            chunk = wanted[start : start + _GET_MANY]
            sql = f"{_SELECT} WHERE key IN ({', '.join('?' * len(chunk))})"
            for row in self._conn.execute(sql, chunk):
                item = self._merged(item_from_row(row))
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
        self.commit()  # a scan sees every mark: the waiting ones are written first
        sql, args = _SELECT, list[str]()
        if states is not None:
            args = [ItemState(s).value for s in states]
            sql += f" WHERE state IN ({', '.join('?' * len(args))})"
        for row in self._conn.execute(f"{sql} ORDER BY ordinal, key", args):
            yield item_from_row(row)

    def shard_images(self) -> dict[int, int]:
        """How many images each shard holds (items in no shard left out)."""
        self.commit()
        sql = "SELECT shard, SUM(json_array_length(files)) FROM items WHERE shard IS NOT NULL"
        return {int(s): int(n) for s, n in self._conn.execute(f"{sql} GROUP BY shard")}

    def iter_shard(self, shard: int) -> Iterator[JournalItem]:
        """Yield the items in ``shard``, in input order."""
        self.commit()
        sql = f"{_SELECT} WHERE shard = ? ORDER BY ordinal, key"
        for row in self._conn.execute(sql, (shard,)):
            yield item_from_row(row)

    def set_shard(self, key: str, shard: int) -> None:
        """Record that ``shard`` holds the (succeeded) item ``key``."""
        self._execute("UPDATE items SET shard = ? WHERE key = ?", (shard, key))

    def _merged(self, item: JournalItem) -> JournalItem:
        """``item`` as its waiting changes (if any) leave it."""
        p = self._pending.get(item.key)
        if p is None:
            return item
        sets: dict[str, Any] = {}
        for name, value in p.sets.items():
            if name == "files":
                sets[name] = tuple(json.loads(str(value)))
            elif name in ("cost_usd", "reserved_usd"):
                sets[name] = None if value is None else Decimal(str(value))
            else:
                sets[name] = value
        return replace(
            item,
            state=ItemState(p.state),
            client_ref=item.client_ref or p.ref,
            attempts=item.attempts + p.inc,
            **sets,
        )

    def _state(self, key: str) -> str:
        """``key``'s state as the journal knows it (waiting changes included)."""
        p = self._pending.get(key)
        if p is not None:
            return p.state
        known = self._known.get(key)
        return known if known is not None else self._get(key).state.value

    def _get(self, key: str) -> JournalItem:
        item = self.get(key)
        if item is None:
            raise JournalStateError(f"no item {key!r} in the journal")
        return item
