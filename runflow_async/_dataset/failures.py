"""``failures.jsonl`` kept as items fail, so a ``kill -9`` leaves every failure recorded.

Its rows derive from the journal (the source of truth): one per failed item,
and one per created item whose run is still to collect (``"collectable":
true``: the next run reads it again, never creates it). The file is
rewritten from the journal (atomically) when a run starts, once failed items
sent back for a retry are pending again, and when it ends. In between, each
item's journal change comes first, then the file follows at once:

* an item not listed yet that fails is appended, in one ``write`` (what a
  ``kill -9`` cannot tear, as the manifest's rows);
* a listed item that succeeds, or fails anew, makes the file be rewritten
  (atomically: a temporary file renamed over it).

So at every instant the file is whole lines, each naming an item the journal
holds as failed or collectable (only the item being recorded, between its
journal commit and its write, may be missing), and the next run's rewrite
catches up with whatever a kill left. The file honours the umask.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from runflow_async._dataset.input import DatasetItem
from runflow_async._dataset.journal import ItemState, Journal, JournalItem
from runflow_async._dataset.manifest import append_whole
from runflow_async._http.download import write_atomic

__all__ = ["FAILURES", "FailureList"]

FAILURES = "failures.jsonl"


class FailureList:
    """The ``failures.jsonl`` of one folder, as the journal records it.

    Args:
        out_dir: The dataset folder.
        items: The input's items (for each row's line and prompt).
    """

    def __init__(self, out_dir: Path, items: Sequence[DatasetItem]) -> None:
        self._path = out_dir / FAILURES
        self._items = {item.key: item for item in items}
        self._rows: dict[str, str] = {}

    def rewrite(self, journal: Journal) -> int:
        """Rewrite the file from the journal (atomically); return how many rows it has."""
        self._rows = {}
        for entry in journal.iter_items(states=(ItemState.FAILED, ItemState.CREATED)):
            if entry.state is ItemState.FAILED or entry.error_type is not None:
                self._rows[entry.key] = self._row(entry)
        self._write_all()
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        """Whether the file lists the item ``key`` (as this object last wrote it)."""
        return key in self._rows

    def record(self, entry: JournalItem) -> None:
        """``entry`` (as the journal holds it now) changed: list it, or take it off."""
        listed = entry.key in self._rows
        failing = entry.state is ItemState.FAILED or (
            entry.state is ItemState.CREATED and entry.error_type is not None
        )
        if not failing:
            if listed:
                del self._rows[entry.key]
                self._write_all()
            return
        row = self._rows[entry.key] = self._row(entry)
        if listed:
            self._write_all()
        else:
            append_whole(self._path, f"{row}\n".encode())

    def _write_all(self) -> None:
        write_atomic(self._path, "".join(f"{row}\n" for row in self._rows.values()).encode())

    def _row(self, entry: JournalItem) -> str:
        item = self._items.get(entry.key)
        return json.dumps(
            {
                "key": entry.key,
                "line": item.line if item else None,
                "prompt": item.value("prompt") if item else None,
                "run_id": entry.run_id,
                "error_type": entry.error_type,
                "error": entry.error,
                "collectable": entry.state is ItemState.CREATED,
            },
            sort_keys=True,
        )
